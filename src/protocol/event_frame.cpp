#include "protocol/event_frame.h"

#include <cstring>

namespace sse {

namespace {

constexpr std::string_view kIdField = "id: ";
constexpr std::string_view kEventField = "event: ";
constexpr std::string_view kDataField = "data: ";
constexpr std::string_view kEmptyDataLine = "data:\n";
constexpr std::string_view kPreambleComment = ":ok\n";
constexpr std::string_view kRetryField = "retry: ";

char* put(char* dst, std::string_view s) noexcept {
    std::memcpy(dst, s.data(), s.size());
    return dst + s.size();
}

// Calls line(text) for each line of data, splitting on LF, CRLF and CR.
template <typename F>
void for_each_line(std::string_view data, F&& line) noexcept {
    std::size_t start = 0;
    const std::size_t n = data.size();
    for (std::size_t i = 0; i < n; i++) {
        char c = data[i];
        if (c != '\n' && c != '\r') continue;
        line(data.substr(start, i - start));
        if (c == '\r' && i + 1 < n && data[i + 1] == '\n') i++;
        start = i + 1;
    }
    line(data.substr(start));
}

}  // namespace

std::size_t decimal_length(std::uint64_t value) noexcept {
    std::size_t n = 1;
    while (value >= 10) {
        value /= 10;
        n++;
    }
    return n;
}

char* write_decimal(char* dst, std::uint64_t value) noexcept {
    std::size_t n = decimal_length(value);
    for (std::size_t i = n; i > 0; i--) {
        dst[i - 1] = char('0' + value % 10);
        value /= 10;
    }
    return dst + n;
}

std::size_t event_frame_size(std::uint64_t id, std::string_view name, std::string_view data) noexcept {
    std::size_t size = kIdField.size() + decimal_length(id) + 1;
    if (!name.empty()) size += kEventField.size() + name.size() + 1;
    for_each_line(data, [&](std::string_view line) {
        size += line.empty() ? kEmptyDataLine.size() : kDataField.size() + line.size() + 1;
    });
    return size + 1;
}

char* write_event_frame(char* dst, std::uint64_t id, std::string_view name, std::string_view data) noexcept {
    dst = put(dst, kIdField);
    dst = write_decimal(dst, id);
    *dst++ = '\n';
    if (!name.empty()) {
        dst = put(dst, kEventField);
        dst = put(dst, name);
        *dst++ = '\n';
    }
    for_each_line(data, [&](std::string_view line) {
        if (line.empty()) {
            dst = put(dst, kEmptyDataLine);
            return;
        }
        dst = put(dst, kDataField);
        dst = put(dst, line);
        *dst++ = '\n';
    });
    *dst++ = '\n';
    return dst;
}

std::size_t event_name_offset(std::uint64_t id) noexcept {
    return kIdField.size() + decimal_length(id) + 1 + kEventField.size();
}

bool is_valid_event_name(std::string_view name) noexcept {
    return name.size() <= kMaxEventNameLength && name.find_first_of("\r\n") == std::string_view::npos;
}

std::size_t stream_preamble_size(long retry_ms) noexcept {
    std::size_t size = kPreambleComment.size() + 1;
    if (retry_ms >= 0) size += kRetryField.size() + decimal_length(std::uint64_t(retry_ms)) + 1;
    return size;
}

char* write_stream_preamble(char* dst, long retry_ms) noexcept {
    dst = put(dst, kPreambleComment);
    if (retry_ms >= 0) {
        dst = put(dst, kRetryField);
        dst = write_decimal(dst, std::uint64_t(retry_ms));
        *dst++ = '\n';
    }
    *dst++ = '\n';
    return dst;
}

std::size_t chunk_head_size(std::size_t len) noexcept {
    std::size_t digits = 1;
    while (len >= 16) {
        len /= 16;
        digits++;
    }
    return digits + 2;
}

char* write_chunk_head(char* dst, std::size_t len) noexcept {
    static constexpr char kHex[] = "0123456789abcdef";
    std::size_t digits = chunk_head_size(len) - 2;
    for (std::size_t i = digits; i > 0; i--) {
        dst[i - 1] = kHex[len % 16];
        len /= 16;
    }
    dst[digits] = '\r';
    dst[digits + 1] = '\n';
    return dst + digits + 2;
}

std::string chunked(std::string_view bytes) {
    std::string out(chunk_head_size(bytes.size()) + bytes.size() + kChunkTail.size(), '\0');
    char* p = write_chunk_head(out.data(), bytes.size());
    p = put(p, bytes);
    put(p, kChunkTail);
    return out;
}

std::string event_frame_data(std::string_view frame) {
    std::string out;
    bool first = true;
    while (!frame.empty()) {
        std::size_t eol = frame.find('\n');
        std::string_view line = frame.substr(0, eol);
        frame = eol == std::string_view::npos ? std::string_view() : frame.substr(eol + 1);
        if (line.substr(0, 5) != "data:") continue;
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (!first) out.push_back('\n');
        out.append(line);
        first = false;
    }
    return out;
}

}  // namespace sse
