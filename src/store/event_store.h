// The shared-memory store: channels with their subscriber counts per worker, the log of
// published events (each formatted once into its SSE frame), and one slot per worker process.
// Every worker maps the same zone, so any of them can publish, answer for all, or reap a dead one.
//
// Lifetime of an event: a publish formats it into the zone and marks, in `needed_by`, every
// worker slot that has a subscriber on one of its channels. Each such worker takes it from the
// delivery log, writes the frame bytes straight from the zone to its sockets, and clears its bit
// once no local socket still holds the bytes. Channels with history also keep the event in their
// history (and it stays in the global retention list) until sse_history, sse_history_ttl or
// memory pressure evicts it. A replay pins the events it writes with the worker's bit in
// `pinned_by`. An event is freed once it is in no delivery log, no history and no pin.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/admin_query.h"
#include "protocol/event_frame.h"
#include "protocol/resume.h"
#include "protocol/stats_report.h"

namespace sse {

constexpr ngx_uint_t kMaxWorkerSlots = 128;  // old and new workers overlap during a reload

// Ids. A single node numbers its events one by one from its zone's creation time in
// microseconds. With Redis, every node takes ids from a hybrid clock so that they are unique
// and comparable across nodes without asking anyone: (microseconds << 10) | node bits, above
// every id the node has given out or seen. Node bits 1023 are those of events Redis numbers
// itself (published by other services).
constexpr std::uint64_t kIdsPerMicrosecond = 1024;
constexpr std::uint32_t kRedisAssignedNode = 1023;

struct ShmChannel {
    ngx_rbtree_node_t node;  // key: hash of the name
    std::uint64_t last_event_id;
    std::uint64_t events_published;
    // Every event of this channel up to this id that is not in `history` is lost to replay, so a
    // position before it cannot be resumed exactly.
    std::uint64_t lost_through;
    ngx_queue_t history;  // EventChannelRef::history_link, oldest first
    std::uint32_t history_count;
    std::uint32_t history_limit;  // the last publishing location's sse_history
    ngx_msec_t history_ttl;       // and its sse_history_ttl
    std::uint32_t subscribers;    // over all workers
    std::uint32_t events_in_log;  // events naming this channel that are still stored
    std::uint32_t per_slot[kMaxWorkerSlots];
    // With Redis: events from other nodes with ids above this are news to this channel's
    // streams (ids are clock-based); set when the channel is created here.
    std::uint64_t live_floor;
    ngx_queue_t pattern_link;   // in StoreHeader::patterns when the name is a prefix pattern (`blog.*`)
    std::uint64_t target_mark;  // the publish that last chose it as a target: each event names a channel once
    unsigned linked : 1;        // findable by name; a closed channel is unlinked at once
    // With Redis: this node listens to the channel there and has merged what Redis retains, so
    // its history here is as complete as Redis's.
    unsigned redis_synced : 1;
    unsigned pattern : 1;  // its name is a pattern: its streams take the events of every channel it covers
    std::uint16_t name_len;
    u_char name[1];

    std::string_view name_view() const { return {reinterpret_cast<const char*>(name), name_len}; }
};

enum EventKind : std::uint16_t {
    kEventMessage = 0,
    kEventCloseChannel = 1,  // the streams of channels[0] end
    kEventControl = 2,       // with Redis: a request for every node (its frame is JSON), never delivered
};

struct ShmEvent;

// One of an event's channels; linked into that channel's history while retained there.
struct EventChannelRef {
    ShmChannel* channel;
    ShmEvent* event;
    ngx_queue_t history_link;
    bool retained;
};

struct ShmEvent {
    ngx_queue_t link;           // the delivery log (while in_log) or the orphan list, seq order
    ngx_queue_t retained_link;  // the global retention list while retained anywhere, seq order
    ngx_queue_t outbound_link;  // the queue of events waiting to go to Redis, while in_outbound
    std::uint64_t id;
    // Position in this zone's delivery order. Equal to the id's order on a single node; with
    // Redis, events from other nodes can carry lower ids than ones already delivered here.
    std::uint64_t seq;
    std::uint64_t needed_by[2];  // bit per worker slot; cleared atomically by that worker
    std::uint64_t pinned_by[2];  // bit per worker slot replaying it; cleared atomically
    ngx_msec_t published_at;     // monotonic clock, for sse_history_ttl
    std::uint32_t frame_len;
    std::uint32_t nchannels;  // a publish names at most 1024 channels, each covered by at most 129 patterns
    std::uint32_t retained;   // channels whose history holds it
    std::uint16_t kind;
    std::uint16_t name_len;       // the event's name is in its frame, from event_name_offset(id)
    std::uint8_t chunk_head_len;  // of a message: the frame is the middle of its chunk (see chunk())
    bool in_log;
    bool orphan;
    bool in_outbound;
    EventChannelRef* refs;
    u_char* frame;

    ShmChannel* channel(std::size_t i) const { return refs[i].channel; }
    // A message's frame framed as one HTTP/1.1 chunk, "<hex>\r\n" frame "\r\n", stored once so that
    // a stream no nginx filter changes writes it as it is; nginx's filters are given the frame.
    u_char* chunk() const { return frame - chunk_head_len; }
    std::size_t chunk_len() const { return chunk_head_len + frame_len + kChunkTail.size(); }
    std::string_view name() const {
        if (name_len == 0) return {};
        return {reinterpret_cast<const char*>(frame) + event_name_offset(id), name_len};
    }
};

// A limit key (sse_max_subscribers_per_key) and how many streams hold it, over all workers.
struct ShmKey {
    ngx_rbtree_node_t node;  // key: hash of the name
    std::uint32_t streams;
    std::uint16_t name_len;
    u_char name[1];

    std::string_view name_view() const { return {reinterpret_cast<const char*>(name), name_len}; }
};

// One stream, as every worker can see it: its channels and the worker that serves it.
struct ShmSubscriber {
    ngx_queue_t link;  // in its WorkerSlot's list
    ShmKey* key;       // nullptr: not limited by key
    std::uint64_t client_id;
    time_t connected_at;
    std::uint64_t events_sent;  // written by its worker only; read by sse_clients
    std::uint64_t bytes_sent;
    std::uint32_t slot;
    std::uint32_t nchannels;
    std::uint32_t alloc_size;
    std::uint16_t user_len;  // its user key and remote address follow the channels
    std::uint16_t addr_len;
    bool kicked;  // sse_clients asked for it to be disconnected: its worker ends it
    ShmChannel* channels[1];

    std::string_view user() const { return {reinterpret_cast<const char*>(channels + nchannels), user_len}; }
    std::string_view remote_addr() const {
        return {reinterpret_cast<const char*>(channels + nchannels) + user_len, addr_len};
    }
};

// Who a new stream is.
struct StreamIdentity {
    std::uint64_t client_id = 0;  // 0: the store picks one
    std::string_view user;
    std::string_view remote_addr;
};

// Which streams sse_clients lists or disconnects: all, or those matching every field given
// (id, user, channel), a page of them (after, limit); as its query arguments say.
using ClientQuery = ClientsQuery;

struct ClientInfo {
    std::uint64_t client_id = 0;
    ngx_pid_t pid = 0;
    std::vector<std::string> channels;  // those it asked for (not the client and user channels)
    std::string user;
    std::string remote_addr;
    time_t connected_at = 0;
    std::uint64_t events_sent = 0;
    std::uint64_t bytes_sent = 0;
};

struct WorkerSlot {
    ngx_pid_t pid;  // 0: free
    // When the process started (see process_start_time): a dead worker's pid taken by a new
    // process does not make the slot look alive.
    std::uint64_t started;
    ngx_queue_t subscribers_list;  // ShmSubscriber records of this worker
    ngx_atomic_t wake_pending;     // coalesces wake-ups: set by the first publisher, cleared by the worker
    std::uint64_t cursor;          // the seq of the last event this worker took from the log
    std::uint32_t subscribers;
    ngx_atomic_t kicks;  // bumped when one of its streams is to be disconnected
};

struct StoreCounters {
    ngx_atomic_t events_published;
    ngx_atomic_t events_delivered;  // frames handed to subscriber connections
    ngx_atomic_t slow_disconnects;
    ngx_atomic_t publishes_refused;  // zone full
    ngx_atomic_t workers_reaped;
    ngx_atomic_t history_evictions;        // retained events evicted to make room
    ngx_atomic_t events_replayed;          // frames written to streams from history
    ngx_atomic_t resets;                   // reset events sent
    ngx_atomic_t refused_max_subscribers;  // streams refused by sse_max_subscribers
    ngx_atomic_t refused_per_key;          // and by sse_max_subscribers_per_key
    ngx_atomic_t redis_reconnects;         // connections to Redis made again after a loss
    ngx_atomic_t redis_queue_dropped;      // events dropped from a full queue to Redis
    ngx_atomic_t redis_events_sent;        // events Redis acknowledged
    ngx_atomic_t redis_events_received;    // events of other nodes taken from Redis
    // Streams ended because an event could not be given to them (no memory for its buffer): the
    // client resumes by Last-Event-ID instead of silently missing the event.
    ngx_atomic_t streams_ended_out_of_memory;
};

enum class RedisState : ngx_uint_t { kOff = 0, kConnecting, kConnected, kDisconnected };

// One Redis server the link talks to, as the stats list it. The worker holding the link writes
// them (under the zone's lock) when one changes; any worker reads them for sse_stats.
enum class RedisRole : std::uint8_t { kPrimary = 0, kSentinel, kClusterNode };
constexpr std::size_t kMaxRedisServersShown = 16;
constexpr std::size_t kMaxRedisAddressShown = 64;
struct RedisServerFigures {
    char address[kMaxRedisAddressShown];  // NUL-terminated: host:port or unix:path, cut if longer
    RedisRole role;
    RedisState state;  // kOff: known, not in use (a sentinel not asked now)
    std::uint32_t reconnects;
};

// This node's part in a Redis cluster. One worker (the owner) holds the connections; the
// others see its state here and wake it when there is work.
struct ClusterState {
    bool enabled;
    std::uint32_t node_bits;  // low 10 bits of this node's ids: 0-1022 (1023: ids Redis assigns)
    std::uint64_t origin;     // tells this node's events apart when Redis sends them back
    ngx_queue_t outbound;     // this node's events waiting for Redis, seq order
    std::uint32_t outbound_count;
    std::uint32_t outbound_limit;         // sse_redis_queue
    std::uint64_t subscriptions_changed;  // bumped when a channel gains its first or loses its last stream
    ngx_uint_t owner;                     // slot + 1 of the worker holding the connections; 0: none
    ngx_msec_t owner_beat;                // when the owner last said it is alive
    ngx_atomic_t state;                   // RedisState
    std::uint32_t channels;               // channels subscribed to in Redis
    time_t dropped_logged_at;
    std::uint64_t dropped_unlogged;
    std::uint32_t server_count;
    RedisServerFigures servers[kMaxRedisServersShown];
};

// Ids of channels the zone forgot entirely (freed, closed, or published to with no history),
// by name hash: a new record of such a channel cannot prove that nothing before this was missed.
constexpr ngx_uint_t kForgottenBuckets = 1024;

struct StoreHeader {
    std::uint64_t first_id;  // ids of this zone start here: its creation time in microseconds
    std::uint64_t last_id;   // the highest id given out or, with Redis, seen
    std::uint64_t next_seq;
    std::uint64_t next_client_id;
    ngx_rbtree_t channels;
    ngx_rbtree_node_t sentinel;
    ngx_rbtree_t keys;
    ngx_rbtree_node_t keys_sentinel;
    ngx_queue_t log;        // delivery log: events some worker may still have to take or write
    ngx_queue_t retention;  // events retained by some channel's history
    ngx_queue_t orphans;    // events in neither, kept only by a replay's pin
    ngx_queue_t patterns;   // channels whose name is a prefix pattern
    std::uint32_t pattern_count;
    std::uint64_t target_marks;  // numbers the publishes, for ShmChannel::target_mark
    std::uint32_t channel_count;
    std::uint32_t event_count;
    std::uint32_t retained_count;
    std::size_t retained_bytes;        // what evicting all history could give back (at most)
    std::uint64_t evictions_unlogged;  // evicted for room since the last log line
    time_t eviction_logged_at;
    std::uint64_t forgotten[kForgottenBuckets];
    std::size_t bytes_used;  // what the store allocated, for the baseline check
    ngx_uint_t slot_high;    // slots in use are all below this index
    WorkerSlot slots[kMaxWorkerSlots];
    StoreCounters counters;
    time_t created_at;
    ClusterState cluster;
};

// An event to publish.
struct EventInput {
    std::string_view name;
    std::string_view data;
};

// How a publishing location keeps history.
struct HistoryPolicy {
    std::uint32_t limit = 0;  // events per channel
    ngx_msec_t ttl = 0;
};

// Limits a new stream is admitted under, counted over all workers.
struct SubscribeLimits {
    std::uint32_t max_total = 0;  // 0: none
    std::string_view key;         // empty: not limited by key
    std::uint32_t max_per_key = 0;
};

enum class SubscribeRefusal { kNone, kZoneFull, kMaxSubscribers, kPerKey };

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

// A new stream, as the store is asked to admit it.
struct SubscribeRequest {
    ngx_uint_t slot = 0;                  // the worker serving it
    std::vector<std::string_view> names;  // its channels (with its client and user channels)
    SubscribeLimits limits;
    ResumeRequest resume;
    StreamIdentity identity;
    // With Redis connected: a stream resuming on a channel not yet synced with Redis is
    // registered but not planned (see ResumePlan::deferred).
    bool defer_unsynced = false;
};

struct SubscribeOutcome {
    ShmSubscriber* record = nullptr;  // nullptr: refused
    SubscribeRefusal refusal = SubscribeRefusal::kNone;
    std::uint64_t start_after = 0;  // it takes live events after this place in the delivery order
    ResumePlan plan;
    bool new_channels = false;  // a channel got its first stream: the Redis owner must be told
};

// An event of this node on its way to Redis, copied out of the zone.
struct OutboundEvent {
    std::uint64_t seq;
    std::uint64_t id;
    std::uint32_t history_limit;  // of the publishing location, for Redis to apply too
    ngx_msec_t history_ttl;
    std::string name;
    std::string data;
    std::vector<std::string> channels;
    bool control = false;  // a request for the other nodes: `data` is its JSON
};

// An event as Redis carries it between nodes.
struct RemoteEvent {
    std::uint64_t id = 0;
    std::uint64_t published_ms = 0;  // Redis's clock
    std::string_view name;
    std::string_view data;
};

struct PublishResult {
    std::uint64_t first_id = 0;
    std::uint64_t last_id = 0;
    ngx_uint_t events = 0;
    ngx_uint_t subscribers = 0;      // subscribers of the target channels, summed per channel
    std::uint64_t wake[2] = {0, 0};  // slots to wake
};

struct ChannelState : ChannelFigures {
    bool found = false;
};

struct StoreStats {
    std::uint32_t channels = 0;
    std::uint32_t events_stored = 0;
    std::uint32_t events_retained = 0;
    std::uint32_t subscribers = 0;
    std::uint32_t users = 0;  // distinct user keys (sse_user) with streams
    std::size_t bytes_used = 0;
    std::size_t bytes_total = 0;
    ngx_uint_t workers = 0;
    std::vector<std::pair<ngx_pid_t, std::uint32_t>> per_worker;
};

// Log lines a critical section decided on, written once the zone lock is released: writing a
// log is a system call, and the lock is a spinlock that every worker may be waiting on.
struct DeferredLog {
    ngx_log_t* log = nullptr;
    std::uint64_t evicted = 0;        // retained events evicted for room since the last such line
    std::uint64_t redis_dropped = 0;  // events dropped from the full queue to Redis
    std::uint32_t redis_queue_limit = 0;

    // Writes what is pending and forgets it.
    void write() noexcept;
};

class Store {
public:
    Store() = default;
    Store(ngx_slab_pool_t* pool, StoreHeader* header) : pool_(pool), hdr_(header) {}

    // Zone creation (nginx's init_zone); the zone's log says where refusals go.
    static StoreHeader* create(ngx_slab_pool_t* pool);

    bool valid() const { return hdr_ != nullptr; }
    StoreHeader* header() const { return hdr_; }

    // Worker slots. claim() also reaps the slots of workers that died without releasing theirs.
    ngx_int_t claim_slot(ngx_pid_t pid, ngx_log_t* log);
    void release_slot(ngx_uint_t slot);
    ngx_uint_t reap_dead_slots(ngx_log_t* log);

    // Registers a stream on its channels, creating them, and decides in the same critical
    // section what it is sent first (the plan), so that nothing published meanwhile is missed or
    // sent twice. Refused (no record), saying why, when the zone is full or a limit is reached.
    SubscribeOutcome subscribe(const SubscribeRequest& request, ngx_log_t* log);
    // A client id no stream of this zone (or, with Redis, of any node) has had: it starts at the
    // zone's creation time in microseconds, and carries the node bits with Redis.
    std::uint64_t new_client_id();
    // Plans a deferred stream's start (see subscribe()); it then takes live events after `start_after`.
    void plan_resume(ngx_uint_t slot, ShmSubscriber* sub, const ResumeRequest& resume, std::uint64_t& start_after,
                     ResumePlan& plan);
    // Whether every channel of the stream has been synced with Redis.
    bool synced(const ShmSubscriber* sub);
    // Returns true when a channel lost its last stream (the Redis owner must be told).
    bool unsubscribe(ShmSubscriber* subscriber);

    // Stores the events (all or none) for the channels, keeping history as the policy says and
    // evicting the oldest history for room. Returns false when even that leaves no room.
    bool publish(const std::vector<EventInput>& events, const std::vector<std::string_view>& channels,
                 const HistoryPolicy& history, PublishResult& result, ngx_log_t* log);

    // Ends every stream of the channel and forgets it. Returns false for an unknown channel.
    bool close_channel(std::string_view name, PublishResult& result, std::uint32_t& closed_subscribers,
                       bool& no_memory);

    ChannelState channel_state(std::string_view name);

    // Every channel's figures, by name, at most `limit` of them; `more` says whether some were
    // left out.
    std::vector<std::pair<std::string, ChannelState>> channel_states(std::size_t limit, bool& more);

    // A worker's events: those after its cursor that it is marked in, oldest first, at most
    // out.capacity() of them (the caller reserves it, so nothing is allocated under the lock).
    // Returns false when more are waiting.
    bool take_events(ngx_uint_t slot, std::vector<ShmEvent*>& out);
    // The worker no longer needs the event's bytes. Lock-free.
    static void release_event(ShmEvent* ev, ngx_uint_t slot);
    // The worker has written a replayed event everywhere it was pinned for. Lock-free.
    static void unpin_event(ShmEvent* ev, ngx_uint_t slot);
    // Frees events no worker needs any more.
    void collect();

    StoreStats stats();

    // ---- sse_clients (src/store/client_registry.cpp) ----

    // The matching streams of every worker, by client id, one page; `total` counts all matches,
    // `more` says whether some come after the page.
    std::vector<ClientInfo> list_clients(const ClientQuery& query, std::size_t& total, bool& more);
    // The same page as sse_clients answers it: clients_json() of protocol/stats_report.h.
    std::string clients_page_json(const ClientQuery& query);
    // Marks the matching streams to be ended by their workers, which `wake` names. Returns how many.
    std::uint32_t disconnect_clients(const ClientQuery& query, std::uint64_t wake[2]);

    // ---- Redis (src/store/cluster_store.cpp) ----

    // At zone creation or reload: whether this node is part of a cluster.
    // A reload that turns Redis off drops the events still waiting for it.
    static void configure_cluster(ngx_slab_pool_t* pool, StoreHeader* header, bool enabled, std::uint32_t queue_limit);
    // The worker holding the Redis connections: claims the role when nobody holds it or its
    // holder stopped beating for `stale_after`; the holder's call refreshes its beat.
    bool claim_redis(ngx_uint_t slot, ngx_msec_t now, ngx_msec_t stale_after);
    // The servers the link talks to (at most kMaxRedisServersShown), as it last wrote them.
    void set_redis_servers(const std::vector<RedisServerFigures>& servers);
    std::vector<RedisServerFigures> redis_servers();
    void release_redis(ngx_uint_t slot);
    ngx_uint_t redis_owner_slot();  // kMaxWorkerSlots: none
    // The names of channels with streams on this node.
    std::vector<std::string> channels_in_use();
    // Marks channels synced with Redis or not; unsynced with an empty list means all.
    void set_synced(const std::vector<std::string>& names, bool synced);
    void unsync_all();
    // This node's events after `after_seq` waiting for Redis, oldest first, at most `max`.
    void outbound_after(std::uint64_t after_seq, std::size_t max, std::vector<OutboundEvent>& out);
    // Redis took the events up to this seq.
    void outbound_sent(std::uint64_t through_seq);
    std::uint32_t outbound_count();
    // A request for every other node (a disconnect, a channel closed), queued in order with
    // this node's events. False without Redis or when the zone is full.
    // `wake` names the worker holding the link.
    bool queue_control(std::string_view json, std::uint64_t wake[2], ngx_log_t* log);
    // An event of another node: stored and delivered like a local one (not sent back to Redis).
    // False when the channel has nobody here or the zone is full.
    bool ingest(const std::vector<std::string_view>& channels, const RemoteEvent& event, const HistoryPolicy& fallback,
                PublishResult& result, ngx_log_t* log);
    // What Redis retains for a channel, merged into its history here. Events not seen here that
    // are newer than the channel's live floor are delivered too (published elsewhere while this
    // node was away from Redis); older ones only join the history. Marks the channel synced
    // and wakes its streams' workers.
    void merge_history(std::string_view channel, const std::vector<RemoteEvent>& events, std::uint64_t redis_lost,
                       const HistoryPolicy& fallback, PublishResult& result, ngx_log_t* log);

private:
    struct PublishTargets;
    bool choose_targets_locked(const std::vector<std::string_view>& names, const HistoryPolicy& history,
                               PublishTargets& t, PublishResult& result);
    void apply_targets_locked(const PublishTargets& t, const HistoryPolicy& history, std::size_t events,
                              std::uint64_t last);
    bool store_events_locked(const std::vector<EventInput>& events, const std::vector<std::uint64_t>& ids,
                             const std::vector<ShmChannel*>& targets, std::vector<ShmEvent*>& stored, ngx_log_t* log);
    void queue_outbound_locked(ShmEvent* ev);
    void bound_outbound_locked(std::uint64_t wake[2], ngx_log_t* log);
    std::uint64_t next_local_id_locked();
    ShmEvent* store_event_locked(std::uint64_t id, std::string_view name, std::string_view data,
                                 const std::vector<ShmChannel*>& targets, ngx_log_t* log);
    void link_event_locked(ShmEvent* ev, const std::uint64_t wake[2], bool keep_sorted);
    void drop_outbound_locked(ShmEvent* ev);
    ShmChannel* find_locked(std::string_view name, std::uint32_t hash);
    ShmKey* find_key_locked(std::string_view name, std::uint32_t hash);
    void release_key_locked(ShmKey* key);
    void* alloc_evicting_locked(std::size_t size, ngx_log_t* log);
    bool could_fit_locked(std::size_t size) const;
    bool evict_oldest_locked();
    void unretain_locked(EventChannelRef& ref);
    void trim_history_locked(ShmChannel* ch);
    void sweep_expired_locked();
    void forget_channel_locked(std::string_view name, std::uint64_t through);
    void maybe_free_event_locked(ShmEvent* ev);
    void plan_resume_locked(ngx_uint_t slot, ShmSubscriber* sub, const ResumeRequest& resume, ResumePlan& plan);
    // Puts a plan in id order, each id once, at most sse_replay of the newest; the rest goes to
    // plan.unpin. Outside the lock: the pins keep the events.
    static void order_replay(ResumePlan& plan, const ResumeRequest& resume) noexcept;
    bool admit_locked(const SubscribeLimits& limits, ShmKey*& key, SubscribeOutcome& out, ngx_log_t* log);
    ShmSubscriber* create_record_locked(const SubscribeRequest& req, ShmKey* key, SubscribeOutcome& out,
                                        ngx_log_t* log);
    ShmChannel* create_channel_locked(std::string_view name, std::uint32_t hash);
    void unlink_channel_locked(ShmChannel* ch);
    // Adds to `targets` the pattern channels with streams that cover `name` (once each).
    // Marks are per publish (see ShmChannel::target_mark); `targets` has room reserved for
    // max_targets_for() of each name, so nothing is allocated under the lock.
    void add_pattern_targets_locked(std::string_view name, std::uint64_t mark, std::vector<ShmChannel*>& targets);
    // The most channels one named channel can put in an event's targets: itself and every
    // pattern covering it (a `*` after each of its prefixes).
    static std::size_t max_targets_for(std::string_view name) { return name.size() + 2; }
    void maybe_free_channel_locked(ShmChannel* ch);
    void collect_locked();
    void free_event_locked(ShmEvent* ev);
    void* alloc_locked(std::size_t size);
    void free_locked(void* p, std::size_t size);
    void reap_slot_locked(ngx_uint_t slot);
    void drop_subscriber_locked(ShmSubscriber* sub);

    ngx_slab_pool_t* pool_ = nullptr;
    StoreHeader* hdr_ = nullptr;
    DeferredLog deferred_;
};

}  // namespace sse
