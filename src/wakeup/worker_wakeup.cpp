#include "wakeup/worker_wakeup.h"

#include <sys/eventfd.h>

#include <cstdint>

namespace sse {

namespace {

// Made in the master and inherited by every worker it forks; never closed while it runs.
ngx_fd_t descriptors[kMaxWorkerSlots];
bool created = false;

ngx_connection_t* wake_connection = nullptr;
void (*wake_handler)() = nullptr;
void (*shutdown_handler)() = nullptr;

void on_readable(ngx_event_t* rev) {
    auto* c = static_cast<ngx_connection_t*>(rev->data);
    if (c->close) {
        // Graceful shutdown of this worker (see listen()).
        c->close = 0;
        if (shutdown_handler) shutdown_handler();
        return;
    }
    // One read resets the counter to zero, which re-arms the edge-triggered notification.
    std::uint64_t value;
    ssize_t n = read(c->fd, &value, sizeof(value));
    (void)n;  // EAGAIN: a spurious wake-up; delivering finds nothing new
    if (wake_handler) wake_handler();
}

}  // namespace

ngx_int_t WorkerWakeup::create_once(ngx_log_t* log) {
    if (created) return NGX_OK;
    for (ngx_uint_t i = 0; i < kMaxWorkerSlots; i++) {
        descriptors[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (descriptors[i] == -1) {
            ngx_log_error(NGX_LOG_EMERG, log, ngx_errno, "sse: eventfd() failed");
            for (ngx_uint_t j = 0; j < i; j++) close(descriptors[j]);
            return NGX_ERROR;
        }
    }
    created = true;
    return NGX_OK;
}

ngx_fd_t WorkerWakeup::descriptor_of(ngx_uint_t slot) {
    return created && slot < kMaxWorkerSlots ? descriptors[slot] : ngx_fd_t(-1);
}

void WorkerWakeup::wake(StoreHeader* header, const std::uint64_t mask[2]) {
    if (!created) return;
    for (ngx_uint_t s = 0; s < header->slot_high; s++) {
        if (!((mask[s / 64] >> (s % 64)) & 1)) continue;
        WorkerSlot& slot = header->slots[s];
        if (slot.pid == 0) continue;
        if (!ngx_atomic_cmp_set(&slot.wake_pending, 0, 1)) continue;  // already woken: coalesce
        std::uint64_t one = 1;
        ssize_t n = write(descriptors[s], &one, sizeof(one));
        (void)n;  // EAGAIN means the counter is already set: the worker wakes anyway
    }
}

ngx_int_t WorkerWakeup::listen(ngx_cycle_t* cycle, ngx_fd_t fd, void (*on_wake)(), void (*on_shutdown)()) {
    ngx_connection_t* c = ngx_get_connection(fd, cycle->log);
    if (c == nullptr) return NGX_ERROR;
    wake_handler = on_wake;
    shutdown_handler = on_shutdown;
    c->read->handler = on_readable;
    c->read->log = cycle->log;
    c->write->log = cycle->log;
    c->log = cycle->log;
    // nginx calls the read handler of idle connections with c->close set when it starts a
    // graceful shutdown: that is how this worker learns to end its streams.
    c->idle = 1;
    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_free_connection(c);
        return NGX_ERROR;
    }
    wake_connection = c;
    return NGX_OK;
}

void WorkerWakeup::stop() {
    if (wake_connection == nullptr) return;
    ngx_connection_t* c = wake_connection;
    wake_connection = nullptr;
    // The descriptor belongs to the master's set (other processes still write to it): take it
    // out of this worker's event loop without closing it.
    if (c->read->active) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    ngx_free_connection(c);
    c->fd = -1;
}

}  // namespace sse
