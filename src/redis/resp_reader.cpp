#include "redis/resp_reader.h"

#include <hiredis/read.h>

#include <cstring>
#include <new>

namespace sse {

namespace {

// hiredis's reply constructors with the array one bounded: the default would calloc whatever
// count a server names, and hiredis 1.x would nest as deep as a server goes.
redisReplyObjectFunctions capped_functions;
decltype(redisReplyObjectFunctions::createArray) default_create_array = nullptr;
const char* array_refusal = nullptr;  // why the last array was refused (one thread reads)

int nesting_of(const redisReadTask* task) {
    int depth = 0;
    for (const redisReadTask* t = task->parent; t != nullptr && depth <= kMaxRedisNesting; t = t->parent) depth++;
    return depth;
}

// `Count` is int in hiredis 0.14 and size_t in 1.x.
template <typename Count>
void* create_capped_array(const redisReadTask* task, Count count) {
    long long n = static_cast<long long>(count);
    if (n < 0 || n > kMaxRedisArrayElements) {
        array_refusal = "an array too long (over 1048576 elements)";
        return nullptr;
    }
    if (nesting_of(task) >= kMaxRedisNesting) {
        array_refusal = "arrays nested too deep (over 8)";
        return nullptr;
    }
    return default_create_array(task, count);
}

// The type of the item the reader waits for the rest of, or -1 between replies.
int pending_type(const redisReader* r) {
#if HIREDIS_MAJOR >= 1
    return r->ridx >= 0 ? r->task[r->ridx]->type : -1;
#else
    return r->ridx >= 0 ? r->rstack[r->ridx].type : -1;
#endif
}

}  // namespace

RespReader::RespReader() : reader_(redisReaderCreate()) {
    if (reader_ == nullptr) throw std::bad_alloc();
    if (default_create_array == nullptr) {
        capped_functions = *reader_->fn;
        default_create_array = capped_functions.createArray;
        capped_functions.createArray = create_capped_array;
    }
    reader_->fn = &capped_functions;
}

RespReader::~RespReader() {
    redisReaderFree(reader_);
}

bool RespReader::feed(const char* data, std::size_t len, std::string& reason) {
    if (broken_) return false;
    if (redisReaderFeed(reader_, data, len) != REDIS_OK) throw std::bad_alloc();
    reply_bytes_ += len;
    if (too_large(reason)) {
        broken_ = true;
        return false;
    }
    return true;
}

RespReader::Result RespReader::next(RedisReplyPtr& out, std::string& reason) {
    if (broken_) {
        reason = "the reader stopped at an earlier error";
        return Result::kBroken;
    }
    void* reply = nullptr;
    array_refusal = nullptr;
    if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
        broken_ = true;
        if (array_refusal != nullptr) {
            reason = std::string("a reply with ") + array_refusal;
        } else if (reader_->err == REDIS_ERR_OOM) {
            throw std::bad_alloc();
        } else {
            reason = std::string("a protocol error: ") + reader_->errstr;
        }
        return Result::kBroken;
    }
    if (reply == nullptr) {
        if (too_large(reason)) {
            broken_ = true;
            return Result::kBroken;
        }
        return Result::kNeedMore;
    }
    out.reset(static_cast<redisReply*>(reply));
    reply_bytes_ = reader_->len - reader_->pos;
    return Result::kReply;
}

// While a reply is incomplete, a string's length line says how much is coming: one over the
// bound is refused at once rather than buffered toward.
bool RespReader::too_large(std::string& reason) const {
    if (reply_bytes_ > kMaxRedisReplyBytes) {
        reason = "a reply too large (over 513 MB)";
        return true;
    }
    int type = pending_type(reader_);
    const char* p = reader_->buf + reader_->pos;
    std::size_t available = reader_->len - reader_->pos;
    if (type == REDIS_REPLY_STRING) {
        unsigned long long length = 0;
        for (std::size_t i = 0; i < available && p[i] >= '0' && p[i] <= '9'; i++) {
            length = length * 10 + unsigned(p[i] - '0');
            if (length > kMaxRedisStringBytes) {
                reason = "a string too long (over 512 MB)";
                return true;
            }
        }
    }
    // A line (a status, an error, a length) with no end in sight.
    if (available > 65536 && type != REDIS_REPLY_STRING && std::memchr(p, '\r', available) == nullptr) {
        reason = "a reply line too long (over 64 KB)";
        return true;
    }
    return false;
}

}  // namespace sse
