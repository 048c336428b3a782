// sse_subscribe: a request becomes a long-lived event stream. The worker keeps a local index of
// its streams by channel; when woken it takes its events from the shared log and hands each
// stream a buffer that points at the event's frame bytes in the zone (no copy, no formatting),
// passing them through nginx's filters (chunked, gzip, HTTP/2) like any other response body.
//
// The direct path (sse_direct_write): a chunked HTTP/1.1 stream whose bytes no body filter
// changes is handed each event's frame already framed as a chunk in the zone, straight to
// nginx's last filter, the write filter, which writes it with one c->send_chain (TLS, limit_rate,
// $bytes_sent as for any response). The write filter keeps what the socket did not take in
// r->out, in order with whatever nginx's filters queued before and after (the last chunk at the
// end of the stream), so the two paths never interleave.
//
// A stream that cannot be given an event (no memory for its buffer) is ended, never skipped: its
// client reconnects with Last-Event-ID and is replayed what it missed.
#include <cstdlib>
#include <new>
#include <unordered_map>
#include <vector>

#include "fault_injection.h"
#include "guard.h"
#include "nginx/sse_module.h"
#include "protocol/channel_list.h"
#include "protocol/client_text.h"
#include "protocol/event_filter.h"
#include "protocol/event_frame.h"
#include "protocol/resume.h"
#include "redis/redis_link.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

// This worker's hold on an event whose bytes some of its streams have not sent yet: its bit in
// the event's `needed_by` (live delivery) or `pinned_by` (replay from history).
struct EventHold {
    ShmEvent* event;
    std::uint32_t frames;  // frames still pointing at the event's bytes
    bool replay;
    EventHold* next;  // in LocalIndex::free_holds
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
    ShmChannel* channel;
};

struct LocalChannel {
    ngx_queue_t members;
};

// One stream of this worker. Made in its request's pool, zeroed; whatever of it exists is
// undone by its pool cleanup, so it may fail at any step of its opening.
struct Subscriber {
    ngx_http_request_t* request;
    LocConf* conf;
    EventFilter* filter;    // nullptr: every event
    ShmSubscriber* record;  // in the zone, for every worker to see; nullptr when not registered
    Membership* memberships;
    std::size_t linked;      // memberships linked into the local index
    std::uint64_t last_seq;  // events up to this place in the delivery order were queued or predate the stream
    Frame* sent_head;        // frames given to nginx, oldest first, until consumed
    Frame* sent_tail;
    Frame* new_head;  // frames queued by the current delivery round
    Frame* new_tail;
    std::size_t sent_bytes;    // full length of the sent_* frames
    std::size_t new_bytes;     // of the new_* frames
    std::size_t queued_total;  // bytes ever given to nginx
    std::size_t replay_end;    // queued_total at the end of the replay: it may exceed sse_send_buffer
    ngx_queue_t all_link;      // in LocalIndex::all
    ngx_event_t heartbeat;
    ngx_event_t lifetime;  // sse_max_lifetime
    // With Redis, a stream resuming on a channel this node has not synced yet waits (in
    // LocalIndex::awaiting_sync) until it is, or until sse_redis_sync_timeout.
    ngx_event_t sync_wait;
    ngx_queue_t sync_link;
    ResumeRequest resume;
    ngx_str_t given_id;
    ngx_msec_t last_write;
    ngx_queue_t dirty_link;    // in LocalIndex::dirty while it has frames to flush
    ngx_queue_t closing_link;  // in LocalIndex::closing: to be ended after the events taken
    // What sse_clients shows of the stream, counted here and written to its record in the zone
    // within kCountsDelay (in LocalIndex::stale_counts until then).
    std::uint64_t events_sent;
    std::uint64_t bytes_sent;
    ngx_queue_t counts_link;
    bool counts_stale;
    bool direct;  // frames are chunks, written past the body filters (see the top of this file)
    bool in_all;
    bool awaiting_sync;
    bool dirty;
    bool closing;
    bool ending;   // the stream is being ended by us
    bool starved;  // an event could not be given to it: it ends, and its client resumes
};

// How many events one wake-up takes from the log at a time, into room reserved beforehand.
constexpr std::size_t kTakeBatch = 1024;

struct LocalIndex {
    std::unordered_map<ShmChannel*, LocalChannel> channels;
    std::unordered_map<ShmEvent*, EventHold*> replay_holds;  // one pin per event for all streams
    Frame* free_frames = nullptr;
    EventHold* free_holds = nullptr;
    std::vector<ShmEvent*> taken;
    // ctx_index of the body filters that, when active on a request (their context set), may change
    // its bytes: such a stream keeps nginx's filters.
    std::vector<ngx_uint_t> byte_filters;
    std::string heartbeat_chunk = chunked(kHeartbeatFrame);
    ngx_queue_t all;    // every stream of this worker, for shutdown
    ngx_queue_t dirty;  // streams with frames queued by a delivery round, not yet flushed
    ngx_queue_t awaiting_sync;
    ngx_queue_t closing;       // streams to end once the events taken before are queued
    ngx_queue_t stale_counts;  // streams whose figures in the zone are behind
    ngx_event_t write_counts;
    std::uint64_t kicks_seen = 0;
    ngx_event_t resume;   // continues flushing after the event loop has had its turn
    ngx_event_t collect;  // frees events whose last frame here was written, once per turn of the loop

    LocalIndex();
    ~LocalIndex();
};

namespace {

// The worker's index (WorkerContext::streams), for the functions of this file.
LocalIndex* local = nullptr;

void flush_dirty_streams();

// Under AddressSanitizer frames and holds are freed, not recycled, so that any use of one that
// should no longer be held is reported.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRecycleFrames = false;
#else
constexpr bool kRecycleFrames = true;
#endif

// A frame or hold from this worker's free list, or from malloc when the list is empty. The caller
// sets every field. `free_list` is null when the worker has no index (it is exiting).
template <typename T>
T* take_recycled(T** free_list) noexcept {
    if (kRecycleFrames && free_list != nullptr && *free_list != nullptr) {
        T* t = *free_list;
        *free_list = t->next;
        return t;
    }
    if (fault::allocation_fails()) return nullptr;
    return static_cast<T*>(std::malloc(sizeof(T)));
}

template <typename T>
void recycle(T* t, T** free_list) noexcept {
    if (!kRecycleFrames || free_list == nullptr) {
        std::free(t);
        return;
    }
    t->next = *free_list;
    *free_list = t;
}

Frame* get_frame() noexcept {
    Frame* f = take_recycled(local != nullptr ? &local->free_frames : nullptr);
    if (f == nullptr) return nullptr;
    ngx_memzero(f, sizeof(Frame));
    f->link.buf = &f->buf;
    return f;
}

// An event no stream here still needs to write: after a replay, another stream may hold it.
void unpin_unless_held(ShmEvent* ev) {
    if (local != nullptr && local->replay_holds.find(ev) != local->replay_holds.end()) return;
    Store::unpin_event(ev, ngx_uint_t(worker_context()->slot));
}

EventHold* get_hold(ShmEvent* ev, bool replay) noexcept {
    EventHold* hold = take_recycled(&local->free_holds);
    if (hold == nullptr) return nullptr;
    *hold = EventHold{ev, 0, replay, nullptr};
    return hold;
}

void drop_hold(EventHold* hold) {
    auto slot = ngx_uint_t(worker_context()->slot);
    if (hold->replay) {
        local->replay_holds.erase(hold->event);
        Store::unpin_event(hold->event, slot);
    } else {
        Store::release_event(hold->event, slot);
    }
    recycle(hold, &local->free_holds);
    // The event may be needed by nobody now: freed in this turn of the loop, not at the next
    // publish, so the zone returns to its baseline when streams go quiet.
    if (!local->collect.posted) {
        ngx_post_event(&local->collect, &ngx_posted_events);
    }
}

void put_frame(Frame* f) {
    if (f->hold != nullptr && --f->hold->frames == 0) drop_hold(f->hold);
    recycle(f, local != nullptr ? &local->free_frames : nullptr);
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

// Only once nginx holds none of them: at the end of the request (its pool cleanup).
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

// How late sse_clients may show a stream's figures: a store into the zone on every delivery
// costs more than the delivery's own bookkeeping.
constexpr ngx_msec_t kCountsDelay = 500;

// For sse_clients: what the stream was sent (the SSE bytes, whatever the transport adds).
void count_sent(Subscriber* s, const ShmEvent* ev) {
    s->events_sent++;
    s->bytes_sent += ev->frame_len;
    if (s->counts_stale) return;
    s->counts_stale = true;
    ngx_queue_insert_tail(&local->stale_counts, &s->counts_link);
    if (!local->write_counts.timer_set) ngx_add_timer(&local->write_counts, kCountsDelay);
}

// Into the stream's record (only this worker writes it).
void write_counts(Subscriber* s) {
    if (s->counts_stale) {
        ngx_queue_remove(&s->counts_link);
        s->counts_stale = false;
    }
    if (s->record == nullptr) return;
    __atomic_store_n(&s->record->events_sent, s->events_sent, __ATOMIC_RELAXED);
    __atomic_store_n(&s->record->bytes_sent, s->bytes_sent, __ATOMIC_RELAXED);
}

void write_stale_counts(ngx_event_t*) noexcept {
    guarded(ngx_cycle->log, "counting what streams were sent", [] {
        while (!ngx_queue_empty(&local->stale_counts)) {
            write_counts(ngx_queue_data(ngx_queue_head(&local->stale_counts), Subscriber, counts_link));
        }
    });
}

// Queues one event's frame on the stream, the frame pointing at the event's bytes in the zone,
// which `hold` keeps there until the frame is written: on the direct path, the frame's chunk.
void give_event(Subscriber* s, EventHold* hold, Frame* f, const ShmEvent* ev) {
    hold->frames++;
    f->hold = hold;
    if (s->direct) {
        fill_frame(f, ev->chunk(), ev->chunk_len());
    } else {
        fill_frame(f, ev->frame, ev->frame_len);
    }
    append_new(s, f);
    count_sent(s, ev);
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

void mark_dirty(Subscriber* s) {
    if (s->dirty) return;
    s->dirty = true;
    ngx_queue_insert_tail(&local->dirty, &s->dirty_link);
}

// The stream ends once the events taken before are queued (a closed channel, a starved stream).
void mark_closing(Subscriber* s) {
    if (s->closing) return;
    s->closing = true;
    ngx_queue_insert_tail(&local->closing, &s->closing_link);
}

// Takes a stream's link out of its queue if the flag says it is in one.
void leave_queue(bool& in_queue, ngx_queue_t* link) {
    if (!in_queue) return;
    ngx_queue_remove(link);
    in_queue = false;
}

// Takes the stream out of everything that would give it more to send: the local index and its
// record in the zone. Safe at any step of its opening, and more than once.
void unregister(Subscriber* s) {
    leave_queue(s->dirty, &s->dirty_link);
    leave_queue(s->counts_stale, &s->counts_link);  // its record goes
    leave_queue(s->closing, &s->closing_link);
    leave_queue(s->awaiting_sync, &s->sync_link);
    leave_queue(s->in_all, &s->all_link);
    for (std::size_t i = 0; i < s->linked; i++) {
        ngx_queue_remove(&s->memberships[i].link);
        auto it = local->channels.find(s->memberships[i].channel);
        if (it != local->channels.end() && ngx_queue_empty(&it->second.members)) local->channels.erase(it);
    }
    s->linked = 0;
    if (s->record == nullptr) return;
    ShmSubscriber* record = s->record;
    s->record = nullptr;
    WorkerContext* w = worker_context();
    if (w != nullptr && w->slot >= 0 && w->store.unsubscribe(record)) wake_redis_owner(w->store);
}

void cleanup_subscriber(void* data) noexcept {
    auto* s = static_cast<Subscriber*>(data);
    guarded(ngx_cycle->log, "releasing a stream", [&] {
        if (s->sync_wait.timer_set) ngx_del_timer(&s->sync_wait);
        if (s->heartbeat.timer_set) ngx_del_timer(&s->heartbeat);
        if (s->lifetime.timer_set) ngx_del_timer(&s->lifetime);
        release_all_frames(s);
        unregister(s);
        delete s->filter;
        s->filter = nullptr;
    });
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
    ngx_connection_t* c = r->connection;
    ngx_int_t rc = NGX_OK;
    if (!s->direct) {
        rc = ngx_http_output_filter(r, out);
    } else if (out != nullptr || c->buffered) {
        // Called with nothing to write, the write filter would log an alert (nginx's postpone
        // filter keeps such calls from it on the other path).
        rc = ngx_http_write_filter(r, out);
    }
    reclaim_sent(s);
    if (rc == NGX_ERROR) return rc;

    // What the socket did not take is sent when it becomes writable (as nginx's own writer
    // does): arm the write event, and time out a client that takes nothing for send_timeout.
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

// Ends a stream after what it has queued. From its own content handler (`in_handler`) the
// request is finalized there; from a wake-up or a timer, nginx may only post the finalization,
// so the posted requests are run too.
void end_stream(Subscriber* s, bool in_handler = false) {
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
    if (in_handler) {
        ngx_http_finalize_request(r, rc);
    } else {
        finalize_from_outside(r, rc);
    }
}

// Ends a stream that could not be given what it is owed (an event, or the rest of its replay):
// counted, and its client resumes from the last event it got.
void end_starved_stream(Subscriber* s, bool in_handler = false) {
    if (s->ending) return;
    ngx_log_error(NGX_LOG_ERR, s->request->connection->log, 0,
                  "sse: out of memory for what a stream is owed; ending it after what was queued so that its "
                  "client resumes");
    ngx_atomic_fetch_add(&worker_context()->store.header()->counters.streams_ended_out_of_memory, 1);
    s->starved = true;
    end_stream(s, in_handler);
}

// The frames stay with the request until its pool goes: under HTTP/2 the stream's close waits
// for DATA frames that still point at their bytes.
void drop_slow(Subscriber* s) {
    ngx_http_request_t* r = s->request;
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "sse: client too slow, %uz bytes unsent exceed sse_send_buffer %uz; closing the stream",
                  unsent_bytes(s) + s->new_bytes, s->conf->send_buffer);
    ngx_atomic_fetch_add(&worker_context()->store.header()->counters.slow_disconnects, 1);
    s->ending = true;
    if (s->heartbeat.timer_set) ngx_del_timer(&s->heartbeat);
    if (s->lifetime.timer_set) ngx_del_timer(&s->lifetime);
    unregister(s);
    r->connection->error = 1;
    finalize_from_outside(r, NGX_HTTP_CLOSE);
}

void write_handler(ngx_http_request_t* r) noexcept {
    guarded(r->connection->log, "writing a stream", [&] {
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
    });
}

// Queues bytes of our own (preamble, heartbeat, reset) as they are: on the direct path, framed
// by the caller; false when there is no memory for the buffer, and the stream must end.
bool send_own_bytes(Subscriber* s, const u_char* data, std::size_t len) {
    Frame* f = get_frame();
    if (f == nullptr) return false;
    fill_frame(f, const_cast<u_char*>(data), len);
    append_new(s, f);
    return true;
}

// Copies a frame of our own into the request's pool (on the direct path, framed there as a
// chunk) and queues it.
bool send_own_copy(Subscriber* s, const std::string& frame) {
    std::size_t size = s->direct ? chunk_head_size(frame.size()) + frame.size() + kChunkTail.size() : frame.size();
    auto* bytes = static_cast<u_char*>(fault::allocation_fails() ? nullptr : ngx_pnalloc(s->request->pool, size));
    if (bytes == nullptr) return false;
    auto* p = reinterpret_cast<char*>(bytes);
    if (s->direct) p = write_chunk_head(p, frame.size());
    p = reinterpret_cast<char*>(ngx_cpymem(p, frame.data(), frame.size()));
    if (s->direct) ngx_memcpy(p, kChunkTail.data(), kChunkTail.size());
    return send_own_bytes(s, bytes, size);
}

bool send_heartbeat(Subscriber* s) {
    if (s->direct) {
        const std::string& chunk = local->heartbeat_chunk;
        return send_own_bytes(s, reinterpret_cast<const u_char*>(chunk.data()), chunk.size());
    }
    return send_own_bytes(s, reinterpret_cast<const u_char*>(kHeartbeatFrame.data()), kHeartbeatFrame.size());
}

// Whether the stream's bytes reach the socket as we give them but for the chunked framing:
// HTTP/1.1, chunked, with no body filter active that could change them (gzip shows itself in
// the header too) and nothing held above the write filter. Decided once, when the header and
// the first bytes have gone through the filters; only sse_direct_write off covers a body
// filter of a third-party module not listed in kByteFilters.
bool direct_possible(ngx_http_request_t* r) {
    if (r->http_version != NGX_HTTP_VERSION_11 || !r->chunked || r->header_only) return false;
#if (NGX_HTTP_V2)
    if (r->stream != nullptr) return false;
#endif
    if (r->headers_out.content_encoding != nullptr && r->headers_out.content_encoding->hash != 0) return false;
    if (r->buffered || r->postponed != nullptr || r->connection->data != r) return false;
    for (ngx_uint_t index : local->byte_filters) {
        if (r->ctx[index] != nullptr) return false;
    }
    return true;
}

// Queues what the store planned for a new stream: the reset event, then the replayed events,
// whose pins become this worker's holds (so the stream's cleanup releases them whatever
// happens). False when something could not be queued: every pin of the plan is released
// then, and the stream must end (its client resumes from the last event it got).
// Releases the pins a plan still holds on its replay from `next` on.
void release_plan(const ResumePlan& plan, std::size_t next) {
    for (; next < plan.replay.size(); next++) unpin_unless_held(plan.replay[next]);
}

bool queue_resume(Subscriber* s, const ResumePlan& plan, std::string_view given_id) {
    for (ShmEvent* ev : plan.unpin) unpin_unless_held(ev);
    ngx_http_request_t* r = s->request;
    StoreCounters& counters = worker_context()->store.header()->counters;
    std::size_t next = 0;  // plan.replay[next...] are still pinned by the plan alone
    auto give_up = [&] {
        release_plan(plan, next);
        return false;
    };
    if (plan.reset != ResetReason::kNone) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: cannot resume exactly after id %s (%*s); replaying what is retained",
                      quoted_bytes(given_id).c_str(), reset_reason_name(plan.reset).size(),
                      reset_reason_name(plan.reset).data());
        if (s->conf->reset_event.len > 0) {
            if (!send_own_copy(s, reset_frame(to_view(s->conf->reset_event), given_id, plan.reset))) return give_up();
            ngx_atomic_fetch_add(&counters.resets, 1);
        }
    }
    LocalIndex& li = *local;
    std::size_t replayed = 0;
    for (; next < plan.replay.size(); next++) {
        ShmEvent* ev = plan.replay[next];
        if (s->filter != nullptr && !s->filter->matches(ev->name())) {
            unpin_unless_held(ev);
            continue;
        }
        EventHold* hold = nullptr;
        auto found = li.replay_holds.find(ev);
        if (found != li.replay_holds.end()) hold = found->second;
        Frame* f = get_frame();
        if (f != nullptr && hold == nullptr) {
            hold = get_hold(ev, true);
            try {
                if (hold != nullptr) li.replay_holds.emplace(ev, hold);
            } catch (...) {
                recycle(hold, &local->free_holds);
                hold = nullptr;
            }
        }
        if (hold == nullptr) {
            if (f != nullptr) put_frame(f);
            return give_up();
        }
        if (f == nullptr) return give_up();
        give_event(s, hold, f, ev);
        replayed++;
    }
    s->replay_end = s->new_bytes;
    if (replayed) ngx_atomic_fetch_add(&counters.events_replayed, replayed);
    return true;
}

// Plans a stream that waited for its channels' history from Redis: from what this node has now.
void finish_sync_wait(Subscriber* s) {
    if (!s->awaiting_sync) return;
    ngx_queue_remove(&s->sync_link);
    s->awaiting_sync = false;
    if (s->sync_wait.timer_set) ngx_del_timer(&s->sync_wait);
    WorkerContext* w = worker_context();
    ResumePlan plan;
    bool queued = false;
    try {
        w->store.plan_resume(ngx_uint_t(w->slot), s->record, s->resume, s->last_seq, plan);
        queued = queue_resume(s, plan, to_view(s->given_id));
    } catch (const std::bad_alloc&) {
        queued = false;
    }
    if (!queued) {
        end_starved_stream(s);
        return;
    }
    mark_dirty(s);
}

void sync_wait_expired(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    guarded(ngx_cycle->log, "resuming a stream", [&] {
        ngx_log_error(NGX_LOG_INFO, s->request->connection->log, 0,
                      "sse: redis did not send the channels' history within sse_redis_sync_timeout; resuming from this "
                      "node's own");
        finish_sync_wait(s);
        flush_dirty_streams();
    });
}

void heartbeat_handler(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    guarded(ngx_cycle->log, "sending a heartbeat", [&] {
        if (s->ending) return;
        ngx_msec_t interval = s->conf->heartbeat;
        ngx_msec_t idle = ngx_current_msec - s->last_write;
        if (idle + 10 >= interval) {  // timers fire a little early or late; 10 ms is "now"
            if (!send_heartbeat(s)) {
                end_starved_stream(s);
                return;
            }
            if (flush(s) == NGX_ERROR) {
                s->ending = true;
                finalize_from_outside(s->request, NGX_ERROR);
                return;
            }
            idle = 0;
        }
        ngx_add_timer(&s->heartbeat, interval - idle);
    });
}

// sse_max_lifetime: the stream ends cleanly; EventSource reconnects with Last-Event-ID.
void lifetime_handler(ngx_event_t* ev) noexcept {
    auto* s = static_cast<Subscriber*>(ev->data);
    guarded(ngx_cycle->log, "ending a stream", [&] {
        if (s->ending) return;
        ngx_log_error(NGX_LOG_INFO, s->request->connection->log, 0, "sse: stream reached sse_max_lifetime, ending it");
        end_stream(s);
    });
}

void add_header(ngx_http_request_t* r, const char* key, const char* value) {
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) return;
    h->hash = 1;
#if nginx_version >= 1023000
    h->next = nullptr;  // nginx 1.23 links headers of one name; a pushed element is not zeroed
#endif
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
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "sse: stream refused: sse_max_subscribers %uD reached",
                          limits.max_total);
            add_header(r, "Retry-After", kLimitRetryAfter);
            return send_text(
                r, NGX_HTTP_SERVICE_UNAVAILABLE,
                "too many subscribers: the limit of " + std::to_string(limits.max_total) + " streams is reached");
        case SubscribeRefusal::kPerKey:
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "sse: stream refused: key %s already holds sse_max_subscribers_per_key %uD streams",
                          quoted_bytes(limits.key).c_str(), limits.max_per_key);
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

// ---- Opening a stream: read and check the request, admit it through the store, start it ----

// A step of reading the request that did not answer it; any other value is the handler's.
constexpr ngx_int_t kGoOn = NGX_DECLINED;

// What a stream asks for, read and checked before anything is registered. Not moved: the
// store request's names view the strings below.
struct StreamRequest {
    SubscribeRequest store;
    std::string user_channel;
    std::string client_channel;
    EventFilter filter;
    ngx_str_t given_id = ngx_null_string;
    ngx_str_t user = ngx_null_string;
};

ngx_int_t refuse(ngx_http_request_t* r, ngx_uint_t status, const std::string& reason) {
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: subscribe refused: %s", reason.c_str());
    return send_text(r, status, reason);
}

// sse_redis names a cluster's seeds, or its one server turned out to be a cluster node.
bool follows_redis_cluster(ngx_http_request_t* r) {
    auto* mcf = static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_sse_module));
    if (mcf->redis == nullptr) return false;
    return mcf->redis->seeds_a_cluster() || __atomic_load_n(&mcf->store_header->cluster.sharded, __ATOMIC_RELAXED);
}

ngx_int_t read_channels(ngx_http_request_t* r, LocConf* conf, StreamRequest& req) {
    ngx_str_t text;
    if (evaluate_channel_list(r, conf->subscribe, text) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    std::string reason;
    if (!parse_channel_list(to_view(text), conf->max_channels, req.store.names, reason, conf->subscribe_patterns)) {
        return refuse(r, NGX_HTTP_BAD_REQUEST, reason);
    }
    if (conf->subscribe_patterns && follows_redis_cluster(r)) {
        for (std::string_view name : req.store.names) {
            // Sharded pub/sub has no patterns, and a pattern's channels lie in every shard.
            if (is_channel_pattern(name)) {
                return refuse(r, NGX_HTTP_BAD_REQUEST, "channel patterns cannot be used with Redis Cluster");
            }
        }
    }
    return kGoOn;
}

// sse_subscribe_allow: every channel asked for must be allowed, or nothing is subscribed. Only
// a `*` written at the end of a pattern in the configuration is a wildcard: the bytes of its
// variables are literal (a user id of `b*` must not open `user:bob`).
ngx_int_t check_allowed(ngx_http_request_t* r, LocConf* conf, const std::vector<std::string_view>& names) {
    if (conf->allow == nullptr) return kGoOn;
    std::vector<ngx_str_t> patterns(conf->allow->nelts);
    std::vector<bool> wildcard(conf->allow->nelts);
    auto* cvs = static_cast<ngx_http_complex_value_t*>(conf->allow->elts);
    for (ngx_uint_t i = 0; i < conf->allow->nelts; i++) {
        if (ngx_http_complex_value(r, &cvs[i], &patterns[i]) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        std::string_view written = to_view(cvs[i].value);
        wildcard[i] = !written.empty() && written.back() == '*';
    }
    for (std::string_view name : names) {
        bool allowed = false;
        for (std::size_t i = 0; i < patterns.size() && !allowed; i++) {
            allowed = wildcard[i] ? channel_allowed_by(to_view(patterns[i]), name) : to_view(patterns[i]) == name;
        }
        if (allowed) continue;
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: subscribe refused: channel %s is not allowed by sse_subscribe_allow",
                      quoted_bytes(name).c_str());
        return send_text(r, NGX_HTTP_FORBIDDEN, "channel " + quoted_bytes(name) + " is not allowed here");
    }
    return kGoOn;
}

// Who the stream is: its client id, its user key, and the channels that reach it by them.
ngx_int_t read_identity(ngx_http_request_t* r, LocConf* conf, WorkerContext* w, StreamRequest& req) {
    req.store.identity.client_id = w->store.new_client_id();
    req.store.identity.remote_addr = to_view(r->connection->addr_text);
    if (conf->user != nullptr) {
        if (ngx_http_complex_value(r, conf->user, &req.user) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        std::string problem = user_key_problem(to_view(req.user));
        if (!problem.empty()) return refuse(r, NGX_HTTP_BAD_REQUEST, problem);
        req.store.identity.user = to_view(req.user);
        if (req.user.len > 0) req.user_channel = user_channel(to_view(req.user));
    }
    if (conf->client_channel) req.client_channel = client_channel(req.store.identity.client_id);
    // Added once the strings are final: the names view them.
    if (!req.user_channel.empty()) req.store.names.push_back(req.user_channel);
    if (!req.client_channel.empty()) req.store.names.push_back(req.client_channel);
    return kGoOn;
}

// The event types the stream keeps: a bad list is a 400.
ngx_int_t read_filter(ngx_http_request_t* r, LocConf* conf, StreamRequest& req) {
    if (conf->event_filter == nullptr) return kGoOn;
    ngx_str_t types;
    if (ngx_http_complex_value(r, conf->event_filter, &types) != NGX_OK || !url_decode(r, types)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    std::string reason;
    if (!req.filter.parse(to_view(types), reason)) return refuse(r, NGX_HTTP_BAD_REQUEST, reason);
    return kGoOn;
}

// The position a reconnecting client sends: the Last-Event-ID header, else the last_event_id
// query argument (a page that reloads cannot set the header).
bool resume_position(ngx_http_request_t* r, ngx_str_t& value) {
    if (request_header(r, "Last-Event-ID", value) && value.len > 0) return true;
    if (query_arg(r, "last_event_id", value) && value.len > 0) return url_decode(r, value);
    return false;
}

void read_resume(ngx_http_request_t* r, LocConf* conf, StreamRequest& req) {
    ResumeRequest& resume = req.store.resume;
    if (resume_position(r, req.given_id)) {
        resume.kind =
            parse_event_id(to_view(req.given_id), resume.after) ? ResumeRequest::kAfterId : ResumeRequest::kMalformed;
    } else {
        resume.replay = std::uint32_t(conf->replay);
    }
}

ngx_int_t read_limits(ngx_http_request_t* r, LocConf* conf, StreamRequest& req) {
    req.store.limits.max_total = std::uint32_t(conf->max_subscribers);
    if (conf->limit_key == nullptr) return kGoOn;
    ngx_str_t key;
    if (ngx_http_complex_value(r, conf->limit_key, &key) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    // Keys longer than this are cut: they identify, they need not be whole.
    req.store.limits.key = to_view(key).substr(0, 256);
    req.store.limits.max_per_key = std::uint32_t(conf->max_per_key);
    return kGoOn;
}

// Reads and checks everything a stream asks for; kGoOn, or the answer already sent.
ngx_int_t read_stream_request(ngx_http_request_t* r, LocConf* conf, WorkerContext* w, StreamRequest& req) {
    ngx_int_t rc = read_channels(r, conf, req);
    if (rc == kGoOn) rc = check_allowed(r, conf, req.store.names);
    if (rc == kGoOn) rc = read_identity(r, conf, w, req);
    if (rc == kGoOn) rc = read_filter(r, conf, req);
    if (rc == kGoOn) rc = read_limits(r, conf, req);
    if (rc == kGoOn) read_resume(r, conf, req);
    return rc;
}

// Links a registered stream into this worker's index of streams by channel.
void link_locally(Subscriber* s) {
    LocalIndex& li = *local;
    for (std::uint32_t i = 0; i < s->record->nchannels; i++) {
        Membership& m = s->memberships[i];
        m.subscriber = s;
        m.channel = s->record->channels[i];
        auto [it, added] = li.channels.try_emplace(m.channel);
        if (added) {
            ngx_queue_init(&it->second.members);
        }
        ngx_queue_insert_tail(&it->second.members, &m.link);
        s->linked = i + 1;
    }
    ngx_queue_insert_tail(&li.all, &s->all_link);
    s->in_all = true;
}

void wait_for_sync(Subscriber* s, const StreamRequest& req) {
    ngx_http_request_t* r = s->request;
    s->resume = req.store.resume;
    s->given_id = req.given_id;
    s->awaiting_sync = true;
    ngx_queue_insert_tail(&local->awaiting_sync, &s->sync_link);
    s->sync_wait.handler = sync_wait_expired;
    s->sync_wait.data = s;
    s->sync_wait.log = r->connection->log;
    s->sync_wait.cancelable = 1;
    auto* mcf = static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_sse_module));
    ngx_add_timer(&s->sync_wait, mcf->redis_sync_timeout);
}

void arm_timers(Subscriber* s) {
    LocConf* conf = s->conf;
    ngx_log_t* log = s->request->connection->log;
    if (conf->max_lifetime > 0) {
        ngx_msec_t jitter = conf->lifetime_jitter ? ngx_msec_t(ngx_random()) % (conf->lifetime_jitter + 1) : 0;
        s->lifetime.handler = lifetime_handler;
        s->lifetime.data = s;
        s->lifetime.log = log;
        s->lifetime.cancelable = 1;
        ngx_add_timer(&s->lifetime, conf->max_lifetime - jitter);
    }
    if (conf->heartbeat > 0) {
        s->heartbeat.handler = heartbeat_handler;
        s->heartbeat.data = s;
        s->heartbeat.log = log;
        s->heartbeat.cancelable = 1;  // must not keep a retiring worker alive
        ngx_add_timer(&s->heartbeat, conf->heartbeat);
    }
}

// The stream's first bytes: the preamble, the connected event, then what the plan replays.
// False when they could not all be queued (the plan's pins are released then).
bool queue_first_bytes(Subscriber* s, StreamRequest& req, SubscribeOutcome& out) {
    LocConf* conf = s->conf;
    long retry = conf->retry == NGX_CONF_UNSET_MSEC ? -1 : long(conf->retry);
    std::string preamble(stream_preamble_size(retry), '\0');
    write_stream_preamble(preamble.data(), retry);
    bool queued = send_own_copy(s, preamble);
    if (queued && conf->connected_event.len > 0) {
        queued = send_own_copy(
            s, connected_frame(to_view(conf->connected_event), req.store.identity.client_id, req.store.identity.user));
    }
    if (out.plan.deferred) {
        if (queued) wait_for_sync(s, req);
        return queued;
    }
    if (!queued) {
        for (ShmEvent* ev : out.plan.unpin) unpin_unless_held(ev);
        release_plan(out.plan, 0);
        return false;
    }
    return queue_resume(s, out.plan, to_view(req.given_id));
}

// Admits the stream through the store and starts it. The pool cleanup is armed first: it
// undoes whatever exists of the stream, whichever step fails.
ngx_int_t open_stream(ngx_http_request_t* r, LocConf* conf, WorkerContext* w, StreamRequest& req) {
    auto* s = static_cast<Subscriber*>(ngx_pcalloc(r->pool, sizeof(Subscriber)));
    if (s != nullptr) {
        s->memberships = static_cast<Membership*>(ngx_palloc(r->pool, req.store.names.size() * sizeof(Membership)));
    }
    ngx_pool_cleanup_t* cln = s != nullptr && s->memberships != nullptr ? ngx_pool_cleanup_add(r->pool, 0) : nullptr;
    if (cln == nullptr || fault::allocation_fails()) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    s->request = r;
    s->conf = conf;
    cln->handler = cleanup_subscriber;
    cln->data = s;
    if (!req.filter.empty()) s->filter = new EventFilter(std::move(req.filter));

    req.store.slot = ngx_uint_t(w->slot);
    req.store.defer_unsynced = redis_connected(w->store);
    SubscribeOutcome out = w->store.subscribe(req.store, r->connection->log);
    if (out.record == nullptr) return refuse_stream(r, out.refusal, req.store.limits);
    s->record = out.record;
    s->last_seq = out.start_after;
    if (out.new_channels) wake_redis_owner(w->store);
    // A replay cut short (no memory for the rest) is still sent, and the stream then ends: its
    // client resumes from the last event it got, so it makes progress however far behind it is.
    bool complete = queue_first_bytes(s, req, out);
    if (!complete && s->new_head == nullptr) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: out of memory starting a stream");
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "the stream cannot be started now; retry");
    }
    link_locally(s);
    ngx_http_set_ctx(r, s, ngx_http_sse_module);

    ngx_int_t rc = send_stream_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) return rc;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = write_handler;
    r->main->count++;
    // A client that closed its side while its request was being read: that (edge-triggered)
    // event came before this handler was set, and no other will come. Without this check the
    // stream would stay open until something is written to it (never, with sse_heartbeat off).
    bool http2 = false;
#if (NGX_HTTP_V2)
    http2 = r->stream != nullptr;
#endif
    if (!http2 && r->connection->read->ready) {
        ngx_post_event(r->connection->read, &ngx_posted_events);
    }
    if (!complete) {
        end_starved_stream(s, true);
        return NGX_DONE;
    }
    if (flush(s) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }
    s->direct = conf->direct_write && direct_possible(r);
    arm_timers(s);
    return NGX_DONE;
}

ngx_int_t subscribe(ngx_http_request_t* r) {
    auto* conf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        add_header(r, "Allow", "GET, HEAD");
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "an event stream is read with GET");
    }
    if (r != r->main) return send_text(r, NGX_HTTP_BAD_REQUEST, "an event stream cannot be a subrequest");
    // EventSource sends no body. nginx could drop one as it comes in, but until it has, the
    // request's read handler is nginx's and not the stream's: a client that then went away would
    // go unnoticed, and with sse_heartbeat off its stream would stay open for good.
    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return send_text(r, NGX_HTTP_BAD_REQUEST, "an event stream request cannot have a body");
    }
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0 || w->shutting_down) {
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "this worker is not serving event streams");
    }
    StreamRequest req;
    ngx_int_t rc = read_stream_request(r, conf, w, req);
    if (rc != kGoOn) return rc;
    if (r->method == NGX_HTTP_HEAD) {
        rc = send_stream_header(r);
        return rc == NGX_ERROR || rc > NGX_OK ? rc : ngx_http_send_special(r, NGX_HTTP_LAST);
    }
    return open_stream(r, conf, w, req);
}

}  // namespace

ngx_int_t subscribe_handler(ngx_http_request_t* r) noexcept {
    return guarded(r->connection->log, "setting up a stream", ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR),
                   [&] { return subscribe(r); });
}

namespace {

// Flushes the queued frames of a batch of streams. A worker with thousands of streams does
// not hold its event loop for the whole round: the rest waits until the loop has taken new
// events (a publish served by this worker is answered in between).
constexpr ngx_uint_t kFlushBatch = 256;

void flush_dirty_streams() {
    LocalIndex& li = *local;
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
    guarded(ngx_cycle->log, "flushing streams", [] { flush_dirty_streams(); });
}

void collect_released(ngx_event_t*) noexcept {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0) return;
    guarded(ngx_cycle->log, "freeing events", [&] { w->store.collect(); });
}

// Streams waiting for Redis's history go on once their channels are synced (or the link is
// down: then there is nothing to wait for).
void resume_synced_streams(WorkerContext& w) {
    if (ngx_queue_empty(&local->awaiting_sync)) return;
    bool connected = redis_connected(w.store);
    ngx_queue_t* q = ngx_queue_head(&local->awaiting_sync);
    while (q != ngx_queue_sentinel(&local->awaiting_sync)) {
        Subscriber* s = ngx_queue_data(q, Subscriber, sync_link);
        q = ngx_queue_next(q);  // ending one stream frees no other
        if (!connected || w.store.synced(s->record)) finish_sync_wait(s);
    }
}

// Streams sse_clients asked to disconnect.
void end_kicked_streams(WorkerContext& w) {
    ngx_uint_t slot = ngx_uint_t(w.slot);
    std::uint64_t kicks = __atomic_load_n(&w.store.header()->slots[slot].kicks, __ATOMIC_ACQUIRE);
    if (kicks == local->kicks_seen) return;
    local->kicks_seen = kicks;
    ngx_queue_t* q = ngx_queue_head(&local->all);
    while (q != ngx_queue_sentinel(&local->all)) {
        Subscriber* s = ngx_queue_data(q, Subscriber, all_link);
        q = ngx_queue_next(q);
        if (s->record != nullptr && s->record->kicked) end_stream(s);
    }
}

// Gives one event to every local stream on its channels. Allocates nothing that can throw: a
// stream whose buffer cannot be had is ended after the round (and its client resumes).
void deliver_event(ShmEvent* ev, ngx_uint_t slot, StoreCounters& counters, bool& released) {
    LocalIndex& li = *local;
    if (ev->kind == kEventCloseChannel) {
        auto it = li.channels.find(ev->channel(0));
        if (it != li.channels.end()) {
            for (ngx_queue_t* q = ngx_queue_head(&it->second.members); q != ngx_queue_sentinel(&it->second.members);
                 q = ngx_queue_next(q)) {
                mark_closing((ngx_queue_data(q, Membership, link))->subscriber);
            }
        }
        Store::release_event(ev, slot);
        released = true;
        return;
    }
    EventHold* hold = nullptr;
    ngx_uint_t delivered = 0;
    for (std::uint32_t i = 0; i < ev->nchannels; i++) {
        auto it = li.channels.find(ev->channel(i));
        if (it == li.channels.end()) continue;
        for (ngx_queue_t* q = ngx_queue_head(&it->second.members); q != ngx_queue_sentinel(&it->second.members);
             q = ngx_queue_next(q)) {
            Subscriber* s = (ngx_queue_data(q, Membership, link))->subscriber;
            // A stream on several of the event's channels takes it once.
            if (s->ending || s->starved || s->last_seq >= ev->seq) continue;
            s->last_seq = ev->seq;
            if (s->filter != nullptr && !s->filter->matches(ev->name())) continue;
            Frame* f = get_frame();
            if (f != nullptr && hold == nullptr) {
                hold = get_hold(ev, false);
                if (hold == nullptr) {
                    put_frame(f);
                    f = nullptr;
                }
            }
            if (f == nullptr) {
                s->starved = true;
                mark_closing(s);
                continue;
            }
            give_event(s, hold, f, ev);
            delivered++;
            mark_dirty(s);
        }
    }
    if (hold == nullptr) {
        Store::release_event(ev, slot);
        released = true;
    }
    if (delivered) ngx_atomic_fetch_add(&counters.events_delivered, delivered);
}

// Streams of a closed channel, and starved ones, end after the events before (end_stream
// flushes what they have queued).
void end_closing_streams() {
    while (!ngx_queue_empty(&local->closing)) {
        Subscriber* s = ngx_queue_data(ngx_queue_head(&local->closing), Subscriber, closing_link);
        ngx_queue_remove(&s->closing_link);
        s->closing = false;
        if (s->starved) {
            end_starved_stream(s);
        } else {
            end_stream(s);
        }
    }
}

void deliver_round(WorkerContext& w) {
    ngx_uint_t slot = ngx_uint_t(w.slot);
    StoreHeader* hdr = w.store.header();
    // Clear before reading the log: a publish after this point wakes us again.
    __atomic_store_n(&hdr->slots[slot].wake_pending, 0, __ATOMIC_SEQ_CST);
    resume_synced_streams(w);
    end_kicked_streams(w);
    bool released = false;
    for (bool all_taken = false; !all_taken && local->taken.capacity() > 0;) {
        all_taken = w.store.take_events(slot, local->taken);
        for (ShmEvent* ev : local->taken) deliver_event(ev, slot, hdr->counters, released);
        local->taken.clear();
        end_closing_streams();
    }
    flush_dirty_streams();
    if (released) w.store.collect();
}

}  // namespace

void deliver_to_local_subscribers() noexcept {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0 || local == nullptr) return;
    guarded(ngx_cycle->log, "delivering events", [&] { deliver_round(*w); });
}

// nginx's body filters that may change a response's bytes, and the scripting modules' (which
// may run one), by name: a module absent from this nginx is simply not found.
constexpr const char* kByteFilters[] = {
    "ngx_http_gzip_filter_module", "ngx_http_gunzip_filter_module",  "ngx_http_ssi_filter_module",
    "ngx_http_sub_filter_module",  "ngx_http_charset_filter_module", "ngx_http_addition_filter_module",
    "ngx_http_xslt_filter_module", "ngx_http_image_filter_module",   "ngx_http_lua_module",
    "ngx_http_js_module",          "ngx_http_perl_module",
};

LocalIndex::LocalIndex() {
    taken.reserve(kTakeBatch);
    for (ngx_uint_t i = 0; i < ngx_cycle->modules_n; i++) {
        const ngx_module_t* m = ngx_cycle->modules[i];
        if (m == nullptr || m->type != NGX_HTTP_MODULE || m->name == nullptr) continue;
        for (const char* name : kByteFilters) {
            if (ngx_strcmp(m->name, name) == 0) byte_filters.push_back(m->ctx_index);
        }
    }
    ngx_queue_init(&stale_counts);
    ngx_memzero(&write_counts, sizeof(write_counts));
    write_counts.handler = write_stale_counts;
    write_counts.log = ngx_cycle->log;
    write_counts.cancelable = 1;  // must not keep a retiring worker alive
    ngx_queue_init(&all);
    ngx_queue_init(&dirty);
    ngx_queue_init(&awaiting_sync);
    ngx_queue_init(&closing);
    ngx_memzero(&resume, sizeof(resume));
    resume.handler = resume_flushing;
    resume.log = ngx_cycle->log;
    ngx_memzero(&collect, sizeof(collect));
    collect.handler = collect_released;
    collect.log = ngx_cycle->log;
}

LocalIndex::~LocalIndex() {
    for (Frame* f = free_frames; f != nullptr;) {
        Frame* next = f->next;
        std::free(f);
        f = next;
    }
    for (EventHold* h = free_holds; h != nullptr;) {
        EventHold* next = h->next;
        std::free(h);
        h = next;
    }
    if (write_counts.timer_set) ngx_del_timer(&write_counts);
    // ngx_delete_posted_event is two statements: braces, always.
    if (resume.posted) {
        ngx_delete_posted_event(&resume);
    }
    if (collect.posted) {
        ngx_delete_posted_event(&collect);
    }
}

LocalIndex* create_local_index() {
    local = new LocalIndex();
    return local;
}

// At the worker's exit. Streams still open then (a fast shutdown) are not released one by one:
// the process ends.
void destroy_local_index(LocalIndex* index) noexcept {
    if (index == local) local = nullptr;
    delete index;
}

void end_local_streams() noexcept {
    if (local == nullptr) return;
    guarded(ngx_cycle->log, "ending streams", [] {
        ngx_queue_t* q = ngx_queue_head(&local->all);
        while (q != ngx_queue_sentinel(&local->all)) {
            Subscriber* s = ngx_queue_data(q, Subscriber, all_link);
            q = ngx_queue_next(q);  // ending one stream frees no other
            end_stream(s);
        }
    });
}

}  // namespace sse
