// sse_stats: the zone's figures for monitoring, as JSON or, for a Prometheus scraper, in its
// text exposition format; per-channel figures when asked for.
//   GET /stats                          JSON
//   GET /stats?format=prometheus        (or Accept: text/plain / application/openmetrics-text)
//   GET /stats?channels=all             also every channel's figures (at most 1000, by name)
//   GET /stats?channels=orders,users    also those channels' figures
#include <string>
#include <vector>

#include "guard.h"
#include "nginx/sse_module.h"
#include "protocol/admin_query.h"
#include "protocol/stats_report.h"

namespace sse {

namespace {

constexpr std::size_t kMaxListedChannels = 1000;

// A scraper asks with Accept: application/openmetrics-text;...,text/plain;version=0.0.4;...
bool accepts_prometheus(ngx_http_request_t* r) {
    ngx_str_t value;
    if (!request_header(r, "Accept", value)) return false;
    std::string_view accept = to_view(value);
    if (accept.find("application/json") != std::string_view::npos) return false;
    return accept.find("text/plain") != std::string_view::npos ||
           accept.find("application/openmetrics-text") != std::string_view::npos;
}

}  // namespace

ChannelReport channel_report(std::string name, const ChannelState& st) {
    ChannelReport c;
    static_cast<ChannelFigures&>(c) = st;
    c.name = std::move(name);
    return c;
}

namespace {

void add_redis_figures(Store& store, StatsReport& report) {
    const ClusterState& cs = store.header()->cluster;
    if (!cs.enabled) return;
    const StoreCounters& c = store.header()->counters;
    switch (RedisState(__atomic_load_n(&cs.state, __ATOMIC_ACQUIRE))) {
        case RedisState::kConnected:
            report.redis_state = "connected";
            break;
        case RedisState::kDisconnected:
            report.redis_state = "disconnected";
            break;
        default:
            report.redis_state = "connecting";
            break;
    }
    report[RedisFigure::kReconnects] = c.redis_reconnects;
    report[RedisFigure::kQueue] = cs.outbound_count;
    report[RedisFigure::kQueueDropped] = c.redis_queue_dropped;
    report[RedisFigure::kChannels] = cs.channels;
    report[RedisFigure::kEventsSent] = c.redis_events_sent;
    report[RedisFigure::kEventsReceived] = c.redis_events_received;
    for (const RedisServerFigures& f : store.redis_servers()) {
        StatsReport::RedisServer& s = report.redis_servers.emplace_back();
        s.address = std::string(f.address, strnlen(f.address, sizeof(f.address)));
        s.role = f.role == RedisRole::kSentinel      ? "sentinel"
                 : f.role == RedisRole::kClusterNode ? "cluster node"
                                                     : "primary";
        s.state = f.state == RedisState::kConnected      ? "connected"
                  : f.state == RedisState::kConnecting   ? "connecting"
                  : f.state == RedisState::kDisconnected ? "disconnected"
                                                         : "standby";
        s.reconnects = f.reconnects;
    }
}

// The zone's counters and figures, and Redis's when the node uses it.
StatsReport zone_report(Store& store, ngx_log_t* log) {
    // A worker killed outright leaves its slot behind; reap before counting.
    store.reap_dead_slots(log);
    StoreStats st = store.stats();
    const StoreCounters& c = store.header()->counters;
    StatsReport report;
    report[Figure::kSubscribers] = st.subscribers;
    report[Figure::kUsers] = st.users;
    report[Figure::kChannels] = st.channels;
    report[Figure::kEventsPublished] = c.events_published;
    report[Figure::kEventsDelivered] = c.events_delivered;
    report[Figure::kEventsStored] = st.events_stored;
    report[Figure::kEventsRetained] = st.events_retained;
    report[Figure::kEventsReplayed] = c.events_replayed;
    report[Figure::kResets] = c.resets;
    report[Figure::kHistoryEvictions] = c.history_evictions;
    report[Figure::kSlowDisconnects] = c.slow_disconnects;
    report[Figure::kStreamsEndedOutOfMemory] = c.streams_ended_out_of_memory;
    report[Figure::kPublishesRefused] = c.publishes_refused;
    report[Figure::kWorkersReaped] = c.workers_reaped;
    report[Figure::kRefusedMaxSubscribers] = c.refused_max_subscribers;
    report[Figure::kRefusedPerKey] = c.refused_per_key;
    report[Figure::kZoneBytesUsed] = st.bytes_used;
    report[Figure::kZoneBytesTotal] = st.bytes_total;
    report[Figure::kUptimeSeconds] = std::uint64_t(ngx_time() - store.header()->created_at);
    for (const auto& [pid, n] : st.per_worker) report.workers.emplace_back(long(pid), n);
    add_redis_figures(store, report);
    return report;
}

// channels=all or channels=<list>: the channels' own figures.
void add_channels(Store& store, const StatsQuery& query, StatsReport& report) {
    report.per_channel = true;
    if (query.all_channels) {
        bool more = false;
        for (auto& [name, state] : store.channel_states(kMaxListedChannels, more)) {
            report.channel_list.push_back(channel_report(std::move(name), state));
        }
        report.per_channel_truncated = more;
        return;
    }
    for (std::string_view name : query.channels) {
        ChannelState state = store.channel_state(name);
        if (state.found) report.channel_list.push_back(channel_report(std::string(name), state));
    }
}

ngx_int_t stats(ngx_http_request_t* r) {
    WorkerContext* w = worker_context();
    if (w == nullptr || w->slot < 0) return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "no event zone in this worker");
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return send_text(r, NGX_HTTP_NOT_ALLOWED, "stats are read with GET");
    }

    StatsQueryArgs args;
    ngx_str_t arg;
    if (query_arg(r, "format", arg)) args.format = to_view(arg);
    if (query_arg(r, "channels", arg)) {
        if (!url_decode(r, arg)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        args.channels = to_view(arg);
    }
    StatsQuery query;
    std::string reason;
    if (!parse_stats_query(args, query, reason)) return send_text(r, NGX_HTTP_BAD_REQUEST, reason);
    StatsFormat format = query.format.value_or(accepts_prometheus(r) ? StatsFormat::kPrometheus : StatsFormat::kJson);

    StatsReport report = zone_report(w->store, r->connection->log);
    if (query.per_channel) add_channels(w->store, query, report);
    if (format == StatsFormat::kPrometheus) {
        return send_body(r, NGX_HTTP_OK, kPrometheusContentType, stats_prometheus(report));
    }
    return send_json(r, NGX_HTTP_OK, stats_json(report));
}

}  // namespace

ngx_int_t stats_handler(ngx_http_request_t* r) noexcept {
    return guarded(r->connection->log, "answering stats", ngx_int_t(NGX_HTTP_INTERNAL_SERVER_ERROR),
                   [&] { return stats(r); });
}

}  // namespace sse
