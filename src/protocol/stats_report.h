// The zone's figures as a monitoring system reads them: JSON, or Prometheus's text exposition
// format (version 0.0.4). Pure C++: the nginx side fills the report, this renders it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sse {

// A channel's figures, as the store knows them and the reports show them.
struct ChannelFigures {
    std::uint64_t subscribers = 0;
    std::uint64_t events_published = 0;
    std::uint64_t last_event_id = 0;  // 0: none yet
    std::uint64_t retained = 0;
    std::uint64_t oldest_id = 0;  // 0: nothing retained
    std::uint64_t newest_id = 0;
};

struct ChannelReport : ChannelFigures {
    std::string name;
};

struct StatsReport {
    std::uint64_t subscribers = 0;
    std::uint64_t users = 0;  // distinct user keys with streams
    std::uint64_t channels = 0;
    std::uint64_t events_published = 0;
    std::uint64_t events_delivered = 0;
    std::uint64_t events_stored = 0;
    std::uint64_t events_retained = 0;
    std::uint64_t events_replayed = 0;
    std::uint64_t resets = 0;
    std::uint64_t history_evictions = 0;
    std::uint64_t slow_disconnects = 0;
    std::uint64_t streams_ended_out_of_memory = 0;  // an event could not be given to them
    std::uint64_t publishes_refused = 0;
    std::uint64_t workers_reaped = 0;
    std::uint64_t refused_max_subscribers = 0;
    std::uint64_t refused_per_key = 0;
    std::uint64_t zone_bytes_used = 0;
    std::uint64_t zone_bytes_total = 0;
    std::uint64_t uptime_seconds = 0;
    std::vector<std::pair<long, std::uint64_t>> workers;  // pid, subscribers

    // With Redis ("off" without): connected, connecting or disconnected.
    std::string redis_state = "off";
    std::uint64_t redis_reconnects = 0;
    std::uint64_t redis_queue = 0;  // events waiting to be sent
    std::uint64_t redis_queue_dropped = 0;
    std::uint64_t redis_channels = 0;  // subscribed to in Redis
    std::uint64_t redis_events_sent = 0;
    std::uint64_t redis_events_received = 0;
    struct RedisServer {
        std::string address;
        std::string role;   // primary, sentinel, cluster node
        std::string state;  // connected, connecting, disconnected, standby
        std::uint64_t reconnects = 0;
    };
    std::vector<RedisServer> redis_servers;

    bool per_channel = false;  // asked for: the channels below are listed
    bool per_channel_truncated = false;
    std::vector<ChannelReport> channel_list;
};

// One channel's figures, as the stats list them and GET on a publish location answers:
// {"channel":"a","subscribers":N,"events_published":N,"last_event_id":"id"|null,"retained":N,
//  "oldest_id":"id"|null,"newest_id":"id"|null}
std::string channel_json(const ChannelReport& channel);

// {"subscribers":N,...,"workers":[{"pid":P,"subscribers":N}],
//  and when asked for: "per_channel":[{"channel":"a",...}],"per_channel_truncated":false}
std::string stats_json(const StatsReport& report);

// Counters end in _total, sizes in _bytes, times in _seconds; every family has HELP and TYPE.
std::string stats_prometheus(const StatsReport& report);

// One stream as sse_clients lists it.
struct ClientReport {
    std::uint64_t client_id = 0;
    long pid = 0;
    std::vector<std::string> channels;
    std::string user;  // empty: none
    std::string remote_addr;
    long long connected_at = 0;  // Unix time
    std::uint64_t events_sent = 0;
    std::uint64_t bytes_sent = 0;
};

// {"clients":[{"client_id":"1","worker":P,"channels":["a"],"user":"u"|null,"remote_addr":"..",
//   "connected_at":T,"events_sent":N,"bytes_sent":N}],"total":N,"next":"<client id>"|null}
// `next` is the `after` of the next page, null on the last.
std::string clients_json(const std::vector<ClientReport>& clients, std::uint64_t total, std::uint64_t next);

// The Content-Type of stats_prometheus().
constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace sse
