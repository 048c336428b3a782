#include "protocol/resume.h"

#include "protocol/client_text.h"

namespace sse {

bool parse_event_id(std::string_view text, std::uint64_t& id) noexcept {
    if (text.empty() || text.size() > kMaxIdDigits) return false;
    std::uint64_t value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        std::uint64_t digit = std::uint64_t(c - '0');
        // Past the largest id: still a number, later than any id issued (saturated).
        value = value > (UINT64_MAX - digit) / 10 ? UINT64_MAX : value * 10 + digit;
    }
    id = value;
    return true;
}

std::string_view reset_reason_name(ResetReason reason) noexcept {
    switch (reason) {
        case ResetReason::kMalformed:
            return "malformed";
        case ResetReason::kFuture:
            return "future";
        case ResetReason::kBeforeRestart:
            return "before_restart";
        case ResetReason::kEvicted:
            return "evicted";
        case ResetReason::kNone:
            break;
    }
    return "none";
}

std::string echoed_id(std::string_view given_id) {
    std::string literal = json_string(given_id.substr(0, kMaxEchoedIdLength));
    return literal.substr(1, literal.size() - 2);
}

std::string reset_frame(std::string_view event_name, std::string_view given_id, ResetReason reason) {
    std::string out;
    out.reserve(64 + event_name.size() + kMaxEchoedIdLength * 6);
    out += "event: ";
    out += event_name;
    out += "\ndata: {\"last_event_id\":\"";
    out += echoed_id(given_id);
    out += "\",\"reason\":\"";
    out += reset_reason_name(reason);
    out += "\"}\n\n";
    return out;
}

std::string connected_frame(std::string_view event_name, std::uint64_t client_id, std::string_view user) {
    std::string out = "event: ";
    out += event_name;
    out += "\ndata: {\"client_id\":\"";
    out += std::to_string(client_id);
    out += "\"";
    if (!user.empty()) {
        out += ",\"user\":";
        out += json_string(user);
    }
    out += "}\n\n";
    return out;
}

}  // namespace sse
