// Fuzzes the channel lists a request names (src/protocol/channel_list.h).
// The whole input is a list; split at its first LF it is also a (pattern, channel) pair.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "protocol/channel_list.h"
#include "protocol/event_filter.h"
#include "protocol/resume.h"

using namespace sse;

namespace {

std::string_view trimmed(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// The list's items as a reader would split it: at commas, spaces and tabs trimmed, empties skipped.
std::vector<std::string_view> items_of(std::string_view list) {
    std::vector<std::string_view> items;
    while (true) {
        auto [item, rest] = fuzz::split_once(list, ',');
        if (!trimmed(item).empty()) items.push_back(trimmed(item));
        if (item.size() == list.size()) break;
        list = rest;
    }
    return items;
}

void check_channel_list(std::string_view text, std::size_t max_channels, bool patterns) {
    std::vector<std::string_view> names;
    std::string reason;
    if (!parse_channel_list(text, max_channels, names, reason, patterns)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        FUZZ_CHECK(fuzz::is_printable_ascii(reason));
        return;
    }
    FUZZ_CHECK(!names.empty() && names.size() <= max_channels);
    // Every name is one of the list's items, valid, within the input, and named once.
    std::vector<std::string_view> items = items_of(text);
    for (std::size_t i = 0; i < names.size(); i++) {
        FUZZ_CHECK(fuzz::lies_within(names[i], text));
        FUZZ_CHECK(is_valid_channel_name(names[i]) || (patterns && is_channel_pattern(names[i])));
        FUZZ_CHECK(std::find(items.begin(), items.end(), names[i]) != items.end());
        FUZZ_CHECK(std::find(names.begin() + i + 1, names.end(), names[i]) == names.end());
    }
    // And every item is among the names: nothing is dropped silently.
    for (std::string_view item : items) FUZZ_CHECK(std::find(names.begin(), names.end(), item) != names.end());
    if (!patterns) {
        // A list good without patterns is as good with them, and reads the same.
        std::vector<std::string_view> with_patterns;
        FUZZ_CHECK(parse_channel_list(text, max_channels, with_patterns, reason, true));
        FUZZ_CHECK(with_patterns == names);
    }
}

void check_stream_targets(std::string_view text, bool client_ids, std::size_t max_targets) {
    std::vector<std::string> channels;
    std::string reason;
    if (!parse_stream_targets(text, client_ids, max_targets, channels, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        FUZZ_CHECK(fuzz::is_printable_ascii(reason));
        return;
    }
    FUZZ_CHECK(!channels.empty() && channels.size() <= max_targets);
    for (std::size_t i = 0; i < channels.size(); i++) {
        const std::string& channel = channels[i];
        FUZZ_CHECK(std::find(channels.begin() + i + 1, channels.end(), channel) == channels.end());
        // A request can never name these channels itself.
        FUZZ_CHECK(!is_valid_channel_name(channel) && !is_channel_pattern(channel));
        if (client_ids) {
            FUZZ_CHECK(channel.rfind("#c:", 0) == 0);
            std::uint64_t id = 0;
            FUZZ_CHECK(parse_event_id(channel.substr(3), id) && id != 0);
            FUZZ_CHECK(client_channel(id) == channel);
            FUZZ_CHECK(text.find(channel.substr(3)) != std::string_view::npos);
        } else {
            FUZZ_CHECK(channel.rfind("#u:", 0) == 0);
            std::string_view user = std::string_view(channel).substr(3);
            FUZZ_CHECK(!user.empty() && user.size() <= kMaxUserKeyLength);
            FUZZ_CHECK(user == trimmed(user) && user.find(',') == std::string_view::npos);
            FUZZ_CHECK(text.find(user) != std::string_view::npos);
        }
    }
}

void check_patterns(std::string_view pattern, std::string_view channel) {
    bool allowed = channel_allowed_by(pattern, channel);
    FUZZ_CHECK(channel_allowed_by(channel, channel));
    if (pattern.empty() || pattern.back() != '*') FUZZ_CHECK(allowed == (pattern == channel));
    // With its only `*` at the end, an allow pattern means what the same event-type glob means.
    bool only_trailing_star =
        !pattern.empty() && pattern.back() == '*' && pattern.find_first_of("*?") == pattern.size() - 1;
    if (only_trailing_star) FUZZ_CHECK(allowed == glob_match(pattern, channel));

    // pattern_covers is only asked about a subscription pattern and a channel events go to.
    if (is_channel_pattern(pattern) && !channel.empty()) {
        FUZZ_CHECK(pattern_covers(pattern, channel) == (allowed && channel.front() != '#'));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view text = fuzz::as_text(data, size);
    for (std::size_t max : {std::size_t(1), std::size_t(3), kDefaultMaxChannels}) {
        check_channel_list(text, max, false);
        check_channel_list(text, max, true);
        check_stream_targets(text, true, max);
        check_stream_targets(text, false, max);
    }
    auto [pattern, channel] = fuzz::split_once(text, '\n');
    check_patterns(pattern, channel);
    return 0;
}
