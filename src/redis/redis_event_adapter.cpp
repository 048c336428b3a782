#include "redis/redis_event_adapter.h"

#include "guard.h"

namespace sse {

namespace {

void on_readable(ngx_event_t* ev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    guarded(ev->log, "reading from redis", [&] {
        redisAsyncHandleRead(static_cast<redisAsyncContext*>(c->data));  // may free c
    });
}

void on_writable(ngx_event_t* ev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    guarded(ev->log, "writing to redis", [&] {
        redisAsyncHandleWrite(static_cast<redisAsyncContext*>(c->data));  // may free c
    });
}

void add_read(void* data) {
    auto* c = static_cast<ngx_connection_t*>(data);
    if (!c->read->active) ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
}

void del_read(void* data) {
    auto* c = static_cast<ngx_connection_t*>(data);
    if (c->read->active) ngx_del_event(c->read, NGX_READ_EVENT, 0);
}

void add_write(void* data) {
    auto* c = static_cast<ngx_connection_t*>(data);
    if (!c->write->active) ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
}

void del_write(void* data) {
    auto* c = static_cast<ngx_connection_t*>(data);
    if (c->write->active) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
}

// hiredis is about to close the socket: nginx must forget it first.
void cleanup(void* data) {
    auto* c = static_cast<ngx_connection_t*>(data);
    del_read(c);
    del_write(c);
    // ngx_delete_posted_event is two statements: it needs the braces.
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }
    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }
    ngx_free_connection(c);
    c->fd = (ngx_socket_t)-1;
}

}  // namespace

bool attach_to_event_loop(redisAsyncContext* ac, ngx_log_t* log) {
    ngx_connection_t* c = ngx_get_connection(ac->c.fd, log);
    if (c == nullptr) return false;
    c->data = ac;
    c->log = log;
    c->read->log = log;
    c->write->log = log;
    c->read->handler = on_readable;
    c->write->handler = on_writable;
    ac->ev.data = c;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return true;
}

}  // namespace sse
