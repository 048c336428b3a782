// Unit tests of the pure C++ core: no nginx involved.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "protocol/channel_list.h"
#include "protocol/client_text.h"
#include "protocol/event_filter.h"
#include "protocol/event_frame.h"
#include "protocol/publish_body.h"
#include "protocol/resume.h"
#include "protocol/stats_report.h"
#include "protocol/utf8.h"

using namespace sse;

namespace {

std::string frame(std::uint64_t id, std::string_view name, std::string_view data) {
    std::string out(event_frame_size(id, name, data), '\0');
    char* end = write_event_frame(out.data(), id, name, data);
    EXPECT_EQ(end, out.data() + out.size());
    return out;
}

std::vector<std::string> channels(std::string_view text, std::size_t max = 32) {
    std::vector<std::string_view> names;
    std::string reason;
    EXPECT_TRUE(parse_channel_list(text, max, names, reason)) << reason;
    return {names.begin(), names.end()};
}

std::string channel_error(std::string_view text, std::size_t max = 32) {
    std::vector<std::string_view> names;
    std::string reason;
    EXPECT_FALSE(parse_channel_list(text, max, names, reason));
    return reason;
}

}  // namespace

TEST(ChannelList, TrimsAndCollapsesDuplicates) {
    EXPECT_EQ(channels("a"), (std::vector<std::string>{"a"}));
    EXPECT_EQ(channels(" wallets , users,wallets "), (std::vector<std::string>{"wallets", "users"}));
    EXPECT_EQ(channels("A-z_0.9:x@y/z"), (std::vector<std::string>{"A-z_0.9:x@y/z"}));
    EXPECT_EQ(channels("a,,b,"), (std::vector<std::string>{"a", "b"}));
}

TEST(ChannelList, RefusesBadLists) {
    EXPECT_EQ(channel_error(""), "no channel given");
    EXPECT_EQ(channel_error(" , "), "no channel given");
    EXPECT_NE(channel_error("a b").find("invalid channel name \"a b\""), std::string::npos);
    EXPECT_NE(channel_error("caf\xc3\xa9").find("invalid channel name"), std::string::npos);
    EXPECT_NE(channel_error(std::string(129, 'x')).find("longer than 128"), std::string::npos);
    EXPECT_EQ(channels(std::string(128, 'x')).size(), 1u);
    EXPECT_EQ(channel_error("a,b,c", 2), "too many channels: at most 2 per request");
    EXPECT_EQ(channels("a,b,a,b", 2).size(), 2u);
}

TEST(EventFrame, ExactBytes) {
    EXPECT_EQ(frame(7, "", "hello"), "id: 7\ndata: hello\n\n");
    EXPECT_EQ(frame(12, "wallet.created", "{\"id\":7}"), "id: 12\nevent: wallet.created\ndata: {\"id\":7}\n\n");
}

TEST(EventFrame, SplitsLinesOnLfCrlfAndCr) {
    EXPECT_EQ(frame(1, "", "a\nb\r\nc\rd"), "id: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    EXPECT_EQ(frame(1, "", "a\r\n"), "id: 1\ndata: a\ndata:\n\n");
    EXPECT_EQ(frame(1, "", "\n\n"), "id: 1\ndata:\ndata:\ndata:\n\n");
    EXPECT_EQ(frame(1, "", "\r\r\n"), "id: 1\ndata:\ndata:\ndata:\n\n");
}

TEST(EventFrame, EmptyData) {
    EXPECT_EQ(frame(3, "x", ""), "id: 3\nevent: x\ndata:\n\n");
}

TEST(EventFrame, LargeIds) {
    EXPECT_EQ(frame(18446744073709551615ull, "", "x"), "id: 18446744073709551615\ndata: x\n\n");
    EXPECT_EQ(frame(0, "", "x"), "id: 0\ndata: x\n\n");
}

TEST(EventFrame, EventNames) {
    EXPECT_TRUE(is_valid_event_name("wallet.created"));
    EXPECT_TRUE(is_valid_event_name(std::string(128, 'n')));
    EXPECT_FALSE(is_valid_event_name(std::string(129, 'n')));
    EXPECT_FALSE(is_valid_event_name("a\nb"));
    EXPECT_FALSE(is_valid_event_name("a\rb"));
}

TEST(EventFrame, Preamble) {
    auto preamble = [](long retry) {
        std::string out(stream_preamble_size(retry), '\0');
        write_stream_preamble(out.data(), retry);
        return out;
    };
    EXPECT_EQ(preamble(-1), ":ok\n\n");
    EXPECT_EQ(preamble(3000), ":ok\nretry: 3000\n\n");
    EXPECT_EQ(preamble(0), ":ok\nretry: 0\n\n");
}

// As nginx's chunked filter frames them: lowercase hex, no leading zeros.
TEST(Chunk, FramesLikeNginx) {
    EXPECT_EQ(chunked("x"), "1\r\nx\r\n");
    EXPECT_EQ(chunked(std::string(15, 'a')), "f\r\n" + std::string(15, 'a') + "\r\n");
    EXPECT_EQ(chunked(std::string(16, 'a')), "10\r\n" + std::string(16, 'a') + "\r\n");
    EXPECT_EQ(chunked(std::string(255, 'a')).substr(0, 4), "ff\r\n");
    EXPECT_EQ(chunked(std::string(4096, 'a')).substr(0, 6), "1000\r\n");
    EXPECT_EQ(chunk_head_size(0xffffffffu), 10u);
    std::string head(kMaxChunkHeadSize, '\0');
    std::size_t len = std::size_t(write_chunk_head(head.data(), SIZE_MAX) - head.data());
    EXPECT_EQ(head.substr(0, len), "ffffffffffffffff\r\n");
    EXPECT_EQ(len, kMaxChunkHeadSize);
}

TEST(Utf8, AcceptsWellFormed) {
    EXPECT_TRUE(is_valid_utf8(""));
    EXPECT_TRUE(is_valid_utf8("plain ascii"));
    EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
    EXPECT_TRUE(is_valid_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
}

TEST(Utf8, RefusesMalformed) {
    EXPECT_FALSE(is_valid_utf8("\xff"));
    EXPECT_FALSE(is_valid_utf8("\xc3"));              // truncated
    EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
    EXPECT_FALSE(is_valid_utf8("\xe0\x80\xaf"));      // overlong
    EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
    EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
    EXPECT_FALSE(is_valid_utf8("a\x80z"));            // stray continuation
}

TEST(Batch, EventsInOrder) {
    std::vector<BatchEvent> events;
    std::string reason;
    ASSERT_TRUE(parse_event_stream_batch("event: a\ndata: 1\n\ndata: 2\ndata: 3\n\n: comment\nevent: c\ndata: x",
                                         events, reason))
        << reason;
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].name, "a");
    EXPECT_EQ(events[0].data, "1");
    EXPECT_EQ(events[1].name, "");
    EXPECT_EQ(events[1].data, "2\n3");
    EXPECT_EQ(events[2].name, "c");
    EXPECT_EQ(events[2].data, "x");
}

TEST(Batch, CrlfAndCrLineEnds) {
    std::vector<BatchEvent> events;
    std::string reason;
    ASSERT_TRUE(parse_event_stream_batch("data:a\r\ndata: b\r\n\r\ndata: c\r\rdata: d\r", events, reason));
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].data, "a\nb");
    EXPECT_EQ(events[1].data, "c");
    EXPECT_EQ(events[2].data, "d");
}

TEST(Batch, RefusesIdRetryAndUnknownFields) {
    std::vector<BatchEvent> events;
    std::string reason;
    EXPECT_FALSE(parse_event_stream_batch("data: a\n\nid: 5\ndata: b\n\n", events, reason));
    EXPECT_EQ(reason, "\"id:\" on line 3: event ids are assigned by the server");
    EXPECT_FALSE(parse_event_stream_batch("retry: 5\n", events, reason));
    EXPECT_FALSE(parse_event_stream_batch("evnet: x\ndata: y\n", events, reason));
    EXPECT_NE(reason.find("unknown field \"evnet\""), std::string::npos);
    EXPECT_FALSE(parse_event_stream_batch("\n\n: only a comment\n\n", events, reason));
    EXPECT_EQ(reason, "the batch holds no event");
}

TEST(EventId, ParsesDecimalIdsOnly) {
    std::uint64_t id = 0;
    EXPECT_TRUE(parse_event_id("0", id));
    EXPECT_EQ(id, 0u);
    EXPECT_TRUE(parse_event_id("1763913600000000", id));
    EXPECT_EQ(id, 1763913600000000u);
    EXPECT_TRUE(parse_event_id("18446744073709551615", id));
    EXPECT_EQ(id, UINT64_MAX);
    EXPECT_TRUE(parse_event_id("18446744073709551616", id));
    EXPECT_EQ(id, UINT64_MAX);
    EXPECT_TRUE(parse_event_id("99999999999999999999", id));
    EXPECT_EQ(id, UINT64_MAX);
    for (std::string_view bad : {"", " 1", "1 ", "+1", "-1", "1.0", "abc", "12x", "0x10", "000000000000000000001"}) {
        EXPECT_FALSE(parse_event_id(bad, id)) << bad;
    }
}

TEST(ResetFrame, NamesTheGivenIdAndTheReason) {
    EXPECT_EQ(reset_frame("reset", "42", ResetReason::kEvicted),
              "event: reset\ndata: {\"last_event_id\":\"42\",\"reason\":\"evicted\"}\n\n");
    EXPECT_EQ(reset_frame("gap", "x", ResetReason::kMalformed),
              "event: gap\ndata: {\"last_event_id\":\"x\",\"reason\":\"malformed\"}\n\n");
    EXPECT_NE(reset_frame("reset", "9", ResetReason::kFuture).find("\"reason\":\"future\""), std::string::npos);
    EXPECT_NE(reset_frame("reset", "1", ResetReason::kBeforeRestart).find("\"before_restart\""), std::string::npos);
}

TEST(ResetFrame, EscapesWhatTheClientSent) {
    EXPECT_EQ(reset_frame("reset", "a\"b\\c\x01", ResetReason::kMalformed),
              "event: reset\ndata: {\"last_event_id\":\"a\\\"b\\\\c\\u0001\",\"reason\":\"malformed\"}\n\n");
    // Invalid UTF-8 becomes U+FFFD; valid UTF-8 passes.
    EXPECT_NE(reset_frame("reset",
                          "\xff"
                          "1",
                          ResetReason::kMalformed)
                  .find("\"\xef\xbf\xbd"
                        "1\""),
              std::string::npos);
    EXPECT_NE(reset_frame("reset", "\xc3\xa9", ResetReason::kMalformed).find("\"\xc3\xa9\""), std::string::npos);
    // At most 64 bytes of it.
    std::string frame = reset_frame("reset", std::string(100, '7'), ResetReason::kMalformed);
    EXPECT_NE(frame.find("\"" + std::string(64, '7') + "\""), std::string::npos);
    EXPECT_EQ(frame.find(std::string(65, '7')), std::string::npos);
}

TEST(ResetFrame, EchoedIdIsWhatTheFrameAndTheLogShow) {
    EXPECT_EQ(echoed_id("123"), "123");
    EXPECT_EQ(echoed_id("a\nb"), "a\\nb");
    EXPECT_EQ(echoed_id(std::string(70, '1')), std::string(64, '1'));
}

TEST(StatsReport, JsonListsChannelsOnlyWhenAsked) {
    StatsReport r;
    r[Figure::kSubscribers] = 2;
    r.workers = {{10, 2}, {11, 0}};
    std::string j = stats_json(r);
    EXPECT_EQ(j.find("per_channel"), std::string::npos);
    EXPECT_NE(j.find("\"workers\":[{\"pid\":10,\"subscribers\":2},{\"pid\":11,\"subscribers\":0}]"), std::string::npos);
    r.per_channel = true;
    r.channel_list.push_back({{2, 3, 7, 0, 0, 0}, "a"});
    j = stats_json(r);
    EXPECT_NE(j.find("\"per_channel\":[{\"channel\":\"a\",\"subscribers\":2,\"events_published\":3,"
                     "\"last_event_id\":\"7\",\"retained\":0,\"oldest_id\":null,\"newest_id\":null}],"
                     "\"per_channel_truncated\":false}\n"),
              std::string::npos)
        << j;
}

TEST(StatsReport, PrometheusFamiliesHaveHelpTypeAndSamples) {
    StatsReport r;
    r[Figure::kEventsPublished] = 5;
    r.workers = {{10, 1}};
    r.per_channel = true;
    r.channel_list.push_back({{1, 5, 9, 2, 8, 9}, "a"});
    std::string p = stats_prometheus(r);
    EXPECT_NE(p.find("# HELP sse_events_published_total Events published.\n"
                     "# TYPE sse_events_published_total counter\n"
                     "sse_events_published_total 5\n"),
              std::string::npos);
    EXPECT_NE(p.find("sse_worker_subscribers{pid=\"10\"} 1\n"), std::string::npos);
    EXPECT_NE(p.find("sse_channel_events_retained{channel=\"a\"} 2\n"), std::string::npos);
    EXPECT_EQ(p.back(), '\n');
}

TEST(EventFilter, GlobPatterns) {
    EXPECT_TRUE(glob_match("order.*", "order.created"));
    EXPECT_TRUE(glob_match("order.*", "order."));
    EXPECT_FALSE(glob_match("order.*", "order"));
    EXPECT_TRUE(glob_match("*.deleted", "user.deleted"));
    EXPECT_FALSE(glob_match("*.deleted", "user.deleted.not"));
    EXPECT_TRUE(glob_match("*", ""));
    EXPECT_TRUE(glob_match("a*b*c", "axxbyyc"));
    EXPECT_FALSE(glob_match("a*b*c", "axxbyy"));
    EXPECT_TRUE(glob_match("v?", "v2"));
    EXPECT_FALSE(glob_match("v?", "v22"));
    // A literal `*` in the name: the pattern's `*` still matches any run (issue 10, point 3).
    EXPECT_TRUE(glob_match("*", "*x"));
    EXPECT_TRUE(glob_match("*", "**"));
    EXPECT_TRUE(glob_match("order.*", "order.*x"));
    EXPECT_TRUE(glob_match("a*", "a*"));
    EXPECT_FALSE(glob_match("a*b", "a*c"));
    EXPECT_TRUE(glob_match("exact", "exact"));
    EXPECT_FALSE(glob_match("exact", "exac"));
    // Linear on a pathological pattern.
    EXPECT_FALSE(glob_match("*a*a*a*a*a*a*a*b", std::string(10000, 'a')));
}

TEST(EventFilter, ListsAndUnnamedEvents) {
    EventFilter f;
    std::string reason;
    ASSERT_TRUE(f.parse(" order.* , *.deleted,,message ", reason)) << reason;
    EXPECT_TRUE(f.matches("order.paid"));
    EXPECT_TRUE(f.matches("user.deleted"));
    EXPECT_TRUE(f.matches(""));  // unnamed: message
    EXPECT_FALSE(f.matches("user.created"));
    ASSERT_TRUE(f.parse("", reason));
    EXPECT_TRUE(f.empty());
    EXPECT_TRUE(f.matches("anything"));
    EXPECT_FALSE(f.parse(std::string(129, 'x'), reason));
    EXPECT_EQ(reason.rfind("invalid event type pattern", 0), 0u) << reason;
    std::string many;
    for (int i = 0; i < 33; i++) many += "t" + std::to_string(i) + ",";
    EXPECT_FALSE(f.parse(many, reason));
    EXPECT_EQ(reason, "too many event type patterns: at most 32");
}

// The reason goes into a log line and a plain-text body: a pattern refused for its line break
// must not carry that line break into them (found by t/fuzz/event_filter_fuzz).
TEST(EventFilter, ReasonIsOneLine) {
    EventFilter f;
    std::string reason;
    EXPECT_FALSE(f.parse("order.*,a\nfake log line\r", reason));
    EXPECT_EQ(reason, "invalid event type pattern \"a\\x0Afake log line\\x0D\": at most 128 bytes, no line breaks");
}

TEST(ChannelList, AllowedByNameOrPrefix) {
    EXPECT_TRUE(channel_allowed_by("user:alice", "user:alice"));
    EXPECT_FALSE(channel_allowed_by("user:alice", "user:alice2"));
    EXPECT_TRUE(channel_allowed_by("public.*", "public.news"));
    EXPECT_TRUE(channel_allowed_by("public.*", "public."));
    EXPECT_FALSE(channel_allowed_by("public.*", "public"));
    EXPECT_TRUE(channel_allowed_by("*", "anything"));
    // A pattern whose variable was empty ("user:$id" with no id) allows only its fixed part.
    EXPECT_FALSE(channel_allowed_by("user:", "user:alice"));
}

TEST(StreamIdentity, ChannelsOfAClientAndAUser) {
    EXPECT_EQ(client_channel(1763900000000042ULL), "#c:1763900000000042");
    EXPECT_EQ(user_channel("alice@example.com"), "#u:alice@example.com");
    // A request can never name them: '#' is not a channel name character.
    EXPECT_FALSE(is_valid_channel_name(client_channel(7)));
    EXPECT_FALSE(is_valid_channel_name(user_channel("bob")));
}

TEST(StreamIdentity, ConnectedFrame) {
    EXPECT_EQ(connected_frame("connected", 17, ""), "event: connected\ndata: {\"client_id\":\"17\"}\n\n");
    EXPECT_EQ(connected_frame("hello", 5, "a\"b\\c\n"),
              "event: hello\ndata: {\"client_id\":\"5\",\"user\":\"a\\\"b\\\\c\\n\"}\n\n");
}

TEST(ChannelPatterns, ParseOnlyWhereAllowed) {
    std::vector<std::string_view> names;
    std::string reason;
    EXPECT_FALSE(parse_channel_list("blog.*", 32, names, reason));
    EXPECT_EQ(reason, "channel patterns such as \"blog.*\" are not allowed here");
    ASSERT_TRUE(parse_channel_list("blog.*, news, *", 32, names, reason, true)) << reason;
    EXPECT_EQ(names, (std::vector<std::string_view>{"blog.*", "news", "*"}));
    EXPECT_FALSE(parse_channel_list("bl*og", 32, names, reason, true));
    EXPECT_FALSE(parse_channel_list("a b*", 32, names, reason, true));
    EXPECT_FALSE(parse_channel_list("**", 32, names, reason, true));
}

TEST(ChannelPatterns, Cover) {
    EXPECT_TRUE(is_channel_pattern("*"));
    EXPECT_TRUE(is_channel_pattern("blog.*"));
    EXPECT_FALSE(is_channel_pattern("blog"));
    EXPECT_FALSE(is_channel_pattern("b*g*"));
    EXPECT_TRUE(pattern_covers("blog.*", "blog.posts"));
    EXPECT_TRUE(pattern_covers("blog.*", "blog."));
    EXPECT_FALSE(pattern_covers("blog.*", "blog"));
    EXPECT_FALSE(pattern_covers("blog.*", "blogs.x"));
    EXPECT_TRUE(pattern_covers("*", "anything"));
    // The channels of one client or one user are never covered.
    EXPECT_FALSE(pattern_covers("*", client_channel(5)));
    EXPECT_FALSE(pattern_covers("*", user_channel("bob")));
}

TEST(StreamIdentity, TargetLists) {
    std::vector<std::string> channels;
    std::string reason;
    ASSERT_TRUE(parse_stream_targets(" alice, bob ,alice,,carol@x.org", false, 32, channels, reason)) << reason;
    EXPECT_EQ(channels, (std::vector<std::string>{"#u:alice", "#u:bob", "#u:carol@x.org"}));
    ASSERT_TRUE(parse_stream_targets("17,18", true, 32, channels, reason)) << reason;
    EXPECT_EQ(channels, (std::vector<std::string>{"#c:17", "#c:18"}));
    EXPECT_FALSE(parse_stream_targets("17,abc", true, 32, channels, reason));
    EXPECT_EQ(reason, "a client id is a decimal number, as the connected event gives it: \"abc\"");
    EXPECT_FALSE(parse_stream_targets("0", true, 32, channels, reason));
    EXPECT_FALSE(parse_stream_targets("007", true, 32, channels, reason));
    EXPECT_FALSE(parse_stream_targets("99999999999999999999999", true, 32, channels, reason));
    EXPECT_FALSE(parse_stream_targets("18446744073709551616", true, 32, channels, reason));
    EXPECT_TRUE(parse_stream_targets("18446744073709551615", true, 32, channels, reason));
    EXPECT_FALSE(parse_stream_targets(" , ", false, 32, channels, reason));
    EXPECT_EQ(reason, "no user key given");
    EXPECT_FALSE(parse_stream_targets("a,b,c", false, 2, channels, reason));
    EXPECT_EQ(reason, "too many users: at most 2 per request");
    EXPECT_FALSE(parse_stream_targets(std::string(257, 'u'), false, 2, channels, reason));
}

// The one escaper for client bytes in log lines and reasons (issue 10, point 4).
TEST(ClientText, QuotedEscapesEverythingButPrintableAscii) {
    EXPECT_EQ(quoted_bytes("abc"), "\"abc\"");
    EXPECT_EQ(quoted_bytes(std::string("a\r\n\0\x1b\"\\\xff\x7f", 9)), "\"a\\x0D\\x0A\\x00\\x1B\\\"\\\\\\xFF\\x7F\"");
    EXPECT_EQ(quoted_bytes(std::string(129, 'x')), "\"" + std::string(128, 'x') + "\"...");
    EXPECT_EQ(quoted_bytes(std::string(128, 'x')), "\"" + std::string(128, 'x') + "\"");
}

TEST(ClientText, JsonStringIsAlwaysValidJson) {
    EXPECT_EQ(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    EXPECT_EQ(json_string("\xff"
                          "a"),
              "\"\xef\xbf\xbd"
              "a\"");
    EXPECT_EQ(json_string("\xc3\xa9"), "\"\xc3\xa9\"");
    EXPECT_EQ(json_string("a\x7f\x7f"), "\"a\\u007f\\u007f\"");
}

TEST(ChannelList, UserKeysSsePublishUserCanReach) {
    EXPECT_EQ(user_key_problem("alice"), "");
    EXPECT_EQ(user_key_problem(""), "");
    EXPECT_NE(user_key_problem("a,b").find("comma"), std::string::npos);
    EXPECT_NE(user_key_problem(" a").find("space"), std::string::npos);
    EXPECT_EQ(user_key_problem(std::string(256, 'u')), "");
    EXPECT_EQ(user_key_problem(std::string(257, 'u')), "the user key is longer than 256 bytes");
}
