// The query arguments of the admin endpoints, sse_stats and sse_clients, read from their values
// (already URL-decoded by the caller; an argument not in the query is std::nullopt).
// Pure C++: no nginx types, unit-tested in t/unit and fuzzed in t/fuzz.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sse {

// ---- sse_stats: ?format=json|prometheus&channels=all|<list> ----

// At most this many channels may be named in channels=<list>.
constexpr std::size_t kMaxStatsNamedChannels = 1024;

enum class StatsFormat { kJson, kPrometheus };

struct StatsQueryArgs {
    std::optional<std::string_view> format;
    std::optional<std::string_view> channels;
};

struct StatsQuery {
    std::optional<StatsFormat> format;       // absent: the Accept header decides
    bool per_channel = false;                // channels= was given
    bool all_channels = false;               // channels=all
    std::vector<std::string_view> channels;  // channels=<list>: names or patterns, views into the argument
};

// False, with a one-line reason, for an unknown format or a bad channel list.
bool parse_stats_query(const StatsQueryArgs& args, StatsQuery& out, std::string& reason);

// ---- sse_clients: ?id=&user=&channel=&after=&limit= ----

constexpr std::size_t kDefaultClientsPage = 100;
constexpr std::size_t kMaxClientsPage = 1000;

struct ClientsQueryArgs {
    std::optional<std::string_view> id;
    std::optional<std::string_view> user;
    std::optional<std::string_view> channel;
    std::optional<std::string_view> after;
    std::optional<std::string_view> limit;
};

struct ClientsQuery {
    std::uint64_t id = 0;      // 0: any
    std::string_view user;     // empty: any; a view into the argument
    std::string_view channel;  // empty: any; a view into the argument
    std::uint64_t after = 0;   // the page cursor: client ids above this
    std::size_t limit = kDefaultClientsPage;
};

// False, with a one-line reason, for a bad filter or page argument.
bool parse_clients_query(const ClientsQueryArgs& args, ClientsQuery& out, std::string& reason);

}  // namespace sse
