#include "store_fixture.h"

#include <cstdlib>
#include <cstring>
#include <memory>

namespace sse::test {

namespace {

void capture(ngx_uint_t level, const char* text, std::size_t len, int under_lock) {
    log_lines().push_back({level, std::string(text, len), under_lock != 0});
}

}  // namespace

Zone::Zone(std::size_t size) {
    // A shared zone is whole pages, zeroed, at a page boundary (mmap).
    block_ = std::aligned_alloc(ngx_pagesize, size);
    if (block_ == nullptr) throw std::bad_alloc();
    std::memset(block_, 0, size);
    auto* addr = static_cast<u_char*>(block_);
    // As ngx_init_zone_pool() does for a new zone.
    pool_ = reinterpret_cast<ngx_slab_pool_t*>(addr);
    pool_->end = addr + size;
    pool_->min_shift = 3;
    pool_->addr = addr;
    if (ngx_shmtx_create(&pool_->mutex, &pool_->lock, nullptr) != NGX_OK) throw std::runtime_error("shmtx");
    ngx_slab_init(pool_);
    // As the module's init_zone() does.
    StoreHeader* header = Store::create(pool_);
    if (header == nullptr) throw std::runtime_error("Store::create");
    Store::configure_cluster(pool_, header, false, 0);
    store_ = Store(pool_, header);
}

Zone::~Zone() {
    std::free(block_);
}

std::vector<LogLine>& log_lines() {
    static std::vector<LogLine> lines;
    return lines;
}

void StoreTest::SetUp() {
    static bool initialized = false;
    if (!initialized) {
        ngx_stub_init();
        ngx_stub_set_log_hook(capture);
        initialized = true;
    }
    ngx_stub_set_clock(1000000, 1700000000);
    logged().clear();
    make_zone(1 << 20);
}

void StoreTest::TearDown() {
    EXPECT_EQ(ngx_stub_locks_held(), 0);
    zone_.reset();
}

void StoreTest::make_zone(std::size_t size) {
    zone_.reset();
    zone_ = std::make_unique<Zone>(size);
}

ngx_uint_t StoreTest::claim() {
    ngx_int_t slot = store().claim_slot(ngx_pid, ngx_cycle->log);
    EXPECT_GE(slot, 0);
    return ngx_uint_t(slot);
}

std::vector<std::uint64_t> StoreTest::publish(std::vector<std::string_view> channels, std::vector<std::string> data,
                                              HistoryPolicy history, std::string_view name) {
    std::vector<EventInput> events;
    for (const std::string& d : data) events.push_back({name, d});
    PublishResult result;
    if (!store().publish(events, channels, history, result, ngx_cycle->log)) return {};
    std::vector<std::uint64_t> out;
    for (std::uint64_t id = result.first_id; id <= result.last_id; id++) out.push_back(id);
    EXPECT_EQ(out.size(), data.size());
    return out;
}

std::vector<std::uint64_t> StoreTest::publish_each(std::vector<std::string_view> channels, int count,
                                                   HistoryPolicy history, std::size_t data_size) {
    std::vector<std::uint64_t> out;
    for (int i = 0; i < count; i++) {
        std::string data = "e" + std::to_string(i);
        if (data.size() < data_size) data.resize(data_size, 'x');
        std::vector<std::uint64_t> one = publish(channels, {data}, history);
        EXPECT_EQ(one.size(), 1u) << "publish " << i << " refused";
        if (one.size() != 1) break;
        out.push_back(one[0]);
    }
    return out;
}

SubscribeOutcome StoreTest::subscribe(ngx_uint_t slot, std::vector<std::string_view> names, ResumeRequest resume) {
    SubscribeRequest req;
    req.slot = slot;
    req.names = std::move(names);
    req.resume = resume;
    SubscribeOutcome out = store().subscribe(req, ngx_cycle->log);
    EXPECT_NE(out.record, nullptr);
    return out;
}

void StoreTest::finish_plan(const SubscribeOutcome& out, ngx_uint_t slot) {
    for (ShmEvent* ev : out.plan.replay) Store::unpin_event(ev, slot);
    for (ShmEvent* ev : out.plan.unpin) Store::unpin_event(ev, slot);
}

std::vector<std::uint64_t> StoreTest::take(ngx_uint_t slot, std::size_t capacity, bool* more,
                                           std::vector<ShmEvent*>* events) {
    std::vector<ShmEvent*> out;
    out.reserve(capacity);  // libstdc++ reserves exactly this: the store fills no more
    bool all = store().take_events(slot, out);
    if (more != nullptr) *more = !all;
    if (events != nullptr) *events = out;
    return ids(out);
}

std::vector<std::uint64_t> StoreTest::take_and_release(ngx_uint_t slot) {
    std::vector<ShmEvent*> events;
    std::vector<std::uint64_t> all;
    bool more = true;
    while (more) {
        std::vector<std::uint64_t> got = take(slot, 64, &more, &events);
        all.insert(all.end(), got.begin(), got.end());
        for (ShmEvent* ev : events) Store::release_event(ev, slot);
    }
    return all;
}

std::vector<std::uint64_t> StoreTest::ids(const std::vector<ShmEvent*>& events) {
    std::vector<std::uint64_t> out;
    for (const ShmEvent* ev : events) out.push_back(ev->id);
    return out;
}

std::vector<std::uint64_t> StoreTest::slice(const std::vector<std::uint64_t>& v, std::size_t from, std::size_t to) {
    return std::vector<std::uint64_t>(v.begin() + std::ptrdiff_t(from), v.begin() + std::ptrdiff_t(to));
}

std::vector<LogLine> StoreTest::logged_containing(std::string_view text) {
    std::vector<LogLine> out;
    for (const LogLine& line : logged()) {
        if (line.text.find(text) != std::string::npos) out.push_back(line);
    }
    return out;
}

}  // namespace sse::test
