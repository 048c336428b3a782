// Fuzzes the admin endpoints' query arguments (src/protocol/admin_query.h). The input is read as
// a query string, name=value&..., the first of a name counting (as ngx_http_arg finds it); values
// are taken as already decoded.
#include <cstdint>
#include <optional>
#include <string>

#include "fuzz_check.h"
#include "protocol/admin_query.h"
#include "protocol/channel_list.h"
#include "protocol/resume.h"

using namespace sse;

namespace {

std::optional<std::string_view> argument(std::string_view query, std::string_view name) {
    while (true) {
        auto [pair, rest] = fuzz::split_once(query, '&');
        auto [key, value] = fuzz::split_once(pair, '=');
        if (key == name) return value;
        if (pair.size() == query.size()) return std::nullopt;
        query = rest;
    }
}

bool is_one_of_the_reasons(std::string_view reason) {
    for (std::string_view known :
         {"id must be a client id (a decimal number)", "user must not be empty", "channel must not be empty",
          "after must be a client id, as \"next\" gives it", "limit must be from 1 to 1000"}) {
        if (reason == known) return true;
    }
    return false;
}

void check_clients(std::string_view query) {
    ClientsQueryArgs args;
    args.id = argument(query, "id");
    args.user = argument(query, "user");
    args.channel = argument(query, "channel");
    args.after = argument(query, "after");
    args.limit = argument(query, "limit");
    ClientsQuery q;
    std::string reason;
    if (!parse_clients_query(args, q, reason)) {
        FUZZ_CHECK(is_one_of_the_reasons(reason));
        return;
    }
    FUZZ_CHECK(q.limit >= 1 && q.limit <= kMaxClientsPage);
    if (!args.limit) FUZZ_CHECK(q.limit == kDefaultClientsPage);
    if (args.limit) FUZZ_CHECK(std::to_string(q.limit).size() <= args.limit->size());
    if (args.id) {
        std::uint64_t again = 0;
        FUZZ_CHECK(q.id != 0 && parse_event_id(std::to_string(q.id), again) && again == q.id);
    } else {
        FUZZ_CHECK(q.id == 0);
    }
    if (!args.after) FUZZ_CHECK(q.after == 0);
    FUZZ_CHECK(args.user ? q.user == *args.user && fuzz::lies_within(q.user, query) : q.user.empty());
    FUZZ_CHECK(args.channel ? q.channel == *args.channel && fuzz::lies_within(q.channel, query) : q.channel.empty());
}

void check_stats(std::string_view query) {
    StatsQueryArgs args;
    args.format = argument(query, "format");
    args.channels = argument(query, "channels");
    StatsQuery q;
    std::string reason;
    if (!parse_stats_query(args, q, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason) && fuzz::is_printable_ascii(reason));
        constexpr std::string_view kListHint = " (or channels=all)";
        FUZZ_CHECK(reason == "unknown format: use format=json or format=prometheus" ||
                   (reason.size() > kListHint.size() &&
                    std::string_view(reason).substr(reason.size() - kListHint.size()) == kListHint));
        return;
    }
    FUZZ_CHECK(q.format.has_value() == args.format.has_value());
    FUZZ_CHECK(q.per_channel == args.channels.has_value());
    FUZZ_CHECK(q.all_channels == (args.channels == "all"));
    if (!q.per_channel || q.all_channels) {
        FUZZ_CHECK(q.channels.empty());
        return;
    }
    FUZZ_CHECK(!q.channels.empty() && q.channels.size() <= kMaxStatsNamedChannels);
    for (std::string_view name : q.channels) {
        FUZZ_CHECK(fuzz::lies_within(name, *args.channels));
        FUZZ_CHECK(is_valid_channel_name(name) || is_channel_pattern(name));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view query = fuzz::as_text(data, size);
    check_clients(query);
    check_stats(query);
    return 0;
}
