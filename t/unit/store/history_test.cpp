// History (sse_history, sse_history_ttl) and resume planning, on the store alone.
#include "store_fixture.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

class HistoryTest : public StoreTest {};

TEST_F(HistoryTest, IdsCountUpFromTheZonesFirstId) {
    Ids ids = publish_each({"a"}, 3, {5, 0});
    ASSERT_EQ(ids.size(), 3u);
    EXPECT_EQ(ids[0], hdr().first_id);
    EXPECT_EQ(ids[1], hdr().first_id + 1);
    EXPECT_EQ(ids[2], hdr().first_id + 2);
    Ids batch = publish({"b"}, {"x", "y"}, {5, 0});
    EXPECT_EQ(batch, (Ids{hdr().first_id + 3, hdr().first_id + 4}));
}

TEST_F(HistoryTest, KeepsTheLastLimitEvents) {
    Ids ids = publish_each({"a"}, 3, {5, 0});
    ChannelState st = store().channel_state("a");
    EXPECT_TRUE(st.found);
    EXPECT_EQ(st.retained, 3u);
    EXPECT_EQ(st.oldest_id, ids[0]);
    EXPECT_EQ(st.newest_id, ids[2]);
    EXPECT_EQ(st.last_event_id, ids[2]);
    EXPECT_EQ(st.events_published, 3u);
    EXPECT_EQ(st.subscribers, 0u);

    Ids more = publish_each({"a"}, 4, {5, 0});
    ids.insert(ids.end(), more.begin(), more.end());
    st = store().channel_state("a");
    EXPECT_EQ(st.retained, 5u);
    EXPECT_EQ(st.oldest_id, ids[2]);
    EXPECT_EQ(st.newest_id, ids[6]);
    EXPECT_EQ(st.events_published, 7u);
    StoreStats stats = store().stats();
    EXPECT_EQ(stats.events_retained, 5u);
    EXPECT_EQ(stats.events_stored, 5u);  // nobody subscribes: the trimmed ones are freed
    EXPECT_EQ(stats.channels, 1u);
}

TEST_F(HistoryTest, ABatchIsTrimmedToTheLimit) {
    Ids ids = publish({"a"}, {"1", "2", "3", "4", "5", "6", "7"}, {3, 0});
    ASSERT_EQ(ids.size(), 7u);
    ChannelState st = store().channel_state("a");
    EXPECT_EQ(st.retained, 3u);
    EXPECT_EQ(st.oldest_id, ids[4]);
    EXPECT_EQ(st.newest_id, ids[6]);
    EXPECT_EQ(store().stats().events_stored, 3u);
}

TEST_F(HistoryTest, TheLastPublishersLimitApplies) {
    Ids ids = publish_each({"a"}, 6, {10, 0});
    publish_each({"a"}, 1, {2, 0});
    ChannelState st = store().channel_state("a");
    EXPECT_EQ(st.retained, 2u);
    EXPECT_EQ(st.oldest_id, ids[5]);
}

TEST_F(HistoryTest, NoHistoryAndNoSubscriberKeepsNothing) {
    publish_each({"a"}, 3, {0, 0});
    EXPECT_FALSE(store().channel_state("a").found);
    StoreStats stats = store().stats();
    EXPECT_EQ(stats.events_stored, 0u);
    EXPECT_EQ(stats.channels, 0u);
    EXPECT_EQ(stats.bytes_used, 0u);
}

TEST_F(HistoryTest, EventsExpireAfterTheTtl) {
    HistoryPolicy h{10, 1000};
    Ids first = publish_each({"a"}, 1, h);
    ngx_stub_advance_ms(600);
    Ids second = publish_each({"a"}, 1, h);
    ngx_stub_advance_ms(399);
    ChannelState st = store().channel_state("a");
    EXPECT_EQ(st.retained, 2u);  // 999 ms old: still there
    ngx_stub_advance_ms(1);
    st = store().channel_state("a");
    EXPECT_EQ(st.retained, 1u);
    EXPECT_EQ(st.oldest_id, second[0]);
    EXPECT_EQ(st.newest_id, second[0]);
    ngx_stub_advance_ms(600);
    // Nothing retained and nobody subscribed: the channel is gone...
    EXPECT_FALSE(store().channel_state("a").found);
    EXPECT_EQ(store().stats().events_stored, 0u);
    // ...but not what it lost: a position before its last event cannot be resumed exactly.
    ngx_uint_t slot = claim();
    SubscribeOutcome out = subscribe(slot, {"a"}, after(first[0]));
    EXPECT_EQ(out.plan.reset, ResetReason::kEvicted);
    EXPECT_TRUE(out.plan.replay.empty());
    store().unsubscribe(out.record);
}

TEST_F(HistoryTest, APublishSweepsExpiredEventsOfOtherChannels) {
    publish_each({"a"}, 3, {10, 1000});
    EXPECT_EQ(store().stats().events_retained, 3u);
    ngx_stub_advance_ms(1000);
    publish_each({"b"}, 1, {10, 0});
    StoreStats stats = store().stats();
    EXPECT_EQ(stats.events_retained, 1u);
    EXPECT_EQ(stats.events_stored, 1u);
}

// ---- resume ----

class ResumeTest : public StoreTest {
protected:
    void SetUp() override {
        StoreTest::SetUp();
        slot = claim();
        // Channel "a" keeps 3 of its 5 events: e0 and e1 are lost to replay.
        e = publish_each({"a"}, 5, {3, 0});
        ASSERT_EQ(e.size(), 5u);
    }

    // Subscribes to "a" from `resume`; the plan, with the pins released and the stream gone.
    ResumePlan plan(ResumeRequest resume, std::vector<std::string_view> names = {"a"}) {
        SubscribeOutcome out = subscribe(slot, names, resume);
        finish_plan(out, slot);
        store().unsubscribe(out.record);
        return out.plan;
    }

    ngx_uint_t slot = 0;
    Ids e;
};

TEST_F(ResumeTest, AfterARetainedIdReplaysWhatFollows) {
    ResumePlan p = plan(after(e[2]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), slice(e, 3, 5));
    EXPECT_TRUE(p.unpin.empty());
}

TEST_F(ResumeTest, AfterTheLastLostIdIsStillExact) {
    ResumePlan p = plan(after(e[1]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), slice(e, 2, 5));
}

TEST_F(ResumeTest, AfterTheNewestIdReplaysNothing) {
    ResumePlan p = plan(after(e[4]));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_TRUE(p.replay.empty());
}

TEST_F(ResumeTest, BeforeTheHistoryIsEvicted) {
    ResumePlan p = plan(after(e[0]));
    EXPECT_EQ(p.reset, ResetReason::kEvicted);
    EXPECT_EQ(ids(p.replay), slice(e, 2, 5));  // everything retained
}

TEST_F(ResumeTest, AFutureIdIsReset) {
    ResumePlan p = plan(after(e[4] + 1));
    EXPECT_EQ(p.reset, ResetReason::kFuture);
    EXPECT_EQ(ids(p.replay), slice(e, 2, 5));
    EXPECT_EQ(plan(after(UINT64_MAX)).reset, ResetReason::kFuture);
}

TEST_F(ResumeTest, AnIdFromBeforeTheZoneIsBeforeRestart) {
    ResumePlan p = plan(after(hdr().first_id - 2));
    EXPECT_EQ(p.reset, ResetReason::kBeforeRestart);
    EXPECT_EQ(ids(p.replay), slice(e, 2, 5));
    EXPECT_EQ(plan(after(0)).reset, ResetReason::kBeforeRestart);
    // The id just before the zone's first is where a client that saw nothing of it stands.
    EXPECT_EQ(plan(after(hdr().first_id - 1)).reset, ResetReason::kEvicted);  // "a" lost e0, e1
}

TEST_F(ResumeTest, FromBeforeTheFirstEventOfACompleteHistoryIsExact) {
    Ids b = publish_each({"b"}, 2, {10, 0});
    ResumePlan p = plan(after(hdr().first_id - 1), {"b"});
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), b);
}

TEST_F(ResumeTest, AMalformedIdIsReset) {
    ResumeRequest r;
    r.kind = ResumeRequest::kMalformed;
    ResumePlan p = plan(r);
    EXPECT_EQ(p.reset, ResetReason::kMalformed);
    EXPECT_EQ(ids(p.replay), slice(e, 2, 5));
}

TEST_F(ResumeTest, LiveWithReplaySendsTheMostRecent) {
    ResumePlan p = plan(replay(2));
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), slice(e, 3, 5));
    EXPECT_TRUE(plan(replay(0)).replay.empty());
    EXPECT_EQ(ids(plan(replay(10)).replay), slice(e, 2, 5));
}

TEST_F(ResumeTest, AnEventOfTwoChannelsIsReplayedOnce) {
    Ids a1 = publish({"a"}, {"a only"}, {10, 0});
    Ids both = publish({"a", "b"}, {"both"}, {10, 0});
    Ids b1 = publish({"b"}, {"b only"}, {10, 0});
    Ids a2 = publish({"a"}, {"a again"}, {10, 0});
    ResumePlan p = plan(after(e[4]), {"a", "b"});
    EXPECT_EQ(p.reset, ResetReason::kNone);
    EXPECT_EQ(ids(p.replay), (Ids{a1[0], both[0], b1[0], a2[0]}));
    // Live with sse_replay: the 3 most recent of both channels, merged; the rest only pinned.
    SubscribeOutcome out = subscribe(slot, {"a", "b"}, replay(3));
    EXPECT_EQ(ids(out.plan.replay), (Ids{both[0], b1[0], a2[0]}));
    EXPECT_FALSE(out.plan.unpin.empty());
    finish_plan(out, slot);
    store().unsubscribe(out.record);
}

TEST_F(ResumeTest, AnEventPublishedAfterSubscribingIsLiveNotReplayed) {
    SubscribeOutcome out = subscribe(slot, {"a"}, after(e[3]));
    EXPECT_EQ(ids(out.plan.replay), slice(e, 4, 5));
    Ids next = publish_each({"a"}, 1, {3, 0});
    EXPECT_EQ(take_and_release(slot), next);
    finish_plan(out, slot);
    store().unsubscribe(out.record);
}

TEST_F(ResumeTest, PinsKeepReplayedEventsUntilUnpinned) {
    StoreStats before = store().stats();
    EXPECT_EQ(before.events_stored, 3u);
    SubscribeOutcome out = subscribe(slot, {"a"}, after(e[1]));
    ASSERT_EQ(ids(out.plan.replay), slice(e, 2, 5));
    // Three more events push the replayed ones out of the history; the pins keep them.
    Ids next = publish_each({"a"}, 3, {3, 0});
    EXPECT_EQ(store().channel_state("a").oldest_id, next[0]);
    take_and_release(slot);
    store().collect();
    EXPECT_EQ(store().stats().events_stored, 6u);
    EXPECT_EQ(out.plan.replay[0]->id, e[2]);  // still readable
    std::string_view frame(reinterpret_cast<const char*>(out.plan.replay[0]->frame), out.plan.replay[0]->frame_len);
    EXPECT_EQ(frame, "id: " + std::to_string(e[2]) + "\ndata: e2\n\n");
    finish_plan(out, slot);
    store().collect();
    EXPECT_EQ(store().stats().events_stored, 3u);
    store().unsubscribe(out.record);
    EXPECT_EQ(store().stats().events_stored, 3u);  // the history stays
}

}  // namespace
}  // namespace sse::test
