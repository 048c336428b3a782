#include "redis/cluster_slots.h"

#include <algorithm>

namespace sse {

namespace {

// CRC16-CCITT (XModem): polynomial 0x1021, initial value 0, as Redis Cluster specifies.
std::uint16_t crc16(std::string_view bytes) noexcept {
    std::uint16_t crc = 0;
    for (unsigned char byte : bytes) {
        crc ^= std::uint16_t(byte << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) != 0 ? std::uint16_t((crc << 1) ^ 0x1021) : std::uint16_t(crc << 1);
        }
    }
    return crc;
}

bool is_text(const redisReply* r) {
    return r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

bool is_number(const redisReply* r) {
    return r != nullptr && r->type == REDIS_REPLY_INTEGER;
}

// [host, port, id, ...]: host:port, false when it is not one. The port must be a real one.
bool read_node(const redisReply* r, std::string& host, int& port) {
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_text(r->element[0]) ||
        !is_number(r->element[1])) {
        return false;
    }
    if (r->element[1]->integer <= 0 || r->element[1]->integer > 65535) return false;
    host.assign(r->element[0]->str, r->element[0]->len);
    port = int(r->element[1]->integer);
    return true;
}

bool read_range(const redisReply* r, ClusterSlotRange& range, std::string& reason) {
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 3 || !is_number(r->element[0]) ||
        !is_number(r->element[1])) {
        reason = "a slot range that is not [first, last, primary, ...]";
        return false;
    }
    long long first = r->element[0]->integer;
    long long last = r->element[1]->integer;
    if (first < 0 || last < first || last >= kClusterSlots) {
        reason = "the slot range " + std::to_string(first) + "-" + std::to_string(last) + " is out of 0-16383";
        return false;
    }
    range.first = std::uint16_t(first);
    range.last = std::uint16_t(last);
    if (!read_node(r->element[2], range.host, range.port)) {
        reason = "a slot range whose primary is not [host, port, ...]";
        return false;
    }
    for (std::size_t i = 3; i < r->elements; i++) {
        std::string host;
        int port = 0;
        if (!read_node(r->element[i], host, port)) {
            reason = "a slot range whose replica is not [host, port, ...]";
            return false;
        }
        range.replicas.push_back(host + ":" + std::to_string(port));
    }
    return true;
}

}  // namespace

std::uint16_t cluster_slot(std::string_view key) noexcept {
    std::size_t open = key.find('{');
    if (open != std::string_view::npos) {
        std::size_t close = key.find('}', open + 1);
        if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
    }
    return std::uint16_t(crc16(key) % kClusterSlots);
}

bool parse_cluster_slots(const redisReply& reply, std::vector<ClusterSlotRange>& out, std::string& reason) {
    out.clear();
    if (reply.type != REDIS_REPLY_ARRAY) {
        reason = "CLUSTER SLOTS did not answer with an array";
        return false;
    }
    for (std::size_t i = 0; i < reply.elements; i++) {
        ClusterSlotRange range;
        if (!read_range(reply.element[i], range, reason)) return false;
        out.push_back(std::move(range));
    }
    // Every slot served exactly once: a cluster whose map has a hole cannot take every channel.
    std::vector<ClusterSlotRange> sorted = out;
    std::sort(sorted.begin(), sorted.end(),
              [](const ClusterSlotRange& a, const ClusterSlotRange& b) { return a.first < b.first; });
    std::uint32_t next = 0;
    for (const ClusterSlotRange& r : sorted) {
        if (r.first != next) {
            reason = r.first < next ? "slot " + std::to_string(r.first) + " is served twice"
                                    : "slot " + std::to_string(next) + " has no primary";
            return false;
        }
        next = std::uint32_t(r.last) + 1;
    }
    if (next != kClusterSlots) {
        reason = "slot " + std::to_string(next) + " has no primary";
        return false;
    }
    return true;
}

}  // namespace sse
