// How bytes a client (or a Redis server) gave us may appear in what we write: a log line, a
// text/plain reason, a JSON body. Every such byte goes through one of these two functions, so
// no client can write a line into error.log or break a JSON reply. Pure C++.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sse {

// At most this many bytes of a client's value are shown in a log line or a reason.
constexpr std::size_t kMaxShownBytes = 128;

// The bytes in double quotes, as a log line or a text/plain reason shows them: printable ASCII
// as it is, except `"` and `\`, which get a backslash; every other byte as \xHH (uppercase, as
// nginx's own logs escape). More than 128 bytes are cut, with "..." after the closing quote.
std::string quoted_bytes(std::string_view bytes);

// The same escaping, without the quotes and without a length limit, for text that is mostly
// ours but may carry a few bytes of someone else's (an error message quoting a server).
std::string escaped(std::string_view bytes);

// A JSON string literal, quotes included. Invalid UTF-8 becomes U+FFFD, so the result is
// always valid JSON whatever the bytes.
std::string json_string(std::string_view bytes);

}  // namespace sse
