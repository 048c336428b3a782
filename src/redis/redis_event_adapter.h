// Drives a hiredis asynchronous context from nginx's event loop: its socket becomes an nginx
// connection whose read and write events call hiredis, so connecting, writing commands and
// reading replies never block a worker. Level-triggered, because hiredis reads at most one
// buffer per call and expects to be called again while data is waiting.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

#include <hiredis/async.h>

namespace sse {

// False when nginx has no free connection for it (the context is left untouched).
bool attach_to_event_loop(redisAsyncContext* ac, ngx_log_t* log);

}  // namespace sse
