// The glob of event-type filters as a definition, to check the fast matcher against: `*` matches
// any run of bytes (a `*` in the name included), `?` any one byte, anything else itself.
// Plain recursion on the definition, remembered per (pattern, name) suffix so it stays polynomial.
#pragma once

#include <string_view>
#include <vector>

namespace fuzz {

class ReferenceGlob {
public:
    ReferenceGlob(std::string_view pattern, std::string_view name)
        : pattern_(pattern), name_(name), known_((pattern.size() + 1) * (name.size() + 1), kUnknown) {}

    bool matches() { return match(0, 0); }

private:
    static constexpr signed char kUnknown = -1;

    // Whether pattern_[p..] matches name_[n..].
    bool match(std::size_t p, std::size_t n) {
        signed char& known = known_[p * (name_.size() + 1) + n];
        if (known == kUnknown) known = decide(p, n);
        return known;
    }

    bool decide(std::size_t p, std::size_t n) {
        if (p == pattern_.size()) return n == name_.size();
        bool name_left = n < name_.size();
        // `*` matches nothing more, or one more byte and keeps going.
        if (pattern_[p] == '*') return match(p + 1, n) || (name_left && match(p, n + 1));
        return name_left && (pattern_[p] == '?' || pattern_[p] == name_[n]) && match(p + 1, n + 1);
    }

    std::string_view pattern_, name_;
    std::vector<signed char> known_;
};

inline bool reference_glob_match(std::string_view pattern, std::string_view name) {
    return ReferenceGlob(pattern, name).matches();
}

}  // namespace fuzz
