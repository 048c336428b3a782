// Pattern channels (`blog.*`) and the reaping of slots whose worker died.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "store_fixture.h"

namespace sse::test {
namespace {

using Ids = std::vector<std::uint64_t>;

constexpr HistoryPolicy kNoHistory{0, 0};

// The same streams and publishes, with the patterns looked at one by one (few patterns) or
// looked up by the name's prefixes (more patterns than the name has characters + 1; with no
// fillers only "blog" is looked up that way).
class PatternTest : public StoreTest, public ::testing::WithParamInterface<int> {
protected:
    void SetUp() override {
        StoreTest::SetUp();
        for (std::string_view name : kStreams) {
            ngx_uint_t slot = claim();
            subscribe(slot, {name});
            slot_of[std::string(name)] = slot;
        }
        ngx_uint_t filler = claim();
        for (int i = 0; i < GetParam(); i++) {
            fillers.push_back("filler" + std::to_string(i) + ".*");
        }
        for (const std::string& f : fillers) subscribe(filler, {f});
    }

    // Who took the event: the streams whose slot has it.
    std::vector<std::string> takers(std::uint64_t id) {
        std::vector<std::string> out;
        for (std::string_view name : kStreams) {
            std::vector<ShmEvent*> events;
            ngx_uint_t slot = slot_of[std::string(name)];
            Ids got = take(slot, 16, nullptr, &events);
            for (ShmEvent* ev : events) Store::release_event(ev, slot);
            EXPECT_LE(got.size(), 1u) << name;
            if (got == Ids{id}) out.emplace_back(name);
        }
        return out;
    }

    static constexpr std::string_view kStreams[] = {"*", "b*", "blog.*", "blog.x*", "blog.xy*", "news.*", "blog.x"};
    std::map<std::string, ngx_uint_t> slot_of;
    std::vector<std::string> fillers;
};

TEST_P(PatternTest, EveryCoveringPatternTakesTheEventOnce) {
    EXPECT_EQ(hdr().pattern_count, 6u + std::uint32_t(GetParam()));
    using Names = std::vector<std::string>;

    Ids blog_x = publish({"blog.x"}, {"1"}, kNoHistory);
    EXPECT_EQ(takers(blog_x[0]), (Names{"*", "b*", "blog.*", "blog.x*", "blog.x"}));

    Ids both = publish({"blog.x", "blog.xy"}, {"2"}, kNoHistory);
    EXPECT_EQ(takers(both[0]), (Names{"*", "b*", "blog.*", "blog.x*", "blog.xy*", "blog.x"}));

    Ids news = publish({"news.today", "blog.y"}, {"3"}, kNoHistory);
    EXPECT_EQ(takers(news[0]), (Names{"*", "b*", "blog.*", "news.*"}));

    Ids blog = publish({"blog"}, {"4"}, kNoHistory);  // "blog." does not cover "blog"
    EXPECT_EQ(takers(blog[0]), (Names{"*", "b*"}));

    // Client and user channels are covered by no pattern.
    Ids user = publish({"#u:alice"}, {"5"}, kNoHistory);
    ASSERT_EQ(user.size(), 1u);  // published: nobody on it, nothing kept, so not stored
    EXPECT_EQ(takers(user[0]), Names{});

    EXPECT_EQ(store().stats().events_stored, 0u);
}

TEST_P(PatternTest, AnEventNamesEachPatternOnce) {
    ngx_uint_t slot = slot_of["blog.*"];
    subscribe(slot, {"blog.*", "blog.x"});  // a second stream of that worker, on both
    Ids id = publish({"blog.x", "blog.y", "blog.x"}, {"1"}, kNoHistory);
    std::vector<ShmEvent*> events;
    take(slot, 16, nullptr, &events);
    ASSERT_EQ(events.size(), 1u);
    std::vector<std::string> channels;
    for (std::uint32_t i = 0; i < events[0]->nchannels; i++) channels.emplace_back(events[0]->channel(i)->name_view());
    std::sort(channels.begin(), channels.end());
    EXPECT_EQ(channels, (std::vector<std::string>{"*", "b*", "blog.*", "blog.x", "blog.x*"}));
    Store::release_event(events[0], slot);
}

TEST_P(PatternTest, APatternKeepsHistoryFromItsCreation) {
    Ids before = publish({"blog.x"}, {"0"}, {10, 0});
    Ids pub = publish({"blog.x", "blog.y"}, {"1", "2", "3"}, {10, 0});
    ngx_uint_t slot = claim();
    SubscribeOutcome out = subscribe(slot, {"blog.*"}, after(pub[0]));
    EXPECT_EQ(out.plan.reset, ResetReason::kNone);
    EXPECT_EQ(ids(out.plan.replay), (Ids{pub[1], pub[2]}));
    finish_plan(out, slot);
    store().unsubscribe(out.record);
    // A new pattern knows nothing from before it existed.
    out = subscribe(slot, {"blog.x*"}, after(before[0]));
    EXPECT_EQ(out.plan.reset, ResetReason::kNone);  // "blog.x*" was there, with a stream
    finish_plan(out, slot);
    store().unsubscribe(out.record);
    out = subscribe(slot, {"blog.z*"}, after(pub[2]));
    EXPECT_EQ(out.plan.reset, ResetReason::kNone);  // at the newest: nothing missed
    store().unsubscribe(out.record);
    out = subscribe(slot, {"blog.z*"}, after(pub[1]));
    EXPECT_EQ(out.plan.reset, ResetReason::kEvicted);
    store().unsubscribe(out.record);
}

INSTANTIATE_TEST_SUITE_P(ScanAndLookup, PatternTest, ::testing::Values(0, 20),
                         [](const ::testing::TestParamInfo<int>& info) {
                             return info.param == 0 ? std::string("Scan") : std::string("PrefixLookup");
                         });

// ---- reaping ----

// A child process that lives until told to exit.
class Child {
public:
    Child() {
        if (pipe(fds_) != 0) throw std::runtime_error("pipe");
        pid_ = fork();
        if (pid_ == 0) {
            close(fds_[1]);
            char c;
            while (read(fds_[0], &c, 1) > 0) {
            }
            _exit(0);
        }
        close(fds_[0]);
    }
    ~Child() { exit(); }
    pid_t pid() const { return pid_; }
    void exit() {
        if (pid_ <= 0) return;
        close(fds_[1]);
        waitpid(pid_, nullptr, 0);
        pid_ = -pid_;
    }

private:
    int fds_[2];
    pid_t pid_;
};

class ReapTest : public StoreTest {};

TEST_F(ReapTest, ADeadWorkersSlotIsReaped) {
    ngx_uint_t mine = claim();
    Child child;
    ASSERT_GT(child.pid(), 0);
    ngx_int_t theirs = store().claim_slot(child.pid(), ngx_cycle->log);
    ASSERT_EQ(theirs, 1);
    subscribe(ngx_uint_t(theirs), {"x"});
    subscribe(ngx_uint_t(theirs), {"x", "y"});
    subscribe(mine, {"x"});
    Ids ids = publish({"x"}, {"1", "2"}, kNoHistory);
    EXPECT_EQ(store().reap_dead_slots(ngx_cycle->log), 0u);  // alive
    EXPECT_EQ(store().stats().workers, 2u);

    pid_t pid = child.pid();
    child.exit();
    logged().clear();
    EXPECT_EQ(store().reap_dead_slots(ngx_cycle->log), 1u);
    ASSERT_EQ(logged().size(), 1u);
    EXPECT_EQ(logged()[0].text, "sse: reaping 2 subscribers of worker process " + std::to_string(pid) +
                                    ", which exited without releasing them");
    EXPECT_EQ(logged()[0].level, ngx_uint_t(NGX_LOG_NOTICE));
    EXPECT_FALSE(logged()[0].under_lock);
    EXPECT_EQ(hdr().counters.workers_reaped, 1u);
    StoreStats st = store().stats();
    EXPECT_EQ(st.workers, 1u);
    EXPECT_EQ(st.subscribers, 1u);
    EXPECT_EQ(st.channels, 1u);  // "y" went with its last stream
    EXPECT_EQ(store().channel_state("x").subscribers, 1u);
    EXPECT_EQ(hdr().slot_high, 1u);
    // The dead worker's marks are gone: the events go once this worker is done with them.
    EXPECT_EQ(take_and_release(mine), ids);
    store().collect();
    EXPECT_EQ(store().stats().events_stored, 0u);
}

TEST_F(ReapTest, ClaimingASlotReapsTheDeadFirst) {
    Child child;
    ngx_int_t theirs = store().claim_slot(child.pid(), ngx_cycle->log);
    ASSERT_EQ(theirs, 0);
    subscribe(0, {"x"});
    child.exit();
    EXPECT_EQ(store().claim_slot(ngx_pid, ngx_cycle->log), 0);  // its slot, free again
    EXPECT_EQ(hdr().counters.workers_reaped, 1u);
    EXPECT_EQ(store().channel_state("x").subscribers, 0u);
    EXPECT_EQ(logged_containing("reaping 1 subscribers").size(), 1u);
}

TEST_F(ReapTest, ALiveProcessWithAnotherStartTimeIsAReusedPid) {
    ngx_int_t slot = store().claim_slot(getppid(), ngx_cycle->log);
    ASSERT_EQ(slot, 0);
    EXPECT_NE(hdr().slots[0].started, 0u);
    EXPECT_EQ(store().reap_dead_slots(ngx_cycle->log), 0u);
    hdr().slots[0].started += 1;  // as if the worker died and its pid went to a newer process
    EXPECT_EQ(store().reap_dead_slots(ngx_cycle->log), 1u);
    EXPECT_EQ(hdr().slots[0].pid, 0);
}

}  // namespace
}  // namespace sse::test
