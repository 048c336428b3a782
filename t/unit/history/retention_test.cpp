// What a channel's history keeps (sse_history, sse_history_ttl), what a closed channel leaves
// behind, and the records' bytes: History on its own, without nginx.
#include "history_zone.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

constexpr std::size_t kEvent = 512;                        // each test event takes this many bytes of the zone
const std::size_t kChannel = zone::channel_alloc_size(1);  // a channel of a one-letter name

Ids slice(const Ids& v, std::size_t from, std::size_t to) {
    return Ids(v.begin() + std::ptrdiff_t(from), v.begin() + std::ptrdiff_t(to));
}

// The zone's records are the same bytes with nginx and without (zone_records.h asserts the
// stand-ins); these are their sizes on a 64-bit machine.
TEST(ZoneRecords, HaveTheModulesLayout) {
    EXPECT_EQ(sizeof(ZoneLink), 16u);
    EXPECT_EQ(sizeof(ShmEvent), 144u);
    EXPECT_EQ(sizeof(EventChannelRef), 40u);
    EXPECT_EQ(sizeof(ShmChannel), 656u);
    EXPECT_EQ(zone::event_alloc_size(2, 30), 144u + 2 * 40 + 4 + 30 + 2);  // "1e\r\n" frame "\r\n"
    EXPECT_EQ(zone::channel_alloc_size(1), 657u);
    // "id: 1000000\ndata: \n\n" and the chunk's "<hex>\r\n" and "\r\n" around it
    std::size_t data = TestZone::data_taking(kEvent).size();
    EXPECT_EQ(data, kEvent - 144 - 40 - 20 - chunk_head_size(20 + data) - 2);
}

TEST(Retention, KeepsTheNewestWithinTheCount) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 3);
    Ids e = zone.publish_each(a, 5, kEvent);
    ASSERT_EQ(e, (Ids{1000000, 1000001, 1000002, 1000003, 1000004}));
    EXPECT_EQ(zone.history_ids(a), slice(e, 2, 5));
    EXPECT_EQ(a->history_count, 3u);
    EXPECT_EQ(a->lost_through, e[1]);  // the newest it can no longer replay
    EXPECT_EQ(a->last_event_id, e[4]);
    EXPECT_EQ(a->events_published, 5u);
    EXPECT_EQ(a->events_in_log, 3u);
    EXPECT_EQ(zone.freed(), slice(e, 0, 2));  // nothing else held them
    EXPECT_EQ(zone.retention_ids(), slice(e, 2, 5));
    EXPECT_EQ(zone.book().retained_count, 3u);
    EXPECT_EQ(zone.book().retained_bytes, 3 * kEvent);
    EXPECT_EQ(zone.allocator().used(), kChannel + 3 * kEvent);
    EXPECT_EQ(zone.allocator().allocations(), 4u);
    EXPECT_EQ(zone.evicted(), 0u);
}

TEST(Retention, ABatchIsTrimmedOnceStored) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 2);
    Ids e = zone.publish({a}, {"1", "2", "3", "4"});
    ASSERT_EQ(e.size(), 4u);
    EXPECT_EQ(zone.history_ids(a), slice(e, 2, 4));
    EXPECT_EQ(zone.freed(), slice(e, 0, 2));
    EXPECT_EQ(a->lost_through, e[1]);
    EXPECT_EQ(zone.book().retained_bytes, zone::event_alloc_size(1, 21) * 2);  // "id: 100000N\ndata: N\n\n"
}

TEST(Retention, TheLastPublishersLimitApplies) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 10);
    Ids e = zone.publish_each(a, 6, kEvent);
    zone.channel("a", 2);
    Ids more = zone.publish_each(a, 1, kEvent);
    EXPECT_EQ(zone.history_ids(a), (Ids{e[5], more[0]}));
    EXPECT_EQ(zone.freed(), slice(e, 0, 5));
    EXPECT_EQ(a->lost_through, e[4]);
}

TEST(Retention, AChannelWithoutHistoryLosesEachEventButAWorkerKeepsItUntilWritten) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 0);
    Ids e = zone.publish({a}, {zone.data_taking(kEvent)}, true);
    ASSERT_EQ(e.size(), 1u);
    EXPECT_TRUE(zone.history_ids(a).empty());
    EXPECT_EQ(a->lost_through, e[0]);
    EXPECT_EQ(zone.book().retained_count, 0u);
    EXPECT_EQ(zone.allocator().used(), kChannel + kEvent);
    zone.delivered(e[0]);
    EXPECT_EQ(zone.freed(), e);
    EXPECT_EQ(zone.allocator().used(), kChannel);
}

TEST(Retention, AnEventOfTwoChannelsIsRetainedOnceAndFreedWhenBothLetGo) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 1);
    ShmChannel* b = zone.channel("b", 3);
    Ids both = zone.publish({a, b}, {zone.data_taking(kEvent, 2)});
    EXPECT_EQ(zone.book().retained_count, 1u);
    EXPECT_EQ(zone.book().retained_bytes, kEvent);
    EXPECT_EQ(zone.event(both[0])->retained, 2u);
    Ids a2 = zone.publish_each(a, 1, kEvent);  // pushes it out of a's history only
    EXPECT_EQ(zone.history_ids(a), a2);
    EXPECT_EQ(zone.history_ids(b), both);
    EXPECT_EQ(zone.event(both[0])->retained, 1u);
    EXPECT_EQ(a->lost_through, both[0]);
    EXPECT_EQ(b->lost_through, 0u);
    EXPECT_TRUE(zone.freed().empty());
    zone.channel("b", 0);
    zone.trim(b);
    EXPECT_EQ(zone.freed(), both);
    EXPECT_EQ(zone.retention_ids(), a2);
    EXPECT_EQ(zone.book().retained_bytes, kEvent);
    EXPECT_EQ(zone.allocator().used(), 2 * kChannel + kEvent);
}

TEST(Retention, EventsExpireAfterTheTtl) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 10, 1000);
    Ids first = zone.publish_each(a, 1, kEvent);
    zone.advance(600);
    Ids second = zone.publish_each(a, 1, kEvent);
    zone.advance(399);
    zone.trim(a);
    EXPECT_EQ(zone.history_ids(a), (Ids{first[0], second[0]}));  // 999 ms old: still there
    zone.advance(1);
    zone.trim(a);
    EXPECT_EQ(zone.history_ids(a), second);
    EXPECT_EQ(a->lost_through, first[0]);
    zone.advance(600);
    zone.trim(a);
    EXPECT_TRUE(zone.history_ids(a).empty());
    EXPECT_EQ(a->lost_through, second[0]);
    EXPECT_EQ(zone.freed(), (Ids{first[0], second[0]}));
    EXPECT_EQ(zone.allocator().used(), kChannel);
}

// Each worker caches its own reading of the monotonic clock: an event can look a few
// milliseconds younger than "now", which is no age.
TEST(Retention, AnEventFromAClockAheadIsNotExpired) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 10, 1000);
    Ids e = zone.publish_each(a, 1, kEvent);
    zone.set_clock(zone.event(e[0])->published_at - 5);
    zone.trim(a);
    EXPECT_EQ(zone.history_ids(a), e);
}

TEST(Retention, ASweepExpiresTheOldestOfEveryChannelThirtyTwoAtATime) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 100, 1000);
    ShmChannel* b = zone.channel("b", 100, 0);  // keeps its events however old
    Ids e;
    for (int i = 0; i < 20; i++) {
        e.push_back(zone.publish_each(a, 1, kEvent)[0]);
        e.push_back(zone.publish_each(b, 1, kEvent)[0]);
    }
    zone.advance(1000);
    zone.sweep_expired();  // looks at the 32 oldest retained: 16 of a's expire
    EXPECT_EQ(zone.freed().size(), 16u);
    EXPECT_EQ(zone.history_ids(a).size(), 4u);
    EXPECT_EQ(zone.history_ids(a).front(), e[32]);
    zone.sweep_expired();
    EXPECT_TRUE(zone.history_ids(a).empty());
    EXPECT_EQ(zone.history_ids(b).size(), 20u);
    EXPECT_EQ(zone.book().retained_count, 20u);
    EXPECT_EQ(zone.book().retained_bytes, 20 * kEvent);
    EXPECT_EQ(a->lost_through, e[38]);
}

TEST(Retention, AnOlderEventFromAnotherNodeTakesItsPlaceInIdOrder) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 3);
    ASSERT_TRUE(zone.merge(a, 1000010, "x"));
    ASSERT_TRUE(zone.merge(a, 1000030, "x"));
    ASSERT_TRUE(zone.merge(a, 1000020, "x"));
    EXPECT_EQ(zone.history_ids(a), (Ids{1000010, 1000020, 1000030}));
    ASSERT_TRUE(zone.merge(a, 1000005, "x"));  // older than all: in, and trimmed at once
    EXPECT_EQ(zone.history_ids(a), (Ids{1000010, 1000020, 1000030}));
    EXPECT_EQ(zone.freed(), (Ids{1000005}));
    EXPECT_EQ(a->lost_through, 1000005u);
    // The zone's retention list is in arrival order: eviction takes what came first.
    EXPECT_EQ(zone.retention_ids(), (Ids{1000010, 1000030, 1000020}));
}

// ---- closing a channel (DELETE) ----

TEST(Retention, AClosedChannelsHistoryGoesAndItsNameRemembersWhatItHad) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 10);
    Ids e = zone.publish_each(a, 3, kEvent);
    zone.close(a);
    EXPECT_EQ(zone.freed(), e);
    EXPECT_EQ(zone.allocator().used(), 0u);
    EXPECT_EQ(zone.allocator().allocations(), 0u);
    EXPECT_EQ(zone.book().retained_count, 0u);
    EXPECT_EQ(zone.book().forgotten[zone.hash("a") % kForgottenBuckets], e[2]);

    // A channel of that name made again cannot replay what the old one had.
    ShmChannel* again = zone.channel("a", 10);
    EXPECT_EQ(again->lost_through, e[2]);
    EXPECT_EQ(zone.plan({again}, ResumeRequest{ResumeRequest::kAfterId, e[1], 0}).reset, ResetReason::kEvicted);
    EXPECT_EQ(zone.plan({again}, ResumeRequest{ResumeRequest::kAfterId, e[2], 0}).reset, ResetReason::kNone);
}

TEST(Retention, ClosingAChannelLeavesTheEventsOtherChannelsRetain) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 10);
    ShmChannel* b = zone.channel("b", 10);
    Ids shared = zone.publish({a, b}, {zone.data_taking(kEvent, 2)});
    Ids own = zone.publish_each(a, 1, kEvent);
    zone.close(a);
    EXPECT_EQ(zone.freed(), own);
    EXPECT_EQ(zone.history_ids(b), shared);
    EXPECT_EQ(zone.event(shared[0])->retained, 1u);
    EXPECT_EQ(zone.channels(), 2u);  // "a" stays until its last event goes: the shared one names it
    zone.close(b);
    EXPECT_EQ(zone.freed(), (Ids{own[0], shared[0]}));
    EXPECT_EQ(zone.channels(), 0u);
    EXPECT_EQ(zone.allocator().allocations(), 0u);
}

// Names are remembered by hash, 1,024 buckets: another name in the same bucket is as
// unsure of its past, never surer.
TEST(Retention, ANameInTheSameBucketInheritsTheLoss) {
    TestZone zone;
    std::string other;
    for (int i = 0; other.empty(); i++) {
        std::string name = "c" + std::to_string(i);
        if (zone.hash(name) % kForgottenBuckets == zone.hash("a") % kForgottenBuckets) other = name;
    }
    ShmChannel* a = zone.channel("a", 10);
    Ids e = zone.publish_each(a, 2, kEvent);
    zone.close(a);
    EXPECT_EQ(zone.channel(other, 10)->lost_through, e[1]);
    EXPECT_EQ(zone.channel("b", 10)->lost_through, 0u);
}

TEST(Retention, AChannelWithoutHistoryRemembersItsLastEventWhenClosed) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 0);
    Ids e = zone.publish({a}, {"x"}, true);
    zone.close(a);  // a worker still has the event to write: the record waits for it
    EXPECT_EQ(zone.channels(), 1u);
    EXPECT_EQ(zone.book().forgotten[zone.hash("a") % kForgottenBuckets], e[0]);
    zone.delivered(e[0]);
    EXPECT_EQ(zone.channels(), 0u);
    EXPECT_EQ(zone.allocator().allocations(), 0u);
}

}  // namespace
}  // namespace sse::test
