#include "protocol/stats_report.h"

#include <iterator>
#include <string_view>

#include "protocol/client_text.h"

namespace sse {

namespace {

std::string id_or_null(std::uint64_t id) {
    return id ? "\"" + std::to_string(id) + "\"" : "null";
}

// A Prometheus label value: backslash, double quote and line feed escaped, as the text format
// says. Only channel names reach labels, and those are 1-128 bytes of A-Z a-z 0-9 _ - . : @ /.
std::string label_value(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

struct Family {
    std::string_view name;
    std::string_view type;
    std::string_view help;
};

void family(std::string& out, const Family& f) {
    out += "# HELP ";
    out += f.name;
    out += ' ';
    out += f.help;
    out += "\n# TYPE ";
    out += f.name;
    out += ' ';
    out += f.type;
    out += '\n';
}

void sample(std::string& out, std::string_view name, std::uint64_t value, const std::string& labels = {}) {
    out += name;
    if (!labels.empty()) out += "{" + labels + "}";
    out += ' ';
    out += std::to_string(value);
    out += '\n';
}

void single(std::string& out, const Family& f, std::uint64_t value) {
    family(out, f);
    sample(out, f.name, value);
}

// A figure as both formats name it: its JSON key, and its Prometheus sample (a family name, with
// labels where figures that follow each other in the table share the family), type and help. A
// family's HELP line is written once, from its first row; the rows after it say kSameFamily.
struct FigureName {
    const char* json;
    const char* sample;
    const char* type;
    const char* help;
};

constexpr const char* kSameFamily = "";

// In the order of Figure.
constexpr FigureName kFigureNames[] = {
    {"subscribers", "sse_subscribers", "gauge", "Event streams open, over all worker processes."},
    {"users", "sse_users", "gauge", "Distinct user keys (sse_user) with event streams open."},
    {"channels", "sse_channels", "gauge", "Channels with subscribers or retained events."},
    {"events_published", "sse_events_published_total", "counter", "Events published."},
    {"events_delivered", "sse_events_delivered_total", "counter", "Event frames handed to live streams."},
    {"events_stored", "sse_events_stored", "gauge", "Events held in the shared zone."},
    {"events_retained", "sse_events_retained", "gauge", "Events kept in some channel's history."},
    {"events_replayed", "sse_events_replayed_total", "counter", "Event frames written to streams from history."},
    {"resets", "sse_resets_total", "counter", "Reset events sent: positions that could not be resumed exactly."},
    {"history_evictions", "sse_history_evictions_total", "counter",
     "Retained events evicted to make room in the zone."},
    {"slow_disconnects", "sse_slow_disconnects_total", "counter",
     "Streams closed for falling more than sse_send_buffer behind."},
    {"streams_ended_out_of_memory", "sse_streams_ended_out_of_memory_total", "counter",
     "Streams ended because an event could not be given to them (no memory); their clients resume."},
    {"publishes_refused", "sse_publishes_refused_total", "counter",
     "Publishes refused with 507: the zone could not hold them."},
    {"workers_reaped", "sse_workers_reaped_total", "counter", "Worker slots released for processes that died."},
    {"refused_max_subscribers", "sse_subscribers_refused_total{limit=\"max_subscribers\"}", "counter",
     "Streams refused by a limit, by the limit."},
    {"refused_per_key", "sse_subscribers_refused_total{limit=\"per_key\"}", "counter", kSameFamily},
    {"zone_bytes_used", "sse_zone_used_bytes", "gauge", "Bytes the module holds in the shared zone."},
    {"zone_bytes_total", "sse_zone_size_bytes", "gauge", "Size of the shared zone (sse_shm_size)."},
    {"uptime", "sse_uptime_seconds", "gauge", "Seconds since the shared zone was created (a reload keeps it)."},
};
static_assert(std::size(kFigureNames) == std::size_t(Figure::kCount), "a name for every figure");

// In the order of RedisFigure; the JSON keys are within "redis".
constexpr FigureName kRedisFigureNames[] = {
    {"reconnects", "sse_redis_reconnects_total", "counter", "Connections to Redis made again after a loss."},
    {"queue", "sse_redis_queue_events", "gauge", "Events of this node waiting to be sent to Redis."},
    {"queue_dropped", "sse_redis_queue_dropped_total", "counter",
     "Events dropped from a full queue to Redis (sse_redis_queue)."},
    {"channels", "sse_redis_channels", "gauge", "Channels this node listens to in Redis."},
    {"events_sent", "sse_redis_events_sent_total", "counter", "Events of this node Redis has taken."},
    {"events_received", "sse_redis_events_received_total", "counter", "Events of other nodes taken from Redis."},
};
static_assert(std::size(kRedisFigureNames) == std::size_t(RedisFigure::kCount), "a name for every Redis figure");

// ,"key":value for each figure (the first without its comma when `first`).
template <std::size_t N>
void json_figures(std::string& j, const FigureName (&names)[N], const std::array<std::uint64_t, N>& values,
                  bool first) {
    for (std::size_t i = 0; i < N; i++) {
        if (i > 0 || !first) j += ',';
        j += '"';
        j += names[i].json;
        j += "\":";
        j += std::to_string(values[i]);
    }
}

template <std::size_t N>
void prometheus_figures(std::string& out, const FigureName (&names)[N], const std::array<std::uint64_t, N>& values) {
    std::string_view last_family;
    for (std::size_t i = 0; i < N; i++) {
        std::string_view name(names[i].sample);
        name = name.substr(0, name.find('{'));
        if (name != last_family) family(out, {name, names[i].type, names[i].help});
        last_family = name;
        sample(out, names[i].sample, values[i]);
    }
}

}  // namespace

std::string channel_json(const ChannelReport& c) {
    return "{\"channel\":" + json_string(c.name) + ",\"subscribers\":" + std::to_string(c.subscribers) +
           ",\"events_published\":" + std::to_string(c.events_published) +
           ",\"last_event_id\":" + id_or_null(c.last_event_id) + ",\"retained\":" + std::to_string(c.retained) +
           ",\"oldest_id\":" + id_or_null(c.oldest_id) + ",\"newest_id\":" + id_or_null(c.newest_id) + "}";
}

std::string stats_json(const StatsReport& r) {
    std::string j = "{";
    json_figures(j, kFigureNames, r.figures, true);
    j += ",\"workers\":[";
    for (std::size_t i = 0; i < r.workers.size(); i++) {
        if (i) j += ",";
        j += "{\"pid\":" + std::to_string(r.workers[i].first) +
             ",\"subscribers\":" + std::to_string(r.workers[i].second) + "}";
    }
    j += "],\"redis\":{\"state\":" + json_string(r.redis_state);
    json_figures(j, kRedisFigureNames, r.redis_figures, false);
    j += ",\"servers\":[";
    for (std::size_t i = 0; i < r.redis_servers.size(); i++) {
        const StatsReport::RedisServer& s = r.redis_servers[i];
        if (i) j += ",";
        j += "{\"address\":" + json_string(s.address) + ",\"role\":" + json_string(s.role) +
             ",\"state\":" + json_string(s.state) + ",\"reconnects\":" + std::to_string(s.reconnects) + "}";
    }
    j += "]}";
    if (r.per_channel) {
        j += ",\"per_channel\":[";
        for (std::size_t i = 0; i < r.channel_list.size(); i++) {
            if (i) j += ",";
            j += channel_json(r.channel_list[i]);
        }
        j += "],\"per_channel_truncated\":";
        j += r.per_channel_truncated ? "true" : "false";
    }
    j += "}\n";
    return j;
}

namespace {

std::string server_labels(const StatsReport::RedisServer& s) {
    return "address=\"" + label_value(s.address) + "\",role=\"" + label_value(s.role) + "\"";
}

}  // namespace

std::string stats_prometheus(const StatsReport& r) {
    std::string out;
    out.reserve(2048 + r.channel_list.size() * 200);
    prometheus_figures(out, kFigureNames, r.figures);
    family(out, {"sse_worker_subscribers", "gauge", "Event streams open, per worker process."});
    for (const auto& [pid, n] : r.workers)
        sample(out, "sse_worker_subscribers", n, "pid=\"" + std::to_string(pid) + "\"");
    if (r.redis_state != "off") {
        single(out, {"sse_redis_up", "gauge", "1 while this node's link to Redis is connected."},
               r.redis_state == "connected" ? 1 : 0);
        prometheus_figures(out, kRedisFigureNames, r.redis_figures);
        family(out, {"sse_redis_server_up", "gauge",
                     "1 while the link's connection to this Redis server (or sentinel) is up."});
        for (const StatsReport::RedisServer& s : r.redis_servers) {
            sample(out, "sse_redis_server_up", s.state == "connected" ? 1 : 0, server_labels(s));
        }
        family(out, {"sse_redis_server_reconnects_total", "counter",
                     "Connections to this Redis server (or sentinel) made again after a loss."});
        for (const StatsReport::RedisServer& s : r.redis_servers) {
            sample(out, "sse_redis_server_reconnects_total", s.reconnects, server_labels(s));
        }
    }
    if (r.per_channel) {
        family(out, {"sse_channel_subscribers", "gauge", "Event streams open on the channel."});
        for (const ChannelReport& c : r.channel_list)
            sample(out, "sse_channel_subscribers", c.subscribers, "channel=\"" + label_value(c.name) + "\"");
        family(out, {"sse_channel_events_published_total", "counter", "Events published to the channel."});
        for (const ChannelReport& c : r.channel_list)
            sample(out, "sse_channel_events_published_total", c.events_published,
                   "channel=\"" + label_value(c.name) + "\"");
        family(out, {"sse_channel_events_retained", "gauge", "Events the channel keeps for replay."});
        for (const ChannelReport& c : r.channel_list)
            sample(out, "sse_channel_events_retained", c.retained, "channel=\"" + label_value(c.name) + "\"");
    }
    return out;
}

std::string clients_json(const std::vector<ClientReport>& clients, std::uint64_t total, std::uint64_t next) {
    std::string j = "{\"clients\":[";
    for (std::size_t i = 0; i < clients.size(); i++) {
        const ClientReport& c = clients[i];
        if (i) j += ",";
        j += "{\"client_id\":\"" + std::to_string(c.client_id) + "\",\"worker\":" + std::to_string(c.pid) +
             ",\"channels\":[";
        for (std::size_t k = 0; k < c.channels.size(); k++) {
            if (k) j += ",";
            j += json_string(c.channels[k]);
        }
        j += "],\"user\":";
        j += c.user.empty() ? "null" : json_string(c.user);
        j += ",\"remote_addr\":" + json_string(c.remote_addr) + ",\"connected_at\":" + std::to_string(c.connected_at) +
             ",\"events_sent\":" + std::to_string(c.events_sent) + ",\"bytes_sent\":" + std::to_string(c.bytes_sent) +
             "}";
    }
    j += "],\"total\":" + std::to_string(total) + ",\"next\":";
    j += next ? "\"" + std::to_string(next) + "\"" : "null";
    j += "}\n";
    return j;
}

}  // namespace sse
