#include "protocol/publish_body.h"

#include "protocol/client_text.h"
#include "protocol/event_frame.h"

namespace sse {

namespace {

struct PendingEvent {
    bool started = false;
    bool has_data = false;
    BatchEvent event;
};

}  // namespace

bool parse_event_stream_batch(std::string_view body, std::vector<BatchEvent>& events, std::string& reason) {
    events.clear();
    PendingEvent pending;
    std::size_t line_no = 0;

    auto dispatch = [&]() {
        if (pending.started) events.push_back(std::move(pending.event));
        pending = PendingEvent{};
    };

    std::size_t pos = 0;
    const std::size_t n = body.size();
    while (pos < n) {
        std::size_t eol = body.find_first_of("\r\n", pos);
        if (eol == std::string_view::npos) eol = n;
        std::string_view line = body.substr(pos, eol - pos);
        pos = eol;
        if (pos < n) {
            pos += (body[pos] == '\r' && pos + 1 < n && body[pos + 1] == '\n') ? 2 : 1;
        }
        line_no++;

        if (line.empty()) {
            dispatch();
            continue;
        }
        if (line.front() == ':') continue;

        std::size_t colon = line.find(':');
        std::string_view field = line.substr(0, colon);
        std::string_view value;
        if (colon != std::string_view::npos) {
            value = line.substr(colon + 1);
            if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        }

        if (field == "data") {
            if (pending.has_data) pending.event.data += '\n';
            pending.event.data.append(value);
            pending.has_data = true;
            pending.started = true;
        } else if (field == "event") {
            if (!is_valid_event_name(value)) {
                reason = "event name longer than 128 bytes on line " + std::to_string(line_no);
                return false;
            }
            pending.event.name.assign(value);
            pending.started = true;
        } else if (field == "id") {
            reason = "\"id:\" on line " + std::to_string(line_no) + ": event ids are assigned by the server";
            return false;
        } else if (field == "retry") {
            reason = "\"retry:\" on line " + std::to_string(line_no) + ": retry is set by sse_retry";
            return false;
        } else {
            reason = "unknown field " + quoted_bytes(field.substr(0, 32)) + " on line " + std::to_string(line_no) +
                     ": a batch holds event: and data: fields";
            return false;
        }
    }
    dispatch();
    if (events.empty()) {
        reason = "the batch holds no event";
        return false;
    }
    return true;
}

}  // namespace sse
