#include "wakeup/worker_wakeup.h"

#include <sys/eventfd.h>

#include <cstdint>

namespace sse {

namespace {

struct Descriptors {
    ngx_uint_t generation = 0;
    ngx_fd_t* fds = nullptr;
    ngx_uint_t count = 0;
};

Descriptors current;  // inherited by the workers forked after init_module

ngx_connection_t* wake_connection = nullptr;
void (*wake_handler)() = nullptr;
void (*shutdown_handler)() = nullptr;

void close_descriptors(void* data) {
    auto* d = static_cast<Descriptors*>(data);
    for (ngx_uint_t i = 0; i < d->count; i++) {
        if (d->fds[i] != -1) close(d->fds[i]);
    }
}

void on_readable(ngx_event_t* rev) {
    auto* c = static_cast<ngx_connection_t*>(rev->data);
    if (c->close) {
        // Graceful shutdown of this worker (see listen()).
        c->close = 0;
        if (shutdown_handler) shutdown_handler();
        return;
    }
    // The counter resets on one read; edge-triggered epoll needs it drained to fire again.
    std::uint64_t value;
    while (read(c->fd, &value, sizeof(value)) == ssize_t(sizeof(value))) {
    }
    if (wake_handler) wake_handler();
}

}  // namespace

ngx_int_t WorkerWakeup::create_for_cycle(ngx_cycle_t* cycle, ngx_uint_t workers) {
    auto* d = static_cast<Descriptors*>(ngx_pcalloc(cycle->pool, sizeof(Descriptors)));
    if (d == nullptr) return NGX_ERROR;
    d->fds = static_cast<ngx_fd_t*>(ngx_palloc(cycle->pool, workers * sizeof(ngx_fd_t)));
    if (d->fds == nullptr) return NGX_ERROR;

    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == nullptr) return NGX_ERROR;
    cln->handler = close_descriptors;
    cln->data = d;

    for (ngx_uint_t i = 0; i < workers; i++) {
        d->fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (d->fds[i] == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno, "sse: eventfd() failed");
            return NGX_ERROR;
        }
        d->count = i + 1;
    }
    d->generation = current.generation + 1;
    current = *d;
    return NGX_OK;
}

ngx_uint_t WorkerWakeup::generation() { return current.generation; }

ngx_fd_t WorkerWakeup::descriptor_of(ngx_uint_t worker) {
    return worker < current.count ? current.fds[worker] : ngx_fd_t(-1);
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
