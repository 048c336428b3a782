#include "store/event_store.h"

#include <sys/time.h>

#include <cerrno>
#include <csignal>
#include <cstring>

#include "protocol/event_frame.h"

namespace sse {

namespace {

class ZoneLock {
public:
    explicit ZoneLock(ngx_slab_pool_t* pool) : pool_(pool) { ngx_shmtx_lock(&pool_->mutex); }
    ~ZoneLock() { ngx_shmtx_unlock(&pool_->mutex); }
    ZoneLock(const ZoneLock&) = delete;
    ZoneLock& operator=(const ZoneLock&) = delete;

private:
    ngx_slab_pool_t* pool_;
};

std::uint32_t hash_name(std::string_view name) {
    return ngx_crc32_short(reinterpret_cast<u_char*>(const_cast<char*>(name.data())), name.size());
}

void insert_channel(ngx_rbtree_node_t* temp, ngx_rbtree_node_t* node, ngx_rbtree_node_t* sentinel) {
    ngx_rbtree_node_t** p;
    for (;;) {
        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;
        } else {
            auto* a = reinterpret_cast<ShmChannel*>(node);
            auto* b = reinterpret_cast<ShmChannel*>(temp);
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

bool has_bit(const std::uint64_t mask[2], ngx_uint_t slot) {
    return (__atomic_load_n(&mask[slot / 64], __ATOMIC_ACQUIRE) >> (slot % 64)) & 1;
}

void set_bit(std::uint64_t mask[2], ngx_uint_t slot) {
    mask[slot / 64] |= std::uint64_t(1) << (slot % 64);
}

std::size_t event_alloc_size(std::size_t nchannels, std::size_t frame_len) {
    return sizeof(ShmEvent) + nchannels * sizeof(ShmChannel*) + frame_len;
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
    ngx_rbtree_init(&hdr->channels, &hdr->sentinel, insert_channel);
    ngx_queue_init(&hdr->log);

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
    }
    s.pid = 0;
    s.subscribers = 0;
    while (hdr_->slot_high > 0 && hdr_->slots[hdr_->slot_high - 1].pid == 0) hdr_->slot_high--;
}

ShmChannel* Store::find_locked(std::string_view name, std::uint32_t hash) {
    ngx_rbtree_node_t* node = hdr_->channels.root;
    ngx_rbtree_node_t* sentinel = hdr_->channels.sentinel;
    while (node != sentinel) {
        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }
        auto* ch = reinterpret_cast<ShmChannel*>(node);
        std::string_view other = ch->name_view();
        if (name == other) return ch;
        node = (name < other) ? node->left : node->right;
    }
    return nullptr;
}

ShmChannel* Store::create_channel_locked(std::string_view name, std::uint32_t hash) {
    auto* ch = static_cast<ShmChannel*>(alloc_locked(channel_alloc_size(name.size())));
    if (ch == nullptr) return nullptr;
    std::memset(ch, 0, sizeof(ShmChannel));
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
    }
    free_locked(ch, channel_alloc_size(ch->name_len));
}

ShmSubscriber* Store::subscribe(ngx_uint_t slot, const std::vector<std::string_view>& names,
                                std::uint64_t& start_after) {
    ZoneLock lock(pool_);
    auto* sub = static_cast<ShmSubscriber*>(alloc_locked(subscriber_alloc_size(names.size())));
    if (sub == nullptr) return nullptr;
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
            free_locked(sub, subscriber_alloc_size(names.size()));
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
    return sub;
}

void Store::unsubscribe(ShmSubscriber* sub) {
    ZoneLock lock(pool_);
    // Channels go first: collecting may free a channel along with its last event.
    drop_subscriber_locked(sub);
    collect_locked();
}

bool Store::publish(const std::vector<EventInput>& events, const std::vector<std::string_view>& names,
                    PublishResult& result) {
    result = PublishResult{};
    ZoneLock lock(pool_);
    collect_locked();

    // Only channels someone listens to need the event; the others just advance their counters.
    std::vector<ShmChannel*> found;
    std::vector<ShmChannel*> targets;
    found.reserve(names.size());
    targets.reserve(names.size());
    std::uint64_t wake[2] = {0, 0};
    for (std::string_view name : names) {
        ShmChannel* ch = find_locked(name, hash_name(name));
        if (ch == nullptr) continue;
        found.push_back(ch);
        result.subscribers += ch->subscribers;
        if (ch->subscribers == 0) continue;
        targets.push_back(ch);
        for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
            if (ch->per_slot[s] > 0) set_bit(wake, s);
        }
    }

    std::vector<ShmEvent*> stored;
    if (!targets.empty()) {
        stored.reserve(events.size());
        std::uint64_t id = hdr_->next_id;
        for (const EventInput& in : events) {
            std::size_t frame_len = event_frame_size(id, in.name, in.data);
            std::size_t size = event_alloc_size(targets.size(), frame_len);
            auto* ev = static_cast<ShmEvent*>(alloc_locked(size));
            if (ev == nullptr) {
                for (ShmEvent* done : stored) {
                    free_locked(done, event_alloc_size(done->nchannels, done->frame_len));
                }
                hdr_->counters.publishes_refused++;
                return false;
            }
            ev->id = id++;
            ev->needed_by[0] = wake[0];
            ev->needed_by[1] = wake[1];
            ev->frame_len = std::uint32_t(frame_len);
            ev->nchannels = std::uint16_t(targets.size());
            ev->kind = kEventMessage;
            ev->channels = reinterpret_cast<ShmChannel**>(ev + 1);
            std::memcpy(ev->channels, targets.data(), targets.size() * sizeof(ShmChannel*));
            ev->frame = reinterpret_cast<u_char*>(ev->channels + targets.size());
            write_event_frame(reinterpret_cast<char*>(ev->frame), ev->id, in.name, in.data);
            stored.push_back(ev);
        }
        for (ShmEvent* ev : stored) {
            ngx_queue_insert_tail(&hdr_->log, &ev->link);
            hdr_->event_count++;
        }
        for (ShmChannel* ch : targets) ch->events_in_log += std::uint32_t(stored.size());
    }

    hdr_->next_id += events.size();
    result.last_id = hdr_->next_id - 1;
    result.events = events.size();
    result.wake[0] = wake[0];
    result.wake[1] = wake[1];
    for (ShmChannel* ch : found) {
        ch->last_event_id = result.last_id;
        ch->events_published += events.size();
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

    // Unlink at once so a new subscriber starts a fresh channel; the streams still on the old
    // record end when their workers read the close event.
    ngx_rbtree_delete(&hdr_->channels, &ch->node);
    ch->linked = 0;
    hdr_->channel_count--;

    if (ch->subscribers > 0) {
        std::size_t size = event_alloc_size(1, 0);
        auto* ev = static_cast<ShmEvent*>(alloc_locked(size));
        if (ev == nullptr) {
            // Cannot tell the workers; keep the channel as it was.
            ngx_rbtree_insert(&hdr_->channels, &ch->node);
            ch->linked = 1;
            hdr_->channel_count++;
            no_memory = true;
            return true;
        }
        std::memset(ev, 0, size);
        for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
            if (ch->per_slot[s] > 0) set_bit(ev->needed_by, s);
        }
        // A close is ordered among the events but is not one: it takes no id.
        ev->id = hdr_->next_id - 1;
        ev->kind = kEventCloseChannel;
        ev->nchannels = 1;
        ev->channels = reinterpret_cast<ShmChannel**>(ev + 1);
        ev->channels[0] = ch;
        ev->frame = reinterpret_cast<u_char*>(ev->channels + 1);
        ngx_queue_insert_tail(&hdr_->log, &ev->link);
        hdr_->event_count++;
        ch->events_in_log++;
        result.wake[0] = ev->needed_by[0];
        result.wake[1] = ev->needed_by[1];
    } else {
        maybe_free_channel_locked(ch);
    }
    return true;
}

ChannelState Store::channel_state(std::string_view name) {
    ChannelState st;
    ZoneLock lock(pool_);
    ShmChannel* ch = find_locked(name, hash_name(name));
    if (ch == nullptr) return st;
    st.found = true;
    st.subscribers = ch->subscribers;
    st.last_event_id = ch->last_event_id;
    st.events_published = ch->events_published;
    return st;
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
    std::uint64_t bit = std::uint64_t(1) << (slot % 64);
    __atomic_fetch_and(&ev->needed_by[slot / 64], ~bit, __ATOMIC_RELEASE);
}

void Store::collect() {
    ZoneLock lock(pool_);
    collect_locked();
}

void Store::free_event_locked(ShmEvent* ev) {
    ngx_queue_remove(&ev->link);
    hdr_->event_count--;
    for (std::uint16_t i = 0; i < ev->nchannels; i++) {
        ShmChannel* ch = ev->channels[i];
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
        if (__atomic_load_n(&ev->needed_by[0], __ATOMIC_ACQUIRE) == 0 &&
            __atomic_load_n(&ev->needed_by[1], __ATOMIC_ACQUIRE) == 0) {
            free_event_locked(ev);
        }
    }
}

StoreStats Store::stats() {
    StoreStats st;
    ZoneLock lock(pool_);
    st.channels = hdr_->channel_count;
    st.events_stored = hdr_->event_count;
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
