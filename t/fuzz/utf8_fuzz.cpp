// Fuzzes the UTF-8 validator (src/protocol/utf8.h) against a plain decoder written from RFC 3629:
// decode each code point, then refuse overlongs, surrogates and anything above U+10FFFF.
#include <cstdint>

#include "fuzz_check.h"
#include "protocol/utf8.h"

namespace {

bool decodes_as_utf8(const unsigned char* p, std::size_t size) {
    std::size_t i = 0;
    while (i < size) {
        unsigned char lead = p[i];
        std::size_t length;
        std::uint32_t code_point;
        std::uint32_t smallest;  // below this, a shorter form exists: overlong
        if (lead < 0x80) {
            length = 1, code_point = lead, smallest = 0;
        } else if ((lead & 0xe0) == 0xc0) {
            length = 2, code_point = lead & 0x1f, smallest = 0x80;
        } else if ((lead & 0xf0) == 0xe0) {
            length = 3, code_point = lead & 0x0f, smallest = 0x800;
        } else if ((lead & 0xf8) == 0xf0) {
            length = 4, code_point = lead & 0x07, smallest = 0x10000;
        } else {
            return false;  // a continuation byte first, or 0xf8-0xff
        }
        if (size - i < length) return false;
        for (std::size_t k = 1; k < length; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            code_point = (code_point << 6) | (p[i + k] & 0x3f);
        }
        if (code_point < smallest || code_point > 0x10ffff) return false;
        if (code_point >= 0xd800 && code_point <= 0xdfff) return false;
        i += length;
    }
    return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    bool valid = sse::is_valid_utf8(fuzz::as_text(data, size));
    FUZZ_CHECK(valid == decodes_as_utf8(data, size));
    // Validity is a property of whole characters: a valid text split at an ASCII byte stays valid.
    if (valid) {
        for (std::size_t i = 0; i < size; i++) {
            if (data[i] < 0x80) {
                FUZZ_CHECK(sse::is_valid_utf8(fuzz::as_text(data, i)));
                FUZZ_CHECK(sse::is_valid_utf8(fuzz::as_text(data + i, size - i)));
                break;
            }
        }
    }
    return 0;
}
