// The pure parts of the Redis link: the sse_redis address and what Redis carries.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "protocol/event_frame.h"
#include "redis/cluster_slots.h"
#include "redis/redis_entry.h"
#include "redis/redis_url.h"
#include "redis/resp_reader.h"

namespace sse {
namespace {

TEST(RedisUrl, HostPortDb) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("redis://10.0.0.5:6380/3", a, reason)) << reason;
    EXPECT_EQ(a.host, "10.0.0.5");
    EXPECT_EQ(a.port, 6380);
    EXPECT_EQ(a.db, 3);
    EXPECT_FALSE(a.has_password);
    EXPECT_EQ(a.display(), "10.0.0.5:6380");
}

TEST(RedisUrl, Defaults) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("redis://localhost", a, reason)) << reason;
    EXPECT_EQ(a.host, "localhost");
    EXPECT_EQ(a.port, 6379);
    EXPECT_EQ(a.db, 0);
}

TEST(RedisUrl, Credentials) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("redis://:s3cret@127.0.0.1", a, reason)) << reason;
    EXPECT_TRUE(a.has_password);
    EXPECT_EQ(a.user, "");
    EXPECT_EQ(a.password, "s3cret");
    ASSERT_TRUE(parse_redis_url("redis://app:p%40ss%3Aword@127.0.0.1:7000", a, reason)) << reason;
    EXPECT_EQ(a.user, "app");
    EXPECT_EQ(a.password, "p@ss:word");
    EXPECT_EQ(a.port, 7000);
    EXPECT_EQ(a.display(), "127.0.0.1:7000");  // never the password
}

TEST(RedisUrl, UnixSocket) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("unix:/run/redis/redis.sock?db=2", a, reason)) << reason;
    EXPECT_EQ(a.socket_path, "/run/redis/redis.sock");
    EXPECT_EQ(a.db, 2);
    EXPECT_EQ(a.display(), "unix:/run/redis/redis.sock");
}

TEST(RedisUrl, Refusals) {
    RedisAddress a;
    std::string reason;
    for (const char* bad :
         {"http://x", "redis://", "redis://h:0", "redis://h:70000", "redis://h:12x", "redis://h/abc", "redis://user@h",
          "redis://u:%zz@h", "redis://u:%4@h", "unix:relative", "unix:/s?database=1", "redis://[::1",
          // Found by t/fuzz/redis_url_fuzz: junk after ']', a sign, a signed escape.
          "redis://[::1]973:6/0", "redis://[::1]x", "redis://h/-0", "unix:/s?db=-0", "redis://u:%-1@h"}) {
        EXPECT_FALSE(parse_redis_url(bad, a, reason)) << bad;
        EXPECT_FALSE(reason.empty()) << bad;
    }
}

TEST(RedisUrl, Ipv6) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("redis://[::1]:6390", a, reason)) << reason;
    EXPECT_EQ(a.host, "::1");
    EXPECT_EQ(a.port, 6390);
}

TEST(RedisUrl, Tls) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("rediss://:pw@cache.example:6380/1", a, reason)) << reason;
    EXPECT_TRUE(a.tls);
    EXPECT_EQ(a.host, "cache.example");
    EXPECT_EQ(a.port, 6380);
    EXPECT_EQ(a.db, 1);
    EXPECT_EQ(a.password, "pw");
    ASSERT_TRUE(parse_redis_url("redis://cache.example", a, reason)) << reason;
    EXPECT_FALSE(a.tls);
}

TEST(RedisUrl, Sentinels) {
    RedisAddress a;
    std::string reason;
    ASSERT_TRUE(parse_redis_url("redis-sentinel://app:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster?db=3", a, reason))
        << reason;
    ASSERT_EQ(a.sentinels.size(), 3u);
    EXPECT_EQ(a.sentinels[0].host, "10.0.0.1");
    EXPECT_EQ(a.sentinels[0].port, 26379);
    EXPECT_EQ(a.sentinels[1].host, "10.0.0.2");
    EXPECT_EQ(a.sentinels[1].port, 26379);  // the sentinels' default port
    EXPECT_EQ(a.sentinels[2].host, "::1");
    EXPECT_EQ(a.sentinels[2].port, 26380);
    EXPECT_EQ(a.master_name, "mymaster");
    EXPECT_EQ(a.db, 3);
    EXPECT_EQ(a.user, "app");
    EXPECT_EQ(a.password, "pw");
    EXPECT_EQ(a.display(), "sentinel primary \"mymaster\"");
    for (const char* bad :
         {"redis-sentinel://10.0.0.1:26379", "redis-sentinel://10.0.0.1:26379/", "redis-sentinel://10.0.0.1:26379,/m",
          "redis-sentinel:///m", "redis-sentinel://10.0.0.1:0/m", "redis-sentinel://10.0.0.1/m?db=x",
          "redis-sentinel://10.0.0.1/a/b"}) {
        EXPECT_FALSE(parse_redis_url(bad, a, reason)) << bad;
        EXPECT_FALSE(reason.empty()) << bad;
    }
}

// Feeds `bytes` in pieces of `piece` bytes; returns the replies read, or stops at a refusal.
struct ReadOutcome {
    std::vector<RedisReplyPtr> replies;
    bool broken = false;
    std::string reason;
};

ReadOutcome read_all(const std::string& bytes, std::size_t piece = 1 << 20) {
    ReadOutcome out;
    RespReader reader;
    for (std::size_t at = 0; at < bytes.size() && !out.broken; at += piece) {
        if (!reader.feed(bytes.data() + at, std::min(piece, bytes.size() - at), out.reason)) {
            out.broken = true;
            break;
        }
        for (;;) {
            RedisReplyPtr r;
            RespReader::Result result = reader.next(r, out.reason);
            if (result == RespReader::Result::kBroken) {
                out.broken = true;
                break;
            }
            if (result == RespReader::Result::kNeedMore) break;
            out.replies.push_back(std::move(r));
        }
    }
    return out;
}

TEST(RespReader, ReadsRepliesInAnyPieces) {
    const std::string bytes =
        "+OK\r\n:42\r\n$5\r\nhello\r\n*3\r\n$7\r\nmessage\r\n$5\r\nsse:a\r\n$0\r\n\r\n-ERR no\r\n$-1\r\n";
    for (std::size_t piece : {std::size_t(1), std::size_t(3), std::size_t(1000)}) {
        ReadOutcome out = read_all(bytes, piece);
        ASSERT_FALSE(out.broken) << out.reason;
        ASSERT_EQ(out.replies.size(), 6u);
        EXPECT_EQ(out.replies[0]->type, REDIS_REPLY_STATUS);
        EXPECT_EQ(out.replies[1]->integer, 42);
        EXPECT_EQ(std::string(out.replies[2]->str, out.replies[2]->len), "hello");
        ASSERT_EQ(out.replies[3]->elements, 3u);
        EXPECT_EQ(std::string(out.replies[3]->element[1]->str), "sse:a");
        EXPECT_EQ(out.replies[4]->type, REDIS_REPLY_ERROR);
        EXPECT_EQ(out.replies[5]->type, REDIS_REPLY_NIL);
    }
}

TEST(RespReader, RefusesAHugeStringAtItsLengthLine) {
    ReadOutcome out = read_all("$999000000000\r\n");
    EXPECT_TRUE(out.broken);
    EXPECT_NE(out.reason.find("too long"), std::string::npos) << out.reason;
    // Just over the bound, before a byte of it arrives.
    out = read_all("$" + std::to_string(kMaxRedisStringBytes + 1) + "\r\n");
    EXPECT_TRUE(out.broken);
    // At the bound: waits for the rest.
    out = read_all("$" + std::to_string(kMaxRedisStringBytes) + "\r\nabc");
    EXPECT_FALSE(out.broken) << out.reason;
    EXPECT_TRUE(out.replies.empty());
}

TEST(RespReader, RefusesHugeArraysAndDeepNesting) {
    ReadOutcome out = read_all("*999000000000\r\n");
    EXPECT_TRUE(out.broken);
    out = read_all("*" + std::to_string(kMaxRedisArrayElements + 1) + "\r\n");
    EXPECT_TRUE(out.broken);
    EXPECT_NE(out.reason.find("array too long"), std::string::npos) << out.reason;
    std::string deep;
    for (int i = 0; i < 10000; i++) deep += "*1\r\n";
    deep += ":1\r\n";
    out = read_all(deep);
    EXPECT_TRUE(out.broken);
    EXPECT_TRUE(out.replies.empty());
    // Four deep (CLUSTER SHARDS) is fine.
    out = read_all("*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n");
    ASSERT_FALSE(out.broken) << out.reason;
    ASSERT_EQ(out.replies.size(), 1u);
}

TEST(RespReader, RefusesGarbageAndEndlessLines) {
    ReadOutcome out = read_all(std::string("\x00\xff garbage\r\n", 12));
    EXPECT_TRUE(out.broken);
    EXPECT_EQ(out.reason.find_first_of("\r\n"), std::string::npos);
    out = read_all("+" + std::string(70000, 'x'));
    EXPECT_TRUE(out.broken);
    EXPECT_NE(out.reason.find("64 KB"), std::string::npos) << out.reason;
    // Negative lengths other than -1: a refusal or a nil, never a crash.
    out = read_all("$-5\r\n*-7\r\n+OK\r\n");
    if (!out.broken) {
        EXPECT_EQ(out.replies.size(), 3u);
    }
}

TEST(RedisEntry, Parses) {
    std::string text =
        R"({"i":"1801439850948198400","o":"00ab","t":1763900000123,"l":"17","e":"greeting","d":"line 1\nline \/2"})";
    RedisEntry e;
    std::string reason;
    ASSERT_TRUE(parse_redis_entry(text.data(), text.size(), e, reason)) << reason;
    EXPECT_EQ(e.id, 1801439850948198400ULL);
    EXPECT_EQ(e.origin, "00ab");
    EXPECT_EQ(e.published_ms, 1763900000123ULL);
    EXPECT_EQ(e.lost, 17u);
    EXPECT_EQ(e.name, "greeting");
    EXPECT_EQ(e.data, "line 1\nline /2");
}

// A time no clock gives is no time, not a cast out of range (found by t/fuzz/redis_entry_fuzz).
TEST(RedisEntry, TimeOutOfRangeIsNoTime) {
    for (std::string text : {R"({"i":"1","t":-1})", R"({"i":"1","t":1e300})", R"({"i":"1","t":-1e300})"}) {
        RedisEntry e;
        std::string reason;
        ASSERT_TRUE(parse_redis_entry(text.data(), text.size(), e, reason)) << reason;
        EXPECT_EQ(e.published_ms, 0u) << text;
    }
}

TEST(RedisEntry, Refusals) {
    RedisEntry e;
    std::string reason;
    for (std::string bad :
         {std::string("nope"), std::string("[]"), std::string(R"({"d":"x"})"), std::string(R"({"i":17,"d":"x"})"),
          std::string(R"({"i":"0","d":"x"})"), std::string(R"({"i":"12a","d":"x"})"), std::string(R"({"i":"5","d":3})"),
          std::string(R"({"i":"5","e":"a\nb","d":"x"})"), std::string("{\"i\":\"5\",\"d\":\"\xff\"}")}) {
        EXPECT_FALSE(parse_redis_entry(bad.data(), bad.size(), e, reason)) << bad;
        EXPECT_FALSE(reason.empty());
    }
}

TEST(RedisEntry, History) {
    std::string text = R"({"k":"sse:news","e":[{"i":"5","l":"0","d":"a"},{"i":"9","l":"3","e":"x","d":""}]})";
    RedisHistory h;
    std::string reason;
    ASSERT_TRUE(parse_redis_history(text.data(), text.size(), h, reason)) << reason;
    EXPECT_EQ(h.key, "sse:news");
    ASSERT_EQ(h.entries.size(), 2u);
    EXPECT_EQ(h.entries[1].id, 9u);
    EXPECT_EQ(h.entries[1].lost, 3u);
    EXPECT_EQ(h.entries[1].name, "x");
    std::string empty = R"({"k":"sse:news","e":[]})";
    ASSERT_TRUE(parse_redis_history(empty.data(), empty.size(), h, reason));
    EXPECT_TRUE(h.entries.empty());
    std::string bad = R"({"k":"sse:news","e":[{"d":"no id"}]})";
    EXPECT_FALSE(parse_redis_history(bad.data(), bad.size(), h, reason));
}

TEST(RedisControl, RoundTrips) {
    RedisControl c;
    c.op = "disconnect";
    c.id = 1801439850948198401ULL;
    c.user = "al\"ice";
    std::string json = control_json(c);
    std::string sent = control_with_origin(json, "00ff");
    RedisControl back;
    std::string reason;
    ASSERT_TRUE(parse_redis_control(sent.data(), sent.size(), back, reason)) << reason;
    EXPECT_EQ(back.origin, "00ff");
    EXPECT_EQ(back.op, "disconnect");
    EXPECT_EQ(back.id, c.id);
    EXPECT_EQ(back.user, c.user);
    EXPECT_EQ(back.channel, "");
    c = RedisControl{};
    c.op = "close";
    c.channel = "orders";
    json = control_json(c);
    ASSERT_TRUE(parse_redis_control(json.data(), json.size(), back, reason)) << reason;
    EXPECT_EQ(back.channel, "orders");
    c = RedisControl{};
    c.op = "list";
    c.reply = "sse:#reply:00ff:7";
    c.user = "bob";
    c.after = 41;
    c.limit = 50;
    json = control_json(c);
    ASSERT_TRUE(parse_redis_control(json.data(), json.size(), back, reason)) << reason;
    EXPECT_EQ(back.op, "list");
    EXPECT_EQ(back.reply, "sse:#reply:00ff:7");
    EXPECT_EQ(back.user, "bob");
    EXPECT_EQ(back.after, 41u);
    EXPECT_EQ(back.limit, 50u);
    for (const char* bad : {R"({"op":"list"})", R"({"op":"list","reply":"r","limit":1001})",
                            R"({"op":"list","reply":"r","limit":-1})", R"({"op":"list","reply":"r","after":5})"}) {
        EXPECT_FALSE(parse_redis_control(bad, std::strlen(bad), back, reason)) << bad;
    }
}

TEST(RedisControl, OriginIsAddedToAnObjectOnly) {
    EXPECT_EQ(control_with_origin("{\"op\":\"close\"}", "ab"), "{\"o\":\"ab\",\"op\":\"close\"}");
    EXPECT_EQ(control_with_origin("[1]", "ab"), "");
    EXPECT_EQ(control_with_origin("{", "ab"), "");
}

TEST(RedisControl, Refusals) {
    RedisControl c;
    std::string reason;
    for (std::string bad :
         {std::string("x"), std::string(R"({"op":"disconnect"})"), std::string(R"({"op":"close"})"),
          std::string(R"({"op":"explode","channel":"a"})"), std::string(R"({"op":"close","channel":5})"),
          std::string(R"({"op":"disconnect","id":"abc"})")}) {
        EXPECT_FALSE(parse_redis_control(bad.data(), bad.size(), c, reason)) << bad;
    }
}

// The data a node sends to Redis is read back from the frame it formatted once.
TEST(EventFrameData, RoundTrips) {
    for (std::string data : {std::string(""), std::string("one"), std::string("a\nb"), std::string("\n\n"),
                             std::string(" leading space"), std::string("x\n"), std::string("data: inside")}) {
        std::string frame(event_frame_size(42, "n", data), '\0');
        write_event_frame(frame.data(), 42, "n", data);
        EXPECT_EQ(event_frame_data(frame), data) << frame;
    }
    std::string frame(event_frame_size(7, "", "a\r\nb\rc"), '\0');
    write_event_frame(frame.data(), 7, "", "a\r\nb\rc");
    EXPECT_EQ(event_frame_data(frame), "a\nb\nc");
}

// Slots as Redis computes them (CLUSTER KEYSLOT on redis-server 7.0): the CRC16 check value of
// "123456789" is 0x31C3, and only a non-empty hash tag counts.
TEST(ClusterSlots, SlotOfAKey) {
    EXPECT_EQ(cluster_slot("123456789"), 0x31C3 % 16384);
    EXPECT_EQ(cluster_slot("foo"), 12182);
    EXPECT_EQ(cluster_slot("bar"), 5061);
    EXPECT_EQ(cluster_slot("sse:news"), cluster_slot("{sse:news}#h"));
    EXPECT_EQ(cluster_slot("{user1000}.following"), cluster_slot("{user1000}.followers"));
    EXPECT_EQ(cluster_slot("foo{}{bar}"), cluster_slot("foo{}{bar}"));
    EXPECT_NE(cluster_slot("foo{}{bar}"), cluster_slot("bar"));  // "{}" is empty: the whole key counts
    EXPECT_EQ(cluster_slot("foo{{bar}}zap"), cluster_slot("{bar"));
    EXPECT_EQ(cluster_slot(""), 0);
}

std::vector<ClusterSlotRange> slots_of(const std::string& resp, bool& ok, std::string& reason) {
    ReadOutcome read = read_all(resp);
    EXPECT_FALSE(read.broken) << read.reason;
    EXPECT_EQ(read.replies.size(), 1u);
    std::vector<ClusterSlotRange> ranges;
    ok = !read.replies.empty() && parse_cluster_slots(*read.replies[0], ranges, reason);
    return ranges;
}

TEST(ClusterSlots, ReadsTheMap) {
    const std::string resp =
        "*2\r\n"
        "*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*2\r\n$9\r\n127.0.0.1\r\n:7003\r\n"
        "*3\r\n:8192\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n";
    bool ok = false;
    std::string reason;
    std::vector<ClusterSlotRange> r = slots_of(resp, ok, reason);
    ASSERT_TRUE(ok) << reason;
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].first, 0);
    EXPECT_EQ(r[0].last, 8191);
    EXPECT_EQ(r[0].host, "127.0.0.1");
    EXPECT_EQ(r[0].port, 7000);
    ASSERT_EQ(r[0].replicas.size(), 1u);
    EXPECT_EQ(r[0].replicas[0], "127.0.0.1:7003");
    EXPECT_EQ(r[1].first, 8192);
    EXPECT_EQ(r[1].host, "");  // the node the question went to
    EXPECT_EQ(r[1].port, 7001);
}

TEST(ClusterSlots, RefusesBadMaps) {
    const std::string node = "*2\r\n$1\r\na\r\n:7000\r\n";
    struct Case {
        std::string resp;
        std::string reason;
    } cases[] = {
        {"$2\r\nno\r\n", "CLUSTER SLOTS did not answer with an array"},
        {"*0\r\n", "slot 0 has no primary"},
        {"*1\r\n*3\r\n:0\r\n:16000\r\n" + node, "slot 16001 has no primary"},
        {"*1\r\n*3\r\n:0\r\n:16384\r\n" + node, "the slot range 0-16384 is out of 0-16383"},
        {"*1\r\n*3\r\n:5\r\n:1\r\n" + node, "the slot range 5-1 is out of 0-16383"},
        {"*2\r\n*3\r\n:0\r\n:16383\r\n" + node + "*3\r\n:10\r\n:20\r\n" + node, "slot 10 is served twice"},
        {"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$1\r\na\r\n:0\r\n", "a slot range whose primary is not [host, port, ...]"},
        {"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$1\r\na\r\n$4\r\n7000\r\n",
         "a slot range whose primary is not [host, port, ...]"},
        {"*1\r\n*4\r\n:0\r\n:16383\r\n" + node + ":1\r\n", "a slot range whose replica is not [host, port, ...]"},
        {"*1\r\n*2\r\n:0\r\n:16383\r\n", "a slot range that is not [first, last, primary, ...]"},
        {"*1\r\n:0\r\n", "a slot range that is not [first, last, primary, ...]"},
    };
    for (const Case& c : cases) {
        bool ok = true;
        std::string reason;
        slots_of(c.resp, ok, reason);
        EXPECT_FALSE(ok) << c.resp;
        EXPECT_EQ(reason, c.reason) << c.resp;
    }
}

}  // namespace
}  // namespace sse
