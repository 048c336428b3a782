// Fuzzes event-type filters (src/protocol/event_filter.h). The whole input is a filter list;
// split at its first LF it is also a (pattern, event name) pair for the glob differential.
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "protocol/event_filter.h"
#include "reference_glob.h"

using namespace sse;

namespace {

// The reference is quadratic: keep each comparison small enough to stay fast.
constexpr std::size_t kMaxReferenceWork = 1 << 16;

void check_glob(std::string_view pattern, std::string_view name) {
    bool fast = glob_match(pattern, name);
    if (pattern.size() * name.size() <= kMaxReferenceWork)
        FUZZ_CHECK(fast == fuzz::reference_glob_match(pattern, name));
    if (pattern.find_first_of("*?") == std::string_view::npos) FUZZ_CHECK(fast == (pattern == name));
    // Every name matches itself, `*` and `?` included, and `*` matches everything.
    FUZZ_CHECK(glob_match(name, name));
    FUZZ_CHECK(glob_match("*", name));
}

std::string_view trimmed(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

void check_filter(std::string_view list, std::string_view name) {
    EventFilter filter;
    std::string reason;
    if (!filter.parse(list, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        return;
    }
    // A filter keeps an event when one of its patterns, read as a reader would, matches the name.
    std::vector<std::string_view> patterns;
    for (std::string_view rest = list; !rest.empty();) {
        auto [item, after] = fuzz::split_once(rest, ',');
        if (!trimmed(item).empty()) patterns.push_back(trimmed(item));
        rest = item.size() == rest.size() ? std::string_view() : after;
    }
    FUZZ_CHECK(filter.empty() == patterns.empty());
    FUZZ_CHECK(patterns.size() <= kMaxFilterPatterns);
    std::string_view type = name.empty() ? "message" : name;
    bool expected = patterns.empty();
    for (std::string_view p : patterns) {
        FUZZ_CHECK(p.size() <= 128 && p.find_first_of("\r\n") == std::string_view::npos);
        if (p.size() * type.size() <= kMaxReferenceWork) {
            expected = expected || fuzz::reference_glob_match(p, type);
        } else {
            expected = expected || glob_match(p, type);
        }
    }
    FUZZ_CHECK(filter.matches(name) == expected);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view text = fuzz::as_text(data, size);
    auto [first_line, rest] = fuzz::split_once(text, '\n');
    check_glob(first_line, rest);
    check_glob(rest, first_line);
    check_filter(text, rest);
    check_filter(first_line, rest);
    return 0;
}
