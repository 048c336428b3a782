#include "store/event_store.h"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "protocol/channel_list.h"
#include "protocol/event_frame.h"
#include "store/process_identity.h"
#include "store/zone_helpers.h"

namespace sse {

using namespace zone;

void DeferredLog::write() noexcept {
    if (evicted == 0 && redis_dropped == 0) return;
    ngx_log_t* to = log != nullptr ? log : ngx_cycle->log;
    if (evicted > 0) {
        ngx_log_error(NGX_LOG_WARN, to, 0,
                      "sse: shared zone full, evicted %uL retained events to make room; raise sse_shm_size", evicted);
    }
    if (redis_dropped > 0) {
        ngx_log_error(NGX_LOG_WARN, to, 0, "sse: redis queue full (sse_redis_queue %uD), dropped the oldest %uL events",
                      redis_queue_limit, redis_dropped);
    }
    *this = DeferredLog{};
}

StoreHeader* Store::create(ngx_slab_pool_t* pool) {
    auto* hdr = static_cast<StoreHeader*>(ngx_slab_calloc(pool, sizeof(StoreHeader)));
    if (hdr == nullptr) return nullptr;
    ngx_rbtree_init(&hdr->channels, &hdr->sentinel, insert_named<ShmChannel>);
    ngx_rbtree_init(&hdr->keys, &hdr->keys_sentinel, insert_named<ShmKey>);
    ngx_queue_init(&hdr->log);
    ngx_queue_init(&hdr->retention);
    ngx_queue_init(&hdr->orphans);
    ngx_queue_init(&hdr->patterns);

    // Ids continue upward across restarts (as long as fewer than a million events a second are
    // published on average), so an id from before this zone existed is recognisable.
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    hdr->first_id = std::uint64_t(tv.tv_sec) * 1000000 + std::uint64_t(tv.tv_usec);
    hdr->last_id = hdr->first_id - 1;
    hdr->next_client_id = hdr->first_id;
    ngx_queue_init(&hdr->cluster.outbound);
    hdr->created_at = tv.tv_sec;
    pool->data = hdr;
    // Running out of zone memory is answered with 507 and logged by us; keep nginx's slab
    // allocator from adding a "[crit] no memory" line of its own for every refusal.
    pool->log_nomem = 0;
    return hdr;
}

History<Store> Store::history() noexcept {
    return History<Store>(*this);
}

void Store::free_locked(void* p, std::size_t size) {
    allocator().deallocate(p, size);
}

ngx_int_t Store::claim_slot(ngx_pid_t pid, ngx_log_t* log) {
    reap_dead_slots(log);
    std::uint64_t started = process_start_time(pid);
    ZoneLock lock(pool_, &deferred_);
    for (ngx_uint_t i = 0; i < kMaxWorkerSlots; i++) {
        WorkerSlot& s = hdr_->slots[i];
        if (s.pid != 0) continue;
        s.pid = pid;
        s.started = started;
        s.wake_pending = 0;
        s.cursor = hdr_->next_seq;
        s.subscribers = 0;
        ngx_queue_init(&s.subscribers_list);
        if (i + 1 > hdr_->slot_high) hdr_->slot_high = i + 1;
        return ngx_int_t(i);
    }
    return NGX_ERROR;
}

void Store::release_slot(ngx_uint_t slot) {
    ZoneLock lock(pool_, &deferred_);
    reap_slot_locked(slot);
    collect_locked();
}

ngx_uint_t Store::reap_dead_slots(ngx_log_t* log) {
    // Which slots' processes are gone is asked of the system with the lock released; a slot is
    // reaped only if it still names the same process afterwards.
    struct Holder {
        ngx_uint_t slot;
        ngx_pid_t pid;
        std::uint64_t started;
        std::uint32_t subscribers;
    } holders[kMaxWorkerSlots];
    ngx_uint_t n = 0;
    {
        ZoneLock lock(pool_, &deferred_);
        for (ngx_uint_t i = 0; i < hdr_->slot_high; i++) {
            const WorkerSlot& s = hdr_->slots[i];
            if (s.pid != 0 && s.pid != ngx_pid) holders[n++] = {i, s.pid, s.started, 0};
        }
    }
    ngx_uint_t dead = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        if (!same_process_alive(holders[i].pid, holders[i].started)) holders[dead++] = holders[i];
    }
    if (dead == 0) return 0;
    ngx_uint_t reaped = 0;
    {
        ZoneLock lock(pool_, &deferred_);
        for (ngx_uint_t i = 0; i < dead; i++) {
            Holder& h = holders[i];
            const WorkerSlot& s = hdr_->slots[h.slot];
            if (s.pid != h.pid || s.started != h.started) continue;  // reaped and taken meanwhile
            h.subscribers = s.subscribers;
            reap_slot_locked(h.slot);
            holders[reaped++] = h;
        }
        if (reaped) {
            hdr_->counters.workers_reaped += reaped;
            collect_locked();
        }
    }
    for (ngx_uint_t i = 0; i < reaped; i++) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "sse: reaping %uD subscribers of worker process %P, which exited without releasing them",
                      holders[i].subscribers, holders[i].pid);
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
        if (--ch->subscribers == 0) hdr_->cluster.subscriptions_changed++;
    }
    hdr_->slots[sub->slot].subscribers--;
    ngx_queue_remove(&sub->link);
    if (sub->key != nullptr) release_key_locked(sub->key);
    for (std::uint32_t i = 0; i < sub->nchannels; i++) maybe_free_channel_locked(sub->channels[i]);
    free_locked(sub, sub->alloc_size);
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
    ch->lost_through = history().forgotten(hash);
    ch->node.key = hash;
    ch->name_len = std::uint16_t(name.size());
    std::memcpy(ch->name, name.data(), name.size());
    ch->linked = 1;
    if (hdr_->cluster.enabled) ch->live_floor = std::max(hdr_->last_id, clock_id());
    if (is_channel_pattern(name)) {
        // It holds only what is published from now on: a position before that is not exact.
        ch->pattern = 1;
        ch->lost_through = std::max(ch->lost_through, hdr_->last_id);
        ngx_queue_insert_tail(&hdr_->patterns, &ch->pattern_link);
        hdr_->pattern_count++;
    }
    ngx_rbtree_insert(&hdr_->channels, &ch->node);
    hdr_->channel_count++;
    return ch;
}

void Store::maybe_free_channel_locked(ShmChannel* ch) {
    if (ch->subscribers > 0 || ch->events_in_log > 0) return;
    if (ch->linked) {
        unlink_channel_locked(ch);
        forget_channel_locked(ch->name_view(), std::max(ch->last_event_id, ch->lost_through));
    }
    free_locked(ch, channel_alloc_size(ch->name_len));
}

void Store::unlink_channel_locked(ShmChannel* ch) {
    ngx_rbtree_delete(&hdr_->channels, &ch->node);
    ch->linked = 0;
    hdr_->channel_count--;
    if (ch->pattern) {
        ngx_queue_remove(&ch->pattern_link);
        hdr_->pattern_count--;
    }
}

void Store::add_pattern_targets_locked(std::string_view name, std::uint64_t mark, std::vector<ShmChannel*>& targets) {
    auto add = [&](ShmChannel* p) {
        if (p->subscribers == 0 || p->target_mark == mark || !pattern_covers(p->name_view(), name)) return;
        p->target_mark = mark;
        targets.push_back(p);
    };
    // Few patterns: look at each. Many: look up the few that could cover the name, a `*` after
    // each of its prefixes, so a publish costs the same with 50,000 pattern channels.
    if (hdr_->pattern_count <= name.size() + 1) {
        for (ngx_queue_t* q = ngx_queue_head(&hdr_->patterns); q != ngx_queue_sentinel(&hdr_->patterns);
             q = ngx_queue_next(q)) {
            add(ngx_queue_data(q, ShmChannel, pattern_link));
        }
        return;
    }
    char candidate[kMaxChannelNameLength + 2];
    if (name.size() > kMaxChannelNameLength) return;
    for (std::size_t len = 0; len <= name.size(); len++) {
        std::memcpy(candidate, name.data(), len);
        candidate[len] = '*';
        std::string_view pattern(candidate, len + 1);
        ShmChannel* p = find_locked(pattern, hash_name(pattern));
        if (p != nullptr && p->pattern) add(p);
    }
}

void Store::forget_channel_locked(std::string_view name, std::uint64_t through) {
    history().forget(hash_name(name), through);
}

void Store::trim_history_locked(ShmChannel* ch) {
    history().trim(ch, ngx_current_msec);
}

void Store::sweep_expired_locked() {
    history().sweep_expired(ngx_current_msec);
}

bool Store::could_fit_locked(std::size_t size) {
    return history().could_fit(size);
}

// Allocates, evicting the oldest history for room; logged once the lock is released, at most
// once a minute.
void* Store::alloc_evicting_locked(std::size_t size, ngx_log_t* log) {
    std::uint64_t evicted = 0;
    void* p = history().allocate_evicting(size, evicted);
    hdr_->counters.history_evictions += evicted;
    hdr_->evictions_unlogged += evicted;
    if (hdr_->evictions_unlogged > 0 && ngx_time() - hdr_->eviction_logged_at >= 60) {
        deferred_.evicted += hdr_->evictions_unlogged;
        if (log != nullptr) deferred_.log = log;
        hdr_->evictions_unlogged = 0;
        hdr_->eviction_logged_at = ngx_time();
    }
    return p;
}

void Store::maybe_free_event_locked(ShmEvent* ev) {
    history().maybe_free(ev);
}

// Admits a stream under sse_max_subscribers and sse_max_subscribers_per_key; the key it holds
// (nullptr when not limited by key) is returned through `key`.
bool Store::admit_locked(const SubscribeLimits& limits, ShmKey*& key, SubscribeOutcome& out, ngx_log_t* log) {
    key = nullptr;
    if (limits.max_total > 0) {
        std::uint64_t total = 0;
        for (ngx_uint_t i = 0; i < hdr_->slot_high; i++) total += hdr_->slots[i].subscribers;
        if (total >= limits.max_total) {
            out.refusal = SubscribeRefusal::kMaxSubscribers;
            hdr_->counters.refused_max_subscribers++;
            return false;
        }
    }
    if (limits.key.empty() || limits.max_per_key == 0) return true;
    std::uint32_t hash = hash_name(limits.key);
    key = find_key_locked(limits.key, hash);
    if (key != nullptr && key->streams >= limits.max_per_key) {
        out.refusal = SubscribeRefusal::kPerKey;
        hdr_->counters.refused_per_key++;
        key = nullptr;
        return false;
    }
    if (key == nullptr) {
        key = static_cast<ShmKey*>(alloc_evicting_locked(sizeof(ShmKey) + limits.key.size(), log));
        if (key == nullptr) {
            out.refusal = SubscribeRefusal::kZoneFull;
            return false;
        }
        std::memset(key, 0, sizeof(ShmKey));
        key->node.key = hash;
        key->name_len = std::uint16_t(limits.key.size());
        std::memcpy(key->name, limits.key.data(), limits.key.size());
        ngx_rbtree_insert(&hdr_->keys, &key->node);
    }
    key->streams++;  // held from here; released with the record, or by the caller on failure
    return true;
}

// Makes the stream's record on its channels (created as needed); nullptr, with nothing left
// behind, when the zone is full.
ShmSubscriber* Store::create_record_locked(const SubscribeRequest& req, ShmKey* key, SubscribeOutcome& out,
                                           ngx_log_t* log) {
    ngx_uint_t slot = req.slot;
    std::size_t user_len = std::min<std::size_t>(req.identity.user.size(), UINT16_MAX);
    std::size_t addr_len = std::min<std::size_t>(req.identity.remote_addr.size(), UINT16_MAX);
    std::size_t sub_size = subscriber_alloc_size(req.names.size()) + user_len + addr_len;
    auto* sub = static_cast<ShmSubscriber*>(alloc_evicting_locked(sub_size, log));
    if (sub == nullptr) return nullptr;
    std::memset(sub, 0, sizeof(ShmSubscriber));
    sub->key = key;
    sub->alloc_size = std::uint32_t(sub_size);
    for (std::string_view name : req.names) {
        std::uint32_t hash = hash_name(name);
        ShmChannel* ch = find_locked(name, hash);
        if (ch == nullptr) ch = create_channel_locked(name, hash);
        if (ch == nullptr) {
            for (std::uint32_t i = 0; i < sub->nchannels; i++) {
                sub->channels[i]->per_slot[slot]--;
                sub->channels[i]->subscribers--;
                maybe_free_channel_locked(sub->channels[i]);
            }
            free_locked(sub, sub_size);
            return nullptr;
        }
        ch->per_slot[slot]++;
        if (ch->subscribers++ == 0) {
            hdr_->cluster.subscriptions_changed++;
            out.new_channels = true;
        }
        sub->channels[sub->nchannels++] = ch;
    }
    sub->client_id = req.identity.client_id != 0 ? req.identity.client_id : ++hdr_->next_client_id;
    sub->user_len = std::uint16_t(user_len);
    sub->addr_len = std::uint16_t(addr_len);
    auto* strings = reinterpret_cast<u_char*>(sub->channels + sub->nchannels);
    if (user_len > 0) std::memcpy(strings, req.identity.user.data(), user_len);
    if (addr_len > 0) std::memcpy(strings + user_len, req.identity.remote_addr.data(), addr_len);
    sub->connected_at = ngx_time();
    sub->slot = std::uint32_t(slot);
    ngx_queue_insert_tail(&hdr_->slots[slot].subscribers_list, &sub->link);
    hdr_->slots[slot].subscribers++;
    return sub;
}

SubscribeOutcome Store::subscribe(const SubscribeRequest& req, ngx_log_t* log) {
    SubscribeOutcome out;
    ZoneLock lock(pool_, &deferred_);
    ShmKey* key = nullptr;
    if (!admit_locked(req.limits, key, out, log)) return out;
    ShmSubscriber* sub = create_record_locked(req, key, out, log);
    if (sub == nullptr) {
        if (key != nullptr) release_key_locked(key);
        out.refusal = SubscribeRefusal::kZoneFull;
        return out;
    }
    bool needs_history = req.resume.kind == ResumeRequest::kAfterId || req.resume.replay > 0;
    if (req.defer_unsynced && needs_history) {
        for (std::uint32_t i = 0; i < sub->nchannels; i++) out.plan.deferred |= !sub->channels[i]->redis_synced;
    }
    if (out.plan.deferred) {
        out.start_after = UINT64_MAX;  // nothing live until planned
        out.record = sub;
        return out;
    }
    out.start_after = hdr_->next_seq;
    try {
        plan_resume_locked(req.slot, sub, req.resume, out.plan);
    } catch (...) {
        drop_subscriber_locked(sub);  // planning pins nothing before its last allocation
        throw;
    }
    out.record = sub;
    lock.unlock();
    order_replay(out.plan, req.resume);
    return out;
}

std::uint64_t Store::new_client_id() {
    std::uint64_t n = __atomic_add_fetch(&hdr_->next_client_id, 1, __ATOMIC_ACQ_REL);
    if (!hdr_->cluster.enabled) return n;
    return (n << 10) | hdr_->cluster.node_bits;
}

void Store::plan_resume(ngx_uint_t slot, ShmSubscriber* sub, const ResumeRequest& resume, std::uint64_t& start_after,
                        ResumePlan& plan) {
    plan = ResumePlan{};
    ZoneLock lock(pool_, &deferred_);
    start_after = hdr_->next_seq;
    plan_resume_locked(slot, sub, resume, plan);
    lock.unlock();
    order_replay(plan, resume);
}

bool Store::synced(const ShmSubscriber* sub) {
    ZoneLock lock(pool_, &deferred_);
    for (std::uint32_t i = 0; i < sub->nchannels; i++) {
        if (!sub->channels[i]->redis_synced) return false;
    }
    return true;
}

// Plans the stream's start against this zone's ids (see History::plan_resume).
void Store::plan_resume_locked(ngx_uint_t slot, ShmSubscriber* sub, const ResumeRequest& resume, ResumePlan& plan) {
    ResumeBounds bounds;
    bounds.first_id = hdr_->first_id;
    bounds.last_id = hdr_->last_id;
    bounds.cluster = hdr_->cluster.enabled;
    if (bounds.cluster && resume.kind == ResumeRequest::kAfterId) bounds.clock_id = clock_id();
    history().plan_resume(sub->channels, sub->nchannels, resume, bounds, slot, ngx_current_msec, plan);
}

bool Store::unsubscribe(ShmSubscriber* sub) {
    ZoneLock lock(pool_, &deferred_);
    std::uint64_t changes = hdr_->cluster.subscriptions_changed;
    // Channels go first: collecting may free a channel along with its last event.
    drop_subscriber_locked(sub);
    collect_locked();
    return hdr_->cluster.subscriptions_changed != changes;
}

// The id after `prev` in this node's numbering (see kIdsPerMicrosecond).
std::uint64_t Store::next_local_id_locked() {
    std::uint64_t prev = hdr_->last_id;
    if (!hdr_->cluster.enabled) return prev + 1;
    std::uint64_t base = std::max(prev + 1, clock_id());
    std::uint64_t node = hdr_->cluster.node_bits;
    // The smallest id >= base whose low bits are this node's.
    std::uint64_t id = (base & ~std::uint64_t(kIdsPerMicrosecond - 1)) | node;
    if (id < base) id += kIdsPerMicrosecond;
    return id;
}

// Allocates and formats one event for the channels; nullptr when the zone is full.
ShmEvent* Store::store_event_locked(std::uint64_t id, std::string_view name, std::string_view data,
                                    const std::vector<ShmChannel*>& targets, ngx_log_t* log) {
    std::size_t frame_len = event_frame_size(id, name, data);
    std::size_t size = event_alloc_size(targets.size(), frame_len);
    auto* ev = static_cast<ShmEvent*>(alloc_evicting_locked(size, log));
    if (ev == nullptr) return nullptr;
    std::memset(ev, 0, sizeof(ShmEvent));
    ev->id = id;
    ev->published_at = ngx_current_msec;
    ev->frame_len = std::uint32_t(frame_len);
    ev->nchannels = std::uint32_t(targets.size());
    ev->kind = kEventMessage;
    ev->name_len = std::uint16_t(name.size());
    ev->refs = reinterpret_cast<EventChannelRef*>(ev + 1);
    for (std::size_t i = 0; i < targets.size(); i++) {
        ev->refs[i].channel = targets[i];
        ev->refs[i].event = ev;
        ev->refs[i].retained = false;
    }
    auto* chunk = reinterpret_cast<char*>(ev->refs + targets.size());
    ev->chunk_head_len = std::uint8_t(chunk_head_size(frame_len));
    ev->frame = reinterpret_cast<u_char*>(write_chunk_head(chunk, frame_len));
    char* end = write_event_frame(reinterpret_cast<char*>(ev->frame), ev->id, name, data);
    std::memcpy(end, kChunkTail.data(), kChunkTail.size());
    return ev;
}

// Puts a stored event in the delivery order (and log, when `wake` names workers) and in the
// history of each of its channels that keeps one. An event from another node may be older than
// what a history holds: `keep_sorted` inserts it in id order.
void Store::link_event_locked(ShmEvent* ev, const std::uint64_t wake[2], bool keep_sorted) {
    hdr_->event_count++;
    ev->seq = ++hdr_->next_seq;
    if (hdr_->last_id < ev->id) hdr_->last_id = ev->id;
    ev->needed_by[0] = wake[0];
    ev->needed_by[1] = wake[1];
    if (!mask_empty(wake)) {
        ev->in_log = true;
        ngx_queue_insert_tail(&hdr_->log, &ev->link);
    }
    for (std::size_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->refs[i].channel;
        ch->events_in_log++;
        ch->events_published++;
        if (ev->id > ch->last_event_id) ch->last_event_id = ev->id;
    }
    history().append(ev, keep_sorted);
}

// The channels of one publish, chosen under the lock: `found` are held (events_in_log) while
// evicting for room, `targets` store the events; `quiet` (no stream, no history) and `unknown`
// (no channel) only learn, if the publish succeeds, that its events are lost to any replay.
struct Store::PublishTargets {
    std::vector<ShmChannel*> found;
    std::vector<ShmChannel*> targets;
    std::vector<ShmChannel*> quiet;
    std::vector<std::string_view> unknown;
    std::uint64_t wake[2] = {0, 0};
};

// Finds or creates the named channels (and the patterns covering them) that take the events;
// false when the zone has no room for a new channel. Changes nothing a refused publish must
// leave as it was (see apply_targets_locked).
bool Store::choose_targets_locked(const std::vector<std::string_view>& names, const HistoryPolicy& history,
                                  PublishTargets& t, PublishResult& result) {
    bool cluster = hdr_->cluster.enabled;
    std::uint64_t mark = ++hdr_->target_marks;
    for (std::string_view name : names) {
        std::uint32_t hash = hash_name(name);
        ShmChannel* ch = find_locked(name, hash);
        if (ch == nullptr && (history.limit > 0 || cluster)) {
            ch = create_channel_locked(name, hash);
            if (ch == nullptr) return false;
        }
        if (ch == nullptr) {
            t.unknown.push_back(name);
            continue;
        }
        ch->events_in_log++;
        t.found.push_back(ch);
        result.subscribers += ch->subscribers;
        if (ch->subscribers == 0 && history.limit == 0 && !cluster) {
            t.quiet.push_back(ch);
            continue;
        }
        if (ch->target_mark == mark) continue;
        ch->target_mark = mark;
        t.targets.push_back(ch);
        mark_workers_of(ch, hdr_->slot_high, t.wake);
    }
    // Streams on patterns covering the channels (`blog.*`) take the event too, once each.
    if (hdr_->pattern_count > 0) {
        std::size_t first = t.targets.size();
        for (std::string_view name : names) add_pattern_targets_locked(name, mark, t.targets);
        for (std::size_t i = first; i < t.targets.size(); i++) {
            ShmChannel* p = t.targets[i];
            p->events_in_log++;
            t.found.push_back(p);
            result.subscribers += p->subscribers;
            mark_workers_of(p, hdr_->slot_high, t.wake);
        }
    }
    return true;
}

// The publish succeeds: its channels keep history as its location says, and those that keep
// nothing record that its events cannot be replayed.
void Store::apply_targets_locked(const PublishTargets& t, const HistoryPolicy& history, std::size_t events,
                                 std::uint64_t last) {
    for (ShmChannel* ch : t.found) {
        ch->history_limit = history.limit;
        ch->history_ttl = history.ttl;
    }
    for (ShmChannel* ch : t.quiet) {
        ch->lost_through = last;
        ch->last_event_id = last;
        ch->events_published += events;
    }
    for (std::string_view name : t.unknown) forget_channel_locked(name, last);
}

// Formats and stores each event for the targets: all or none.
bool Store::store_events_locked(const std::vector<EventInput>& events, const std::vector<std::uint64_t>& ids,
                                const std::vector<ShmChannel*>& targets, std::vector<ShmEvent*>& stored,
                                ngx_log_t* log) {
    std::size_t total = 0;
    for (std::size_t i = 0; i < events.size(); i++) {
        total += event_alloc_size(targets.size(), event_frame_size(ids[i], events[i].name, events[i].data));
    }
    if (!could_fit_locked(total)) return false;
    for (std::size_t i = 0; i < events.size(); i++) {
        ShmEvent* ev = store_event_locked(ids[i], events[i].name, events[i].data, targets, log);
        if (ev == nullptr) {
            for (ShmEvent* done : stored) free_locked(done, event_alloc_size(done->nchannels, done->frame_len));
            stored.clear();
            return false;
        }
        stored.push_back(ev);
    }
    return true;
}

// Puts one of this node's events (or requests) in the queue to Redis.
void Store::queue_outbound_locked(ShmEvent* ev) {
    ClusterState& cs = hdr_->cluster;
    ev->in_outbound = true;
    ngx_queue_insert_tail(&cs.outbound, &ev->outbound_link);
    cs.outbound_count++;
}

// Keeps the queue to Redis bounded whatever Redis does: the oldest waiting events give way.
// `wake` gets the worker holding the link.
void Store::bound_outbound_locked(std::uint64_t wake[2], ngx_log_t* log) {
    ClusterState& cs = hdr_->cluster;
    while (cs.outbound_count > cs.outbound_limit) {
        drop_outbound_locked(ngx_queue_data(ngx_queue_head(&cs.outbound), ShmEvent, outbound_link));
        hdr_->counters.redis_queue_dropped++;
        cs.dropped_unlogged++;
    }
    if (cs.dropped_unlogged > 0 && ngx_time() - cs.dropped_logged_at >= 60) {
        deferred_.redis_dropped += cs.dropped_unlogged;
        deferred_.redis_queue_limit = cs.outbound_limit;
        if (log != nullptr) deferred_.log = log;
        cs.dropped_unlogged = 0;
        cs.dropped_logged_at = ngx_time();
    }
    if (cs.owner > 0) set_bit(wake, cs.owner - 1);
}

bool Store::publish(const std::vector<EventInput>& events, const std::vector<std::string_view>& names,
                    const HistoryPolicy& history, PublishResult& result, ngx_log_t* log) {
    result = PublishResult{};
    if (events.empty()) return false;
    // Room for everything the critical section collects, reserved before it: nothing is
    // allocated while the lock is held.
    std::size_t most = 0;
    for (std::string_view name : names) most += max_targets_for(name);
    PublishTargets t;
    t.found.reserve(most);
    t.targets.reserve(most);
    t.quiet.reserve(names.size());
    t.unknown.reserve(names.size());
    std::vector<std::uint64_t> ids;
    ids.reserve(events.size());
    std::vector<ShmEvent*> stored;
    stored.reserve(events.size());

    ZoneLock lock(pool_, &deferred_);
    collect_locked();
    sweep_expired_locked();
    // The ids this publish takes, given out only if it succeeds.
    std::uint64_t saved_last = hdr_->last_id;
    for (std::size_t i = 0; i < events.size(); i++) {
        ids.push_back(next_local_id_locked());
        hdr_->last_id = ids.back();
    }
    hdr_->last_id = saved_last;
    std::uint64_t last = ids.back();

    bool ok = choose_targets_locked(names, history, t, result);
    if (ok && !t.targets.empty()) ok = store_events_locked(events, ids, t.targets, stored, log);
    if (ok) {
        apply_targets_locked(t, history, events.size(), last);
        for (ShmEvent* ev : stored) link_event_locked(ev, t.wake, false);
        if (hdr_->last_id < last) hdr_->last_id = last;
        if (hdr_->cluster.enabled) {
            for (ShmEvent* ev : stored) queue_outbound_locked(ev);
            bound_outbound_locked(t.wake, log);
        }
        for (ShmChannel* ch : t.targets) trim_history_locked(ch);
        result.first_id = ids.front();
        result.last_id = last;
        result.events = events.size();
        result.wake[0] = t.wake[0];
        result.wake[1] = t.wake[1];
        hdr_->counters.events_published += events.size();
    } else {
        hdr_->counters.publishes_refused++;
    }
    for (ShmChannel* ch : t.found) {
        ch->events_in_log--;
        maybe_free_channel_locked(ch);
    }
    return ok;
}

bool Store::close_channel(std::string_view name, PublishResult& result, std::uint32_t& closed_subscribers,
                          bool& no_memory) {
    result = PublishResult{};
    no_memory = false;
    ZoneLock lock(pool_, &deferred_);
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
    unlink_channel_locked(ch);
    history().drop(ch, hash_name(name));

    if (ev != nullptr) {
        mark_workers_of(ch, hdr_->slot_high, ev->needed_by);
        // A close is ordered among the events but is not one: it takes a place in the delivery
        // order, not an id.
        ev->id = hdr_->last_id;
        ev->seq = ++hdr_->next_seq;
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
    ZoneLock lock(pool_, &deferred_);
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
    ZoneLock lock(pool_, &deferred_);
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

bool Store::take_events(ngx_uint_t slot, std::vector<ShmEvent*>& out) {
    out.clear();
    ZoneLock lock(pool_, &deferred_);
    WorkerSlot& s = hdr_->slots[slot];
    // The log is in seq order: find the first event after the cursor from the newest end, so
    // a wake-up costs what is new, not what other workers still hold.
    ngx_queue_t* sentinel = ngx_queue_sentinel(&hdr_->log);
    ngx_queue_t* q = ngx_queue_last(&hdr_->log);
    while (q != sentinel && (ngx_queue_data(q, ShmEvent, link))->seq > s.cursor) q = ngx_queue_prev(q);
    for (q = ngx_queue_next(q); q != sentinel; q = ngx_queue_next(q)) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        if (!has_bit(ev->needed_by, slot)) continue;
        if (out.size() == out.capacity()) return false;
        out.push_back(ev);
        s.cursor = ev->seq;
    }
    return true;
}

void Store::release_event(ShmEvent* ev, ngx_uint_t slot) {
    clear_bit_atomic(ev->needed_by, slot);
}

void Store::unpin_event(ShmEvent* ev, ngx_uint_t slot) {
    clear_bit_atomic(ev->pinned_by, slot);
}

void Store::collect() {
    ZoneLock lock(pool_, &deferred_);
    collect_locked();
}

void Store::free_event_locked(ShmEvent* ev) {
    hdr_->event_count--;
    for (std::uint32_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->refs[i].channel;
        ch->events_in_log--;
        maybe_free_channel_locked(ch);
    }
    free_locked(ev, event_alloc_size(ev->nchannels, ev->frame_len));
}

// Frees what no worker needs any more. Bounded: past this many events still held (by a slow
// stream's unsent bytes, say) it stops, and the next call goes on; every publish and every
// stream's end calls it, so what is freeable is freed soon after.
constexpr std::size_t kCollectHeldLimit = 256;

void Store::collect_locked() {
    std::size_t held = 0;
    ngx_queue_t* q = ngx_queue_head(&hdr_->log);
    while (q != ngx_queue_sentinel(&hdr_->log) && held < kCollectHeldLimit) {
        auto* ev = ngx_queue_data(q, ShmEvent, link);
        q = ngx_queue_next(q);
        if (!mask_empty(ev->needed_by)) {
            held++;
            continue;
        }
        ngx_queue_remove(&ev->link);
        ev->in_log = false;
        maybe_free_event_locked(ev);
    }
    history().collect_orphans(kCollectHeldLimit);
}

StoreStats Store::stats() {
    StoreStats st;
    ZoneLock lock(pool_, &deferred_);
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
    // A user with streams is a user channel with subscribers.
    ngx_rbtree_node_t* sentinel = hdr_->channels.sentinel;
    if (hdr_->channels.root != sentinel) {
        for (ngx_rbtree_node_t* n = ngx_rbtree_min(hdr_->channels.root, sentinel); n != nullptr;
             n = ngx_rbtree_next(&hdr_->channels, n)) {
            auto* ch = reinterpret_cast<ShmChannel*>(n);
            if (ch->subscribers > 0 && ch->name_view().substr(0, 3) == "#u:") st.users++;
        }
    }
    return st;
}

}  // namespace sse
