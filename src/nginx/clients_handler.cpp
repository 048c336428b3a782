// sse_clients: who is connected, and disconnecting them.
//   GET    /clients                         every stream of every worker, by client id, 100 a page
//   GET    /clients?channel=orders&limit=50 filtered (channel, user, id), paged (limit, after)
//   GET    /clients?after=<next>            the next page
//   DELETE /clients?user=alice              disconnects the matching streams (id, user or channel)
//   GET    /clients?scope=cluster           every node's streams, through Redis (cluster_clients.cpp)
#include <optional>
#include <string>
#include <vector>

#include "guard.h"
#include "nginx/sse_module.h"
#include "protocol/admin_query.h"
#include "protocol/stats_report.h"
#include "redis/redis_entry.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

// A query argument, URL-decoded (user keys and channel names may be escaped).
std::optional<std::string_view> decoded_arg(ngx_http_request_t* r, const char* name) {
    ngx_str_t value;
    if (!query_arg(r, name, value) || !url_decode(r, value)) return std::nullopt;
    return to_view(value);
}

// The query's filters; false (with a reason) for a bad one.
bool read_query(ngx_http_request_t* r, ClientQuery& q, std::string& reason) {
    ClientsQueryArgs args;
    args.id = decoded_arg(r, "id");
    args.user = decoded_arg(r, "user");
    args.channel = decoded_arg(r, "channel");
    args.after = decoded_arg(r, "after");
    args.limit = decoded_arg(r, "limit");
    return parse_clients_query(args, q, reason);
}

ngx_int_t clients(ngx_http_request_t* r) {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0) return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "no event zone in this worker");
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_DELETE))) {
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "clients are listed with GET and disconnected with DELETE");
    }
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ClientQuery q;
    std::string reason;
    if (!read_query(r, q, reason)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: clients request refused: %s", reason.c_str());
        return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
    }
    // A worker killed outright leaves its slot behind; reap before answering.
    w->store.reap_dead_slots(r->connection->log);
    std::optional<std::string_view> scope = decoded_arg(r, "scope");
    if (scope && *scope != "node" && *scope != "cluster") {
        return send_text(r, NGX_HTTP_BAD_REQUEST, "scope is node (the default) or cluster");
    }
    if (scope == "cluster" && r->method != NGX_HTTP_DELETE) return cluster_clients(r, w, q);

    if (r->method == NGX_HTTP_DELETE) {
        if (q.id == 0 && q.user.empty() && q.channel.empty()) {
            return send_text(r, NGX_HTTP_BAD_REQUEST, "say whom to disconnect: id, user or channel");
        }
        std::uint64_t wake[2];
        std::uint32_t n = w->store.disconnect_clients(q, wake);
        WorkerWakeup::wake(w->store.header(), wake);
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "sse: disconnecting %uD stream(s) as asked", n);
        std::string json = "{\"disconnected\":" + std::to_string(n);
        std::string_view redis = redis_publish_state(w->store);
        if (!redis.empty()) {
            // The other nodes do the same when Redis brings them the request.
            RedisControl control;
            control.op = "disconnect";
            control.id = q.id;
            control.user = std::string(q.user);
            control.channel = std::string(q.channel);
            if (w->store.queue_control(control_json(control), wake, r->connection->log)) {
                WorkerWakeup::wake(w->store.header(), wake);
                json += ",\"redis\":\"" + std::string(redis) + "\"";
            }
        }
        return send_json(r, NGX_HTTP_OK, json + "}\n");
    }

    return send_json(r, NGX_HTTP_OK, w->store.clients_page_json(q));
}

}  // namespace

ngx_int_t clients_handler(ngx_http_request_t* r) noexcept {
    return guarded(r->connection->log, "listing clients", ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR),
                   [&] { return clients(r); });
}

}  // namespace sse
