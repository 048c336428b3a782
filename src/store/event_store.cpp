#include "store/event_store.h"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "protocol/event_frame.h"

namespace sse {

namespace {

class ZoneLock {
public:
    explicit ZoneLock(ngx_slab_pool_t* pool) : pool_(pool) { ngx_shmtx_lock(&pool_->mutex); }
    ~ZoneLock() { unlock(); }
    void unlock() {
        if (pool_ == nullptr) return;
        ngx_shmtx_unlock(&pool_->mutex);
        pool_ = nullptr;
    }
    ZoneLock(const ZoneLock&) = delete;
    ZoneLock& operator=(const ZoneLock&) = delete;

private:
    ngx_slab_pool_t* pool_;
};

std::uint32_t hash_name(std::string_view name) {
    return ngx_crc32_short(reinterpret_cast<u_char*>(const_cast<char*>(name.data())), name.size());
}

// Inserts into a tree of named records (ShmChannel, ShmKey): by name hash, then by name.
template <typename Named>
void insert_named(ngx_rbtree_node_t* temp, ngx_rbtree_node_t* node, ngx_rbtree_node_t* sentinel) {
    ngx_rbtree_node_t** p;
    for (;;) {
        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;
        } else {
            auto* a = reinterpret_cast<Named*>(node);
            auto* b = reinterpret_cast<Named*>(temp);
            p = (a->name_view() < b->name_view()) ? &temp->left : &temp->right;
        }
        if (*p == sentinel) break;
        temp = *p;
    }
    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}

// Finds a named record (ShmChannel, ShmKey) in its tree.
template <typename Named>
Named* find_named(ngx_rbtree_t& tree, std::string_view name, std::uint32_t hash) {
    ngx_rbtree_node_t* node = tree.root;
    ngx_rbtree_node_t* sentinel = tree.sentinel;
    while (node != sentinel) {
        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }
        auto* named = reinterpret_cast<Named*>(node);
        std::string_view other = named->name_view();
        if (name == other) return named;
        node = (name < other) ? node->left : node->right;
    }
    return nullptr;
}

bool has_bit(const std::uint64_t mask[2], ngx_uint_t slot) {
    return (__atomic_load_n(&mask[slot / 64], __ATOMIC_ACQUIRE) >> (slot % 64)) & 1;
}

void set_bit(std::uint64_t mask[2], ngx_uint_t slot) {
    mask[slot / 64] |= std::uint64_t(1) << (slot % 64);
}

std::size_t event_alloc_size(std::size_t nchannels, std::size_t frame_len) {
    return sizeof(ShmEvent) + nchannels * sizeof(EventChannelRef) + frame_len;
}

bool mask_empty(const std::uint64_t mask[2]) {
    return __atomic_load_n(&mask[0], __ATOMIC_ACQUIRE) == 0 && __atomic_load_n(&mask[1], __ATOMIC_ACQUIRE) == 0;
}

void clear_bit_atomic(std::uint64_t mask[2], ngx_uint_t slot) {
    __atomic_fetch_and(&mask[slot / 64], ~(std::uint64_t(1) << (slot % 64)), __ATOMIC_RELEASE);
}

// Each process caches its own reading of the monotonic clock, so another worker's event can
// look a few milliseconds younger than "now"; that is not an age.
bool expired(const ShmChannel* ch, const ShmEvent* ev) {
    if (ch->history_ttl == 0) return false;
    auto age = static_cast<ngx_msec_int_t>(ngx_current_msec - ev->published_at);
    return age >= 0 && ngx_msec_t(age) >= ch->history_ttl;
}

EventChannelRef* history_ref(ngx_queue_t* q) {
    return ngx_queue_data(q, EventChannelRef, history_link);
}

// A channel's figures, as GET on a publish location and the stats report them.
ChannelState state_of(ShmChannel* ch) {
    ChannelState st;
    st.found = true;
    st.subscribers = ch->subscribers;
    st.last_event_id = ch->last_event_id;
    st.events_published = ch->events_published;
    st.retained = ch->history_count;
    if (ch->history_count > 0) {
        st.oldest_id = history_ref(ngx_queue_head(&ch->history))->event->id;
        st.newest_id = history_ref(ngx_queue_last(&ch->history))->event->id;
    }
    return st;
}

std::size_t channel_alloc_size(std::size_t name_len) {
    return sizeof(ShmChannel) + name_len;
}

bool process_alive(ngx_pid_t pid) {
    return kill(pid, 0) == 0 || errno != ESRCH;
}

}  // namespace

StoreHeader* Store::create(ngx_slab_pool_t* pool) {
    auto* hdr = static_cast<StoreHeader*>(ngx_slab_calloc(pool, sizeof(StoreHeader)));
    if (hdr == nullptr) return nullptr;
    ngx_rbtree_init(&hdr->channels, &hdr->sentinel, insert_named<ShmChannel>);
    ngx_rbtree_init(&hdr->keys, &hdr->keys_sentinel, insert_named<ShmKey>);
    ngx_queue_init(&hdr->log);
    ngx_queue_init(&hdr->retention);
    ngx_queue_init(&hdr->orphans);

    // Ids continue upward across restarts (as long as fewer than a million events a second are
    // published on average), so an id from before this zone existed is recognisable.
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    hdr->first_id = std::uint64_t(tv.tv_sec) * 1000000 + std::uint64_t(tv.tv_usec);
    hdr->next_id = hdr->first_id;
    hdr->created_at = tv.tv_sec;
    pool->data = hdr;
    // Running out of zone memory is answered with 507 and logged by us; keep nginx's slab
    // allocator from adding a "[crit] no memory" line of its own for every refusal.
    pool->log_nomem = 0;
    return hdr;
}

void* Store::alloc_locked(std::size_t size) {
    void* p = ngx_slab_alloc_locked(pool_, size);
    if (p != nullptr) hdr_->bytes_used += size;
    return p;
}

void Store::free_locked(void* p, std::size_t size) {
    ngx_slab_free_locked(pool_, p);
    hdr_->bytes_used -= size;
}

ngx_int_t Store::claim_slot(ngx_pid_t pid, ngx_log_t* log) {
    reap_dead_slots(log);
    ZoneLock lock(pool_);
    for (ngx_uint_t i = 0; i < kMaxWorkerSlots; i++) {
        WorkerSlot& s = hdr_->slots[i];
        if (s.pid != 0) continue;
        s.pid = pid;
        s.wake_pending = 0;
        s.cursor = hdr_->next_id - 1;
        s.subscribers = 0;
        ngx_queue_init(&s.subscribers_list);
        if (i + 1 > hdr_->slot_high) hdr_->slot_high = i + 1;
        return ngx_int_t(i);
    }
    return NGX_ERROR;
}

void Store::release_slot(ngx_uint_t slot) {
    ZoneLock lock(pool_);
    reap_slot_locked(slot);
    collect_locked();
}

ngx_uint_t Store::reap_dead_slots(ngx_log_t* log) {
    ngx_uint_t reaped = 0;
    ZoneLock lock(pool_);
    for (ngx_uint_t i = 0; i < hdr_->slot_high; i++) {
        WorkerSlot& s = hdr_->slots[i];
        if (s.pid == 0 || s.pid == ngx_pid || process_alive(s.pid)) continue;
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "sse: reaping %uD subscribers of worker process %P, which exited without releasing them",
                      s.subscribers, s.pid);
        reap_slot_locked(i);
        reaped++;
    }
    if (reaped) {
        hdr_->counters.workers_reaped += reaped;
        collect_locked();
    }
    return reaped;
}

static std::size_t subscriber_alloc_size(std::size_t nchannels) {
    return sizeof(ShmSubscriber) + (nchannels - 1) * sizeof(ShmChannel*);
}

// Drops one subscriber record and its counts. The channel may be freed by the caller.
void Store::drop_subscriber_locked(ShmSubscriber* sub) {
    for (std::uint32_t i = 0; i < sub->nchannels; i++) {
        ShmChannel* ch = sub->channels[i];
        ch->per_slot[sub->slot]--;
        ch->subscribers--;
    }
    hdr_->slots[sub->slot].subscribers--;
    ngx_queue_remove(&sub->link);
    if (sub->key != nullptr) release_key_locked(sub->key);
    for (std::uint32_t i = 0; i < sub->nchannels; i++) maybe_free_channel_locked(sub->channels[i]);
    free_locked(sub, subscriber_alloc_size(sub->nchannels));
}

// Forgets everything a worker slot held: its subscribers and its marks on events.
void Store::reap_slot_locked(ngx_uint_t slot) {
    WorkerSlot& s = hdr_->slots[slot];
    while (!ngx_queue_empty(&s.subscribers_list)) {
        drop_subscriber_locked(ngx_queue_data(ngx_queue_head(&s.subscribers_list), ShmSubscriber, link));
    }
    for (ngx_queue_t* q = ngx_queue_head(&hdr_->log); q != ngx_queue_sentinel(&hdr_->log); q = ngx_queue_next(q)) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        release_event(ev, slot);
        unpin_event(ev, slot);
    }
    for (ngx_queue_t* q = ngx_queue_head(&hdr_->retention); q != ngx_queue_sentinel(&hdr_->retention);
         q = ngx_queue_next(q)) {
        unpin_event(ngx_queue_data(q, ShmEvent, retained_link), slot);
    }
    for (ngx_queue_t* q = ngx_queue_head(&hdr_->orphans); q != ngx_queue_sentinel(&hdr_->orphans);
         q = ngx_queue_next(q)) {
        unpin_event(ngx_queue_data(q, ShmEvent, link), slot);
    }
    s.pid = 0;
    s.subscribers = 0;
    while (hdr_->slot_high > 0 && hdr_->slots[hdr_->slot_high - 1].pid == 0) hdr_->slot_high--;
}

ShmChannel* Store::find_locked(std::string_view name, std::uint32_t hash) {
    return find_named<ShmChannel>(hdr_->channels, name, hash);
}

ShmKey* Store::find_key_locked(std::string_view name, std::uint32_t hash) {
    return find_named<ShmKey>(hdr_->keys, name, hash);
}

void Store::release_key_locked(ShmKey* key) {
    if (--key->streams > 0) return;
    ngx_rbtree_delete(&hdr_->keys, &key->node);
    free_locked(key, sizeof(ShmKey) + key->name_len);
}

ShmChannel* Store::create_channel_locked(std::string_view name, std::uint32_t hash) {
    auto* ch = static_cast<ShmChannel*>(alloc_evicting_locked(channel_alloc_size(name.size()), nullptr));
    if (ch == nullptr) return nullptr;
    std::memset(ch, 0, sizeof(ShmChannel));
    ngx_queue_init(&ch->history);
    // An earlier record of this name may have had events nobody can replay any more.
    ch->lost_through = hdr_->forgotten[hash % kForgottenBuckets];
    ch->node.key = hash;
    ch->name_len = std::uint16_t(name.size());
    std::memcpy(ch->name, name.data(), name.size());
    ch->linked = 1;
    ngx_rbtree_insert(&hdr_->channels, &ch->node);
    hdr_->channel_count++;
    return ch;
}

void Store::maybe_free_channel_locked(ShmChannel* ch) {
    if (ch->subscribers > 0 || ch->events_in_log > 0) return;
    if (ch->linked) {
        ngx_rbtree_delete(&hdr_->channels, &ch->node);
        hdr_->channel_count--;
        forget_channel_locked(ch->name_view(), std::max(ch->last_event_id, ch->lost_through));
    }
    free_locked(ch, channel_alloc_size(ch->name_len));
}

void Store::forget_channel_locked(std::string_view name, std::uint64_t through) {
    std::uint64_t& f = hdr_->forgotten[hash_name(name) % kForgottenBuckets];
    if (through > f) f = through;
}

// Takes the event out of one channel's history.
void Store::unretain_locked(EventChannelRef& ref) {
    ShmChannel* ch = ref.channel;
    ShmEvent* ev = ref.event;
    ngx_queue_remove(&ref.history_link);
    ref.retained = false;
    ch->history_count--;
    if (ev->id > ch->lost_through) ch->lost_through = ev->id;
    if (--ev->retained == 0) {
        ngx_queue_remove(&ev->retained_link);
        hdr_->retained_count--;
        hdr_->retained_bytes -= event_alloc_size(ev->nchannels, ev->frame_len);
        maybe_free_event_locked(ev);
    }
}

// Applies the channel's sse_history and sse_history_ttl to what it retains.
void Store::trim_history_locked(ShmChannel* ch) {
    while (!ngx_queue_empty(&ch->history)) {
        EventChannelRef* oldest = history_ref(ngx_queue_head(&ch->history));
        if (ch->history_count <= ch->history_limit && !expired(ch, oldest->event)) break;
        unretain_locked(*oldest);
    }
}

// Expires the oldest retained events. Bounded: channels nobody touches are trimmed when they
// are next published to, subscribed to or asked about, or evicted for room.
void Store::sweep_expired_locked() {
    constexpr int kSweepLimit = 32;
    ngx_queue_t* q = ngx_queue_head(&hdr_->retention);
    for (int n = 0; n < kSweepLimit && q != ngx_queue_sentinel(&hdr_->retention); n++) {
        auto* ev = ngx_queue_data(q, ShmEvent, retained_link);
        q = ngx_queue_next(q);
        for (std::uint16_t i = 0; i < ev->nchannels; i++) {
            EventChannelRef& ref = ev->refs[i];
            if (!ref.retained || !expired(ref.channel, ev)) continue;
            bool last = ev->retained == 1;
            unretain_locked(ref);  // the last one may free the event
            if (last) break;
        }
    }
}

// Evicts the oldest retained event from every history. False when nothing is retained.
bool Store::evict_oldest_locked() {
    if (ngx_queue_empty(&hdr_->retention)) return false;
    auto* ev = ngx_queue_data(ngx_queue_head(&hdr_->retention), ShmEvent, retained_link);
    for (std::uint16_t i = 0; i < ev->nchannels; i++) {
        if (!ev->refs[i].retained) continue;
        bool last = ev->retained == 1;
        unretain_locked(ev->refs[i]);
        if (last) break;
    }
    hdr_->counters.history_evictions++;
    hdr_->evictions_unlogged++;
    return true;
}

// Whether `size` more bytes could fit if all history were evicted: no history is thrown away
// for an allocation that cannot succeed anyway.
bool Store::could_fit_locked(std::size_t size) const {
    std::size_t capacity = std::size_t(pool_->end - pool_->start);
    return hdr_->bytes_used - hdr_->retained_bytes + size <= capacity;
}

// Allocates, evicting the oldest history until there is room or no history is left.
void* Store::alloc_evicting_locked(std::size_t size, ngx_log_t* log) {
    void* p = alloc_locked(size);
    while (p == nullptr && evict_oldest_locked()) p = alloc_locked(size);
    if (hdr_->evictions_unlogged > 0 && ngx_time() - hdr_->eviction_logged_at >= 60) {
        ngx_log_error(NGX_LOG_WARN, log ? log : ngx_cycle->log, 0,
                      "sse: shared zone full, evicted %uL retained events to make room; raise sse_shm_size",
                      hdr_->evictions_unlogged);
        hdr_->evictions_unlogged = 0;
        hdr_->eviction_logged_at = ngx_time();
    }
    return p;
}

// Frees the event once nothing holds it; an event only a replay still writes waits as an orphan.
void Store::maybe_free_event_locked(ShmEvent* ev) {
    if (ev->in_log || ev->retained > 0) return;
    if (!mask_empty(ev->pinned_by)) {
        if (!ev->orphan) {
            ev->orphan = true;
            ngx_queue_insert_tail(&hdr_->orphans, &ev->link);
        }
        return;
    }
    free_event_locked(ev);
}

ShmSubscriber* Store::subscribe(ngx_uint_t slot, const std::vector<std::string_view>& names,
                                const SubscribeLimits& limits, const ResumeRequest& resume, std::uint64_t& start_after,
                                ResumePlan& plan, SubscribeRefusal& refusal, ngx_log_t* log) {
    plan = ResumePlan{};
    refusal = SubscribeRefusal::kNone;
    ZoneLock lock(pool_);
    if (limits.max_total > 0) {
        std::uint64_t total = 0;
        for (ngx_uint_t i = 0; i < hdr_->slot_high; i++) total += hdr_->slots[i].subscribers;
        if (total >= limits.max_total) {
            refusal = SubscribeRefusal::kMaxSubscribers;
            hdr_->counters.refused_max_subscribers++;
            return nullptr;
        }
    }
    ShmKey* key = nullptr;
    if (!limits.key.empty() && limits.max_per_key > 0) {
        std::uint32_t hash = hash_name(limits.key);
        key = find_key_locked(limits.key, hash);
        if (key != nullptr && key->streams >= limits.max_per_key) {
            refusal = SubscribeRefusal::kPerKey;
            hdr_->counters.refused_per_key++;
            return nullptr;
        }
        if (key == nullptr) {
            key = static_cast<ShmKey*>(alloc_evicting_locked(sizeof(ShmKey) + limits.key.size(), log));
            if (key == nullptr) {
                refusal = SubscribeRefusal::kZoneFull;
                return nullptr;
            }
            std::memset(key, 0, sizeof(ShmKey));
            key->node.key = hash;
            key->name_len = std::uint16_t(limits.key.size());
            std::memcpy(key->name, limits.key.data(), limits.key.size());
            ngx_rbtree_insert(&hdr_->keys, &key->node);
        }
        key->streams++;  // held from here; released with the record, or below on failure
    }
    auto* sub = static_cast<ShmSubscriber*>(alloc_evicting_locked(subscriber_alloc_size(names.size()), log));
    if (sub == nullptr) {
        if (key != nullptr) release_key_locked(key);
        refusal = SubscribeRefusal::kZoneFull;
        return nullptr;
    }
    sub->key = key;
    sub->nchannels = 0;
    for (std::string_view name : names) {
        std::uint32_t hash = hash_name(name);
        ShmChannel* ch = find_locked(name, hash);
        if (ch == nullptr) ch = create_channel_locked(name, hash);
        if (ch == nullptr) {
            // Zone full: undo what this request added.
            for (std::uint32_t i = 0; i < sub->nchannels; i++) {
                sub->channels[i]->per_slot[slot]--;
                sub->channels[i]->subscribers--;
                maybe_free_channel_locked(sub->channels[i]);
            }
            if (key != nullptr) release_key_locked(key);
            free_locked(sub, subscriber_alloc_size(names.size()));
            refusal = SubscribeRefusal::kZoneFull;
            return nullptr;
        }
        ch->per_slot[slot]++;
        ch->subscribers++;
        sub->channels[sub->nchannels++] = ch;
    }
    sub->client_id = ++hdr_->next_client_id;
    sub->connected_at = ngx_time();
    sub->slot = std::uint32_t(slot);
    ngx_queue_insert_tail(&hdr_->slots[slot].subscribers_list, &sub->link);
    hdr_->slots[slot].subscribers++;
    start_after = hdr_->next_id - 1;
    plan_resume_locked(slot, sub, resume, plan);
    return sub;
}

// Decides what a new stream is sent before it goes live: nothing, the most recent events
// (sse_replay), or what it missed since its position, with a reset first when that cannot be
// exact. Runs in the critical section that registers the stream, so every event is either in
// the replay or, published later, delivered live.
void Store::plan_resume_locked(ngx_uint_t slot, ShmSubscriber* sub, const ResumeRequest& resume, ResumePlan& plan) {
    for (std::uint32_t i = 0; i < sub->nchannels; i++) trim_history_locked(sub->channels[i]);

    std::uint64_t after = 0;  // replay the retained events after this id
    std::size_t most_recent = 0;  // or, when non-zero, only this many of the latest
    std::uint64_t newest = hdr_->next_id - 1;
    switch (resume.kind) {
    case ResumeRequest::kLive:
        if (resume.replay == 0) return;
        most_recent = resume.replay;
        break;
    case ResumeRequest::kMalformed:
        plan.reset = ResetReason::kMalformed;
        break;
    case ResumeRequest::kAfterId:
        if (resume.after > newest) {
            plan.reset = ResetReason::kFuture;
        } else if (resume.after + 1 < hdr_->first_id) {
            plan.reset = ResetReason::kBeforeRestart;
        } else {
            after = resume.after;
            for (std::uint32_t i = 0; i < sub->nchannels; i++) {
                if (sub->channels[i]->lost_through > after) plan.reset = ResetReason::kEvicted;
            }
            if (plan.reset != ResetReason::kNone) after = 0;
        }
        break;
    }

    for (std::uint32_t i = 0; i < sub->nchannels; i++) {
        ngx_queue_t* h = &sub->channels[i]->history;
        std::size_t taken = 0;
        for (ngx_queue_t* q = ngx_queue_last(h); q != ngx_queue_sentinel(h); q = ngx_queue_prev(q)) {
            ShmEvent* ev = history_ref(q)->event;
            if (ev->id <= after || (most_recent && taken == most_recent)) break;
            plan.replay.push_back(ev);
            taken++;
        }
    }
    // Merge the channels in publish order; an event of two of them is sent once.
    std::sort(plan.replay.begin(), plan.replay.end(), [](ShmEvent* a, ShmEvent* b) { return a->id < b->id; });
    plan.replay.erase(std::unique(plan.replay.begin(), plan.replay.end()), plan.replay.end());
    if (most_recent && plan.replay.size() > most_recent) {
        plan.replay.erase(plan.replay.begin(), plan.replay.end() - std::ptrdiff_t(most_recent));
    }
    std::uint64_t bit = std::uint64_t(1) << (slot % 64);
    for (ShmEvent* ev : plan.replay) __atomic_fetch_or(&ev->pinned_by[slot / 64], bit, __ATOMIC_ACQ_REL);
}

void Store::unsubscribe(ShmSubscriber* sub) {
    ZoneLock lock(pool_);
    // Channels go first: collecting may free a channel along with its last event.
    drop_subscriber_locked(sub);
    collect_locked();
}

bool Store::publish(const std::vector<EventInput>& events, const std::vector<std::string_view>& names,
                    const HistoryPolicy& history, PublishResult& result, ngx_log_t* log) {
    result = PublishResult{};
    ZoneLock lock(pool_);
    collect_locked();
    sweep_expired_locked();

    std::uint64_t first = hdr_->next_id;
    std::uint64_t last = first + events.size() - 1;

    // Channels someone listens to, or that keep history, store the event; the others only
    // advance their counters. Every channel found is held (events_in_log) while evicting for room.
    std::vector<ShmChannel*> found;
    std::vector<ShmChannel*> targets;
    found.reserve(names.size());
    targets.reserve(names.size());
    std::uint64_t wake[2] = {0, 0};
    bool refused = false;
    for (std::string_view name : names) {
        std::uint32_t hash = hash_name(name);
        ShmChannel* ch = find_locked(name, hash);
        if (ch == nullptr && history.limit > 0) {
            ch = create_channel_locked(name, hash);
            if (ch == nullptr) {
                refused = true;
                break;
            }
        }
        if (ch == nullptr) {
            // Nobody listens and nothing is kept: these events are lost to any later replay.
            forget_channel_locked(name, last);
            continue;
        }
        ch->events_in_log++;
        found.push_back(ch);
        result.subscribers += ch->subscribers;
        ch->history_limit = history.limit;
        ch->history_ttl = history.ttl;
        if (ch->subscribers == 0 && history.limit == 0) {
            ch->lost_through = last;
            continue;
        }
        targets.push_back(ch);
        for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
            if (ch->per_slot[s] > 0) set_bit(wake, s);
        }
    }

    if (!refused && !targets.empty()) {
        std::size_t total = 0;
        for (std::size_t i = 0; i < events.size(); i++) {
            total += event_alloc_size(targets.size(), event_frame_size(first + i, events[i].name, events[i].data));
        }
        refused = !could_fit_locked(total);
    }

    std::vector<ShmEvent*> stored;
    if (!refused && !targets.empty()) {
        stored.reserve(events.size());
        std::uint64_t id = first;
        for (const EventInput& in : events) {
            std::size_t frame_len = event_frame_size(id, in.name, in.data);
            std::size_t size = event_alloc_size(targets.size(), frame_len);
            auto* ev = static_cast<ShmEvent*>(alloc_evicting_locked(size, log));
            if (ev == nullptr) {
                for (ShmEvent* done : stored) {
                    free_locked(done, event_alloc_size(done->nchannels, done->frame_len));
                }
                stored.clear();
                refused = true;
                break;
            }
            std::memset(ev, 0, sizeof(ShmEvent));
            ev->id = id++;
            ev->needed_by[0] = wake[0];
            ev->needed_by[1] = wake[1];
            ev->published_at = ngx_current_msec;
            ev->frame_len = std::uint32_t(frame_len);
            ev->nchannels = std::uint16_t(targets.size());
            ev->kind = kEventMessage;
            ev->name_len = std::uint16_t(in.name.size());
            ev->refs = reinterpret_cast<EventChannelRef*>(ev + 1);
            for (std::size_t i = 0; i < targets.size(); i++) {
                ev->refs[i].channel = targets[i];
                ev->refs[i].event = ev;
                ev->refs[i].retained = false;
            }
            ev->frame = reinterpret_cast<u_char*>(ev->refs + targets.size());
            write_event_frame(reinterpret_cast<char*>(ev->frame), ev->id, in.name, in.data);
            stored.push_back(ev);
        }
    }

    if (refused) {
        for (ShmChannel* ch : found) {
            ch->events_in_log--;
            maybe_free_channel_locked(ch);
        }
        hdr_->counters.publishes_refused++;
        return false;
    }

    bool delivering = wake[0] != 0 || wake[1] != 0;
    for (ShmEvent* ev : stored) {
        hdr_->event_count++;
        if (delivering) {
            ev->in_log = true;
            ngx_queue_insert_tail(&hdr_->log, &ev->link);
        }
        for (std::size_t i = 0; i < ev->nchannels; i++) {
            EventChannelRef& ref = ev->refs[i];
            ShmChannel* ch = ref.channel;
            if (ch->history_limit == 0) {
                ch->lost_through = ev->id;
                continue;
            }
            ref.retained = true;
            ngx_queue_insert_tail(&ch->history, &ref.history_link);
            ch->history_count++;
            ev->retained++;
        }
        if (ev->retained > 0) {
            ngx_queue_insert_tail(&hdr_->retention, &ev->retained_link);
            hdr_->retained_count++;
            hdr_->retained_bytes += event_alloc_size(ev->nchannels, ev->frame_len);
        }
    }
    for (ShmChannel* ch : targets) {
        ch->events_in_log += std::uint32_t(stored.size());
        trim_history_locked(ch);
    }

    hdr_->next_id += events.size();
    result.last_id = last;
    result.events = events.size();
    result.wake[0] = wake[0];
    result.wake[1] = wake[1];
    for (ShmChannel* ch : found) {
        ch->last_event_id = last;
        ch->events_published += events.size();
        ch->events_in_log--;
        maybe_free_channel_locked(ch);
    }
    hdr_->counters.events_published += events.size();
    return true;
}

bool Store::close_channel(std::string_view name, PublishResult& result, std::uint32_t& closed_subscribers,
                          bool& no_memory) {
    result = PublishResult{};
    no_memory = false;
    ZoneLock lock(pool_);
    ShmChannel* ch = find_locked(name, hash_name(name));
    if (ch == nullptr) return false;
    closed_subscribers = ch->subscribers;
    ch->events_in_log++;  // held while its history goes

    ShmEvent* ev = nullptr;
    if (ch->subscribers > 0) {
        std::size_t size = event_alloc_size(1, 0);
        ev = static_cast<ShmEvent*>(alloc_evicting_locked(size, nullptr));
        if (ev == nullptr) {
            // Cannot tell the workers; keep the channel as it was.
            ch->events_in_log--;
            no_memory = true;
            return true;
        }
        std::memset(ev, 0, size);
    }

    // Unlink at once so a new subscriber starts a fresh channel; the streams still on the old
    // record end when their workers read the close event. Its history goes with it.
    ngx_rbtree_delete(&hdr_->channels, &ch->node);
    ch->linked = 0;
    hdr_->channel_count--;
    while (!ngx_queue_empty(&ch->history)) unretain_locked(*history_ref(ngx_queue_head(&ch->history)));
    forget_channel_locked(name, std::max(ch->last_event_id, ch->lost_through));

    if (ev != nullptr) {
        for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
            if (ch->per_slot[s] > 0) set_bit(ev->needed_by, s);
        }
        // A close is ordered among the events but is not one: it takes no id.
        ev->id = hdr_->next_id - 1;
        ev->kind = kEventCloseChannel;
        ev->nchannels = 1;
        ev->refs = reinterpret_cast<EventChannelRef*>(ev + 1);
        ev->refs[0].channel = ch;
        ev->refs[0].event = ev;
        ev->frame = reinterpret_cast<u_char*>(ev->refs + 1);
        ev->in_log = true;
        ngx_queue_insert_tail(&hdr_->log, &ev->link);
        hdr_->event_count++;
        ch->events_in_log++;
        result.wake[0] = ev->needed_by[0];
        result.wake[1] = ev->needed_by[1];
    }
    ch->events_in_log--;
    maybe_free_channel_locked(ch);
    return true;
}

ChannelState Store::channel_state(std::string_view name) {
    ChannelState st;
    ZoneLock lock(pool_);
    ShmChannel* ch = find_locked(name, hash_name(name));
    if (ch == nullptr) return st;
    ch->events_in_log++;  // held while expired history goes
    trim_history_locked(ch);
    ch->events_in_log--;
    if (ch->subscribers == 0 && ch->history_count == 0) {
        maybe_free_channel_locked(ch);
        return st;
    }
    return state_of(ch);
}

std::vector<std::pair<std::string, ChannelState>> Store::channel_states(std::size_t limit, bool& more) {
    std::vector<std::pair<std::string, ChannelState>> out;
    more = false;
    ZoneLock lock(pool_);
    ngx_rbtree_node_t* sentinel = hdr_->channels.sentinel;
    if (hdr_->channels.root == sentinel) return out;
    out.reserve(hdr_->channel_count);
    for (ngx_rbtree_node_t* n = ngx_rbtree_min(hdr_->channels.root, sentinel); n != nullptr;
         n = ngx_rbtree_next(&hdr_->channels, n)) {
        auto* ch = reinterpret_cast<ShmChannel*>(n);
        out.emplace_back(std::string(ch->name_view()), state_of(ch));
    }
    lock.unlock();
    // The tree is ordered by name hash; list by name, then cut.
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    if (out.size() > limit) {
        out.resize(limit);
        more = true;
    }
    return out;
}

void Store::take_events(ngx_uint_t slot, std::vector<ShmEvent*>& out) {
    out.clear();
    ZoneLock lock(pool_);
    WorkerSlot& s = hdr_->slots[slot];
    std::uint64_t cursor = s.cursor;
    for (ngx_queue_t* q = ngx_queue_head(&hdr_->log); q != ngx_queue_sentinel(&hdr_->log); q = ngx_queue_next(q)) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        // A close carries the id of the event before it, so it is taken by "not yet seen" order
        // rather than by id: the slot's mark on it is only cleared once it has been handled.
        if (ev->kind == kEventCloseChannel) {
            if (has_bit(ev->needed_by, slot)) {
                out.push_back(ev);
            }
            continue;
        }
        if (ev->id <= cursor || !has_bit(ev->needed_by, slot)) continue;
        out.push_back(ev);
        if (ev->id > s.cursor) s.cursor = ev->id;
    }
}

void Store::release_event(ShmEvent* ev, ngx_uint_t slot) {
    clear_bit_atomic(ev->needed_by, slot);
}

void Store::unpin_event(ShmEvent* ev, ngx_uint_t slot) {
    clear_bit_atomic(ev->pinned_by, slot);
}

void Store::collect() {
    ZoneLock lock(pool_);
    collect_locked();
}

void Store::free_event_locked(ShmEvent* ev) {
    if (ev->orphan) {
        ngx_queue_remove(&ev->link);
    }
    hdr_->event_count--;
    for (std::uint16_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->refs[i].channel;
        ch->events_in_log--;
        maybe_free_channel_locked(ch);
    }
    free_locked(ev, event_alloc_size(ev->nchannels, ev->frame_len));
}

void Store::collect_locked() {
    ngx_queue_t* q = ngx_queue_head(&hdr_->log);
    while (q != ngx_queue_sentinel(&hdr_->log)) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        q = ngx_queue_next(q);
        if (!mask_empty(ev->needed_by)) continue;
        ngx_queue_remove(&ev->link);
        ev->in_log = false;
        maybe_free_event_locked(ev);
    }
    q = ngx_queue_head(&hdr_->orphans);
    while (q != ngx_queue_sentinel(&hdr_->orphans)) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        q = ngx_queue_next(q);
        if (mask_empty(ev->pinned_by)) free_event_locked(ev);
    }
}

StoreStats Store::stats() {
    StoreStats st;
    ZoneLock lock(pool_);
    st.channels = hdr_->channel_count;
    st.events_stored = hdr_->event_count;
    st.events_retained = hdr_->retained_count;
    st.bytes_used = hdr_->bytes_used;
    st.bytes_total = std::size_t(pool_->end - reinterpret_cast<u_char*>(pool_));
    for (ngx_uint_t i = 0; i < hdr_->slot_high; i++) {
        const WorkerSlot& s = hdr_->slots[i];
        if (s.pid == 0) continue;
        st.workers++;
        st.subscribers += s.subscribers;
        st.per_worker.emplace_back(s.pid, s.subscribers);
    }
    return st;
}

}  // namespace sse
