// Event-type filters: a stream may keep only the events whose names match one of a few glob
// patterns (`order.*`, `*.deleted`, `message`). Pure C++.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace sse {

constexpr std::size_t kMaxFilterPatterns = 32;

class EventFilter {
public:
    // Parses a comma-separated list of patterns (spaces around commas trimmed; empty items
    // skipped). `*` matches any run of bytes, `?` any one byte. False, with a one-line reason,
    // for a pattern over 128 bytes or holding CR or LF, or more than 32 patterns.
    bool parse(std::string_view list, std::string& reason);

    bool empty() const { return patterns_.empty(); }

    // Whether an event of this name passes. An unnamed event is of type `message`, as
    // EventSource dispatches it.
    bool matches(std::string_view event_name) const;

private:
    std::vector<std::string> patterns_;
};

// Glob match of `text` against `pattern` (`*` any run, `?` any one byte), in linear time.
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace sse
