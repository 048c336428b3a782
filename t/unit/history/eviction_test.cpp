// A full zone: the oldest history of any channel goes first, byte for byte; what a replay pins
// or a worker still writes is taken out of history but not freed; and a publish that evicting
// all history could not make room for is refused without evicting anything.
#include "history_zone.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

constexpr std::size_t kEvent = 512;  // each test event takes this many bytes of the zone
const std::size_t kChannel = zone::channel_alloc_size(1);

Ids slice(const Ids& v, std::size_t from, std::size_t to) {
    return Ids(v.begin() + std::ptrdiff_t(from), v.begin() + std::ptrdiff_t(to));
}

ResumeRequest after(std::uint64_t id) {
    ResumeRequest r;
    r.kind = ResumeRequest::kAfterId;
    r.after = id;
    return r;
}

TEST(Eviction, TheOldestEventOfAnyChannelGoesFirst) {
    TestZone zone(2 * kChannel + 6 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    ShmChannel* b = zone.channel("b", 100);
    Ids e;
    for (int i = 0; i < 3; i++) {
        e.push_back(zone.publish_each(a, 1, kEvent)[0]);
        e.push_back(zone.publish_each(b, 1, kEvent)[0]);
    }
    EXPECT_EQ(zone.allocator().used(), zone.allocator().budget());  // full to the byte
    EXPECT_EQ(zone.evicted(), 0u);

    e.push_back(zone.publish_each(a, 1, kEvent)[0]);
    EXPECT_EQ(zone.evicted(), 1u);  // one event's bytes make room for one
    EXPECT_EQ(zone.freed(), (Ids{e[0]}));
    EXPECT_EQ(zone.history_ids(a), (Ids{e[2], e[4], e[6]}));
    EXPECT_EQ(a->lost_through, e[0]);

    Ids more = zone.publish_each(b, 3, kEvent);
    EXPECT_EQ(zone.evicted(), 4u);
    EXPECT_EQ(zone.freed(), slice(e, 0, 4));  // e1 of b, e2 of a, e3 of b: by age, whatever the channel
    EXPECT_EQ(zone.history_ids(a), (Ids{e[4], e[6]}));
    EXPECT_EQ(zone.history_ids(b), (Ids{e[5], more[0], more[1], more[2]}));
    EXPECT_EQ(a->lost_through, e[2]);
    EXPECT_EQ(b->lost_through, e[3]);
    EXPECT_EQ(zone.book().retained_count, 6u);
    EXPECT_EQ(zone.book().retained_bytes, 6 * kEvent);
    EXPECT_EQ(zone.allocator().used(), zone.allocator().budget());
    EXPECT_EQ(zone.allocator().refused(), 4u);  // one refusal before each eviction
}

TEST(Eviction, AnEventOfTwoChannelsLeavesBoth) {
    TestZone zone(2 * kChannel + 3 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    ShmChannel* b = zone.channel("b", 100);
    Ids shared = zone.publish({a, b}, {zone.data_taking(kEvent, 2)});
    Ids a1 = zone.publish_each(a, 1, kEvent);
    Ids b1 = zone.publish_each(b, 1, kEvent);
    Ids a2 = zone.publish_each(a, 1, kEvent);
    EXPECT_EQ(zone.evicted(), 1u);
    EXPECT_EQ(zone.freed(), shared);
    EXPECT_EQ(zone.history_ids(a), (Ids{a1[0], a2[0]}));
    EXPECT_EQ(zone.history_ids(b), b1);
    EXPECT_EQ(a->lost_through, shared[0]);
    EXPECT_EQ(b->lost_through, shared[0]);
}

TEST(Eviction, ALargeEventEvictsAsManyAsItNeeds) {
    TestZone zone(kChannel + 6 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e = zone.publish_each(a, 6, kEvent);
    Ids big = zone.publish_each(a, 1, 3 * kEvent);
    ASSERT_EQ(big.size(), 1u);
    EXPECT_EQ(zone.evicted(), 3u);
    EXPECT_EQ(zone.freed(), slice(e, 0, 3));
    EXPECT_EQ(zone.history_ids(a), (Ids{e[3], e[4], e[5], big[0]}));
    EXPECT_EQ(zone.book().retained_bytes, 6 * kEvent);
}

TEST(Eviction, RefusedWithoutEvictingWhenAllHistoryCouldNotMakeRoom) {
    TestZone zone(kChannel + 6 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e = zone.publish_each(a, 6, kEvent);
    std::uint64_t last = zone.last_id();

    EXPECT_TRUE(zone.publish({a}, {zone.data_taking(6 * kEvent + 1)}).empty());
    EXPECT_EQ(zone.evicted(), 0u);
    EXPECT_EQ(zone.allocator().refused(), 0u);  // not even tried
    EXPECT_EQ(zone.history_ids(a), e);
    EXPECT_EQ(zone.last_id(), last);  // no id given out
    EXPECT_EQ(a->lost_through, 0u);

    // One byte less: everything goes for it.
    Ids all = zone.publish({a}, {zone.data_taking(6 * kEvent)});
    ASSERT_EQ(all, (Ids{last + 1}));
    EXPECT_EQ(zone.evicted(), 6u);
    EXPECT_EQ(zone.freed(), e);
    EXPECT_EQ(zone.history_ids(a), all);
    EXPECT_EQ(a->lost_through, e[5]);
    EXPECT_EQ(zone.allocator().used(), zone.allocator().budget());
}

TEST(Eviction, ABatchIsRefusedWholeWhenItsTotalCannotFit) {
    TestZone zone(kChannel + 4 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e = zone.publish_each(a, 2, kEvent);
    std::string d = zone.data_taking(kEvent);
    EXPECT_TRUE(zone.publish({a}, {d, d, d, d, d}).empty());
    EXPECT_EQ(zone.history_ids(a), e);
    Ids batch = zone.publish({a}, {d, d, d, d});
    EXPECT_EQ(batch.size(), 4u);
    EXPECT_EQ(zone.freed(), e);
    EXPECT_EQ(zone.history_ids(a), batch);
}

TEST(Eviction, ANewChannelEvictsHistoryForItsRecord) {
    TestZone zone(kChannel + 2 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e = zone.publish_each(a, 2, kEvent);
    ASSERT_NE(zone.channel("b", 100), nullptr);  // 657 bytes: both events go
    EXPECT_EQ(zone.evicted(), 2u);
    EXPECT_EQ(zone.freed(), e);
    EXPECT_EQ(zone.allocator().used(), 2 * kChannel);
    EXPECT_EQ(zone.channel("c", 100), nullptr);  // nothing left to evict
    EXPECT_EQ(zone.allocator().refused(), 3u);
}

// A worker still writing an event holds its bytes: evicting it from history makes no room.
TEST(Eviction, WhatAWorkerStillWritesLeavesHistoryButNotTheZone) {
    TestZone zone(kChannel + 2 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e0 = zone.publish({a}, {zone.data_taking(kEvent)}, true);
    Ids e1 = zone.publish_each(a, 1, kEvent);
    Ids e2 = zone.publish_each(a, 1, kEvent);
    ASSERT_EQ(e2.size(), 1u);
    EXPECT_EQ(zone.evicted(), 2u);  // e0 made no room, e1 did
    EXPECT_EQ(zone.freed(), e1);
    EXPECT_NE(zone.event(e0[0]), nullptr);
    EXPECT_EQ(zone.event(e0[0])->retained, 0u);
    EXPECT_EQ(zone.history_ids(a), e2);
    EXPECT_EQ(a->lost_through, e1[0]);
    EXPECT_EQ(zone.book().retained_bytes, kEvent);
    zone.delivered(e0[0]);
    EXPECT_EQ(zone.freed(), (Ids{e1[0], e0[0]}));
    EXPECT_EQ(zone.allocator().used(), kChannel + kEvent);
}

// ---- pins: events a replay is still writing ----

TEST(Eviction, AnEventAReplayPinsIsEvictedButNotFreed) {
    TestZone zone(kChannel + 4 * kEvent);
    ShmChannel* a = zone.channel("a", 100);
    Ids e = zone.publish_each(a, 4, kEvent);
    ResumePlan plan = zone.plan({a}, after(e[1]));
    ASSERT_EQ(zone.retention_ids(), e);
    ASSERT_EQ(plan.replay.size(), 2u);
    EXPECT_EQ(plan.replay[0]->id, e[2]);
    EXPECT_EQ(plan.replay[1]->id, e[3]);

    Ids next = zone.publish_each(a, 2, kEvent);  // evict e0, e1: freed, as nothing pins them
    EXPECT_EQ(zone.freed(), slice(e, 0, 2));
    Ids last = zone.publish_each(a, 1, kEvent);  // e2 and e3 leave history, pinned: e4 must go too
    EXPECT_EQ(zone.evicted(), 5u);
    EXPECT_EQ(zone.freed(), (Ids{e[0], e[1], next[0]}));
    EXPECT_EQ(zone.orphan_ids(), slice(e, 2, 4));
    EXPECT_EQ(zone.history_ids(a), (Ids{next[1], last[0]}));
    EXPECT_EQ(a->lost_through, next[0]);
    EXPECT_EQ(zone.book().retained_bytes, 2 * kEvent);
    EXPECT_EQ(zone.allocator().used(), kChannel + 4 * kEvent);
    // The replay still reads its events whole.
    std::string_view frame(reinterpret_cast<const char*>(plan.replay[0]->frame), plan.replay[0]->frame_len);
    EXPECT_EQ(frame, "id: 1000002\ndata: " + zone.data_taking(kEvent) + "\n\n");

    zone.collect();  // still pinned: nothing freed
    EXPECT_EQ(zone.orphan_ids(), slice(e, 2, 4));
    TestZone::unpin(plan);
    zone.collect();
    EXPECT_TRUE(zone.orphan_ids().empty());
    EXPECT_EQ(zone.freed(), (Ids{e[0], e[1], next[0], e[2], e[3]}));
    EXPECT_EQ(zone.allocator().used(), kChannel + 2 * kEvent);
}

TEST(Eviction, AnEventPinnedByTwoWorkersWaitsForBoth) {
    TestZone zone;
    ShmChannel* a = zone.channel("a", 1);
    Ids e = zone.publish_each(a, 1, kEvent);
    ResumePlan first = zone.plan({a}, after(TestZone::kFirstId - 1), 0);
    ResumePlan second = zone.plan({a}, after(TestZone::kFirstId - 1), 70);
    EXPECT_EQ(zone.event(e[0])->pinned_by[0], 1u);
    EXPECT_EQ(zone.event(e[0])->pinned_by[1], 1u << 6);
    zone.publish_each(a, 1, kEvent);  // pushes e0 out of the history: an orphan
    EXPECT_EQ(zone.orphan_ids(), e);
    TestZone::unpin(first, 0);
    zone.collect();
    EXPECT_EQ(zone.orphan_ids(), e);
    TestZone::unpin(second, 70);
    zone.collect();
    EXPECT_TRUE(zone.orphan_ids().empty());
    EXPECT_EQ(zone.freed(), e);
}

// Collecting orphans stops past the limit of those still pinned (a slow stream must not make
// every delivery round walk all of them); the next call goes on.
TEST(Eviction, CollectingOrphansIsBounded) {
    TestZone zone;
    std::vector<ShmChannel*> channels = {zone.channel("a", 10), zone.channel("b", 10), zone.channel("c", 10)};
    std::vector<ResumePlan> plans;
    Ids e;
    for (std::size_t i = 0; i < channels.size(); i++) {
        e.push_back(zone.publish_each(channels[i], 1, kEvent)[0]);
        plans.push_back(zone.plan({channels[i]}, after(TestZone::kFirstId - 1), i + 1));
    }
    for (ShmChannel* ch : channels) zone.close(ch);
    EXPECT_EQ(zone.orphan_ids(), e);
    EXPECT_EQ(zone.channels(), 3u);  // each waits for its event
    TestZone::unpin(plans[2], 3);
    zone.collect(2);
    EXPECT_EQ(zone.orphan_ids(), e);  // stopped at a and b, still pinned
    zone.collect(3);
    EXPECT_EQ(zone.orphan_ids(), slice(e, 0, 2));
    EXPECT_EQ(zone.freed(), (Ids{e[2]}));
    EXPECT_EQ(zone.channels(), 2u);
}

}  // namespace
}  // namespace sse::test
