// Delivery bookkeeping: which worker slot takes which event, in what order, and when the zone
// gets its memory back.
#include "store_fixture.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

constexpr HistoryPolicy kNoHistory{0, 0};

class DeliveryTest : public StoreTest {
protected:
    void SetUp() override {
        StoreTest::SetUp();
        bytes_baseline = hdr().bytes_used;
        pages_baseline = zone().free_pages();
        s0 = claim();
        s1 = claim();
        ASSERT_NE(s0, s1);
        a = subscribe(s0, {"x"}).record;
        b = subscribe(s1, {"y"}).record;
        c = subscribe(s1, {"x"}).record;
        x1 = publish_one({"x"}, 2, std::uint64_t(3));
        y1 = publish_one({"y"}, 1, std::uint64_t(2));
        x2 = publish_one({"x"}, 2, std::uint64_t(3));
        xy = publish_one({"x", "y"}, 3, std::uint64_t(3));
    }

    std::uint64_t publish_one(std::vector<std::string_view> channels, ngx_uint_t subscribers, std::uint64_t wake) {
        PublishResult r;
        std::vector<EventInput> events{{"", "payload"}};
        EXPECT_TRUE(store().publish(events, channels, kNoHistory, r, ngx_cycle->log));
        EXPECT_EQ(r.subscribers, subscribers);
        EXPECT_EQ(r.wake[0], wake);
        EXPECT_EQ(r.wake[1], 0u);
        EXPECT_EQ(r.events, 1u);
        EXPECT_EQ(r.first_id, r.last_id);
        return r.first_id;
    }

    void release_all(ngx_uint_t slot, const std::vector<ShmEvent*>& events) {
        for (ShmEvent* ev : events) Store::release_event(ev, slot);
    }

    std::size_t bytes_baseline = 0;
    ngx_uint_t pages_baseline = 0;
    ngx_uint_t s0 = 0, s1 = 0;
    ShmSubscriber *a = nullptr, *b = nullptr, *c = nullptr;
    std::uint64_t x1 = 0, y1 = 0, x2 = 0, xy = 0;
};

TEST_F(DeliveryTest, EachSlotTakesItsEventsInOrder) {
    ASSERT_EQ(s0, 0u);
    ASSERT_EQ(s1, 1u);
    bool more = true;
    EXPECT_EQ(take(s0, 10, &more), (Ids{x1, x2, xy}));
    EXPECT_FALSE(more);
    EXPECT_EQ(take(s1, 10, &more), (Ids{x1, y1, x2, xy}));
    EXPECT_FALSE(more);
    // Taken once: the slot's cursor moved past them.
    EXPECT_TRUE(take(s0, 10, &more).empty());
    EXPECT_FALSE(more);
    Ids x3 = publish({"x"}, {"again"}, kNoHistory);
    EXPECT_EQ(take(s1, 10), x3);
    EXPECT_EQ(take(s0, 10), x3);
}

TEST_F(DeliveryTest, TakingStopsAtTheReservedCapacity) {
    bool more = false;
    EXPECT_EQ(take(s1, 3, &more), (Ids{x1, y1, x2}));
    EXPECT_TRUE(more);
    EXPECT_EQ(take(s1, 3, &more), (Ids{xy}));
    EXPECT_FALSE(more);
    EXPECT_EQ(take(s0, 1, &more), (Ids{x1}));
    EXPECT_TRUE(more);
    EXPECT_TRUE(take(s0, 0, &more).empty());
    EXPECT_TRUE(more);
    EXPECT_EQ(take(s0, 2, &more), (Ids{x2, xy}));
    EXPECT_FALSE(more);
    EXPECT_TRUE(take(s0, 0, &more).empty());
    EXPECT_FALSE(more);  // nothing waiting
}

TEST_F(DeliveryTest, EventsAreFreedOnceEverySlotReleasedThem) {
    std::vector<ShmEvent*> e0, e1;
    take(s0, 10, nullptr, &e0);
    take(s1, 10, nullptr, &e1);
    EXPECT_EQ(store().stats().events_stored, 4u);
    release_all(s0, e0);
    store().collect();
    EXPECT_EQ(store().stats().events_stored, 4u);  // slot 1 still writes them
    release_all(s1, {e1[0], e1[1]});               // x1, y1
    store().collect();
    EXPECT_EQ(store().stats().events_stored, 2u);
    release_all(s1, {e1[2], e1[3]});
    store().collect();
    StoreStats st = store().stats();
    EXPECT_EQ(st.events_stored, 0u);
    EXPECT_EQ(st.channels, 2u);
    EXPECT_EQ(st.subscribers, 3u);
    ASSERT_EQ(st.per_worker.size(), 2u);
    EXPECT_EQ(st.per_worker[0].second, 1u);
    EXPECT_EQ(st.per_worker[1].second, 2u);

    EXPECT_FALSE(store().unsubscribe(a));  // "x" still has c
    EXPECT_TRUE(store().unsubscribe(b));
    EXPECT_TRUE(store().unsubscribe(c));
    st = store().stats();
    EXPECT_EQ(st.channels, 0u);
    EXPECT_EQ(st.subscribers, 0u);
    EXPECT_EQ(st.bytes_used, bytes_baseline);
    EXPECT_EQ(zone().free_pages(), pages_baseline);
}

TEST_F(DeliveryTest, AnUnsubscribedStreamsEventsStayUntilReleased) {
    std::vector<ShmEvent*> e0, e1;
    take(s0, 10, nullptr, &e0);
    take(s1, 10, nullptr, &e1);
    store().unsubscribe(a);
    store().unsubscribe(b);
    store().unsubscribe(c);
    // The workers may still be writing their bytes.
    StoreStats st = store().stats();
    EXPECT_EQ(st.events_stored, 4u);
    EXPECT_EQ(st.channels, 2u);  // held by their events
    EXPECT_EQ(st.subscribers, 0u);
    EXPECT_FALSE(store().channel_state("x").found);  // but nobody finds them
    release_all(s0, e0);
    release_all(s1, e1);
    store().collect();
    st = store().stats();
    EXPECT_EQ(st.events_stored, 0u);
    EXPECT_EQ(st.channels, 0u);
    EXPECT_EQ(st.bytes_used, bytes_baseline);
    EXPECT_EQ(zone().free_pages(), pages_baseline);
}

TEST_F(DeliveryTest, AReleasedSlotLeavesNothingBehind) {
    take(s1, 10);  // taken, never released: the worker is going away
    store().release_slot(s1);
    std::vector<ShmEvent*> e0;
    take(s0, 10, nullptr, &e0);
    release_all(s0, e0);
    store().unsubscribe(a);
    StoreStats st = store().stats();
    EXPECT_EQ(st.workers, 1u);
    EXPECT_EQ(st.events_stored, 0u);
    EXPECT_EQ(st.channels, 0u);
    EXPECT_EQ(st.bytes_used, bytes_baseline);
    EXPECT_EQ(zone().free_pages(), pages_baseline);
}

TEST_F(DeliveryTest, TheFrameIsTheEventsSseBytes) {
    std::vector<ShmEvent*> e0;
    Ids named = publish({"x"}, {"line 1\nline 2"}, kNoHistory, "update");
    take(s0, 10, nullptr, &e0);
    ASSERT_EQ(e0.size(), 4u);
    ShmEvent* ev = e0[3];
    EXPECT_EQ(ev->id, named[0]);
    EXPECT_EQ(ev->name(), "update");
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(ev->frame), ev->frame_len),
              "id: " + std::to_string(named[0]) + "\nevent: update\ndata: line 1\ndata: line 2\n\n");
    release_all(s0, e0);
}

}  // namespace
}  // namespace sse::test
