// Redis Cluster's map of slots: which slot a key or sharded channel hashes to (CRC16 of the key,
// or of its hash tag, modulo 16384), and the primaries that own the slots as CLUSTER SLOTS
// reports them. Pure C++ on hiredis's reply type, unit-tested in t/unit.
#pragma once

#include <hiredis/hiredis.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sse {

constexpr std::uint32_t kClusterSlots = 16384;

// The slot of a key, as every cluster node computes it: only the part between the first '{' and
// the next '}' counts when it is not empty.
std::uint16_t cluster_slot(std::string_view key) noexcept;

// One range of slots and the primary that serves it. `host` is empty when the node did not say
// (a node knows its own address only as the client reached it); `replicas` are host:port.
struct ClusterSlotRange {
    std::uint16_t first = 0;
    std::uint16_t last = 0;
    std::string host;
    int port = 0;
    std::vector<std::string> replicas;
};

// CLUSTER SLOTS's reply: [[first, last, [host, port, id, ...], [replica...]...], ...]. False, with
// a one-line reason, for anything of another shape, a slot out of range, or a map that leaves a
// slot without a primary.
bool parse_cluster_slots(const redisReply& reply, std::vector<ClusterSlotRange>& out, std::string& reason);

}  // namespace sse
