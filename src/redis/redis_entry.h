// Reading what Redis carries between nodes: one event entry (a pub/sub message, an element of a
// channel's history) or a channel's whole history as sse_history sends it. See
// redis_functions.h for the format. Pure C++ (nlohmann/json), unit-tested in t/unit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sse {

struct RedisEntry {
    std::uint64_t id = 0;
    std::string origin;  // empty: published by another service
    std::uint64_t published_ms = 0;
    std::uint64_t lost = 0;  // the channel's newest id Redis no longer retained when this was added
    std::string name;
    std::string data;
    std::vector<std::string> keys;  // all its channels' keys, when it has several
};

struct RedisHistory {
    std::string key;
    std::vector<RedisEntry> entries;
};

// A request one node sends every other through Redis's control channel:
//   {"o":"<origin>","op":"disconnect","id":"<client id>","user":"..","channel":".."}  (sse_clients DELETE)
//   {"o":"<origin>","op":"close","channel":".."}                                    (DELETE of a channel)
//   {"o":"<origin>","op":"list","reply":"<channel>","id":..,"user":..,"channel":..,"after":"<id>","limit":N}
//                      (sse_clients?scope=cluster: each node publishes its streams to `reply`)
struct RedisControl {
    std::string origin;
    std::string op;
    std::uint64_t id = 0;
    std::string user;
    std::string channel;
    std::string reply;
    std::uint64_t after = 0;
    std::uint64_t limit = 0;
};

// False, with a one-line reason, for anything that is not a well-formed entry.
bool parse_redis_entry(const char* text, std::size_t len, RedisEntry& out, std::string& reason);
bool parse_redis_history(const char* text, std::size_t len, RedisHistory& out, std::string& reason);
bool parse_redis_control(const char* text, std::size_t len, RedisControl& out, std::string& reason);
// The JSON of a control message, without its origin (the link adds it when sending).
std::string control_json(const RedisControl& control);
// A control message as a node sends it: control_json() with the node's origin added, so that the
// node knows its own request coming back. Empty when `control` is not a JSON object.
std::string control_with_origin(std::string_view control, std::string_view origin);

}  // namespace sse
