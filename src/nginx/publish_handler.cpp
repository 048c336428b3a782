// sse_publish: POST/PUT stores events (formatted once, into the zone) and wakes the workers
// that have subscribers on their channels; it never waits for delivery. GET reports a
// channel's state, DELETE closes it. Works as a subrequest too (mirror, and any module that
// makes subrequests), the body then being the main request's.
#include <string>
#include <vector>

#include "fault_injection.h"
#include "guard.h"
#include "nginx/sse_module.h"
#include "protocol/channel_list.h"
#include "protocol/client_text.h"
#include "protocol/event_frame.h"
#include "protocol/publish_body.h"
#include "protocol/resume.h"
#include "protocol/utf8.h"
#include "redis/redis_entry.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

// The event name: the X-SSE-Event header, else the "event" query argument (URL-decoded).
bool event_name(ngx_http_request_t* r, ngx_str_t& name, std::string& reason) {
    name.len = 0;
    name.data = nullptr;
    if (!request_header(r, "X-SSE-Event", name)) {
        if (query_arg(r, "event", name) && !url_decode(r, name)) {
            reason = "out of memory";
            return false;
        }
    }
    std::string_view v = to_view(name);
    if (v.size() > kMaxEventNameLength) {
        reason = "event name longer than 128 bytes";
        return false;
    }
    if (!is_valid_event_name(v)) {
        reason = "event name contains CR or LF";
        return false;
    }
    if (!is_valid_utf8(v)) {
        reason = "event name is not valid UTF-8";
        return false;
    }
    return true;
}

bool is_batch(ngx_http_request_t* r) {
    if (r->headers_in.content_type == nullptr) return false;
    std::string_view type = to_view(r->headers_in.content_type->value);
    std::string_view want = "text/event-stream";
    if (type.size() < want.size()) return false;
    if (ngx_strncasecmp(reinterpret_cast<u_char*>(const_cast<char*>(type.data())),
                        reinterpret_cast<u_char*>(const_cast<char*>(want.data())), want.size()) != 0) {
        return false;
    }
    return type.size() == want.size() || type[want.size()] == ';' || type[want.size()] == ' ';
}

// Bytes of one buffer of a request body: in a file, or in memory (where an empty buffer, as a
// chunked body's last one, may have no memory at all).
size_t body_buffer_size(const ngx_buf_t* b) {
    if (b->in_file) return size_t(b->file_last - b->file_pos);
    return b->pos == nullptr ? 0 : size_t(b->last - b->pos);
}

// The request body as one contiguous piece, whatever shape nginx hands it in (one buffer,
// several, some empty, chunked, HTTP/2 DATA frames, a temporary file); a body nginx buffered
// to a file is read back.
bool request_body(ngx_http_request_t* r, std::string_view& body) {
    body = {};
    if (r->request_body == nullptr || r->request_body->bufs == nullptr) return true;
    ngx_chain_t* bufs = r->request_body->bufs;
    size_t total = 0;
    ngx_buf_t* only = nullptr;  // the one buffer holding bytes, when it is in memory
    size_t holding = 0;
    for (ngx_chain_t* cl = bufs; cl; cl = cl->next) {
        size_t n = body_buffer_size(cl->buf);
        total += n;
        if (n > 0) {
            holding++;
            only = cl->buf;
        }
    }
    if (total == 0) return true;
    if (holding == 1 && !only->in_file) {
        body = {reinterpret_cast<const char*>(only->pos), total};
        return true;
    }
    auto* data = static_cast<u_char*>(fault::allocation_fails() ? nullptr : ngx_pnalloc(r->pool, total));
    if (data == nullptr) return false;
    u_char* p = data;
    for (ngx_chain_t* cl = bufs; cl; cl = cl->next) {
        ngx_buf_t* b = cl->buf;
        size_t len = body_buffer_size(b);
        if (len == 0) continue;
        if (b->in_file) {
            ssize_t n = ngx_read_file(b->file, p, len, b->file_pos);
            if (n != ssize_t(len)) return false;
            p += len;
        } else {
            p = ngx_cpymem(p, b->pos, len);
        }
    }
    body = {reinterpret_cast<const char*>(data), total};
    return true;
}

ngx_int_t publish_body(ngx_http_request_t* r, const std::vector<std::string_view>& channels) {
    WorkerContext* w = worker_context();
    std::string reason;
    ngx_str_t name;
    if (!event_name(r, name, reason)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: publish refused: %s", reason.c_str());
        return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
    }
    std::string_view body;
    if (!request_body(r, body)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: cannot read the buffered request body");
        return send_text(r, NGX_HTTP_INTERNAL_SERVER_ERROR, "cannot read the request body");
    }
    if (!is_valid_utf8(body)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: publish refused: data is not valid UTF-8");
        return send_text(r, NGX_HTTP_BAD_REQUEST, "event data is not valid UTF-8");
    }

    std::vector<BatchEvent> batch;
    std::vector<EventInput> events;
    if (is_batch(r)) {
        if (!parse_event_stream_batch(body, batch, reason)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: publish refused: %s", reason.c_str());
            return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
        }
        events.reserve(batch.size());
        for (const BatchEvent& e : batch) {
            events.push_back({e.name.empty() ? to_view(name) : std::string_view(e.name), e.data});
        }
    } else {
        events.push_back({to_view(name), body});
    }

    PublishResult result;
    auto* conf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    HistoryPolicy history;
    history.limit = std::uint32_t(conf->history);
    history.ttl = conf->history_ttl;
    if (!w->store.publish(events, channels, history, result, r->connection->log)) {
        size_t bytes = 0;
        for (const EventInput& e : events) bytes += e.data.size();
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sse: shared zone is full, publish of %uz event(s), %uz bytes refused; raise sse_shm_size",
                      events.size(), bytes);
        return send_text(r, NGX_HTTP_INSUFFICIENT_STORAGE, "the event zone is full: the event was not stored");
    }
    WorkerWakeup::wake(w->store.header(), result.wake);

    // The events are stored: from here nothing may throw, or a 500 would deny a publish that
    // happened (and its retry would publish it twice). The reply is written without allocating.
    char json[160];
    std::string_view redis = redis_publish_state(w->store);
    u_char* end = ngx_snprintf(reinterpret_cast<u_char*>(json), sizeof(json),
                               "{\"id\":\"%uL\",\"events\":%ui,\"subscribers\":%ui%s%*s%s}\n", result.last_id,
                               result.events, result.subscribers, redis.empty() ? "" : ",\"redis\":\"", redis.size(),
                               redis.data(), redis.empty() ? "" : "\"");
    return send_json(r, NGX_HTTP_ACCEPTED, std::string_view(json, std::size_t(end - reinterpret_cast<u_char*>(json))));
}

// sse_publish_client / sse_publish_user: the channels that reach those clients or users. On a bad
// list the 400 is sent and false returned, with rc what the handler must finish with.
bool target_of_stream(ngx_http_request_t* r, LocConf* conf, std::vector<std::string_view>& channels, ngx_int_t& rc) {
    ngx_str_t value;
    if (ngx_http_complex_value(r, conf->publish, &value) != NGX_OK || !url_decode(r, value)) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    std::vector<std::string> names;
    std::string reason;
    if (!parse_stream_targets(to_view(value), conf->publish_target == LocConf::kToClient, conf->max_channels, names,
                              reason)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: publish refused: %s", reason.c_str());
        rc = send_text(r, NGX_HTTP_BAD_REQUEST, reason);
        return false;
    }
    for (const std::string& name : names) {
        auto* stored = static_cast<char*>(ngx_pnalloc(r->pool, name.size()));
        if (stored == nullptr) {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }
        ngx_memcpy(stored, name.data(), name.size());
        channels.emplace_back(stored, name.size());
    }
    return true;
}

// Evaluates the location's channel list (or its targets), as target_of_stream answers.
bool target_channels(ngx_http_request_t* r, std::vector<std::string_view>& channels, ngx_int_t& rc) {
    auto* conf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    ngx_str_t text;
    if (conf->publish_target != LocConf::kToChannels) return target_of_stream(r, conf, channels, rc);
    if (evaluate_channel_list(r, conf->publish, text) != NGX_OK) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return false;
    }
    std::string reason;
    if (!parse_channel_list(to_view(text), conf->max_channels, channels, reason)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: publish refused: %s", reason.c_str());
        rc = send_text(r, NGX_HTTP_BAD_REQUEST, reason);
        return false;
    }
    return true;
}

void body_ready(ngx_http_request_t* r) noexcept {
    ngx_int_t rc = guarded(r->connection->log, "publishing", ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR), [&] {
        ngx_int_t result;
        std::vector<std::string_view> channels;
        if (target_channels(r, channels, result)) result = publish_body(r, channels);
        return result;
    });
    ngx_http_finalize_request(r, rc);
}

ngx_int_t describe(ngx_http_request_t* r, const std::vector<std::string_view>& channels) {
    WorkerContext* w = worker_context();
    std::string items;
    size_t found = 0;
    for (std::string_view name : channels) {
        ChannelState st = w->store.channel_state(name);
        if (!st.found) continue;
        if (found++) items += ",";
        items += channel_json(channel_report(std::string(name), st));
    }
    if (found == 0) return send_text(r, NGX_HTTP_NOT_FOUND, "no such channel");
    if (channels.size() == 1) return send_json(r, NGX_HTTP_OK, items + "\n");
    return send_json(r, NGX_HTTP_OK, "{\"channels\":[" + items + "]}\n");
}

ngx_int_t close_channels(ngx_http_request_t* r, const std::vector<std::string_view>& channels) {
    WorkerContext* w = worker_context();
    std::string items;
    size_t found = 0;
    // With Redis, every node closes the channel (it may have streams on it elsewhere only).
    std::string_view redis = redis_publish_state(w->store);
    for (std::string_view name : channels) {
        PublishResult result;
        std::uint32_t closed = 0;
        bool no_memory = false;
        if (!redis.empty()) {
            RedisControl control;
            control.op = "close";
            control.channel = std::string(name);
            std::uint64_t wake[2];
            if (w->store.queue_control(control_json(control), wake, r->connection->log)) {
                WorkerWakeup::wake(w->store.header(), wake);
            }
        }
        if (!w->store.close_channel(name, result, closed, no_memory)) {
            if (!redis.empty()) {
                if (found++) items += ",";
                items += "{\"channel\":" + json_string(name) + ",\"closed_subscribers\":0,\"redis\":\"" +
                         std::string(redis) + "\"}";
            }
            continue;
        }
        if (no_memory) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "sse: shared zone is full, cannot close channel %s; raise sse_shm_size",
                          quoted_bytes(name).c_str());
            return send_text(r, NGX_HTTP_INSUFFICIENT_STORAGE, "the event zone is full: the channel was not closed");
        }
        WorkerWakeup::wake(w->store.header(), result.wake);
        if (found++) items += ",";
        items += "{\"channel\":" + json_string(name) + ",\"closed_subscribers\":" + std::to_string(closed);
        if (!redis.empty()) items += ",\"redis\":\"" + std::string(redis) + "\"";
        items += "}";
    }
    if (found == 0) return send_text(r, NGX_HTTP_NOT_FOUND, "no such channel");
    if (channels.size() == 1) return send_json(r, NGX_HTTP_OK, items + "\n");
    return send_json(r, NGX_HTTP_OK, "{\"channels\":[" + items + "]}\n");
}

ngx_int_t publish(ngx_http_request_t* r) {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0) {
        return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "this worker is not serving events");
    }
    if (r->method & (NGX_HTTP_POST | NGX_HTTP_PUT)) {
        // Channels are checked once the body is in, so that a refusal does not leave it unread.
        ngx_int_t rc = ngx_http_read_client_request_body(r, body_ready);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
        return NGX_DONE;
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_DELETE))) {
        auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
        if (h != nullptr) {
            h->hash = 1;
#if nginx_version >= 1023000
            h->next = nullptr;  // nginx 1.23 links headers of one name; a pushed element is not zeroed
#endif
            ngx_str_set(&h->key, "Allow");
            ngx_str_set(&h->value, "GET, HEAD, POST, PUT, DELETE");
        }
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "a publish location takes POST or PUT to publish, GET, DELETE");
    }
    std::vector<std::string_view> channels;
    ngx_int_t rc;
    if (!target_channels(r, channels, rc)) return rc;
    if (r->method == NGX_HTTP_DELETE) return close_channels(r, channels);
    return describe(r, channels);
}

}  // namespace

ngx_int_t publish_handler(ngx_http_request_t* r) noexcept {
    return guarded(r->connection->log, "in a publish", ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR),
                   [&] { return publish(r); });
}

}  // namespace sse
