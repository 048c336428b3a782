// Fuzzes the batch publish body (src/protocol/publish_body.h): what it accepts are events that,
// written back in SSE syntax, read back the same.
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "protocol/event_frame.h"
#include "protocol/publish_body.h"

using namespace sse;

namespace {

std::string written_back(const std::vector<BatchEvent>& events) {
    std::string body;
    for (const BatchEvent& e : events) {
        body += "event: " + e.name + "\n";
        if (!e.data.empty()) {
            std::string_view data = e.data;
            while (true) {
                auto [line, rest] = fuzz::split_once(data, '\n');
                body += "data: ";
                body += line;
                body += "\n";
                if (line.size() == data.size()) break;
                data = rest;
            }
        }
        body += "\n";
    }
    return body;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view body = fuzz::as_text(data, size);
    std::vector<BatchEvent> events;
    std::string reason;
    if (!parse_event_stream_batch(body, events, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        return 0;
    }
    FUZZ_CHECK(!events.empty());
    for (const BatchEvent& e : events) {
        FUZZ_CHECK(is_valid_event_name(e.name));
        // Lines end at CR too: data can hold LF only where it joins two data lines.
        FUZZ_CHECK(e.data.find('\r') == std::string::npos);
        FUZZ_CHECK(e.name.size() <= body.size() && e.data.size() <= body.size());
    }
    std::vector<BatchEvent> again;
    FUZZ_CHECK(parse_event_stream_batch(written_back(events), again, reason));
    FUZZ_CHECK(again.size() == events.size());
    for (std::size_t i = 0; i < events.size(); i++) {
        FUZZ_CHECK(again[i].name == events[i].name);
        FUZZ_CHECK(again[i].data == events[i].data);
    }
    return 0;
}
