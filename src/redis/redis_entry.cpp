#include "redis/redis_entry.h"

#include <nlohmann/json.hpp>

#include "protocol/event_frame.h"
#include "protocol/resume.h"
#include "protocol/utf8.h"

namespace sse {

namespace {

using nlohmann::json;

bool id_field(const json& j, const char* key, std::uint64_t& out, bool required) {
    auto it = j.find(key);
    if (it == j.end()) return !required;
    return it->is_string() && parse_event_id(it->get_ref<const std::string&>(), out);
}

// A string field; absent is fine (dst unchanged), any other type is not.
bool text_field(const json& j, const char* key, std::string& dst) {
    auto it = j.find(key);
    if (it == j.end()) return true;
    if (!it->is_string()) return false;
    dst = it->get<std::string>();
    return true;
}

bool entry_from(const json& j, RedisEntry& out, std::string& reason) {
    out = RedisEntry{};
    if (!j.is_object()) {
        reason = "an entry is not a JSON object";
        return false;
    }
    if (!id_field(j, "i", out.id, true) || out.id == 0) {
        reason = "an entry has no valid id";
        return false;
    }
    if (!id_field(j, "l", out.lost, false)) {
        reason = "an entry has a bad \"l\"";
        return false;
    }
    if (!text_field(j, "o", out.origin) || !text_field(j, "e", out.name) || !text_field(j, "d", out.data)) {
        reason = "an entry has a field of the wrong type";
        return false;
    }
    if (!is_valid_event_name(out.name)) {
        reason = "an entry's event name holds CR or LF or is too long";
        return false;
    }
    auto c = j.find("c");
    if (c != j.end()) {
        if (!c->is_array()) {
            reason = "an entry's \"c\" is not an array";
            return false;
        }
        for (const json& key : *c) {
            if (!key.is_string()) {
                reason = "an entry's \"c\" holds a non-string";
                return false;
            }
            out.keys.push_back(key.get<std::string>());
        }
    }
    auto t = j.find("t");
    if (t != j.end() && t->is_number()) {
        // Out of range the cast is undefined: a time no clock gives is no time (0).
        double ms = t->get<double>();
        if (ms >= 0 && ms < 18446744073709551616.0) out.published_ms = std::uint64_t(ms);
    }
    return true;
}

}  // namespace

bool parse_redis_entry(const char* text, std::size_t len, RedisEntry& out, std::string& reason) {
    json j = json::parse(text, text + len, nullptr, false);
    if (j.is_discarded()) {
        reason = "not JSON (or not UTF-8)";
        return false;
    }
    return entry_from(j, out, reason);
}

// The text as a JSON object; false, with "<what> is not a JSON object", for anything else.
bool json_object(const char* text, std::size_t len, const char* what, json& j, std::string& reason) {
    j = json::parse(text, text + len, nullptr, false);
    if (!j.is_discarded() && j.is_object()) return true;
    reason = std::string(what) + " is not a JSON object";
    return false;
}

bool parse_redis_history(const char* text, std::size_t len, RedisHistory& out, std::string& reason) {
    out = RedisHistory{};
    json j;
    if (!json_object(text, len, "a history", j, reason)) return false;
    auto k = j.find("k");
    auto e = j.find("e");
    if (k == j.end() || !k->is_string() || e == j.end() || !e->is_array()) {
        reason = "a history has no \"k\" string and \"e\" array";
        return false;
    }
    out.key = k->get<std::string>();
    out.entries.reserve(e->size());
    for (const json& item : *e) {
        RedisEntry entry;
        if (!entry_from(item, entry, reason)) return false;
        out.entries.push_back(std::move(entry));
    }
    return true;
}

bool parse_redis_control(const char* text, std::size_t len, RedisControl& out, std::string& reason) {
    out = RedisControl{};
    json j;
    if (!json_object(text, len, "a control message", j, reason)) return false;
    if (!text_field(j, "o", out.origin) || !text_field(j, "op", out.op) || !text_field(j, "user", out.user) ||
        !text_field(j, "channel", out.channel) || !text_field(j, "reply", out.reply) ||
        !id_field(j, "id", out.id, false) || !id_field(j, "after", out.after, false)) {
        reason = "a control message has a field of the wrong type";
        return false;
    }
    auto limit = j.find("limit");
    if (limit != j.end()) {
        if (!limit->is_number_unsigned() || limit->get<std::uint64_t>() > 1000) {
            reason = "a control message has a limit that is not a number from 0 to 1000";
            return false;
        }
        out.limit = limit->get<std::uint64_t>();
    }
    if (out.op == "disconnect" && (out.id != 0 || !out.user.empty() || !out.channel.empty())) return true;
    if (out.op == "close" && !out.channel.empty()) return true;
    if (out.op == "list" && !out.reply.empty()) return true;
    reason = "a control message asks for nothing known";
    return false;
}

std::string control_json(const RedisControl& c) {
    json j = json::object();
    j["op"] = c.op;
    if (c.id != 0) j["id"] = std::to_string(c.id);
    if (!c.user.empty()) j["user"] = c.user;
    if (!c.channel.empty()) j["channel"] = c.channel;
    if (!c.reply.empty()) j["reply"] = c.reply;
    if (c.after != 0) j["after"] = std::to_string(c.after);
    if (c.limit != 0) j["limit"] = c.limit;
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string control_with_origin(std::string_view control, std::string_view origin) {
    json j = json::parse(control.begin(), control.end(), nullptr, false);
    if (!j.is_object()) return {};
    j["o"] = std::string(origin);
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace sse
