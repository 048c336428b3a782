// Fuzzes the decoding of what arrives from Redis (src/redis/redis_entry.h): the same bytes as an
// entry, a history and a control message.
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_check.h"
#include "protocol/event_frame.h"
#include "redis/redis_entry.h"

using namespace sse;

namespace {

void check_entry(const RedisEntry& e) {
    FUZZ_CHECK(e.id != 0);
    FUZZ_CHECK(is_valid_event_name(e.name));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    const char* text = reinterpret_cast<const char*>(data);
    std::string reason;

    RedisEntry entry;
    if (parse_redis_entry(text, size, entry, reason)) {
        check_entry(entry);
    } else {
        FUZZ_CHECK(fuzz::is_one_line(reason));
    }

    RedisHistory history;
    reason.clear();
    if (parse_redis_history(text, size, history, reason)) {
        for (const RedisEntry& e : history.entries) check_entry(e);
    } else {
        FUZZ_CHECK(fuzz::is_one_line(reason));
    }

    RedisControl control;
    reason.clear();
    if (!parse_redis_control(text, size, control, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        return 0;
    }
    FUZZ_CHECK(control.op == "disconnect" || control.op == "close");
    if (control.op == "close") FUZZ_CHECK(!control.channel.empty());
    if (control.op == "disconnect") FUZZ_CHECK(control.id != 0 || !control.user.empty() || !control.channel.empty());
    // What this node would send reads back the same on the others (the link adds the origin).
    nlohmann::json sent = nlohmann::json::parse(control_json(control));
    sent["o"] = control.origin;
    std::string wire = sent.dump();
    RedisControl received;
    FUZZ_CHECK(parse_redis_control(wire.data(), wire.size(), received, reason));
    FUZZ_CHECK(received.origin == control.origin && received.op == control.op && received.id == control.id &&
               received.user == control.user && received.channel == control.channel);
    return 0;
}
