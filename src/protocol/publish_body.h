// The body of a batch publish (Content-Type: text/event-stream): events written in SSE syntax,
// blank-line separated, published in order by one request. Pure C++.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sse {

struct BatchEvent {
    std::string name;
    std::string data;
};

// Fields: "event:" names the event, "data:" adds a line of data, lines starting with ':' are
// comments. "id:" and "retry:" are refused (ids are the server's, retry is sse_retry's), as is
// any other field: a typo must not publish an event with silently missing parts.
// Lines end with LF, CRLF or CR; the last event may lack its blank line.
// Returns false with a one-line reason on a bad body.
bool parse_event_stream_batch(std::string_view body, std::vector<BatchEvent>& events, std::string& reason);

}  // namespace sse
