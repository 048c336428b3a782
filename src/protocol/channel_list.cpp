#include "protocol/channel_list.h"

#include <algorithm>

#include "protocol/client_text.h"

namespace sse {

namespace {

bool is_channel_char(unsigned char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '.' || c == ':' || c == '@' || c == '/';
}

std::string_view trim_spaces(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// The next item of a comma-separated list, with the spaces around it trimmed; `start` moves
// past it. False once the list is used up.
bool next_list_item(std::string_view text, std::size_t& start, std::string_view& item) noexcept {
    if (start > text.size()) return false;
    std::size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    item = trim_spaces(text.substr(start, comma - start));
    start = comma + 1;
    return true;
}

}  // namespace

bool is_valid_channel_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > kMaxChannelNameLength) return false;
    return std::all_of(name.begin(), name.end(), [](char c) { return is_channel_char(c); });
}

bool is_channel_pattern(std::string_view name) noexcept {
    if (name.empty() || name.back() != '*' || name.size() > kMaxChannelNameLength) return false;
    name.remove_suffix(1);
    return std::all_of(name.begin(), name.end(), [](char c) { return is_channel_char(c); });
}

bool pattern_covers(std::string_view pattern, std::string_view channel) noexcept {
    if (pattern.empty() || channel.empty()) return false;
    pattern.remove_suffix(1);
    return channel.size() >= pattern.size() && channel.substr(0, pattern.size()) == pattern && channel.front() != '#';
}

bool parse_channel_list(std::string_view text, std::size_t max_channels, std::vector<std::string_view>& names,
                        std::string& reason, bool patterns) {
    names.clear();
    std::string_view name;
    for (std::size_t start = 0; next_list_item(text, start, name);) {
        if (name.empty()) {
            // "a,,b" and a trailing comma are tolerated; an entirely empty list is not.
            continue;
        }
        if (name.size() > kMaxChannelNameLength) {
            reason = "channel name longer than 128 bytes: " + quoted_bytes(name);
            return false;
        }
        if (!is_valid_channel_name(name) && !(patterns && is_channel_pattern(name))) {
            reason = "invalid channel name " + quoted_bytes(name) + ": use 1-128 of A-Z a-z 0-9 _ - . : @ /";
            if (!patterns && is_channel_pattern(name))
                reason = "channel patterns such as " + quoted_bytes(name) + " are not allowed here";
            return false;
        }
        if (std::find(names.begin(), names.end(), name) != names.end()) continue;
        if (names.size() == max_channels) {
            reason = "too many channels: at most " + std::to_string(max_channels) + " per request";
            return false;
        }
        names.push_back(name);
    }
    if (names.empty()) {
        reason = "no channel given";
        return false;
    }
    return true;
}

bool channel_allowed_by(std::string_view pattern, std::string_view name) noexcept {
    if (!pattern.empty() && pattern.back() == '*') {
        pattern.remove_suffix(1);
        return name.substr(0, pattern.size()) == pattern;
    }
    return pattern == name;
}

std::string client_channel(std::uint64_t client_id) {
    return "#c:" + std::to_string(client_id);
}

std::string user_channel(std::string_view user) {
    std::string name = "#u:";
    name.append(user);
    return name;
}

std::string user_key_problem(std::string_view user) {
    if (user.size() > kMaxUserKeyLength) return "the user key is longer than 256 bytes";
    if (user.find(',') != std::string_view::npos) {
        return "the user key " + quoted_bytes(user) + " holds a comma, which sse_publish_user could not reach";
    }
    if (trim_spaces(user).size() != user.size()) {
        return "the user key " + quoted_bytes(user) +
               " begins or ends with a space, which sse_publish_user could not reach";
    }
    return {};
}

bool parse_stream_targets(std::string_view text, bool client_ids, std::size_t max_targets,
                          std::vector<std::string>& channels, std::string& reason) {
    channels.clear();
    std::string_view item;
    for (std::size_t start = 0; next_list_item(text, start, item);) {
        if (item.empty()) continue;
        std::string name;
        if (client_ids) {
            std::uint64_t id = 0;
            bool digits =
                item.size() <= 20 && std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; });
            for (char c : item) id = id * 10 + std::uint64_t(c - '0');
            if (digits && item.size() == 20 && item > std::string_view("18446744073709551615")) digits = false;
            if (!digits || id == 0 || item.front() == '0') {
                reason = "a client id is a decimal number, as the connected event gives it: " + quoted_bytes(item);
                return false;
            }
            name = client_channel(id);
        } else {
            if (item.size() > kMaxUserKeyLength) {
                reason = "a user key is at most 256 bytes";
                return false;
            }
            name = user_channel(item);
        }
        if (std::find(channels.begin(), channels.end(), name) != channels.end()) continue;
        if (channels.size() == max_targets) {
            reason = std::string("too many ") + (client_ids ? "clients" : "users") + ": at most " +
                     std::to_string(max_targets) + " per request";
            return false;
        }
        channels.push_back(std::move(name));
    }
    if (channels.empty()) {
        reason = client_ids ? "no client id given" : "no user key given";
        return false;
    }
    return true;
}

}  // namespace sse
