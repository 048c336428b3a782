// What the store tests share: a shared zone made as nginx makes one, the store in it, the log
// lines it wrote, and short ways to publish and subscribe.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ngx_stub.h"
#include "store/event_store.h"

namespace sse::test {

struct LogLine {
    ngx_uint_t level;
    std::string text;
    bool under_lock;  // written while the zone lock was held
};

// Every line the store logged (through ngx_log_error) since the current test began.
std::vector<LogLine>& log_lines();

// A zone of `size` bytes set up as ngx_init_zone_pool (src/core/ngx_cycle.c) sets up a new
// shared zone, with the store created in it as the module's init_zone does.
class Zone {
public:
    explicit Zone(std::size_t size);
    ~Zone();
    Zone(const Zone&) = delete;
    Zone& operator=(const Zone&) = delete;

    ngx_slab_pool_t* pool() const { return pool_; }
    Store& store() { return store_; }
    StoreHeader* header() const { return store_.header(); }
    // Pages the slab allocator has free: back at its first value once everything is freed.
    ngx_uint_t free_pages() const { return pool_->pfree; }

private:
    void* block_ = nullptr;
    ngx_slab_pool_t* pool_ = nullptr;
    Store store_;
};

class StoreTest : public ::testing::Test {
protected:
    void SetUp() override;
    void TearDown() override;

    // Replaces the zone (every test starts with a 1 MB one).
    void make_zone(std::size_t size);
    Store& store() { return zone_->store(); }
    StoreHeader& hdr() { return *zone_->header(); }
    Zone& zone() { return *zone_; }

    // A worker slot of this process.
    ngx_uint_t claim();

    // One publish of one event per entry of `data` (named `name`) to the channels; the ids, or
    // none when refused.
    std::vector<std::uint64_t> publish(std::vector<std::string_view> channels, std::vector<std::string> data,
                                       HistoryPolicy history, std::string_view name = {});
    // `count` publishes of one event each ("e0", "e1", ...): the ids; fails the test when one is refused.
    std::vector<std::uint64_t> publish_each(std::vector<std::string_view> channels, int count, HistoryPolicy history,
                                            std::size_t data_size = 0);

    SubscribeOutcome subscribe(ngx_uint_t slot, std::vector<std::string_view> names, ResumeRequest resume = {});
    static ResumeRequest after(std::uint64_t id) {
        ResumeRequest r;
        r.kind = ResumeRequest::kAfterId;
        r.after = id;
        return r;
    }
    static ResumeRequest replay(std::uint32_t n) {
        ResumeRequest r;
        r.replay = n;
        return r;
    }
    // What a worker does once a plan's events are written: unpins them.
    static void finish_plan(const SubscribeOutcome& out, ngx_uint_t slot);

    // take_events with room for `capacity` events; their ids; `more` as take_events returns it.
    std::vector<std::uint64_t> take(ngx_uint_t slot, std::size_t capacity, bool* more = nullptr,
                                    std::vector<ShmEvent*>* events = nullptr);
    // Takes everything waiting for the slot and releases it.
    std::vector<std::uint64_t> take_and_release(ngx_uint_t slot);

    static std::vector<std::uint64_t> ids(const std::vector<ShmEvent*>& events);
    static std::vector<std::uint64_t> slice(const std::vector<std::uint64_t>& v, std::size_t from, std::size_t to);

    // Log lines written since the test began.
    static std::vector<LogLine>& logged() { return log_lines(); }
    std::vector<LogLine> logged_containing(std::string_view text);

private:
    std::unique_ptr<Zone> zone_;
};

}  // namespace sse::test
