// What the two files of the store share: the zone lock and small helpers on zone records.
// Internal to src/store/.
#pragma once

#include <sys/time.h>

#include "store/event_store.h"

namespace sse::zone {

// Holds the zone's lock for a scope; what the critical section logged is written after it.
class ZoneLock {
public:
    explicit ZoneLock(ngx_slab_pool_t* pool, DeferredLog* deferred = nullptr) : pool_(pool), deferred_(deferred) {
        ngx_shmtx_lock(&pool_->mutex);
    }
    ~ZoneLock() { unlock(); }
    void unlock() {
        if (pool_ == nullptr) return;
        ngx_shmtx_unlock(&pool_->mutex);
        pool_ = nullptr;
        if (deferred_ != nullptr) deferred_->write();
    }
    ZoneLock(const ZoneLock&) = delete;
    ZoneLock& operator=(const ZoneLock&) = delete;

private:
    ngx_slab_pool_t* pool_;
    DeferredLog* deferred_;
};

inline std::uint32_t hash_name(std::string_view name) {
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

inline bool has_bit(const std::uint64_t mask[2], ngx_uint_t slot) {
    return (__atomic_load_n(&mask[slot / 64], __ATOMIC_ACQUIRE) >> (slot % 64)) & 1;
}

inline void set_bit(std::uint64_t mask[2], ngx_uint_t slot) {
    mask[slot / 64] |= std::uint64_t(1) << (slot % 64);
}

// Marks in `mask` every worker slot with a stream on the channel.
inline void mark_workers_of(const ShmChannel* ch, ngx_uint_t slot_high, std::uint64_t mask[2]) {
    for (ngx_uint_t s = 0; s < slot_high; s++) {
        if (ch->per_slot[s] > 0) set_bit(mask, s);
    }
}

// The frame is stored as one HTTP/1.1 chunk (see ShmEvent::chunk).
inline std::size_t event_alloc_size(std::size_t nchannels, std::size_t frame_len) {
    return sizeof(ShmEvent) + nchannels * sizeof(EventChannelRef) + chunk_head_size(frame_len) + frame_len +
           kChunkTail.size();
}

inline bool mask_empty(const std::uint64_t mask[2]) {
    return __atomic_load_n(&mask[0], __ATOMIC_ACQUIRE) == 0 && __atomic_load_n(&mask[1], __ATOMIC_ACQUIRE) == 0;
}

inline void clear_bit_atomic(std::uint64_t mask[2], ngx_uint_t slot) {
    __atomic_fetch_and(&mask[slot / 64], ~(std::uint64_t(1) << (slot % 64)), __ATOMIC_RELEASE);
}

// Each process caches its own reading of the monotonic clock, so another worker's event can
// look a few milliseconds younger than "now"; that is not an age.
inline bool expired(const ShmChannel* ch, const ShmEvent* ev) {
    if (ch->history_ttl == 0) return false;
    auto age = static_cast<ngx_msec_int_t>(ngx_current_msec - ev->published_at);
    return age >= 0 && ngx_msec_t(age) >= ch->history_ttl;
}

inline EventChannelRef* history_ref(ngx_queue_t* q) {
    return ngx_queue_data(q, EventChannelRef, history_link);
}

// A channel's figures, as GET on a publish location and the stats report them.
inline ChannelState state_of(ShmChannel* ch) {
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

inline std::size_t channel_alloc_size(std::size_t name_len) {
    return sizeof(ShmChannel) + name_len;
}

// A client's id is only "from the future" when it is this far ahead of this node's clock.
constexpr std::uint64_t kClockMarginUs = 60ULL * 1000 * 1000;

// This node's clock as a cluster id with node bits 0.
inline std::uint64_t clock_id() {
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    return (std::uint64_t(tv.tv_sec) * 1000000 + std::uint64_t(tv.tv_usec)) * kIdsPerMicrosecond;
}

}  // namespace sse::zone
