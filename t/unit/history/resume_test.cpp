// What a new stream is sent before it goes live: from a position inside the history, older
// than it (lost), unknown, from the future or malformed; with sse_replay; on several channels;
// with Redis. History::plan_resume and order_replay, without nginx.
#include "history_zone.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

ResumeRequest after(std::uint64_t id) {
    ResumeRequest r;
    r.kind = ResumeRequest::kAfterId;
    r.after = id;
    return r;
}

ResumeRequest live(std::uint32_t replay) {
    ResumeRequest r;
    r.replay = replay;
    return r;
}

Ids ids(const std::vector<ShmEvent*>& events) {
    Ids out;
    for (const ShmEvent* ev : events) out.push_back(ev->id);
    return out;
}

class ResumeTest : public ::testing::Test {
protected:
    void SetUp() override {
        // "a" keeps 3 of its 5 events: e0 and e1 are lost to replay.
        a = zone.channel("a", 3);
        e = zone.publish({a}, {"e0", "e1", "e2", "e3", "e4"});
        ASSERT_EQ(e, (Ids{1000000, 1000001, 1000002, 1000003, 1000004}));
        ASSERT_EQ(a->lost_through, e[1]);
    }

    // The plan for `resume` on the channels, its pins released.
    ResumePlan plan(ResumeRequest resume, std::vector<ShmChannel*> channels = {}) {
        if (channels.empty()) channels = {a};
        ResumePlan p = zone.plan(channels, resume);
        TestZone::unpin(p);
        return p;
    }

    TestZone zone;
    ShmChannel* a = nullptr;
    Ids e;
};

TEST_F(ResumeTest, FromAnIdInTheHistoryReplaysWhatFollows) {
    ResumePlan p = zone.plan({a}, after(e[2]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{e[3], e[4]}));
    EXPECT_TRUE(p.unpin.empty());
    EXPECT_FALSE(p.deferred);
    // Pinned for the stream's worker (slot 0), and only those.
    EXPECT_EQ(zone.event(e[2])->pinned_by[0], 0u);
    EXPECT_EQ(zone.event(e[3])->pinned_by[0], 1u);
    EXPECT_EQ(zone.event(e[4])->pinned_by[0], 1u);
    TestZone::unpin(p);
    EXPECT_EQ(zone.event(e[4])->pinned_by[0], 0u);
}

TEST_F(ResumeTest, FromTheNewestLostIdIsStillExact) {
    ResumePlan p = plan(after(e[1]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{e[2], e[3], e[4]}));
}

TEST_F(ResumeTest, FromTheNewestIdReplaysNothing) {
    ResumePlan p = plan(after(e[4]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_TRUE(p.replay.empty());
}

TEST_F(ResumeTest, FromOlderThanTheHistoryIsLost) {
    ResumePlan p = plan(after(e[0]));
    EXPECT_EQ(p.reset, ResetReason::kEvicted);
    EXPECT_EQ(ids(p.replay), (Ids{e[2], e[3], e[4]}));  // everything retained
}

TEST_F(ResumeTest, FromAnIdOfAnotherChannelIsExact) {
    ShmChannel* b = zone.channel("b", 3);
    Ids b1 = zone.publish({b}, {"b1"});
    Ids a5 = zone.publish({a}, {"e5"});
    ResumePlan p = plan(after(b1[0]));  // an id "a" never had, between two of its own
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), a5);
    EXPECT_EQ(ids(plan(after(e[3])).replay), (Ids{e[4], a5[0]}));
}

TEST_F(ResumeTest, FromTheFutureIsReset) {
    ResumePlan p = plan(after(e[4] + 1));
    EXPECT_EQ(p.reset, ResetReason::kFuture);
    EXPECT_EQ(ids(p.replay), (Ids{e[2], e[3], e[4]}));
    EXPECT_EQ(plan(after(UINT64_MAX)).reset, ResetReason::kFuture);
}

TEST_F(ResumeTest, FromBeforeTheZoneIsBeforeRestart) {
    ResumePlan p = plan(after(TestZone::kFirstId - 2));
    EXPECT_EQ(p.reset, ResetReason::kBeforeRestart);
    EXPECT_EQ(ids(p.replay), (Ids{e[2], e[3], e[4]}));
    EXPECT_EQ(plan(after(0)).reset, ResetReason::kBeforeRestart);
    // Just before the first id is where a client that saw nothing of this zone stands: exact
    // on a channel that kept everything, lost on "a".
    EXPECT_EQ(plan(after(TestZone::kFirstId - 1)).reset, ResetReason::kEvicted);
    ShmChannel* b = zone.channel("b", 10);
    Ids b1 = zone.publish({b}, {"b1", "b2"});
    ResumePlan whole = plan(after(TestZone::kFirstId - 1), {b});
    EXPECT_EQ(whole.reset, ResetReason::kNone);
    EXPECT_EQ(ids(whole.replay), b1);
}

TEST_F(ResumeTest, AMalformedIdIsReset) {
    ResumeRequest r;
    r.kind = ResumeRequest::kMalformed;
    ResumePlan p = plan(r);
    EXPECT_EQ(p.reset, ResetReason::kMalformed);
    EXPECT_EQ(ids(p.replay), (Ids{e[2], e[3], e[4]}));
}

TEST_F(ResumeTest, LiveWithReplaySendsTheMostRecent) {
    ResumePlan p = zone.plan({a}, live(2));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{e[3], e[4]}));
    EXPECT_TRUE(p.unpin.empty());
    EXPECT_EQ(zone.event(e[2])->pinned_by[0], 0u);  // only what it sends is pinned
    TestZone::unpin(p);
    EXPECT_EQ(ids(plan(live(10)).replay), (Ids{e[2], e[3], e[4]}));
    ResumePlan none = zone.plan({a}, live(0));
    EXPECT_TRUE(none.replay.empty());
    for (std::uint64_t id : {e[2], e[3], e[4]}) EXPECT_EQ(zone.event(id)->pinned_by[0], 0u);
}

TEST_F(ResumeTest, ExpiredEventsAreTrimmedBeforePlanning) {
    ShmChannel* t = zone.channel("t", 10, 1000);
    Ids old = zone.publish({t}, {"old"});
    zone.advance(1000);
    Ids fresh = zone.publish({t}, {"fresh"});
    ResumePlan p = plan(after(e[4]), {t});
    EXPECT_EQ(p.reset, ResetReason::kEvicted);  // "old" expired: lost
    EXPECT_EQ(ids(p.replay), fresh);
    EXPECT_EQ(zone.history_ids(t), fresh);
}

TEST_F(ResumeTest, APlanPinsForItsWorkersSlot) {
    ResumePlan p = zone.plan({a}, after(e[3]), 70);
    ASSERT_EQ(ids(p.replay), (Ids{e[4]}));
    EXPECT_EQ(p.replay[0]->pinned_by[0], 0u);
    EXPECT_EQ(p.replay[0]->pinned_by[1], std::uint64_t(1) << 6);
    TestZone::unpin(p, 70);
    EXPECT_EQ(p.replay[0]->pinned_by[1], 0u);
}

// ---- several channels ----

class MultiChannelResumeTest : public ResumeTest {
protected:
    void SetUp() override {
        ResumeTest::SetUp();
        b = zone.channel("b", 10);
        shared = zone.publish({a, b}, {"both"})[0];
        b1 = zone.publish({b}, {"b only"})[0];
        a1 = zone.publish({a}, {"a only"})[0];
        // "a" keeps e4, shared, a1 (lost through e3); "b" keeps shared, b1 (lost nothing).
        ASSERT_EQ(zone.history_ids(a), (Ids{e[4], shared, a1}));
        ASSERT_EQ(zone.history_ids(b), (Ids{shared, b1}));
    }

    ShmChannel* b = nullptr;
    std::uint64_t shared = 0, b1 = 0, a1 = 0;
};

TEST_F(MultiChannelResumeTest, EachEventOnceInIdOrder) {
    ResumePlan p = plan(after(e[4]), {a, b});
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{shared, b1, a1}));
    EXPECT_TRUE(p.unpin.empty());  // the shared event came twice as the same record
    EXPECT_EQ(ids(plan(after(shared), {a, b}).replay), (Ids{b1, a1}));
}

TEST_F(MultiChannelResumeTest, OneLostChannelResetsTheStreamAndReplaysAllOfBoth) {
    ResumePlan p = plan(after(e[2]), {b, a});  // exact for "b", lost for "a"
    EXPECT_EQ(p.reset, ResetReason::kEvicted);
    EXPECT_EQ(ids(p.replay), (Ids{e[4], shared, b1, a1}));
}

TEST_F(MultiChannelResumeTest, LiveReplayTakesTheMostRecentOverAll) {
    ResumePlan p = zone.plan({a, b}, live(3));
    EXPECT_EQ(ids(p.replay), (Ids{shared, b1, a1}));
    EXPECT_EQ(ids(p.unpin), (Ids{e[4]}));  // pinned while planning, not sent: the worker unpins it
    EXPECT_EQ(zone.event(e[4])->pinned_by[0], 1u);
    TestZone::unpin(p);
    EXPECT_EQ(zone.event(e[4])->pinned_by[0], 0u);
}

// With Redis an id merged into two channels' histories can be two records: sent once, the
// other only unpinned.
TEST_F(MultiChannelResumeTest, AnIdHeldTwiceIsSentOnce) {
    ShmChannel* c = zone.channel("c", 10);
    ShmChannel* d = zone.channel("d", 10);
    ASSERT_TRUE(zone.merge(c, 2000000, "x"));
    ASSERT_TRUE(zone.merge(d, 2000000, "x"));
    ResumePlan p = zone.plan({c, d}, after(a1));
    ASSERT_EQ(ids(p.replay), (Ids{2000000}));
    ASSERT_EQ(ids(p.unpin), (Ids{2000000}));
    EXPECT_NE(p.replay[0], p.unpin[0]);
    TestZone::unpin(p);
}

// ---- with Redis ----

class ClusterResumeTest : public ResumeTest {
protected:
    static constexpr std::uint64_t kClock = 1700000000000000ULL * kIdsPerMicrosecond;
    static constexpr std::uint64_t kMargin = kClockMarginUs * kIdsPerMicrosecond;
};

TEST_F(ClusterResumeTest, AnIdIsFromTheFutureOnlyPastTheClockMargin) {
    zone.set_cluster(kClock);
    a->redis_synced = 1;
    ResumePlan p = plan(after(kClock + kMargin));  // another node's clock may run ahead
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_TRUE(p.replay.empty());
    EXPECT_EQ(plan(after(kClock + kMargin + 1)).reset, ResetReason::kFuture);
    // And nothing is "before the zone": other nodes' ids come from their own clocks.
    EXPECT_EQ(plan(after(e[1])).reset, ResetReason::kNone);
    EXPECT_EQ(plan(after(0)).reset, ResetReason::kEvicted);
}

TEST_F(ClusterResumeTest, AnUnsyncedChannelKnowsNothingBeforeItsLiveFloor) {
    zone.set_cluster(kClock);
    a->live_floor = e[3];
    EXPECT_EQ(plan(after(e[2])).reset, ResetReason::kEvicted);
    ResumePlan p = plan(after(e[3]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{e[4]}));
    a->redis_synced = 1;
    EXPECT_EQ(plan(after(e[2])).reset, ResetReason::kNone);
}

}  // namespace
}  // namespace sse::test
