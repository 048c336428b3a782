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

// False, with a one-line reason, for anything that is not a well-formed entry.
bool parse_redis_entry(const char* text, std::size_t len, RedisEntry& out, std::string& reason);
bool parse_redis_history(const char* text, std::size_t len, RedisHistory& out, std::string& reason);

}  // namespace sse
