// What every fuzz target shares: a failed invariant aborts, which libFuzzer reports as a crash
// and saves the input that caused it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

#define FUZZ_CHECK(condition)                                                                        \
    do {                                                                                             \
        if (!(condition)) {                                                                          \
            std::fprintf(stderr, "invariant broken at %s:%d: %s\n", __FILE__, __LINE__, #condition); \
            std::abort();                                                                            \
        }                                                                                            \
    } while (0)

namespace fuzz {

inline std::string_view as_text(const unsigned char* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Whether `part` is a view into `whole` (parsers return views, never copies, into their input).
inline bool lies_within(std::string_view part, std::string_view whole) {
    return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// A reason a request is refused with goes into a log line and a plain-text body: one line.
inline bool is_one_line(std::string_view reason) {
    return !reason.empty() && reason.find_first_of("\r\n") == std::string_view::npos;
}

// Printable ASCII only: what the parsers promise when they quote client bytes back.
inline bool is_printable_ascii(std::string_view text) {
    for (unsigned char c : text) {
        if (c < 0x20 || c >= 0x7f) return false;
    }
    return true;
}

// The text before the first `separator`, and after it (empty when there is none).
inline std::pair<std::string_view, std::string_view> split_once(std::string_view text, char separator) {
    std::size_t at = text.find(separator);
    if (at == std::string_view::npos) return {text, {}};
    return {text.substr(0, at), text.substr(at + 1)};
}

}  // namespace fuzz
