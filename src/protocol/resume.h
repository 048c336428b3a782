// Resuming a stream: reading the position a client sends back (Last-Event-ID) and the reset
// event that tells it its position could not be resumed exactly. Pure C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sse {

// Ids are unsigned decimal numbers of at most 20 digits (no sign, no spaces).
constexpr std::size_t kMaxIdDigits = 20;

// Parses a position; false when it is not a decimal number of at most 20 digits. A number past
// the largest id saturates to UINT64_MAX: later than any id issued.
bool parse_event_id(std::string_view text, std::uint64_t& id) noexcept;

// Why a position cannot be resumed exactly; the names are the `reason` of the reset event.
enum class ResetReason { kNone, kMalformed, kFuture, kBeforeRestart, kEvicted };
std::string_view reset_reason_name(ResetReason reason) noexcept;

// The given id is echoed back at most this long.
constexpr std::size_t kMaxEchoedIdLength = 64;

// The given id as it may be echoed (in the reset event, in a log line): at most 64 bytes,
// JSON-escaped, invalid UTF-8 as U+FFFD.
std::string echoed_id(std::string_view given_id);

// The frame
//   event: <name>\n
//   data: {"last_event_id":"<given id, JSON-escaped, at most 64 bytes>","reason":"<reason>"}\n
//   \n
// It carries no id: the client's position stays that of the last real event it receives.
std::string reset_frame(std::string_view event_name, std::string_view given_id, ResetReason reason);

// The first frame of a stream with sse_connected_event, telling it who it is:
//   event: <name>\n
//   data: {"client_id":"<id>"}\n             or {"client_id":"<id>","user":"<user, JSON-escaped>"}
//   \n
// No id either, for the same reason.
std::string connected_frame(std::string_view event_name, std::uint64_t client_id, std::string_view user);

}  // namespace sse
