#include "protocol/event_filter.h"

#include "protocol/client_text.h"
#include "protocol/event_frame.h"

namespace sse {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) noexcept {
    // Greedy with one backtrack point (the last `*`): linear, no recursion.
    std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
    while (t < text.size()) {
        // A `*` in the pattern is always a wildcard, even against a `*` in the name.
        if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            mark = t;
        } else if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
            p++;
            t++;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++mark;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') p++;
    return p == pattern.size();
}

bool EventFilter::parse(std::string_view list, std::string& reason) {
    patterns_.clear();
    while (!list.empty()) {
        std::size_t comma = list.find(',');
        std::string_view item = trim(list.substr(0, comma));
        list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
        if (item.empty()) continue;
        if (!is_valid_event_name(item)) {
            reason = "invalid event type pattern " + quoted_bytes(item) + ": at most 128 bytes, no line breaks";
            return false;
        }
        if (patterns_.size() == kMaxFilterPatterns) {
            reason = "too many event type patterns: at most 32";
            return false;
        }
        patterns_.emplace_back(item);
    }
    return true;
}

bool EventFilter::matches(std::string_view event_name) const {
    if (patterns_.empty()) return true;
    if (event_name.empty()) event_name = "message";
    for (const std::string& p : patterns_) {
        if (glob_match(p, event_name)) return true;
    }
    return false;
}

}  // namespace sse
