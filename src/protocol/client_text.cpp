#include "protocol/client_text.h"

#include <nlohmann/json.hpp>

namespace sse {

std::string escaped(std::string_view bytes) {
    static const char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(bytes.size());
    for (unsigned char c : bytes) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c >= 0x20 && c < 0x7f) {
            out += char(c);
        } else {
            out += "\\x";
            out += kHex[c >> 4];
            out += kHex[c & 0xf];
        }
    }
    return out;
}

std::string quoted_bytes(std::string_view bytes) {
    std::string out = "\"" + escaped(bytes.substr(0, kMaxShownBytes)) + "\"";
    if (bytes.size() > kMaxShownBytes) out += "...";
    return out;
}

std::string json_string(std::string_view bytes) {
    std::string out = nlohmann::json(std::string(bytes)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    // JSON lets DEL stand as it is; written as \u007f, the result is printable ASCII or UTF-8.
    // (0x7f is never part of a multi-byte UTF-8 sequence.)
    for (std::size_t i = out.find('\x7f'); i != std::string::npos; i = out.find('\x7f', i + 6)) {
        out.replace(i, 1, "\\u007f");
    }
    return out;
}

}  // namespace sse
