// The store's side of Redis: which worker holds the connections, which channels the node needs
// from Redis, the bounded queue of this node's events on their way out, and events of other
// nodes coming in (live, or merged from what Redis retains).
#include <sys/time.h>

#include <algorithm>
#include <cstring>

#include "store/event_store.h"
#include "store/zone_helpers.h"

namespace sse {

using namespace zone;

void Store::configure_cluster(ngx_slab_pool_t* pool, StoreHeader* hdr, bool enabled, std::uint32_t queue_limit) {
    // On a reload the old workers still publish into this zone: every field is written under
    // the lock they take.
    Store store(pool, hdr);
    ZoneLock lock(pool, &store.deferred_);
    ClusterState& cs = hdr->cluster;
    if (!enabled && cs.enabled) {
        while (!ngx_queue_empty(&cs.outbound)) {
            store.drop_outbound_locked(ngx_queue_data(ngx_queue_head(&cs.outbound), ShmEvent, outbound_link));
        }
    }
    if (enabled && !cs.enabled) {
        // Ids of a single node are counts; a cluster's are clock readings, far above them.
        std::uint64_t seed = 0;
        struct timeval tv;
        gettimeofday(&tv, nullptr);
        seed = std::uint64_t(tv.tv_sec) * 1000003 ^ std::uint64_t(tv.tv_usec) << 20 ^ std::uint64_t(ngx_pid) << 40;
        cs.node_bits = std::uint32_t(ngx_random() ^ seed) % kRedisAssignedNode;
        cs.origin = (std::uint64_t(ngx_random()) << 33) ^ (std::uint64_t(ngx_random()) << 2) ^ seed;
        if (cs.origin == 0) cs.origin = 1;
        if (hdr->first_id < clock_id()) hdr->first_id = clock_id();
    }
    cs.enabled = enabled;
    cs.outbound_limit = queue_limit;
    if (!enabled) {
        __atomic_store_n(&cs.state, ngx_atomic_uint_t(RedisState::kOff), __ATOMIC_RELEASE);
    } else if (cs.state == ngx_atomic_uint_t(RedisState::kOff)) {
        __atomic_store_n(&cs.state, ngx_atomic_uint_t(RedisState::kConnecting), __ATOMIC_RELEASE);
    }
}

bool Store::claim_redis(ngx_uint_t slot, ngx_msec_t now, ngx_msec_t stale_after) {
    ZoneLock lock(pool_, &deferred_);
    ClusterState& cs = hdr_->cluster;
    if (cs.owner == slot + 1) {
        cs.owner_beat = now;
        return true;
    }
    bool vacant = cs.owner == 0 || hdr_->slots[cs.owner - 1].pid == 0 ||
                  ngx_msec_int_t(now - cs.owner_beat) > ngx_msec_int_t(stale_after);
    if (!vacant) return false;
    cs.owner = slot + 1;
    cs.owner_beat = now;
    return true;
}

void Store::release_redis(ngx_uint_t slot) {
    ZoneLock lock(pool_, &deferred_);
    if (hdr_->cluster.owner == slot + 1) hdr_->cluster.owner = 0;
}

ngx_uint_t Store::redis_owner_slot() {
    ngx_uint_t owner = __atomic_load_n(&hdr_->cluster.owner, __ATOMIC_ACQUIRE);
    return owner == 0 ? kMaxWorkerSlots : owner - 1;
}

std::vector<std::string> Store::channels_in_use() {
    std::vector<std::string> out;
    ZoneLock lock(pool_, &deferred_);
    ngx_rbtree_node_t* sentinel = hdr_->channels.sentinel;
    if (hdr_->channels.root == sentinel) return out;
    for (ngx_rbtree_node_t* n = ngx_rbtree_min(hdr_->channels.root, sentinel); n != nullptr;
         n = ngx_rbtree_next(&hdr_->channels, n)) {
        auto* ch = reinterpret_cast<ShmChannel*>(n);
        if (ch->subscribers > 0) out.emplace_back(ch->name_view());
    }
    return out;
}

void Store::set_synced(const std::vector<std::string>& names, bool synced) {
    ZoneLock lock(pool_, &deferred_);
    for (const std::string& name : names) {
        ShmChannel* ch = find_locked(name, hash_name(name));
        if (ch != nullptr) ch->redis_synced = synced;
    }
}

void Store::unsync_all() {
    ZoneLock lock(pool_, &deferred_);
    ngx_rbtree_node_t* sentinel = hdr_->channels.sentinel;
    if (hdr_->channels.root == sentinel) return;
    for (ngx_rbtree_node_t* n = ngx_rbtree_min(hdr_->channels.root, sentinel); n != nullptr;
         n = ngx_rbtree_next(&hdr_->channels, n)) {
        reinterpret_cast<ShmChannel*>(n)->redis_synced = 0;
    }
}

void Store::outbound_after(std::uint64_t after_seq, std::size_t max, std::vector<OutboundEvent>& out) {
    out.clear();
    ZoneLock lock(pool_, &deferred_);
    ngx_queue_t* head = &hdr_->cluster.outbound;
    for (ngx_queue_t* q = ngx_queue_head(head); q != ngx_queue_sentinel(head) && out.size() < max;
         q = ngx_queue_next(q)) {
        auto* ev = ngx_queue_data(q, ShmEvent, outbound_link);
        if (ev->seq <= after_seq) continue;
        OutboundEvent o;
        o.seq = ev->seq;
        o.id = ev->id;
        if (ev->kind == kEventControl) {
            o.control = true;
            o.data.assign(reinterpret_cast<const char*>(ev->frame), ev->frame_len);
            out.push_back(std::move(o));
            continue;
        }
        o.history_limit = ev->nchannels > 0 ? ev->channel(0)->history_limit : 0;
        o.history_ttl = ev->nchannels > 0 ? ev->channel(0)->history_ttl : 0;
        o.name = std::string(ev->name());
        o.data = event_frame_data(std::string_view(reinterpret_cast<const char*>(ev->frame), ev->frame_len));
        o.channels.reserve(ev->nchannels);
        for (std::uint32_t i = 0; i < ev->nchannels; i++) o.channels.emplace_back(ev->channel(i)->name_view());
        out.push_back(std::move(o));
    }
}

void Store::drop_outbound_locked(ShmEvent* ev) {
    ngx_queue_remove(&ev->outbound_link);
    ev->in_outbound = false;
    hdr_->cluster.outbound_count--;
    maybe_free_event_locked(ev);
}

void Store::outbound_sent(std::uint64_t through_seq) {
    ZoneLock lock(pool_, &deferred_);
    ngx_queue_t* head = &hdr_->cluster.outbound;
    while (!ngx_queue_empty(head)) {
        auto* ev = ngx_queue_data(ngx_queue_head(head), ShmEvent, outbound_link);
        if (ev->seq > through_seq) break;
        drop_outbound_locked(ev);
    }
}

bool Store::queue_control(std::string_view json, std::uint64_t wake[2], ngx_log_t* log) {
    wake[0] = wake[1] = 0;
    ZoneLock lock(pool_, &deferred_);
    ClusterState& cs = hdr_->cluster;
    if (!cs.enabled) return false;
    std::size_t size = event_alloc_size(0, json.size());
    auto* ev = static_cast<ShmEvent*>(alloc_evicting_locked(size, log));
    if (ev == nullptr) return false;
    std::memset(ev, 0, sizeof(ShmEvent));
    ev->kind = kEventControl;
    ev->id = hdr_->last_id;
    ev->seq = ++hdr_->next_seq;
    ev->frame_len = std::uint32_t(json.size());
    ev->refs = reinterpret_cast<EventChannelRef*>(ev + 1);
    ev->frame = reinterpret_cast<u_char*>(ev->refs);
    std::memcpy(ev->frame, json.data(), json.size());
    hdr_->event_count++;
    queue_outbound_locked(ev);
    bound_outbound_locked(wake, log);
    return true;
}

void Store::set_redis_servers(const std::vector<RedisServerFigures>& servers) {
    ZoneLock lock(pool_, &deferred_);
    ClusterState& cs = hdr_->cluster;
    cs.server_count = std::uint32_t(std::min(servers.size(), kMaxRedisServersShown));
    std::copy_n(servers.begin(), cs.server_count, cs.servers);
}

std::vector<RedisServerFigures> Store::redis_servers() {
    std::vector<RedisServerFigures> out;
    out.reserve(kMaxRedisServersShown);
    ZoneLock lock(pool_, &deferred_);
    const ClusterState& cs = hdr_->cluster;
    out.assign(cs.servers, cs.servers + std::min<std::size_t>(cs.server_count, kMaxRedisServersShown));
    return out;
}

std::uint32_t Store::outbound_count() {
    return __atomic_load_n(&hdr_->cluster.outbound_count, __ATOMIC_ACQUIRE);
}

namespace {

// Whether Redis's clock says the event is past the channel's sse_history_ttl.
bool remote_expired(const RemoteEvent& e, ngx_msec_t ttl) {
    if (ttl == 0 || e.published_ms == 0) return false;
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    std::uint64_t now_ms = std::uint64_t(tv.tv_sec) * 1000 + std::uint64_t(tv.tv_usec) / 1000;
    return e.published_ms + ttl <= now_ms;
}

// A channel never published to here keeps what other nodes send under the http level's
// sse_history and sse_history_ttl.
void adopt_history_policy(ShmChannel* ch, const HistoryPolicy& fallback) {
    if (ch->events_published != 0 || ch->history_limit != 0) return;
    ch->history_limit = fallback.limit;
    ch->history_ttl = fallback.ttl;
}

}  // namespace

bool Store::ingest(const std::vector<std::string_view>& channels, const RemoteEvent& e, const HistoryPolicy& fallback,
                   PublishResult& result, ngx_log_t* log) {
    result = PublishResult{};
    // Reserved before the lock: nothing is allocated while holding it.
    std::size_t most = 0;
    for (std::string_view name : channels) most += max_targets_for(name);
    std::vector<ShmChannel*> targets;
    targets.reserve(most);
    std::uint64_t wake[2] = {0, 0};
    ZoneLock lock(pool_, &deferred_);
    collect_locked();
    if (e.id > hdr_->last_id) hdr_->last_id = e.id;  // the hybrid clock keeps up with the cluster
    std::uint64_t mark = ++hdr_->target_marks;
    for (std::string_view name : channels) {
        ShmChannel* ch = find_locked(name, hash_name(name));
        if (ch != nullptr && ch->subscribers > 0 && !ch->pattern && ch->target_mark != mark) {
            ch->target_mark = mark;
            targets.push_back(ch);
        }
        add_pattern_targets_locked(name, mark, targets);
    }
    for (ShmChannel* ch : targets) {
        adopt_history_policy(ch, fallback);
        mark_workers_of(ch, hdr_->slot_high, wake);
        ch->events_in_log++;  // held while evicting for room
        result.subscribers += ch->subscribers;
    }
    if (targets.empty()) return false;
    ShmEvent* ev = store_event_locked(e.id, e.name, e.data, targets, log);
    if (ev != nullptr) link_event_locked(ev, wake, true);
    for (ShmChannel* ch : targets) {
        ch->events_in_log--;
        trim_history_locked(ch);
        maybe_free_channel_locked(ch);
    }
    if (ev == nullptr) {
        hdr_->counters.publishes_refused++;
        return false;
    }
    hdr_->counters.redis_events_received++;
    result.first_id = result.last_id = e.id;
    result.events = 1;
    result.wake[0] = wake[0];
    result.wake[1] = wake[1];
    return true;
}

void Store::merge_history(std::string_view channel, const std::vector<RemoteEvent>& events, std::uint64_t redis_lost,
                          const HistoryPolicy& fallback, PublishResult& result, ngx_log_t* log) {
    result = PublishResult{};
    std::vector<ShmChannel*> targets{nullptr};
    std::vector<std::uint64_t> known;
    ZoneLock lock(pool_, &deferred_);
    collect_locked();
    ShmChannel* ch = find_locked(channel, hash_name(channel));
    if (ch == nullptr) return;
    targets[0] = ch;
    // The ids held here, collected before anything changes (an allocation that fails leaves
    // the zone as it was). The history is in id order.
    known.reserve(ch->history_count);
    for (ngx_queue_t* q = ngx_queue_head(&ch->history); q != ngx_queue_sentinel(&ch->history); q = ngx_queue_next(q)) {
        known.push_back(history_ref(q)->event->id);
    }
    adopt_history_policy(ch, fallback);
    std::uint64_t wake[2] = {0, 0};
    mark_workers_of(ch, hdr_->slot_high, wake);
    ch->events_in_log++;  // held while evicting for room
    trim_history_locked(ch);
    // What Redis retains is what this node can promise: with nothing of its own, Redis's record
    // of what it no longer has is the channel's.
    if (ngx_queue_empty(&ch->history)) {
        ch->lost_through = redis_lost;
    } else if (redis_lost > ch->lost_through) {
        ch->lost_through = redis_lost;
    }
    if (!std::is_sorted(known.begin(), known.end())) std::sort(known.begin(), known.end());
    std::uint64_t none[2] = {0, 0};
    for (const RemoteEvent& e : events) {
        if (e.id > hdr_->last_id) hdr_->last_id = e.id;
        if (std::binary_search(known.begin(), known.end(), e.id)) continue;
        if (remote_expired(e, ch->history_ttl)) {
            if (e.id > ch->lost_through) ch->lost_through = e.id;
            continue;
        }
        if (e.id <= ch->lost_through) continue;  // had here once, and evicted
        bool news = e.id > ch->live_floor && ch->subscribers > 0;
        if (!news && ch->history_limit == 0) continue;
        ShmEvent* ev = store_event_locked(e.id, e.name, e.data, targets, log);
        if (ev == nullptr) break;
        link_event_locked(ev, news ? wake : none, true);
        if (news) {
            hdr_->counters.redis_events_received++;
            result.events++;
        }
    }
    ch->events_in_log--;
    trim_history_locked(ch);
    ch->redis_synced = 1;
    result.wake[0] = wake[0];
    result.wake[1] = wake[1];
    maybe_free_channel_locked(ch);
}

}  // namespace sse
