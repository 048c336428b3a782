// History, resume planning and eviction: what each channel retains for replay (sse_history,
// sse_history_ttl), what goes first when the zone is full, what a replay's pins keep, and what a
// new stream is sent before it goes live. On the zone's records (zone_records.h), its bytes (an
// allocator, zone_allocator.h) and its lists (zone_list.h), without nginx: the module runs it as
// History<Store> (event_store.cpp), t/unit/history on malloc with a byte budget.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "protocol/resume.h"
#include "store/zone_list.h"
#include "store/zone_records.h"

namespace sse {

// Where a new stream starts.
struct ResumeRequest {
    enum Kind { kLive, kAfterId, kMalformed } kind = kLive;
    std::uint64_t after = 0;   // kAfterId
    std::uint32_t replay = 0;  // kLive: the most recent events to send first (sse_replay)
};

// What a new stream is sent before going live. The events are pinned for the subscriber's
// worker slot; the worker unpins each once written.
struct ResumePlan {
    ResetReason reset = ResetReason::kNone;
    std::vector<ShmEvent*> replay;  // id order
    // Pinned while planning but not to be sent (an id twice, or older than sse_replay keeps):
    // the worker unpins them unless another of its streams holds them.
    std::vector<ShmEvent*> unpin;
    // With Redis: a channel's history here is not yet complete (the node has not merged what
    // Redis retains), so nothing was planned and the stream takes no live events yet: plan
    // again with plan_resume() once synced or after waiting long enough.
    bool deferred = false;
};

// What a resume position is judged against.
struct ResumeBounds {
    std::uint64_t first_id = 0;  // the zone's first id: without Redis, an older one is from before a restart
    std::uint64_t last_id = 0;   // the highest id given out or, with Redis, seen
    bool cluster = false;        // with Redis
    std::uint64_t clock_id = 0;  // with Redis, for a position: this node's clock as an id (zone::clock_id())
};

// A client's id is only "from the future" when it is this far ahead of this node's clock.
constexpr std::uint64_t kClockMarginUs = 60ULL * 1000 * 1000;

// Where a stream resuming from an id (or from a malformed one) starts its replay: after `after`
// (0: everything retained), with a reset first when that cannot be exact.
inline ResetReason resume_position(ShmChannel* const* channels, std::size_t nchannels, const ResumeRequest& resume,
                                   const ResumeBounds& bounds, std::uint64_t& after) noexcept {
    after = 0;
    if (resume.kind == ResumeRequest::kMalformed) return ResetReason::kMalformed;
    // With Redis, other nodes' ids run ahead of what this one has seen: an id is only from
    // the future when its clock part is beyond this node's clock by a margin.
    if (bounds.cluster ? resume.after > std::max(bounds.last_id, bounds.clock_id + kClockMarginUs * kIdsPerMicrosecond)
                       : resume.after > bounds.last_id) {
        return ResetReason::kFuture;
    }
    if (!bounds.cluster && resume.after + 1 < bounds.first_id) return ResetReason::kBeforeRestart;
    ResetReason reset = ResetReason::kNone;
    for (std::size_t i = 0; i < nchannels; i++) {
        const ShmChannel* ch = channels[i];
        if (ch->lost_through > resume.after) reset = ResetReason::kEvicted;
        // With Redis, a channel this node has not synced knows nothing from before it
        // started following it here.
        if (bounds.cluster && !ch->redis_synced && resume.after < ch->live_floor) reset = ResetReason::kEvicted;
    }
    if (reset == ResetReason::kNone) after = resume.after;
    return reset;
}

// Puts a plan in id order, each id once, at most sse_replay of the newest; the rest goes to
// plan.unpin. Outside the lock: the pins keep the events.
inline void order_replay(ResumePlan& plan, const ResumeRequest& resume) noexcept {
    std::vector<ShmEvent*>& events = plan.replay;
    // By id; an event of two channels appears twice (the same pointer), and with Redis an id
    // merged into two channels' histories can be held twice (two pointers): sent once either way.
    std::sort(events.begin(), events.end(),
              [](ShmEvent* a, ShmEvent* b) { return a->id < b->id || (a->id == b->id && a < b); });
    std::size_t kept = 0;
    for (std::size_t i = 0; i < events.size(); i++) {
        if (kept > 0 && events[kept - 1]->id == events[i]->id) {
            if (events[kept - 1] != events[i]) plan.unpin.push_back(events[i]);
            continue;
        }
        events[kept++] = events[i];
    }
    events.resize(kept);
    std::size_t most_recent = resume.kind == ResumeRequest::kLive ? resume.replay : 0;
    if (most_recent > 0 && events.size() > most_recent) {
        std::size_t drop = events.size() - most_recent;
        plan.unpin.insert(plan.unpin.end(), events.begin(), events.begin() + std::ptrdiff_t(drop));
        events.erase(events.begin(), events.begin() + std::ptrdiff_t(drop));
    }
}

// The history of a zone's channels. `Zone` is the store it works for (Store in the module); all
// is called with the zone's lock held, and the zone gives:
//   zone.allocator()             the zone's bytes: allocate(size), could_fit(size, reclaimable)
//                                (zone_allocator.h)
//   zone.book()                  where the zone's header keeps what history keeps: the lists
//                                `retention` and `orphans`, `retained_count`, `retained_bytes`
//                                and `forgotten` (StoreHeader's members of those names)
//   zone.free_event_locked(ev)   nothing holds the event any more: its channels let go of it,
//                                its bytes go back to the zone
// A History is a view made for each use: everything it knows is in the zone.
template <typename Zone>
class History {
public:
    explicit History(Zone& zone) noexcept : zone_(zone) {}

    // ---- what the channels keep ----

    // Puts a stored event in the history of each of its channels that keeps one (history_limit
    // above 0), as its newest; a channel that keeps none records that the event is lost to
    // replay. An event from another node may be older than what a history holds: `keep_sorted`
    // puts it in id order.
    void append(ShmEvent* ev, bool keep_sorted) noexcept;
    // Applies the channel's sse_history and sse_history_ttl to what it retains.
    void trim(ShmChannel* ch, ZoneMsec now) noexcept;
    // Expires the oldest retained events. Bounded: channels nobody touches are trimmed when they
    // are next published to, subscribed to or asked about, or evicted for room.
    void sweep_expired(ZoneMsec now) noexcept;
    // The channel is closed: its history goes, and the zone remembers (by its name's hash) the
    // newest of its events nobody can replay any more.
    void drop(ShmChannel* ch, std::uint32_t name_hash) noexcept;
    // The zone forgets the events of a channel (by its name's hash) through this id.
    void forget(std::uint32_t name_hash, std::uint64_t through) noexcept;
    // Through which id a new record of a channel of this name hash cannot replay.
    std::uint64_t forgotten(std::uint32_t name_hash) const noexcept;

    // ---- room ----

    // Whether `size` more bytes could fit if all history were evicted: no history is thrown away
    // for an allocation that cannot succeed anyway.
    bool could_fit(std::size_t size) const noexcept;
    // Allocates, evicting the oldest history (of any channel) until there is room or no history is
    // left; `evicted` counts the events evicted. nullptr: no room even so.
    void* allocate_evicting(std::size_t size, std::uint64_t& evicted) noexcept;

    // ---- what keeps an event ----

    // Frees the event once nothing holds it (the delivery log, a history, the queue to Redis, a
    // replay's pin); an event only a replay still writes waits as an orphan.
    void maybe_free(ShmEvent* ev) noexcept;
    // Frees the orphans no replay pins any more. Bounded: it stops past `held_limit` still pinned.
    void collect_orphans(std::size_t held_limit) noexcept;

    // ---- resume ----

    // Decides what a new stream on these channels is sent before it goes live: nothing, the most
    // recent events (sse_replay), or what it missed since its position, with a reset first when
    // that cannot be exact. The events are pinned for the worker `slot`, in no order yet:
    // order_replay() puts them in order once the lock is released.
    void plan_resume(ShmChannel* const* channels, std::size_t nchannels, const ResumeRequest& resume,
                     const ResumeBounds& bounds, std::size_t slot, ZoneMsec now, ResumePlan& plan);

private:
    void unretain(EventChannelRef& ref) noexcept;
    bool evict_oldest() noexcept;
    void free_event(ShmEvent* ev) noexcept;
    static bool expired(const ShmChannel* ch, const ShmEvent* ev, ZoneMsec now) noexcept;
    static void take_replay(ShmChannel* const* channels, std::size_t nchannels, std::uint64_t after,
                            std::size_t most_recent, std::size_t slot, ResumePlan& plan);

    auto& book() const noexcept { return zone_.book(); }

    Zone& zone_;
};

template <typename Zone>
void History<Zone>::append(ShmEvent* ev, bool keep_sorted) noexcept {
    for (std::size_t i = 0; i < ev->nchannels; i++) {
        EventChannelRef& ref = ev->refs[i];
        ShmChannel* ch = ref.channel;
        if (ch->history_limit == 0) {
            if (ev->id > ch->lost_through) ch->lost_through = ev->id;
            continue;
        }
        ZoneLink* after = ZoneList::last(&ch->history);
        if (keep_sorted) {
            while (after != &ch->history && zone::history_ref(after)->event->id > ev->id) after = after->prev;
        }
        ref.retained = true;
        ZoneList::insert_after(after, &ref.history_link);
        ch->history_count++;
        ev->retained++;
    }
    if (ev->retained > 0) {
        ZoneList::insert_tail(&book().retention, &ev->retained_link);
        book().retained_count++;
        book().retained_bytes += zone::event_alloc_size(ev->nchannels, ev->frame_len);
    }
}

// Takes the event out of one channel's history.
template <typename Zone>
void History<Zone>::unretain(EventChannelRef& ref) noexcept {
    ShmChannel* ch = ref.channel;
    ShmEvent* ev = ref.event;
    ZoneList::remove(&ref.history_link);
    ref.retained = false;
    ch->history_count--;
    if (ev->id > ch->lost_through) ch->lost_through = ev->id;
    if (--ev->retained == 0) {
        ZoneList::remove(&ev->retained_link);
        book().retained_count--;
        book().retained_bytes -= zone::event_alloc_size(ev->nchannels, ev->frame_len);
        maybe_free(ev);
    }
}

// Each process caches its own reading of the monotonic clock, so another worker's event can
// look a few milliseconds younger than "now"; that is not an age.
template <typename Zone>
bool History<Zone>::expired(const ShmChannel* ch, const ShmEvent* ev, ZoneMsec now) noexcept {
    if (ch->history_ttl == 0) return false;
    auto age = static_cast<std::intptr_t>(now - ev->published_at);
    return age >= 0 && ZoneMsec(age) >= ch->history_ttl;
}

template <typename Zone>
void History<Zone>::trim(ShmChannel* ch, ZoneMsec now) noexcept {
    while (!ZoneList::empty(&ch->history)) {
        EventChannelRef* oldest = zone::history_ref(ZoneList::first(&ch->history));
        if (ch->history_count <= ch->history_limit && !expired(ch, oldest->event, now)) break;
        unretain(*oldest);
    }
}

template <typename Zone>
void History<Zone>::sweep_expired(ZoneMsec now) noexcept {
    constexpr int kSweepLimit = 32;
    ZoneLink* q = ZoneList::first(&book().retention);
    for (int n = 0; n < kSweepLimit && q != &book().retention; n++) {
        auto* ev = SSE_LIST_DATA(q, ShmEvent, retained_link);
        q = q->next;
        for (std::uint32_t i = 0; i < ev->nchannels; i++) {
            EventChannelRef& ref = ev->refs[i];
            if (!ref.retained || !expired(ref.channel, ev, now)) continue;
            bool last = ev->retained == 1;
            unretain(ref);  // the last one may free the event
            if (last) break;
        }
    }
}

template <typename Zone>
void History<Zone>::drop(ShmChannel* ch, std::uint32_t name_hash) noexcept {
    while (!ZoneList::empty(&ch->history)) unretain(*zone::history_ref(ZoneList::first(&ch->history)));
    forget(name_hash, std::max(ch->last_event_id, ch->lost_through));
}

template <typename Zone>
void History<Zone>::forget(std::uint32_t name_hash, std::uint64_t through) noexcept {
    std::uint64_t& f = book().forgotten[name_hash % kForgottenBuckets];
    if (through > f) f = through;
}

template <typename Zone>
std::uint64_t History<Zone>::forgotten(std::uint32_t name_hash) const noexcept {
    return book().forgotten[name_hash % kForgottenBuckets];
}

template <typename Zone>
bool History<Zone>::could_fit(std::size_t size) const noexcept {
    return zone_.allocator().could_fit(size, book().retained_bytes);
}

// Evicts the oldest retained event from every history. False when nothing is retained.
template <typename Zone>
bool History<Zone>::evict_oldest() noexcept {
    if (ZoneList::empty(&book().retention)) return false;
    auto* ev = SSE_LIST_DATA(ZoneList::first(&book().retention), ShmEvent, retained_link);
    for (std::uint32_t i = 0; i < ev->nchannels; i++) {
        if (!ev->refs[i].retained) continue;
        bool last = ev->retained == 1;
        unretain(ev->refs[i]);
        if (last) break;
    }
    return true;
}

template <typename Zone>
void* History<Zone>::allocate_evicting(std::size_t size, std::uint64_t& evicted) noexcept {
    void* p = zone_.allocator().allocate(size);
    while (p == nullptr && evict_oldest()) {
        evicted++;
        p = zone_.allocator().allocate(size);
    }
    return p;
}

template <typename Zone>
void History<Zone>::maybe_free(ShmEvent* ev) noexcept {
    if (ev->in_log || ev->retained > 0 || ev->in_outbound) return;
    if (!zone::mask_empty(ev->pinned_by)) {
        if (!ev->orphan) {
            ev->orphan = true;
            ZoneList::insert_tail(&book().orphans, &ev->link);
        }
        return;
    }
    free_event(ev);
}

template <typename Zone>
void History<Zone>::free_event(ShmEvent* ev) noexcept {
    if (ev->orphan) ZoneList::remove(&ev->link);
    zone_.free_event_locked(ev);
}

template <typename Zone>
void History<Zone>::collect_orphans(std::size_t held_limit) noexcept {
    std::size_t held = 0;
    ZoneLink* q = ZoneList::first(&book().orphans);
    while (q != &book().orphans && held < held_limit) {
        auto* ev = SSE_LIST_DATA(q, ShmEvent, link);
        q = q->next;
        if (zone::mask_empty(ev->pinned_by)) {
            free_event(ev);
        } else {
            held++;
        }
    }
}

// Runs in the critical section that registers the stream, so every event is either in the
// replay or, published later, delivered live.
template <typename Zone>
void History<Zone>::plan_resume(ShmChannel* const* channels, std::size_t nchannels, const ResumeRequest& resume,
                                const ResumeBounds& bounds, std::size_t slot, ZoneMsec now, ResumePlan& plan) {
    for (std::size_t i = 0; i < nchannels; i++) trim(channels[i], now);
    std::uint64_t after = 0;      // replay the retained events after this id
    std::size_t most_recent = 0;  // or, when non-zero, only this many of the latest
    if (resume.kind == ResumeRequest::kLive) {
        if (resume.replay == 0) return;
        most_recent = resume.replay;
    } else {
        plan.reset = resume_position(channels, nchannels, resume, bounds, after);
    }
    take_replay(channels, nchannels, after, most_recent, slot, plan);
}

// Gathers the retained events after `after` (at most `most_recent` of each channel, when not 0)
// and pins them. Ordered after the lock is released (order_replay), into room reserved here,
// before anything is pinned: an allocation that fails leaves nothing pinned.
template <typename Zone>
void History<Zone>::take_replay(ShmChannel* const* channels, std::size_t nchannels, std::uint64_t after,
                                std::size_t most_recent, std::size_t slot, ResumePlan& plan) {
    std::size_t candidates = 0;
    for (std::size_t i = 0; i < nchannels; i++) {
        std::size_t held = channels[i]->history_count;
        candidates += most_recent ? std::min(held, most_recent) : held;
    }
    plan.replay.reserve(candidates);
    for (std::size_t i = 0; i < nchannels; i++) {
        ZoneLink* h = &channels[i]->history;
        std::size_t taken = 0;
        for (ZoneLink* q = ZoneList::last(h); q != h; q = q->prev) {
            ShmEvent* ev = zone::history_ref(q)->event;
            if (ev->id <= after || (most_recent && taken == most_recent)) break;
            plan.replay.push_back(ev);
            taken++;
        }
    }
    plan.unpin.reserve(plan.replay.size());
    std::uint64_t bit = std::uint64_t(1) << (slot % 64);
    for (ShmEvent* ev : plan.replay) __atomic_fetch_or(&ev->pinned_by[slot / 64], bit, __ATOMIC_ACQ_REL);
}

}  // namespace sse
