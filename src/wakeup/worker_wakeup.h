// Inter-worker wake-up: one eventfd per worker, made by the master before it forks the
// workers so that every worker holds every other's. A publisher writes to the eventfd of each
// worker that has subscribers on the event's channels; the worker drains everything queued for
// it in one go. The shared `wake_pending` flag of a slot coalesces wake-ups.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

namespace sse {

class WorkerWakeup {
public:
    // In the master, at init_module: one descriptor per worker of the new configuration.
    // They are closed when that cycle's pool goes.
    static ngx_int_t create_for_cycle(ngx_cycle_t* cycle, ngx_uint_t workers);

    // The generation of the descriptors this process inherited.
    static ngx_uint_t generation();
    // This worker's descriptor (ngx_worker indexes them).
    static ngx_fd_t descriptor_of(ngx_uint_t worker);

    // In a worker: watch its own descriptor; on_wake runs for each wake-up. on_shutdown runs once
    // when nginx begins a graceful shutdown of this worker (reload, quit): the connection is
    // marked idle, and nginx then calls it with c->close set.
    static ngx_int_t listen(ngx_cycle_t* cycle, ngx_fd_t fd, void (*on_wake)(), void (*on_shutdown)());
    static void stop();
};

}  // namespace sse
