// History evicted for room when the zone is full, and publishes refused when even that leaves
// no room.
#include "protocol/event_frame.h"
#include "store/zone_helpers.h"
#include "store_fixture.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

constexpr std::size_t kSmallZone = 128 * 1024;
constexpr HistoryPolicy kKeepAll{100000, 0};

class EvictionTest : public StoreTest {
protected:
    void SetUp() override {
        StoreTest::SetUp();
        make_zone(kSmallZone);
    }

    // Publishes 1500-byte events (2 KB slab chunks) to the channels in turn until the zone
    // is full and one had to be evicted.
    Ids fill(std::vector<std::string_view> channels) {
        Ids ids;
        for (std::size_t i = 0; hdr().counters.history_evictions == 0 && i < 1000; i++) {
            Ids one = publish_each({channels[i % channels.size()]}, 1, kKeepAll, 1500);
            if (one.empty()) break;
            ids.push_back(one[0]);
        }
        return ids;
    }

    std::size_t capacity() { return std::size_t(zone().pool()->end - zone().pool()->start); }
    // What the zone holds that is not history.
    std::size_t not_history() { return hdr().bytes_used - hdr().retained_bytes; }
    // Data that makes the next event (one channel, no name) take `alloc` bytes of the zone.
    std::string data_taking(std::size_t alloc) {
        std::uint64_t id = hdr().last_id + 1;
        std::size_t fixed = zone::event_alloc_size(1, event_frame_size(id, "", "x")) - 1;
        std::string data(alloc - fixed, 'z');
        // The frame's chunk head grows by a digit at each power of 16.
        while (zone::event_alloc_size(1, event_frame_size(id, "", data)) > alloc) data.pop_back();
        return data;
    }
};

TEST_F(EvictionTest, TheOldestEventsGoFirst) {
    Ids ids = fill({"a"});
    ASSERT_GT(ids.size(), 20u);
    std::size_t n = ids.size();
    EXPECT_EQ(hdr().counters.history_evictions, 1u);  // one 2 KB chunk makes room for one
    ChannelState st = store().channel_state("a");
    EXPECT_EQ(st.retained, n - 1);
    EXPECT_EQ(st.oldest_id, ids[1]);
    EXPECT_EQ(st.newest_id, ids[n - 1]);

    Ids more = publish_each({"a"}, 10, kKeepAll, 1500);
    ASSERT_EQ(more.size(), 10u);
    EXPECT_EQ(hdr().counters.history_evictions, 11u);
    st = store().channel_state("a");
    EXPECT_EQ(st.retained, n - 1);
    EXPECT_EQ(st.oldest_id, ids[11]);
    EXPECT_EQ(st.newest_id, more[9]);
    EXPECT_EQ(store().stats().events_retained, n - 1);
    EXPECT_EQ(hdr().counters.publishes_refused, 0u);
}

TEST_F(EvictionTest, TheOldestOfAnyChannelGoesFirst) {
    Ids ids = fill({"a", "b"});  // a gets the even ones, b the odd ones
    ASSERT_GT(ids.size(), 20u);
    Ids more = publish_each({"a"}, 4, kKeepAll, 1500);
    ASSERT_EQ(more.size(), 4u);
    // Five evicted: ids[0..4], of both channels.
    EXPECT_EQ(hdr().counters.history_evictions, 5u);
    ChannelState a = store().channel_state("a");
    ChannelState b = store().channel_state("b");
    EXPECT_EQ(a.oldest_id, ids[6]);
    EXPECT_EQ(b.oldest_id, ids[5]);
    EXPECT_EQ(a.retained + b.retained, ids.size() + 4 - 5);
    EXPECT_EQ(a.newest_id, more[3]);
}

TEST_F(EvictionTest, TheWarningIsLoggedAfterTheLockAtMostOnceAMinute) {
    fill({"a"});
    std::vector<LogLine> lines = logged_containing("evicted");
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].text, "sse: shared zone full, evicted 1 retained events to make room; raise sse_shm_size");
    EXPECT_EQ(lines[0].level, ngx_uint_t(NGX_LOG_WARN));
    EXPECT_FALSE(lines[0].under_lock);

    publish_each({"a"}, 10, kKeepAll, 1500);
    ngx_stub_advance_ms(59999);
    publish_each({"a"}, 1, kKeepAll, 1500);
    EXPECT_EQ(logged_containing("evicted").size(), 1u);
    ngx_stub_advance_ms(1);
    publish_each({"a"}, 1, kKeepAll, 1500);
    lines = logged_containing("evicted");
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[1].text, "sse: shared zone full, evicted 12 retained events to make room; raise sse_shm_size");
    EXPECT_FALSE(lines[1].under_lock);
    EXPECT_EQ(hdr().counters.history_evictions, 13u);
}

TEST_F(EvictionTest, RefusedWhenEvenAnEmptyHistoryCannotHoldIt) {
    Ids ids = fill({"a"});
    ChannelState before = store().channel_state("a");
    std::uint64_t last = hdr().last_id;
    std::size_t bytes = hdr().bytes_used;
    logged().clear();

    EXPECT_TRUE(publish({"a"}, {data_taking(capacity() - not_history() + 1)}, kKeepAll).empty());
    EXPECT_EQ(hdr().counters.publishes_refused, 1u);
    EXPECT_EQ(hdr().counters.history_evictions, 1u);  // nothing thrown away for it
    ChannelState after = store().channel_state("a");
    EXPECT_EQ(after.retained, before.retained);
    EXPECT_EQ(after.oldest_id, before.oldest_id);
    EXPECT_EQ(after.events_published, before.events_published);
    EXPECT_EQ(hdr().last_id, last);  // no id given out
    EXPECT_EQ(hdr().bytes_used, bytes);
    EXPECT_TRUE(logged().empty());
    EXPECT_EQ(publish_each({"a"}, 1, kKeepAll), (Ids{last + 1}));

    // Far too big, on a channel of its own: nothing is left of it either.
    EXPECT_TRUE(publish({"big"}, {std::string(kSmallZone, 'z')}, kKeepAll).empty());
    EXPECT_FALSE(store().channel_state("big").found);
    EXPECT_EQ(hdr().counters.publishes_refused, 2u);
}

TEST_F(EvictionTest, AnEventThatNeedsAllHistoryGoneGetsIt) {
    Ids ids = fill({"a"});
    // 9 pages: more than the zone has free, less than the history holds.
    Ids big = publish({"b"}, {data_taking(9 * ngx_pagesize)}, kKeepAll);
    ASSERT_EQ(big.size(), 1u);
    EXPECT_GT(hdr().counters.history_evictions, 1u);
    ChannelState a = store().channel_state("a");
    EXPECT_EQ(a.oldest_id, ids[hdr().counters.history_evictions]);  // oldest first, still
    EXPECT_EQ(store().channel_state("b").retained, 1u);
}

TEST_F(EvictionTest, ASubscriberIsAdmittedByEvictingHistory) {
    fill({"a"});
    std::uint64_t evicted = hdr().counters.history_evictions;
    ngx_uint_t slot = claim();
    std::vector<std::string> names;
    for (int i = 0; i < 40; i++) names.push_back("channel-" + std::to_string(i));
    std::vector<std::string_view> views(names.begin(), names.end());
    SubscribeOutcome out = subscribe(slot, views);
    ASSERT_NE(out.record, nullptr);
    EXPECT_GT(hdr().counters.history_evictions, evicted);
    EXPECT_EQ(store().stats().channels, 41u);
    store().unsubscribe(out.record);
}

// Found here and fixed: could_fit_locked() compared against the whole slab area, but the StoreHeader (17 KB, 5
// pages, allocated by Store::create outside bytes_used) and the slab allocator's rounding take
// part of it. An event that fits that estimate but not the zone evicts every retained event of
// every channel and is then refused anyway.
TEST_F(EvictionTest, ARefusedPublishThrowsNoHistoryAway) {
    fill({"a"});
    ChannelState before = store().channel_state("a");
    bool published = !publish({"a"}, {data_taking(capacity() - not_history() - ngx_pagesize)}, kKeepAll).empty();
    if (!published) {
        ChannelState after = store().channel_state("a");
        EXPECT_EQ(after.retained, before.retained) << "refused, yet the history was evicted for it";
        EXPECT_EQ(hdr().counters.history_evictions, 1u);
    }
}

}  // namespace
}  // namespace sse::test

namespace sse::test {
namespace {

// Found here and fixed: choose_targets_locked() changed the channels a publish names (their history_limit and
// history_ttl to this publish's, and, for one without streams or history here, lost_through,
// last_event_id and events_published) before the publish is known to succeed. When it is then
// refused, the channel has taken on the refused publish's policy: here sse_history 0, so its
// next trim throws its history away, and it is forgotten through an id that was never given out
// (the next publish gives it to another event); a client resuming at the channel's real last
// event gets a reset "evicted".
TEST_F(EvictionTest, ARefusedPublishLeavesOtherChannelsAsTheyWere) {
    Ids a = publish_each({"a"}, 1, {5, 0});  // "a" keeps its event
    ngx_uint_t slot = claim();
    SubscribeOutcome b = subscribe(slot, {"b"});
    // One publish to both, too big for the zone: "a" is found (its history), "b" has a stream.
    EXPECT_TRUE(publish({"a", "b"}, {std::string(kSmallZone, 'z')}, {0, 0}).empty());
    ChannelState st = store().channel_state("a");
    EXPECT_TRUE(st.found);
    EXPECT_EQ(st.retained, 1u);
    EXPECT_EQ(st.events_published, 1u);
    EXPECT_EQ(st.last_event_id, a[0]);
    SubscribeOutcome resumed = subscribe(slot, {"a"}, after(a[0]));
    EXPECT_EQ(resumed.plan.reset, ResetReason::kNone);
    finish_plan(resumed, slot);
    store().unsubscribe(resumed.record);
    store().unsubscribe(b.record);
}

}  // namespace
}  // namespace sse::test
