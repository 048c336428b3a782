#include "history_zone.h"

#include <cstring>

#include "protocol/event_frame.h"

namespace sse::test {

// The zone's lock for a scope (ZoneLock).
class TestZone::Locked {
public:
    explicit Locked(BudgetAllocator& allocator) : allocator_(allocator) { allocator_.lock(); }
    ~Locked() { allocator_.unlock(); }
    Locked(const Locked&) = delete;
    Locked& operator=(const Locked&) = delete;

private:
    BudgetAllocator& allocator_;
};

TestZone::TestZone(std::size_t budget) : allocator_(budget) {
    ZoneList::init(&book_.retention);
    ZoneList::init(&book_.orphans);
    bounds_.first_id = kFirstId;
    bounds_.last_id = kFirstId - 1;
}

TestZone::~TestZone() {
    release_all();
    // History let go of every event, and nothing else was allocated.
    EXPECT_EQ(events_.size(), 0u) << "events still stored once everything let go of them";
    EXPECT_EQ(allocator_.allocations(), 0u);
    EXPECT_EQ(book_.retained_count, 0u);
    EXPECT_EQ(book_.retained_bytes, 0u);
}

std::uint32_t TestZone::hash(std::string_view name) const {
    std::uint32_t h = 2166136261u;  // FNV-1a
    for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
    return h;
}

std::string TestZone::data_taking(std::size_t bytes, std::size_t nchannels) {
    // "data:\n" for empty data, "data: <data>\n" for a line: measured with one byte of data. The
    // chunk's head grows by a digit at each power of 16, hence the check from the guess down.
    std::size_t fixed = zone::event_alloc_size(nchannels, event_frame_size(kFirstId, "", "x")) - 1;
    EXPECT_GE(bytes, fixed);
    std::string data(bytes - fixed, 'x');
    while (!data.empty() && zone::event_alloc_size(nchannels, event_frame_size(kFirstId, "", data)) > bytes) {
        data.pop_back();
    }
    EXPECT_EQ(zone::event_alloc_size(nchannels, event_frame_size(kFirstId, "", data)), bytes)
        << "no data makes an event of exactly " << bytes << " bytes";
    return data;
}

void TestZone::free_event_locked(ShmEvent* ev) {
    EXPECT_EQ(events_.erase(ev), 1u) << "event " << ev->id << " freed twice";
    for (std::uint32_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->refs[i].channel;
        ch->events_in_log--;
        if (ch->events_in_log == 0 && closed_.erase(ch) > 0) free_channel(ch);
    }
    freed_.push_back(ev->id);
    allocator_.deallocate(ev, zone::event_alloc_size(ev->nchannels, ev->frame_len));
}

void TestZone::free_channel(ShmChannel* ch) {
    allocator_.deallocate(ch, zone::channel_alloc_size(ch->name_len));
}

ShmChannel* TestZone::channel(std::string_view name, std::uint32_t history_limit, ZoneMsec ttl) {
    auto it = channels_.find(name);
    ShmChannel* ch = it != channels_.end() ? it->second : nullptr;
    if (ch == nullptr) {
        Locked lock(allocator_);
        History<TestZone> history(*this);
        ch = static_cast<ShmChannel*>(history.allocate_evicting(zone::channel_alloc_size(name.size()), evicted_));
        if (ch == nullptr) return nullptr;
        std::memset(ch, 0, sizeof(ShmChannel));
        ZoneList::init(&ch->history);
        ch->lost_through = history.forgotten(hash(name));
        ch->node.key = hash(name);
        ch->name_len = std::uint16_t(name.size());
        std::memcpy(ch->name, name.data(), name.size());
        ch->linked = 1;
        channels_.emplace(std::string(name), ch);
    }
    ch->history_limit = history_limit;
    ch->history_ttl = ttl;
    return ch;
}

ShmEvent* TestZone::store_event(std::uint64_t id, const std::string& data, const std::vector<ShmChannel*>& channels) {
    std::size_t frame_len = event_frame_size(id, "", data);
    std::size_t size = zone::event_alloc_size(channels.size(), frame_len);
    auto* ev = static_cast<ShmEvent*>(History<TestZone>(*this).allocate_evicting(size, evicted_));
    if (ev == nullptr) return nullptr;
    std::memset(ev, 0, sizeof(ShmEvent));
    ev->id = id;
    ev->published_at = now_;
    ev->frame_len = std::uint32_t(frame_len);
    ev->nchannels = std::uint32_t(channels.size());
    ev->kind = kEventMessage;
    ev->refs = reinterpret_cast<EventChannelRef*>(ev + 1);
    for (std::size_t i = 0; i < channels.size(); i++) {
        ev->refs[i].channel = channels[i];
        ev->refs[i].event = ev;
        ev->refs[i].retained = false;
    }
    ev->frame = reinterpret_cast<unsigned char*>(ev->refs + channels.size());
    write_event_frame(reinterpret_cast<char*>(ev->frame), id, "", data);
    events_.insert(ev);
    return ev;
}

void TestZone::link_event(ShmEvent* ev, bool keep_sorted) {
    ev->seq = ev->id;
    if (bounds_.last_id < ev->id) bounds_.last_id = ev->id;
    for (std::uint32_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->refs[i].channel;
        ch->events_in_log++;
        ch->events_published++;
        if (ev->id > ch->last_event_id) ch->last_event_id = ev->id;
    }
    History<TestZone>(*this).append(ev, keep_sorted);
}

std::vector<std::uint64_t> TestZone::publish(const std::vector<ShmChannel*>& channels,
                                             const std::vector<std::string>& data, bool in_log) {
    Locked lock(allocator_);
    History<TestZone> history(*this);
    history.sweep_expired(now_);
    std::size_t total = 0;
    for (std::size_t i = 0; i < data.size(); i++) {
        total += zone::event_alloc_size(channels.size(), event_frame_size(bounds_.last_id + 1 + i, "", data[i]));
    }
    if (!history.could_fit(total)) return {};
    std::vector<ShmEvent*> stored;
    for (std::size_t i = 0; i < data.size(); i++) {
        ShmEvent* ev = store_event(bounds_.last_id + 1 + i, data[i], channels);
        if (ev == nullptr) {
            for (ShmEvent* done : stored) {
                events_.erase(done);
                allocator_.deallocate(done, zone::event_alloc_size(done->nchannels, done->frame_len));
            }
            return {};
        }
        stored.push_back(ev);
    }
    std::vector<std::uint64_t> ids;
    for (ShmEvent* ev : stored) {
        ev->in_log = in_log;
        link_event(ev, false);
        ids.push_back(ev->id);
    }
    for (ShmChannel* ch : channels) history.trim(ch, now_);
    // Kept by nothing (no history, no worker): gone at once, as Store never stores it.
    for (ShmEvent* ev : stored) {
        if (events_.count(ev) > 0 && ev->retained == 0 && !ev->in_log) history.maybe_free(ev);
    }
    return ids;
}

std::vector<std::uint64_t> TestZone::publish_each(ShmChannel* ch, int count, std::size_t bytes) {
    std::vector<std::uint64_t> ids;
    for (int i = 0; i < count; i++) {
        std::vector<std::uint64_t> one = publish({ch}, {data_taking(bytes)});
        EXPECT_EQ(one.size(), 1u) << "publish " << i << " refused";
        if (one.empty()) break;
        ids.push_back(one[0]);
    }
    return ids;
}

bool TestZone::merge(ShmChannel* ch, std::uint64_t id, const std::string& data) {
    Locked lock(allocator_);
    ShmEvent* ev = store_event(id, data, {ch});
    if (ev == nullptr) return false;
    link_event(ev, true);
    History<TestZone>(*this).trim(ch, now_);
    return true;
}

void TestZone::delivered(std::uint64_t id) {
    Locked lock(allocator_);
    ShmEvent* ev = event(id);
    ASSERT_NE(ev, nullptr);
    ev->in_log = false;
    History<TestZone>(*this).maybe_free(ev);
}

void TestZone::trim(ShmChannel* ch) {
    Locked lock(allocator_);
    History<TestZone>(*this).trim(ch, now_);
}

void TestZone::sweep_expired() {
    Locked lock(allocator_);
    History<TestZone>(*this).sweep_expired(now_);
}

void TestZone::close(ShmChannel* ch) {
    Locked lock(allocator_);
    channels_.erase(std::string(ch->name_view()));
    ch->linked = 0;
    ch->events_in_log++;  // held while its history goes, as Store::close_channel holds it
    History<TestZone>(*this).drop(ch, hash(ch->name_view()));
    if (--ch->events_in_log == 0) {
        free_channel(ch);
    } else {
        closed_.insert(ch);
    }
}

ResumePlan TestZone::plan(const std::vector<ShmChannel*>& channels, const ResumeRequest& resume, std::size_t slot) {
    ResumePlan plan;
    {
        Locked lock(allocator_);
        History<TestZone>(*this).plan_resume(channels.data(), channels.size(), resume, bounds_, slot, now_, plan);
    }
    order_replay(plan, resume);
    return plan;
}

void TestZone::unpin(const ResumePlan& plan, std::size_t slot) {
    for (const std::vector<ShmEvent*>* events : {&plan.replay, &plan.unpin}) {
        for (ShmEvent* ev : *events) ev->pinned_by[slot / 64] &= ~(std::uint64_t(1) << (slot % 64));
    }
}

void TestZone::collect(std::size_t held_limit) {
    Locked lock(allocator_);
    History<TestZone>(*this).collect_orphans(held_limit);
}

void TestZone::set_cluster(std::uint64_t clock_id) {
    bounds_.cluster = true;
    bounds_.clock_id = clock_id;
}

namespace {

// The ids of a list's events, first to last; `event` finds the event of a link.
template <typename EventOf>
std::vector<std::uint64_t> list_ids(ZoneLink* head, EventOf event) {
    std::vector<std::uint64_t> ids;
    for (ZoneLink* q = ZoneList::first(head); q != head; q = q->next) ids.push_back(event(q)->id);
    return ids;
}

}  // namespace

std::vector<std::uint64_t> TestZone::history_ids(ShmChannel* ch) {
    return list_ids(&ch->history, [](ZoneLink* q) { return zone::history_ref(q)->event; });
}

std::vector<std::uint64_t> TestZone::retention_ids() {
    return list_ids(&book_.retention, [](ZoneLink* q) { return SSE_LIST_DATA(q, ShmEvent, retained_link); });
}

std::vector<std::uint64_t> TestZone::orphan_ids() {
    return list_ids(&book_.orphans, [](ZoneLink* q) { return SSE_LIST_DATA(q, ShmEvent, link); });
}

ShmEvent* TestZone::event(std::uint64_t id) const {
    for (ShmEvent* ev : events_) {
        if (ev->id == id) return ev;
    }
    return nullptr;
}

void TestZone::release_all() {
    {
        Locked lock(allocator_);
        History<TestZone> history(*this);
        for (ShmEvent* ev : events_) ev->pinned_by[0] = ev->pinned_by[1] = 0;
        std::vector<ShmEvent*> logged;
        for (ShmEvent* ev : events_) {
            if (ev->in_log) logged.push_back(ev);
        }
        for (ShmEvent* ev : logged) {
            ev->in_log = false;
            history.maybe_free(ev);
        }
        history.collect_orphans(SIZE_MAX);
        for (auto& [name, ch] : channels_) {
            ch->events_in_log++;
            history.drop(ch, hash(name));
            ch->events_in_log--;
        }
    }
    Locked lock(allocator_);
    for (auto& [name, ch] : channels_) free_channel(ch);
    for (ShmChannel* ch : closed_) free_channel(ch);
    channels_.clear();
    closed_.clear();
}

}  // namespace sse::test
