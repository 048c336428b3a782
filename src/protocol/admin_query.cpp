#include "protocol/admin_query.h"

#include "protocol/channel_list.h"
#include "protocol/resume.h"

namespace sse {

namespace {

// A decimal page size as ngx_atoi read it before: digits only (leading zeros allowed), no sign.
bool parse_page_size(std::string_view text, std::size_t& out) {
    if (text.empty()) return false;
    std::size_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        // Anything past the largest page is refused anyway: stop counting before it can overflow.
        if (value <= kMaxClientsPage) value = value * 10 + std::size_t(c - '0');
    }
    if (value < 1 || value > kMaxClientsPage) return false;
    out = value;
    return true;
}

}  // namespace

bool parse_stats_query(const StatsQueryArgs& args, StatsQuery& out, std::string& reason) {
    out = StatsQuery{};
    if (args.format) {
        if (*args.format == "json") {
            out.format = StatsFormat::kJson;
        } else if (*args.format == "prometheus") {
            out.format = StatsFormat::kPrometheus;
        } else {
            reason = "unknown format: use format=json or format=prometheus";
            return false;
        }
    }
    if (args.channels) {
        out.per_channel = true;
        if (*args.channels == "all") {
            out.all_channels = true;
        } else if (!parse_channel_list(*args.channels, kMaxStatsNamedChannels, out.channels, reason, true)) {
            reason += " (or channels=all)";
            return false;
        }
    }
    return true;
}

bool parse_clients_query(const ClientsQueryArgs& args, ClientsQuery& out, std::string& reason) {
    out = ClientsQuery{};
    if (args.id && (!parse_event_id(*args.id, out.id) || out.id == 0)) {
        reason = "id must be a client id (a decimal number)";
        return false;
    }
    if (args.user) {
        if (args.user->empty()) {
            reason = "user must not be empty";
            return false;
        }
        out.user = *args.user;
    }
    if (args.channel) {
        if (args.channel->empty()) {
            reason = "channel must not be empty";
            return false;
        }
        out.channel = *args.channel;
    }
    if (args.after && !parse_event_id(*args.after, out.after)) {
        reason = "after must be a client id, as \"next\" gives it";
        return false;
    }
    if (args.limit && !parse_page_size(*args.limit, out.limit)) {
        reason = "limit must be from 1 to 1000";
        return false;
    }
    return true;
}

}  // namespace sse
