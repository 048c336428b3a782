// Fuzzes what a client sends back to resume (src/protocol/resume.h): the id it gives, and how
// that id is echoed in the reset frame. The whole input is the given id (and the user key of a
// connected frame); its first line, if a valid event name, also names the reset event.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_check.h"
#include "protocol/event_frame.h"
#include "protocol/resume.h"
#include "protocol/utf8.h"

using namespace sse;

namespace {

// Decimal digits read into a wide integer, saturated at UINT64_MAX.
bool reference_id(std::string_view text, std::uint64_t& id) {
    if (text.empty() || text.size() > kMaxIdDigits) return false;
    unsigned __int128 value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        value = value * 10 + unsigned(c - '0');
    }
    id = value > UINT64_MAX ? UINT64_MAX : std::uint64_t(value);
    return true;
}

void check_id(std::string_view text) {
    std::uint64_t id = 0, expected = 0;
    bool parsed = parse_event_id(text, id);
    FUZZ_CHECK(parsed == reference_id(text, expected));
    if (!parsed) return;
    FUZZ_CHECK(id == expected);
    // Printed again, it parses back to itself.
    std::uint64_t again = 0;
    FUZZ_CHECK(parse_event_id(std::to_string(id), again) && again == id);
}

// The JSON string body is well formed, printable, valid UTF-8, and says what was given.
void check_echo(std::string_view given) {
    std::string echo = echoed_id(given);
    FUZZ_CHECK(is_valid_utf8(echo));
    for (unsigned char c : echo) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
    FUZZ_CHECK(echo.size() <= kMaxEchoedIdLength * 6);
    nlohmann::json decoded = nlohmann::json::parse("\"" + echo + "\"", nullptr, false);
    FUZZ_CHECK(!decoded.is_discarded() && decoded.is_string());
    std::string_view shown = given.substr(0, kMaxEchoedIdLength);
    if (is_valid_utf8(shown)) FUZZ_CHECK(decoded.get<std::string>() == shown);
}

void check_reset_frame(std::string_view event_name, std::string_view given, ResetReason reason) {
    std::string frame = reset_frame(event_name, given, reason);
    std::string head = "event: " + std::string(event_name) + "\ndata: ";
    FUZZ_CHECK(frame.compare(0, head.size(), head) == 0);
    FUZZ_CHECK(frame.size() >= head.size() + 2 && frame.compare(frame.size() - 2, 2, "\n\n") == 0);
    std::string data = frame.substr(head.size(), frame.size() - head.size() - 2);
    FUZZ_CHECK(data.find_first_of("\r\n") == std::string::npos);  // one data line
    nlohmann::json j = nlohmann::json::parse(data, nullptr, false);
    FUZZ_CHECK(j.is_object() && j.size() == 2);
    FUZZ_CHECK(j["last_event_id"].is_string());
    FUZZ_CHECK(j["reason"] == std::string(reset_reason_name(reason)));
    nlohmann::json echoed = nlohmann::json::parse("\"" + echoed_id(given) + "\"", nullptr, false);
    FUZZ_CHECK(j["last_event_id"] == echoed);
}

void check_connected_frame(std::string_view user) {
    std::string frame = connected_frame("connected", 42, user);
    const std::string head = "event: connected\ndata: ";
    FUZZ_CHECK(frame.compare(0, head.size(), head) == 0);
    std::string data = frame.substr(head.size(), frame.size() - head.size() - 2);
    FUZZ_CHECK(data.find_first_of("\r\n") == std::string::npos);
    nlohmann::json j = nlohmann::json::parse(data, nullptr, false);
    FUZZ_CHECK(j.is_object() && j["client_id"] == "42");
    if (!user.empty() && is_valid_utf8(user)) FUZZ_CHECK(j["user"] == std::string(user));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view text = fuzz::as_text(data, size);
    check_id(text);
    check_echo(text);
    check_reset_frame("reset", text, ResetReason::kMalformed);
    auto [first_line, rest] = fuzz::split_once(text, '\n');
    if (is_valid_event_name(first_line)) check_reset_frame(first_line, rest, ResetReason(size % 5));
    check_connected_frame(text);
    return 0;
}
