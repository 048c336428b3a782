// Reading RESP, the Redis protocol, from bytes a server sent: hiredis's reader, with bounds on
// what one reply may hold. Pure C++ over hiredis (no nginx), unit-tested and fuzzed in t/.
//
// Whatever breaks RESP or a bound stops the reader with a one-line reason; nothing a server
// sends can assert, abort or make the reader hold more than the bounds.
#pragma once

#include <hiredis/hiredis.h>

#include <cstddef>
#include <memory>
#include <string>

namespace sse {

// History arrives as one string (redis_functions.h), so the string bound is Redis's own default
// proto-max-bulk-len.
constexpr std::size_t kMaxRedisStringBytes = 512 * 1024 * 1024;
constexpr std::size_t kMaxRedisReplyBytes = kMaxRedisStringBytes + 1024 * 1024;
constexpr long long kMaxRedisArrayElements = 1 << 20;
constexpr int kMaxRedisNesting = 8;  // CLUSTER SHARDS, the deepest reply used, nests 4 deep

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using RedisReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

class RespReader {
public:
    RespReader();  // throws std::bad_alloc
    ~RespReader();
    RespReader(const RespReader&) = delete;
    RespReader& operator=(const RespReader&) = delete;

    enum class Result { kReply, kNeedMore, kBroken };

    // Takes bytes as they arrive. False (broken, with a reason) when they break a bound.
    bool feed(const char* data, std::size_t len, std::string& reason);
    // The next whole reply, if there is one. kBroken, with a reason, when the bytes are not RESP
    // or a reply breaks a bound; the reader cannot be used after that.
    Result next(RedisReplyPtr& reply, std::string& reason);

private:
    bool too_large(std::string& reason) const;

    redisReader* reader_;
    std::size_t reply_bytes_ = 0;  // received toward the reply being read
    bool broken_ = false;
};

}  // namespace sse
