#include "protocol/utf8.h"

#include <cstddef>

namespace sse {

bool is_valid_utf8(std::string_view text) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
        // Fast path: ASCII runs dominate JSON payloads.
        if (*p < 0x80) {
            ++p;
            continue;
        }
        unsigned char c = *p;
        std::size_t need;
        unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;  // overlong
            if (c == 0xed) hi = 0x9f;  // surrogates
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;  // overlong
            if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
        } else {
            return false;
        }
        if (static_cast<std::size_t>(end - p) <= need) return false;
        if (p[1] < lo || p[1] > hi) return false;
        for (std::size_t i = 2; i <= need; i++) {
            if (p[i] < 0x80 || p[i] > 0xbf) return false;
        }
        p += need + 1;
    }
    return true;
}

}  // namespace sse
