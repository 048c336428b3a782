// Parsing of the comma-separated channel list a request names.
// Pure C++: no nginx types, unit-tested in t/unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sse {

constexpr std::size_t kMaxChannelNameLength = 128;
constexpr std::size_t kDefaultMaxChannels = 32;

// A channel name is 1-128 bytes of A-Z a-z 0-9 _ - . : @ /
bool is_valid_channel_name(std::string_view name) noexcept;

// Splits "a, b,c" into names: spaces around commas trimmed, duplicates collapsed (first
// occurrence keeps its place). On a bad list returns false and a one-line reason.
// The views point into `text`.
// With `patterns`, a name may also be a prefix pattern: `blog.*` (every channel starting with
// "blog.") or `*` (every channel).
bool parse_channel_list(std::string_view text, std::size_t max_channels, std::vector<std::string_view>& names,
                        std::string& reason, bool patterns = false);

// Whether a name is a prefix pattern (`blog.*`, `*`), and whether it covers a channel.
bool is_channel_pattern(std::string_view name) noexcept;
bool pattern_covers(std::string_view pattern, std::string_view channel) noexcept;

// The channels that reach one stream (its client id) or every stream of one user key. A `#`
// cannot be in a channel a request names, so these never meet one; they travel like any channel
// (to every worker, through Redis to every node, with history).
std::string client_channel(std::uint64_t client_id);
std::string user_channel(std::string_view user);
constexpr std::size_t kMaxUserKeyLength = 256;

// Why a stream's user key (sse_user) cannot be used, or an empty string when it can: it is at
// most 256 bytes and holds no comma and no space or tab at either end, since sse_publish_user
// reads comma-separated, trimmed lists and could never reach such a key.
std::string user_key_problem(std::string_view user);

// sse_publish_client / sse_publish_user: a comma-separated list of client ids or user keys
// (spaces around commas trimmed, duplicates collapsed) as the channels that reach them. On a bad
// list returns false and a one-line reason.
bool parse_stream_targets(std::string_view text, bool client_ids, std::size_t max_targets,
                          std::vector<std::string>& channels, std::string& reason);

// Whether a channel is allowed by one pattern of sse_subscribe_allow: the pattern is the name
// itself, or ends in `*` and the name starts with what comes before it (`public.*`, `*`).
bool channel_allowed_by(std::string_view pattern, std::string_view name) noexcept;

}  // namespace sse
