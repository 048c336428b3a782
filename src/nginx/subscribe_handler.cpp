// sse_subscribe: a request becomes a long-lived event stream. The worker keeps a local index of
// its streams by channel; when woken it takes its events from the shared log and hands each
// stream a buffer that points at the event's frame bytes in the zone (no copy, no formatting),
// passing them through nginx's filters (chunked, gzip, HTTP/2) like any other response body.
#include <algorithm>
#include <unordered_map>
#include <vector>

#include "nginx/sse_module.h"
#include "protocol/channel_list.h"
#include "protocol/event_filter.h"
#include "protocol/event_frame.h"
#include "protocol/resume.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

// This worker's hold on an event whose bytes some of its streams have not sent yet: its bit in
// the event's `needed_by` (live delivery) or `pinned_by` (replay from history).
struct EventHold {
    ShmEvent* event;
    std::uint32_t frames;  // frames still pointing at the event's bytes
    bool replay;
};

// A buffer handed to nginx's output chain; recycled through a per-worker free list.
struct Frame {
    ngx_buf_t buf;
    ngx_chain_t link;
    EventHold* hold;  // nullptr for bytes of our own (preamble, heartbeat)
    Frame* next;
};

struct Subscriber;

struct Membership {
    ngx_queue_t link;  // in LocalChannel::members
    Subscriber* subscriber;
};

struct LocalChannel {
    ngx_queue_t members;
};

struct Subscriber {
    ngx_http_request_t* request;
    LocConf* conf;
    EventFilter* filter;    // nullptr: every event
    ShmSubscriber* record;  // in the zone: its channels, for every worker to see
    ShmChannel** channels;  // the record's
    Membership* memberships;
    std::size_t channel_count;
    std::uint64_t last_seq;  // events up to this place in the delivery order were queued or predate the stream
    Frame* sent_head;       // frames given to nginx, oldest first, until consumed
    Frame* sent_tail;
    Frame* new_head;  // frames queued by the current delivery round
    Frame* new_tail;
    std::size_t sent_bytes;  // full length of the sent_* frames
    std::size_t new_bytes;   // of the new_* frames
    std::size_t queued_total;  // bytes ever given to nginx
    std::size_t replay_end;    // queued_total at the end of the replay: it may exceed sse_send_buffer
    ngx_queue_t all_link;    // in LocalIndex::all
    ngx_event_t heartbeat;
    ngx_event_t lifetime;  // sse_max_lifetime
    // With Redis, a stream resuming on a channel this node has not synced yet waits (in
    // LocalIndex::awaiting_sync) until it is, or until sse_redis_sync_timeout.
    ngx_event_t sync_wait;
    ngx_queue_t sync_link;
    ResumeRequest resume;
    ngx_str_t given_id;
    bool awaiting_sync;
    ngx_msec_t last_write;
    ngx_queue_t dirty_link;  // in LocalIndex::dirty while it has frames to flush
    bool dirty;
    bool ending;      // the stream is being ended by us
    bool registered;  // counted in the store
};

void flush_dirty_streams();

struct LocalIndex {
    std::unordered_map<ShmChannel*, LocalChannel> channels;
    std::unordered_map<ShmEvent*, EventHold*> replay_holds;  // one pin per event for all streams
    Frame* free_frames = nullptr;
    std::vector<ShmEvent*> taken;
    ngx_queue_t all;     // every stream of this worker, for shutdown
    ngx_queue_t dirty;   // streams with frames queued by a delivery round, not yet flushed
    ngx_queue_t awaiting_sync;
    std::uint64_t kicks_seen = 0;
    ngx_event_t resume;  // continues flushing after the event loop has had its turn

    LocalIndex();
};

LocalIndex* local = nullptr;

LocalIndex& local_index() {
    if (local == nullptr) local = new LocalIndex();
    return *local;
}

Frame* get_frame() {
    LocalIndex& li = local_index();
    Frame* f = li.free_frames;
    if (f != nullptr) {
        li.free_frames = f->next;
    } else {
        f = static_cast<Frame*>(ngx_alloc(sizeof(Frame), ngx_cycle->log));
        if (f == nullptr) return nullptr;
    }
    ngx_memzero(f, sizeof(Frame));
    f->link.buf = &f->buf;
    return f;
}

void drop_hold(EventHold* hold) {
    auto slot = ngx_uint_t(worker_context()->slot);
    if (hold->replay) {
        local_index().replay_holds.erase(hold->event);
        Store::unpin_event(hold->event, slot);
    } else {
        Store::release_event(hold->event, slot);
    }
    delete hold;
}

void put_frame(Frame* f) {
    if (f->hold != nullptr && --f->hold->frames == 0) drop_hold(f->hold);
    LocalIndex& li = local_index();
    f->next = li.free_frames;
    li.free_frames = f;
}

void fill_frame(Frame* f, u_char* data, std::size_t len) {
    f->buf.pos = data;
    f->buf.last = data + len;
    f->buf.start = data;
    f->buf.end = data + len;
    f->buf.memory = 1;
    f->buf.tag = reinterpret_cast<ngx_buf_tag_t>(&ngx_http_sse_module);
}

void append_new(Subscriber* s, Frame* f) {
    if (s->new_tail) {
        s->new_tail->next = f;
        s->new_tail->link.next = &f->link;
    } else {
        s->new_head = f;
    }
    s->new_tail = f;
    s->new_bytes += std::size_t(f->buf.last - f->buf.pos);
}

std::size_t frame_length(const Frame* f) {
    return std::size_t(f->buf.end - f->buf.start);
}

// Returns the frames nginx has finished with (written to the socket or taken in by gzip).
// nginx consumes a chain in order, so only the first remaining frame can be partly sent.
void reclaim_sent(Subscriber* s) {
    while (s->sent_head != nullptr && s->sent_head->buf.pos == s->sent_head->buf.last) {
        Frame* f = s->sent_head;
        s->sent_head = f->next;
        s->sent_bytes -= frame_length(f);
        put_frame(f);
    }
    if (s->sent_head == nullptr) s->sent_tail = nullptr;
}

// What the client has not taken yet.
std::size_t unsent_bytes(const Subscriber* s) {
    if (s->sent_head == nullptr) return 0;
    return s->sent_bytes - std::size_t(s->sent_head->buf.pos - s->sent_head->buf.start);
}

void release_all_frames(Subscriber* s) {
    for (Frame* f = s->sent_head; f != nullptr;) {
        Frame* next = f->next;
        put_frame(f);
        f = next;
    }
    for (Frame* f = s->new_head; f != nullptr;) {
        Frame* next = f->next;
        put_frame(f);
        f = next;
    }
    s->sent_head = s->sent_tail = s->new_head = s->new_tail = nullptr;
    s->sent_bytes = s->new_bytes = 0;
}

// For sse_clients: what the stream was sent, in its record (only this worker writes it).
void count_sent(Subscriber* s, const ShmEvent* ev) {
    __atomic_store_n(&s->record->events_sent, s->record->events_sent + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->record->bytes_sent, s->record->bytes_sent + ev->frame_len, __ATOMIC_RELAXED);
}

// A channel got its first stream or lost its last: the worker holding the Redis link must
// listen to it there, or stop.
void wake_redis_owner(Store& store) {
    ngx_uint_t owner = store.redis_owner_slot();
    if (owner >= kMaxWorkerSlots) return;
    std::uint64_t mask[2] = {0, 0};
    mask[owner / 64] |= std::uint64_t(1) << (owner % 64);
    WorkerWakeup::wake(store.header(), mask);
}

void unregister(Subscriber* s) {
    if (s->dirty) {
        ngx_queue_remove(&s->dirty_link);
        s->dirty = false;
    }
    if (!s->registered) return;
    s->registered = false;
    LocalIndex& li = local_index();
    for (std::size_t i = 0; i < s->channel_count; i++) {
        ngx_queue_remove(&s->memberships[i].link);
        auto it = li.channels.find(s->channels[i]);
        if (it != li.channels.end() && ngx_queue_empty(&it->second.members)) li.channels.erase(it);
    }
    ngx_queue_remove(&s->all_link);
    if (s->awaiting_sync) {
        ngx_queue_remove(&s->sync_link);
        s->awaiting_sync = false;
    }
    WorkerContext* w = worker_context();
    if (w != nullptr && w->slot >= 0 && w->store.unsubscribe(s->record)) wake_redis_owner(w->store);
}

void cleanup_subscriber(void* data) noexcept {
    auto* s = static_cast<Subscriber*>(data);
    try {
        if (s->sync_wait.timer_set) ngx_del_timer(&s->sync_wait);
        if (s->heartbeat.timer_set) ngx_del_timer(&s->heartbeat);
        if (s->lifetime.timer_set) ngx_del_timer(&s->lifetime);
        release_all_frames(s);
        unregister(s);
        delete s->filter;
        s->filter = nullptr;
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception releasing a subscriber");
    }
}

// Passes the round's new frames (or nothing, to push what is pending) to nginx's filters.
ngx_int_t flush(Subscriber* s) {
    ngx_http_request_t* r = s->request;
    ngx_chain_t* out = nullptr;
    if (s->new_head != nullptr) {
        // Flush each round through gzip and past postpone_output: events are never held back.
        s->new_tail->buf.flush = 1;
        s->new_tail->link.next = nullptr;
        out = &s->new_head->link;
        if (s->sent_tail) {
            s->sent_tail->next = s->new_head;
        } else {
            s->sent_head = s->new_head;
        }
        s->sent_tail = s->new_tail;
        s->sent_bytes += s->new_bytes;
        s->queued_total += s->new_bytes;
        s->new_head = s->new_tail = nullptr;
        s->new_bytes = 0;
        s->last_write = ngx_current_msec;
    }
    ngx_int_t rc = ngx_http_output_filter(r, out);
    reclaim_sent(s);
    if (rc == NGX_ERROR) return rc;

    // What the socket did not take is sent when it becomes writable (as nginx's own writer
    // does): arm the write event, and time out a client that takes nothing for send_timeout.
    ngx_connection_t* c = r->connection;
    ngx_event_t* wev = c->write;
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (r->buffered || c->buffered) {
        if (!wev->delayed) ngx_add_timer(wev, clcf->send_timeout);
    } else if (wev->timer_set && !wev->delayed) {
        ngx_del_timer(wev);
    }
    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) return NGX_ERROR;
    return rc;
}

// Finalizes a stream from an event that is not its connection's own (a wake-up, a timer):
// nginx may only post the finalization, so the posted requests are run here.
void finalize_from_outside(ngx_http_request_t* r, ngx_int_t rc) {
    ngx_connection_t* c = r->connection;
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

void end_stream(Subscriber* s) {
    if (s->ending) return;
    s->ending = true;
    ngx_http_request_t* r = s->request;
    if (s->heartbeat.timer_set) ngx_del_timer(&s->heartbeat);
    if (s->lifetime.timer_set) ngx_del_timer(&s->lifetime);
    unregister(s);
    // An EventSource never reuses the connection, and a retiring worker must not keep it.
    r->keepalive = 0;
    ngx_int_t rc = flush(s);
    if (rc != NGX_ERROR) rc = ngx_http_send_special(r, NGX_HTTP_LAST);
    finalize_from_outside(r, rc);
}

void drop_slow(Subscriber* s) {
    ngx_http_request_t* r = s->request;
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "sse: client too slow, %uz bytes unsent exceed sse_send_buffer %uz; closing the stream",
                  unsent_bytes(s) + s->new_bytes, s->conf->send_buffer);
    ngx_atomic_fetch_add(&worker_context()->store.header()->counters.slow_disconnects, 1);
    s->ending = true;
    if (s->heartbeat.timer_set) ngx_del_timer(&s->heartbeat);
    if (s->lifetime.timer_set) ngx_del_timer(&s->lifetime);
    release_all_frames(s);
    unregister(s);
    r->connection->error = 1;
    finalize_from_outside(r, NGX_HTTP_CLOSE);
}

void write_handler(ngx_http_request_t* r) noexcept {
    auto* s = static_cast<Subscriber*>(ngx_http_get_module_ctx(r, ngx_http_sse_module));
    if (s == nullptr) return;
    ngx_connection_t* c = r->connection;
    if (c->write->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT, "sse: client timed out reading the stream");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    if (flush(s) == NGX_ERROR) ngx_http_finalize_request(r, NGX_ERROR);
}

void send_own_bytes(Subscriber* s, const u_char* data, std::size_t len) {
    Frame* f = get_frame();
    if (f == nullptr) return;
    fill_frame(f, const_cast<u_char*>(data), len);
    append_new(s, f);
}

// Queues what the store planned for a new stream: the reset event, then the replayed events,
// whose pins become this worker's holds (so the stream's cleanup releases them whatever happens).
void queue_resume(Subscriber* s, const ResumePlan& plan, std::string_view given_id) {
    ngx_http_request_t* r = s->request;
    StoreCounters& counters = worker_context()->store.header()->counters;
    if (plan.reset != ResetReason::kNone) {
        std::string shown = echoed_id(given_id);  // what a client sent: escaped for the log too
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: cannot resume exactly after id \"%s\" (%*s); replaying what is retained", shown.c_str(),
                      reset_reason_name(plan.reset).size(), reset_reason_name(plan.reset).data());
        if (s->conf->reset_event.len > 0) {
            std::string frame = reset_frame(to_view(s->conf->reset_event), given_id, plan.reset);
            auto* bytes = static_cast<u_char*>(ngx_pnalloc(r->pool, frame.size()));
            if (bytes != nullptr) {
                ngx_memcpy(bytes, frame.data(), frame.size());
                send_own_bytes(s, bytes, frame.size());
                ngx_atomic_fetch_add(&counters.resets, 1);
            }
        }
    }
    LocalIndex& li = local_index();
    std::size_t replayed = 0;
    auto slot = ngx_uint_t(worker_context()->slot);
    for (ShmEvent* ev : plan.replay) {
        if (s->filter != nullptr && !s->filter->matches(ev->name())) {
            // Pinned for this stream by the plan: unpin unless another stream here holds it.
            if (li.replay_holds.find(ev) == li.replay_holds.end()) Store::unpin_event(ev, slot);
            continue;
        }
        auto [it, added] = li.replay_holds.try_emplace(ev, nullptr);
        if (added) it->second = new EventHold{ev, 0, true};
        EventHold* hold = it->second;
        Frame* f = get_frame();
        if (f == nullptr) {
            if (hold->frames == 0) drop_hold(hold);
            continue;
        }
        hold->frames++;
        f->hold = hold;
        fill_frame(f, ev->frame, ev->frame_len);
        append_new(s, f);
        replayed++;
        count_sent(s, ev);
    }
    s->replay_end = s->new_bytes;
    if (replayed) ngx_atomic_fetch_add(&counters.events_replayed, replayed);
}

// Plans a stream that waited for its channels' history from Redis: from what this node has now.
void finish_sync_wait(Subscriber* s) {
    if (!s->awaiting_sync) return;
    ngx_queue_remove(&s->sync_link);
    s->awaiting_sync = false;
    if (s->sync_wait.timer_set) ngx_del_timer(&s->sync_wait);
    WorkerContext* w = worker_context();
    ResumePlan plan;
    w->store.plan_resume(ngx_uint_t(w->slot), s->record, s->resume, s->last_seq, plan);
    queue_resume(s, plan, to_view(s->given_id));
    if (!s->dirty) {
        s->dirty = true;
        ngx_queue_insert_tail(&local_index().dirty, &s->dirty_link);
    }
}

void sync_wait_expired(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    try {
        ngx_log_error(NGX_LOG_INFO, s->request->connection->log, 0,
                      "sse: redis did not send the channels' history within sse_redis_sync_timeout; resuming from this "
                      "node's own");
        finish_sync_wait(s);
        flush_dirty_streams();
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception resuming a stream");
    }
}

// The position a reconnecting client sends: the Last-Event-ID header, else the last_event_id
// query argument (a page that reloads cannot set the header).
bool resume_position(ngx_http_request_t* r, ngx_str_t& value) {
    if (request_header(r, "Last-Event-ID", value) && value.len > 0) return true;
    if (query_arg(r, "last_event_id", value) && value.len > 0) return url_decode(r, value);
    return false;
}

void heartbeat_handler(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    if (s->ending) return;
    ngx_msec_t interval = s->conf->heartbeat;
    ngx_msec_t idle = ngx_current_msec - s->last_write;
    if (idle + 10 >= interval) {  // timers fire a little early or late; 10 ms is "now"
        send_own_bytes(s, reinterpret_cast<const u_char*>(kHeartbeatFrame.data()), kHeartbeatFrame.size());
        if (flush(s) == NGX_ERROR) {
            s->ending = true;
            finalize_from_outside(s->request, NGX_ERROR);
            return;
        }
        idle = 0;
    }
    ngx_add_timer(&s->heartbeat, interval - idle);
}

// sse_max_lifetime: the stream ends cleanly; EventSource reconnects with Last-Event-ID.
void lifetime_handler(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    try {
        if (s->ending) return;
        ngx_log_error(NGX_LOG_INFO, s->request->connection->log, 0, "sse: stream reached sse_max_lifetime, ending it");
        end_stream(s);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception ending a stream");
    }
}

void add_header(ngx_http_request_t* r, const char* key, const char* value) {
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) return;
    h->hash = 1;
    h->key.data = reinterpret_cast<u_char*>(const_cast<char*>(key));
    h->key.len = ngx_strlen(key);
    h->value.data = reinterpret_cast<u_char*>(const_cast<char*>(value));
    h->value.len = ngx_strlen(value);
}

ngx_int_t send_stream_header(ngx_http_request_t* r) {
    r->headers_out.status = NGX_HTTP_OK;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = -1;
    add_header(r, "Cache-Control", "no-cache");
    add_header(r, "X-Accel-Buffering", "no");
    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);
    return ngx_http_send_header(r);
}

// Seconds a client refused by a limit is told to wait (Retry-After).
constexpr const char* kLimitRetryAfter = "5";

ngx_int_t refuse_stream(ngx_http_request_t* r, SubscribeRefusal refusal, const SubscribeLimits& limits) {
    switch (refusal) {
    case SubscribeRefusal::kMaxSubscribers:
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "sse: stream refused: sse_max_subscribers %uD reached", limits.max_total);
        add_header(r, "Retry-After", kLimitRetryAfter);
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                         "too many subscribers: the limit of " + std::to_string(limits.max_total) +
                             " streams is reached");
    case SubscribeRefusal::kPerKey:
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: stream refused: key \"%*s\" already holds sse_max_subscribers_per_key %uD streams",
                      std::min<std::size_t>(limits.key.size(), 64), limits.key.data(), limits.max_per_key);
        add_header(r, "Retry-After", kLimitRetryAfter);
        return send_text(r, NGX_HTTP_TOO_MANY_REQUESTS,
                         "too many streams for this client: at most " + std::to_string(limits.max_per_key));
    case SubscribeRefusal::kZoneFull:
    case SubscribeRefusal::kNone:
        break;
    }
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "sse: shared zone is full, cannot add a subscriber; raise sse_shm_size");
    return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "the event zone is full");
}

ngx_int_t subscribe(ngx_http_request_t* r) {
    auto* conf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        add_header(r, "Allow", "GET, HEAD");
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "an event stream is read with GET");
    }
    if (r != r->main) return send_text(r, NGX_HTTP_BAD_REQUEST, "an event stream cannot be a subrequest");

    ngx_str_t text;
    if (evaluate_channel_list(r, conf->subscribe, text) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    std::vector<std::string_view> names;
    std::string reason;
    if (!parse_channel_list(to_view(text), conf->max_channels, names, reason, conf->subscribe_patterns)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: subscribe refused: %s", reason.c_str());
        return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
    }

    // sse_subscribe_allow: every channel asked for must be allowed, or nothing is subscribed.
    if (conf->allow != nullptr) {
        std::vector<ngx_str_t> patterns(conf->allow->nelts);
        auto* cvs = static_cast<ngx_http_complex_value_t*>(conf->allow->elts);
        for (ngx_uint_t i = 0; i < conf->allow->nelts; i++) {
            if (ngx_http_complex_value(r, &cvs[i], &patterns[i]) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        for (std::string_view name : names) {
            bool allowed = false;
            for (const ngx_str_t& p : patterns) allowed = allowed || channel_allowed_by(to_view(p), name);
            if (allowed) continue;
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "sse: subscribe refused: channel \"%*s\" is not allowed by sse_subscribe_allow",
                          name.size(), name.data());
            return send_text(r, NGX_HTTP_FORBIDDEN, "channel \"" + std::string(name) + "\" is not allowed here");
        }
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;

    if (r->method == NGX_HTTP_HEAD) {
        ngx_int_t rc = send_stream_header(r);
        return rc == NGX_ERROR || rc > NGX_OK ? rc : ngx_http_send_special(r, NGX_HTTP_LAST);
    }

    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0 || w->shutting_down) {
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "this worker is not serving event streams");
    }

    // Who the stream is: its client id, its user key, and the channels that reach it by them.
    std::uint64_t client_id = w->store.new_client_id();
    ngx_str_t user = ngx_null_string;
    std::string user_name;
    std::string client_name;
    if (conf->user != nullptr) {
        if (ngx_http_complex_value(r, conf->user, &user) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        if (user.len > kMaxUserKeyLength) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: the sse_user value is longer than 256 bytes");
            return send_text(r, NGX_HTTP_INTERNAL_SERVER_ERROR, "the user key is too long");
        }
        if (user.len > 0) {
            user_name = user_channel(to_view(user));
            names.push_back(user_name);
        }
    }
    if (conf->client_channel) {
        client_name = client_channel(client_id);
        names.push_back(client_name);
    }

    // The event types the stream keeps, before anything is registered: a bad list is a 400.
    EventFilter filter;
    if (conf->event_filter != nullptr) {
        ngx_str_t types;
        if (ngx_http_complex_value(r, conf->event_filter, &types) != NGX_OK || !url_decode(r, types)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        if (!filter.parse(to_view(types), reason)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: subscribe refused: %s", reason.c_str());
            return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
        }
    }

    ResumeRequest resume;
    ngx_str_t given_id = ngx_null_string;
    if (resume_position(r, given_id)) {
        resume.kind = parse_event_id(to_view(given_id), resume.after) ? ResumeRequest::kAfterId
                                                                        : ResumeRequest::kMalformed;
    } else {
        resume.replay = std::uint32_t(conf->replay);
    }

    long retry = conf->retry == NGX_CONF_UNSET_MSEC ? -1 : long(conf->retry);
    std::size_t preamble_len = stream_preamble_size(retry);
    auto* preamble = static_cast<u_char*>(ngx_pnalloc(r->pool, preamble_len));
    if (preamble == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    write_stream_preamble(reinterpret_cast<char*>(preamble), retry);

    auto* s = static_cast<Subscriber*>(ngx_pcalloc(r->pool, sizeof(Subscriber)));
    if (s == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    s->request = r;
    s->conf = conf;
    s->memberships = static_cast<Membership*>(ngx_palloc(r->pool, names.size() * sizeof(Membership)));
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, 0);
    if (s->memberships == nullptr || cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;

    SubscribeLimits limits;
    limits.max_total = std::uint32_t(conf->max_subscribers);
    ngx_str_t key = ngx_null_string;
    if (conf->limit_key != nullptr) {
        if (ngx_http_complex_value(r, conf->limit_key, &key) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        // Keys longer than this are cut: they identify, they need not be whole.
        limits.key = to_view(key).substr(0, 256);
        limits.max_per_key = std::uint32_t(conf->max_per_key);
    }

    ResumePlan plan;
    SubscribeRefusal refusal;
    bool new_channels = false;
    bool link_up = redis_connected(w->store);
    s->record = w->store.subscribe(ngx_uint_t(w->slot), names, limits, resume, s->last_seq, plan, refusal,
                                   r->connection->log, link_up, &new_channels,
                                   StreamIdentity{client_id, to_view(user), to_view(r->connection->addr_text)});
    if (s->record == nullptr) return refuse_stream(r, refusal, limits);
    if (new_channels) wake_redis_owner(w->store);
    s->registered = true;
    cln->handler = cleanup_subscriber;
    cln->data = s;
    if (!filter.empty()) s->filter = new EventFilter(std::move(filter));
    send_own_bytes(s, preamble, preamble_len);
    if (conf->connected_event.len > 0) {
        std::string frame = connected_frame(to_view(conf->connected_event), client_id, to_view(user));
        auto* bytes = static_cast<u_char*>(ngx_pnalloc(r->pool, frame.size()));
        if (bytes == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        ngx_memcpy(bytes, frame.data(), frame.size());
        send_own_bytes(s, bytes, frame.size());
    }
    if (plan.deferred) {
        s->resume = resume;
        s->given_id = given_id;
        s->awaiting_sync = true;
        ngx_queue_insert_tail(&local_index().awaiting_sync, &s->sync_link);
        s->sync_wait.handler = sync_wait_expired;
        s->sync_wait.data = s;
        s->sync_wait.log = r->connection->log;
        s->sync_wait.cancelable = 1;
        auto* mcf = static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_sse_module));
        ngx_add_timer(&s->sync_wait, mcf->redis_sync_timeout);
    } else {
        queue_resume(s, plan, to_view(given_id));
    }

    s->channels = s->record->channels;
    s->channel_count = s->record->nchannels;

    LocalIndex& li = local_index();
    for (std::size_t i = 0; i < s->channel_count; i++) {
        s->memberships[i].subscriber = s;
        auto [it, added] = li.channels.try_emplace(s->channels[i]);
        if (added) {
            ngx_queue_init(&it->second.members);
        }
        ngx_queue_insert_tail(&it->second.members, &s->memberships[i].link);
    }
    ngx_queue_insert_tail(&li.all, &s->all_link);
    ngx_http_set_ctx(r, s, ngx_http_sse_module);

    ngx_int_t rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return rc;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = write_handler;
    r->main->count++;

    rc = flush(s);
    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }

    if (conf->max_lifetime > 0) {
        ngx_msec_t jitter = conf->lifetime_jitter ? ngx_msec_t(ngx_random()) % (conf->lifetime_jitter + 1) : 0;
        s->lifetime.handler = lifetime_handler;
        s->lifetime.data = s;
        s->lifetime.log = r->connection->log;
        s->lifetime.cancelable = 1;
        ngx_add_timer(&s->lifetime, conf->max_lifetime - jitter);
    }
    if (conf->heartbeat > 0) {
        s->heartbeat.handler = heartbeat_handler;
        s->heartbeat.data = s;
        s->heartbeat.log = r->connection->log;
        s->heartbeat.cancelable = 1;  // must not keep a retiring worker alive
        ngx_add_timer(&s->heartbeat, conf->heartbeat);
    }
    return NGX_DONE;
}

}  // namespace

ngx_int_t subscribe_handler(ngx_http_request_t* r) {
    try {
        return subscribe(r);
    } catch (const std::bad_alloc&) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: out of memory setting up a stream");
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: unexpected exception setting up a stream");
    }
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

namespace {

// Flushes the queued frames of a batch of streams. A worker with thousands of streams does
// not hold its event loop for the whole round: the rest waits until the loop has taken new
// events (a publish served by this worker is answered in between).
constexpr ngx_uint_t kFlushBatch = 256;

void flush_dirty_streams() {
    LocalIndex& li = local_index();
    for (ngx_uint_t n = 0; n < kFlushBatch && !ngx_queue_empty(&li.dirty); n++) {
        Subscriber* s = ngx_queue_data(ngx_queue_head(&li.dirty), Subscriber, dirty_link);
        ngx_queue_remove(&s->dirty_link);
        s->dirty = false;
        if (s->ending) continue;
        // One event larger than the buffer still goes to a stream that owes nothing, and the
        // replay's own unsent bytes do not count: the bound is on what comes after it.
        std::size_t unsent = unsent_bytes(s);
        std::size_t written = s->queued_total - unsent;
        std::size_t replay_unsent = s->replay_end > written ? s->replay_end - written : 0;
        bool single_event = s->new_head == s->new_tail;
        if (unsent + s->new_bytes > s->conf->send_buffer + replay_unsent && !(unsent == 0 && single_event)) {
            drop_slow(s);
            continue;
        }
        if (flush(s) == NGX_ERROR) {
            s->ending = true;
            finalize_from_outside(s->request, NGX_ERROR);
        }
    }
    if (!ngx_queue_empty(&li.dirty) && !li.resume.posted) {
        ngx_post_event(&li.resume, &ngx_posted_next_events);
    }
}

void resume_flushing(ngx_event_t*) noexcept {
    try {
        flush_dirty_streams();
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception flushing streams");
    }
}

LocalIndex::LocalIndex() {
    ngx_queue_init(&all);
    ngx_queue_init(&dirty);
    ngx_queue_init(&awaiting_sync);
    ngx_memzero(&resume, sizeof(resume));
    resume.handler = resume_flushing;
    resume.log = ngx_cycle->log;
}

}  // namespace

void deliver_to_local_subscribers() noexcept {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0) return;
    try {
        ngx_uint_t slot = ngx_uint_t(w->slot);
        StoreHeader* hdr = w->store.header();
        // Clear before reading the log: a publish after this point wakes us again.
        __atomic_store_n(&hdr->slots[slot].wake_pending, 0, __ATOMIC_SEQ_CST);

        LocalIndex& li = local_index();
        // Streams waiting for Redis's history go on once their channels are synced (or the link
        // is down: then there is nothing to wait for).
        if (!ngx_queue_empty(&li.awaiting_sync)) {
            bool connected = redis_connected(w->store);
            std::vector<Subscriber*> ready;
            for (ngx_queue_t* q = ngx_queue_head(&li.awaiting_sync); q != ngx_queue_sentinel(&li.awaiting_sync);
                 q = ngx_queue_next(q)) {
                Subscriber* s = ngx_queue_data(q, Subscriber, sync_link);
                if (!connected || w->store.synced(s->record)) ready.push_back(s);
            }
            for (Subscriber* s : ready) finish_sync_wait(s);
        }
        // Streams sse_clients asked to disconnect.
        std::uint64_t kicks = __atomic_load_n(&hdr->slots[slot].kicks, __ATOMIC_ACQUIRE);
        if (kicks != li.kicks_seen) {
            li.kicks_seen = kicks;
            std::vector<Subscriber*> kicked;
            for (ngx_queue_t* q = ngx_queue_head(&li.all); q != ngx_queue_sentinel(&li.all); q = ngx_queue_next(q)) {
                Subscriber* s = ngx_queue_data(q, Subscriber, all_link);
                if (s->registered && s->record->kicked) kicked.push_back(s);
            }
            for (Subscriber* s : kicked) end_stream(s);
        }
        w->store.take_events(slot, li.taken);

        std::vector<Subscriber*> closing;
        bool released = false;
        for (ShmEvent* ev : li.taken) {
            if (ev->kind == kEventCloseChannel) {
                auto it = li.channels.find(ev->channel(0));
                if (it != li.channels.end()) {
                    for (ngx_queue_t* q = ngx_queue_head(&it->second.members);
                         q != ngx_queue_sentinel(&it->second.members); q = ngx_queue_next(q)) {
                        closing.push_back((ngx_queue_data(q, Membership, link))->subscriber);
                    }
                }
                Store::release_event(ev, slot);
                released = true;
                continue;
            }
            EventHold* hold = nullptr;
            ngx_uint_t delivered = 0;
            for (std::uint16_t i = 0; i < ev->nchannels; i++) {
                auto it = li.channels.find(ev->channel(i));
                if (it == li.channels.end()) continue;
                for (ngx_queue_t* q = ngx_queue_head(&it->second.members); q != ngx_queue_sentinel(&it->second.members);
                     q = ngx_queue_next(q)) {
                    Subscriber* s = (ngx_queue_data(q, Membership, link))->subscriber;
                    // A stream on several of the event's channels takes it once.
                    if (s->ending || s->last_seq >= ev->seq) continue;
                    s->last_seq = ev->seq;
                    if (s->filter != nullptr && !s->filter->matches(ev->name())) continue;
                    Frame* f = get_frame();
                    if (f == nullptr) continue;
                    if (hold == nullptr) hold = new EventHold{ev, 0, false};
                    hold->frames++;
                    f->hold = hold;
                    fill_frame(f, ev->frame, ev->frame_len);
                    append_new(s, f);
                    delivered++;
                    count_sent(s, ev);
                    if (!s->dirty) {
                        s->dirty = true;
                        ngx_queue_insert_tail(&li.dirty, &s->dirty_link);
                    }
                }
            }
            if (hold == nullptr) {
                Store::release_event(ev, slot);
                released = true;
            }
            if (delivered) ngx_atomic_fetch_add(&hdr->counters.events_delivered, delivered);
        }

        // Streams of a closed channel end now, after the events before the close (end_stream
        // flushes what they have queued). A stream on two closed channels is listed twice.
        std::sort(closing.begin(), closing.end());
        closing.erase(std::unique(closing.begin(), closing.end()), closing.end());
        for (Subscriber* s : closing) end_stream(s);

        flush_dirty_streams();
        if (released) w->store.collect();
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception delivering events");
    }
}

void end_local_streams() noexcept {
    if (local == nullptr) return;
    try {
        // Ending one stream frees no other, so the list taken first stays valid.
        std::vector<Subscriber*> all;
        for (ngx_queue_t* q = ngx_queue_head(&local->all); q != ngx_queue_sentinel(&local->all);
             q = ngx_queue_next(q)) {
            all.push_back(ngx_queue_data(q, Subscriber, all_link));
        }
        for (Subscriber* s : all) end_stream(s);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: unexpected exception ending streams");
    }
}

}  // namespace sse
