// A zone for History (src/store/history.h) without nginx: the store's records made as Store
// makes them (event_store.cpp), their bytes from a BudgetAllocator, the header's books in a
// Book, a clock the test moves. Each call takes the zone's lock for what it does, as the
// store's entry points do, and runs History as Store runs it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "budget_allocator.h"
#include "store/history.h"

namespace sse::test {

class TestZone {
public:
    // What StoreHeader keeps for History.
    struct Book {
        ZoneLink retention;
        ZoneLink orphans;
        std::uint32_t retained_count = 0;
        std::size_t retained_bytes = 0;
        std::uint64_t forgotten[kForgottenBuckets] = {};
    };

    // The zone's first id: ids count up from here, all of 7 digits in a test.
    static constexpr std::uint64_t kFirstId = 1000000;

    explicit TestZone(std::size_t budget = SIZE_MAX);
    // Lets go of everything (release_all) and fails the test if anything is left.
    ~TestZone();
    TestZone(const TestZone&) = delete;
    TestZone& operator=(const TestZone&) = delete;

    // ---- what History asks of its zone ----
    BudgetAllocator& allocator() { return allocator_; }
    Book& book() { return book_; }
    void free_event_locked(ShmEvent* ev);

    // ---- the store's side ----

    // The channel of this name, made if new (nullptr: no room, even with all history evicted),
    // with the history policy of the last publishing location (sse_history, sse_history_ttl).
    ShmChannel* channel(std::string_view name, std::uint32_t history_limit, ZoneMsec ttl = 0);
    // One publish of one event per entry of `data` to the channels, as Store::publish stores
    // it: their ids, or none when the zone has no room. `in_log`: the events are also in the
    // delivery log (a worker still has them to write) until delivered().
    std::vector<std::uint64_t> publish(const std::vector<ShmChannel*>& channels, const std::vector<std::string>& data,
                                       bool in_log = false);
    // One event each, of `bytes` bytes in the zone: their ids.
    std::vector<std::uint64_t> publish_each(ShmChannel* ch, int count, std::size_t bytes);
    // An event of another node with its own id, merged as Store::merge_history does: in id order.
    bool merge(ShmChannel* ch, std::uint64_t id, const std::string& data);
    // The workers have written it: it leaves the delivery log.
    void delivered(std::uint64_t id);
    void trim(ShmChannel* ch);
    void sweep_expired();
    // DELETE: the channel's streams end, its history goes, the zone forgets it.
    void close(ShmChannel* ch);
    // What a stream subscribing to the channels from `resume` is sent, pinned for `slot` and in
    // order, as Store::subscribe plans it.
    ResumePlan plan(const std::vector<ShmChannel*>& channels, const ResumeRequest& resume, std::size_t slot = 0);
    // The worker has written the plan (Store::unpin_event on each).
    static void unpin(const ResumePlan& plan, std::size_t slot = 0);
    // Frees the orphans no replay pins any more (Store::collect's part of them).
    void collect(std::size_t held_limit = 256);
    void advance(ZoneMsec ms) { now_ += ms; }
    void set_clock(ZoneMsec now) { now_ = now; }
    // With Redis: this node's clock, as an id.
    void set_cluster(std::uint64_t clock_id);

    // ---- what the zone holds ----
    std::vector<std::uint64_t> history_ids(ShmChannel* ch);
    std::vector<std::uint64_t> retention_ids();
    std::vector<std::uint64_t> orphan_ids();
    // Ids of the events freed, in the order they were freed.
    const std::vector<std::uint64_t>& freed() const { return freed_; }
    ShmEvent* event(std::uint64_t id) const;  // nullptr: freed or never stored
    std::size_t events() const { return events_.size(); }
    std::size_t channels() const { return channels_.size() + closed_.size(); }
    std::uint64_t last_id() const { return bounds_.last_id; }
    std::uint64_t evicted() const { return evicted_; }
    std::uint32_t hash(std::string_view name) const;

    // Data that makes an event of `nchannels` channels take `bytes` bytes in the zone.
    static std::string data_taking(std::size_t bytes, std::size_t nchannels = 1);

    // Lets go of everything (histories, pins, the delivery log) through History, then frees the
    // channels: a zone that allocated nothing else is empty afterwards.
    void release_all();

private:
    class Locked;

    ShmEvent* store_event(std::uint64_t id, const std::string& data, const std::vector<ShmChannel*>& channels);
    void link_event(ShmEvent* ev, bool keep_sorted);
    void free_channel(ShmChannel* ch);

    BudgetAllocator allocator_;
    Book book_;
    ZoneMsec now_ = 1000000;
    ResumeBounds bounds_;
    std::uint64_t evicted_ = 0;
    std::map<std::string, ShmChannel*, std::less<>> channels_;
    std::set<ShmChannel*> closed_;  // closed, still named by some event
    std::set<ShmEvent*> events_;
    std::vector<std::uint64_t> freed_;
};

}  // namespace sse::test
