// Inter-worker wake-up: one eventfd per worker slot of the zone, made by the master before it
// forks any worker and kept for its whole life, so every worker (current, retiring after a
// reload, or respawned after a crash) holds every other's. A publisher writes to the eventfd of
// each slot that has subscribers on the event's channels; the worker drains everything queued
// for it in one go. The shared `wake_pending` flag of a slot coalesces wake-ups.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

#include <cstdint>

#include "store/event_store.h"

namespace sse {

class WorkerWakeup {
public:
    // In the master, at init_module: the descriptors, once (a reload keeps them).
    static ngx_int_t create_once(ngx_log_t* log);

    // The descriptor of a zone slot.
    static ngx_fd_t descriptor_of(ngx_uint_t slot);

    // Wakes the slots in mask that are not already woken.
    static void wake(StoreHeader* header, const std::uint64_t mask[2]);

    // In a worker: watch its own descriptor; on_wake runs for each wake-up. on_shutdown runs once
    // when nginx begins a graceful shutdown of this worker (reload, quit): the connection is
    // marked idle, and nginx then calls it with c->close set.
    static ngx_int_t listen(ngx_cycle_t* cycle, ngx_fd_t fd, void (*on_wake)(), void (*on_shutdown)());
    static void stop();
};

}  // namespace sse
