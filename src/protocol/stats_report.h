// The zone's figures as a monitoring system reads them: JSON, or Prometheus's text exposition
// format (version 0.0.4). Pure C++: the nginx side fills the report, this renders it.
#pragma once

#include <array>
#include <cstddef>
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

// The node's figures, in the order the JSON lists them; stats_report.cpp names each one, for
// the JSON and for Prometheus, in one table.
enum class Figure : std::size_t {
    kSubscribers,
    kUsers,  // distinct user keys with streams
    kChannels,
    kEventsPublished,
    kEventsDelivered,
    kEventsStored,
    kEventsRetained,
    kEventsReplayed,
    kResets,
    kHistoryEvictions,
    kSlowDisconnects,
    kStreamsEndedOutOfMemory,  // an event could not be given to them
    kPublishesRefused,
    kWorkersReaped,
    kRefusedMaxSubscribers,
    kRefusedPerKey,
    kZoneBytesUsed,
    kZoneBytesTotal,
    kUptimeSeconds,
    kCount
};

// With Redis: the link's figures, in the order the JSON lists them under "redis".
enum class RedisFigure : std::size_t {
    kReconnects,
    kQueue,  // events waiting to be sent
    kQueueDropped,
    kChannels,  // subscribed to in Redis
    kEventsSent,
    kEventsReceived,
    kCount
};

struct StatsReport {
    std::array<std::uint64_t, std::size_t(Figure::kCount)> figures{};
    std::uint64_t& operator[](Figure f) { return figures[std::size_t(f)]; }
    std::vector<std::pair<long, std::uint64_t>> workers;  // pid, subscribers

    // With Redis ("off" without): connected, connecting or disconnected.
    std::string redis_state = "off";
    std::array<std::uint64_t, std::size_t(RedisFigure::kCount)> redis_figures{};
    std::uint64_t& operator[](RedisFigure f) { return redis_figures[std::size_t(f)]; }
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
