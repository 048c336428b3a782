// Fuzzes the reading of what a Redis server sends (src/redis/resp_reader.h): the bytes, fed in
// pieces whose sizes the input's first byte chooses, must give whole replies within the bounds,
// a wait for more, or one refusal with a one-line reason; never a crash or an unbounded reply.
// Every reply is also read as CLUSTER SLOTS's map (src/redis/cluster_slots.h): a map, or a
// one-line reason.
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "redis/cluster_slots.h"
#include "redis/resp_reader.h"

using namespace sse;

namespace {

// Every reply handed out stays within the bounds the reader promises.
void check_reply(const redisReply& r, int depth) {
    FUZZ_CHECK(depth <= kMaxRedisNesting);
    switch (r.type) {
        case REDIS_REPLY_ARRAY:
            FUZZ_CHECK(depth < kMaxRedisNesting);
            FUZZ_CHECK(r.elements <= std::size_t(kMaxRedisArrayElements));
            for (std::size_t i = 0; i < r.elements; i++) check_reply(*r.element[i], depth + 1);
            break;
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS:
        case REDIS_REPLY_ERROR:
            FUZZ_CHECK(r.len <= kMaxRedisStringBytes);
            break;
        default:
            break;
    }
}

// A map read from any reply covers every slot once, each range with a real port.
void check_slot_map(const redisReply& r) {
    std::vector<ClusterSlotRange> ranges;
    std::string reason;
    if (!parse_cluster_slots(r, ranges, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason) && !reason.empty());
        return;
    }
    std::uint32_t covered = 0;
    for (const ClusterSlotRange& range : ranges) {
        FUZZ_CHECK(range.first <= range.last && range.last < kClusterSlots);
        FUZZ_CHECK(range.port > 0 && range.port <= 65535);
        covered += std::uint32_t(range.last - range.first) + 1;
    }
    FUZZ_CHECK(covered == kClusterSlots);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    if (size == 0) return 0;
    std::size_t piece = std::size_t(data[0] % 16) + 1;
    data++;
    size--;
    RespReader reader;
    std::string reason;
    for (std::size_t at = 0; at < size; at += piece) {
        std::size_t n = size - at < piece ? size - at : piece;
        if (!reader.feed(reinterpret_cast<const char*>(data + at), n, reason)) {
            FUZZ_CHECK(fuzz::is_one_line(reason));
            return 0;
        }
        for (;;) {
            RedisReplyPtr reply;
            RespReader::Result r = reader.next(reply, reason);
            if (r == RespReader::Result::kBroken) {
                FUZZ_CHECK(fuzz::is_one_line(reason));
                return 0;
            }
            if (r == RespReader::Result::kNeedMore) break;
            FUZZ_CHECK(reply != nullptr);
            check_reply(*reply, 0);
            check_slot_map(*reply);
        }
    }
    return 0;
}
