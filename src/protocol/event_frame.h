// SSE wire format: an event is formatted once into these bytes, which every worker then writes
// to its subscribers' sockets as they are. Pure C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sse {

constexpr std::size_t kMaxEventNameLength = 128;

// Bytes of the frame
//   id: <id>\n
//   event: <name>\n            (only when name is not empty)
//   data: <line>\n             (one per line of data; lines split on LF, CRLF or CR;
//                               an empty line is written "data:\n")
//   \n
std::size_t event_frame_size(std::uint64_t id, std::string_view name, std::string_view data) noexcept;

// Writes the frame into dst, which holds event_frame_size() bytes; returns the end.
char* write_event_frame(char* dst, std::uint64_t id, std::string_view name, std::string_view data) noexcept;

// The data an event was published with, read back from its frame (its data lines joined by LF;
// a CR or CRLF line end in the original comes back as LF).
std::string event_frame_data(std::string_view frame);

// Where the event's name starts in its frame (when it has one): after "id: <id>\nevent: ".
std::size_t event_name_offset(std::uint64_t id) noexcept;

// An event name may not hold CR or LF (it would end the field) and is at most 128 bytes.
bool is_valid_event_name(std::string_view name) noexcept;

// Decimal digits of an id.
std::size_t decimal_length(std::uint64_t value) noexcept;
char* write_decimal(char* dst, std::uint64_t value) noexcept;

// What a stream starts with: a comment, so proxies and browsers see it open at once, and the
// retry field when configured (retry_ms < 0: none).
std::size_t stream_preamble_size(long retry_ms) noexcept;
char* write_stream_preamble(char* dst, long retry_ms) noexcept;

// Sent to a stream that has been idle for the heartbeat interval.
constexpr std::string_view kHeartbeatFrame = ": heartbeat\n\n";

// HTTP/1.1 chunked framing, as nginx's chunked filter writes it ("<hex>\r\n" bytes "\r\n", the
// size in lowercase hex without leading zeros), so that a stream whose bytes no nginx filter
// changes can be written framed once (see subscribe_handler.cpp). A chunk is never empty.
constexpr std::size_t kMaxChunkHeadSize = 2 * sizeof(std::size_t) + 2;
constexpr std::string_view kChunkTail = "\r\n";
std::size_t chunk_head_size(std::size_t len) noexcept;
char* write_chunk_head(char* dst, std::size_t len) noexcept;
// Bytes wrapped in one chunk.
std::string chunked(std::string_view bytes);

}  // namespace sse
