// The parts of an nginx process the store relies on, for t/unit/store: a log whose lines the
// test sees, the cached clocks (set by the test), this process's pid, and a zone lock that
// never spins. nginx's own slab allocator, red-black tree, queue, CRC32 and string formatting
// are compiled from its source tree next to this (see t/unit/Makefile).
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

#include <ngx_config.h>
#include <ngx_core.h>

// Once per process, before any zone: page size and slab sizes (as nginx's main() does), the
// pid, the clocks and ngx_cycle's log.
void ngx_stub_init(void);

// Every ngx_log_error line is handed to the hook (with the text nginx would write after its
// "[level] pid#tid: " prefix), and whether a zone lock was held when it was written.
typedef void (*ngx_stub_log_hook_pt)(ngx_uint_t level, const char *text, size_t len, int under_lock);
void ngx_stub_set_log_hook(ngx_stub_log_hook_pt hook);

// The clocks nginx caches: ngx_current_msec (monotonic, for sse_history_ttl) and ngx_time().
void ngx_stub_set_clock(ngx_msec_t msec, time_t sec);
// Moves both forward.
void ngx_stub_advance_ms(ngx_msec_t ms);

// Zone locks held right now (0 or 1: the stub lock aborts on a second one, which would be a
// deadlock in nginx).
int ngx_stub_locks_held(void);

#ifdef __cplusplus
}
#endif
