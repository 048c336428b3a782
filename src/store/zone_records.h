// The zone's records that history, resume planning and eviction (history.h) work on: channels,
// events and the link between them, with the small helpers on them. Built into the module they
// hold nginx's own list link, tree node and clock type; built with SSE_STORE_WITHOUT_NGINX (the
// store's logic under test, t/unit/history) they hold stand-ins of the same size and layout, so
// the records are the same bytes either way and nothing here needs nginx's headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/event_frame.h"
#include "store/zone_list.h"

namespace sse::zone {

// nginx's ngx_rbtree_node_t, for the records built without nginx: a channel's place in the
// zone's tree of names, which the logic that runs without nginx never uses.
struct TreeNode {
    std::uintptr_t key;
    TreeNode* left;
    TreeNode* right;
    TreeNode* parent;
    unsigned char color;
    unsigned char data;
};

}  // namespace sse::zone

#ifdef SSE_STORE_WITHOUT_NGINX

namespace sse {

using ZoneLink = zone::ListLink;      // ngx_queue_t
using ZoneMsec = std::uintptr_t;      // ngx_msec_t: milliseconds of nginx's monotonic clock
using ZoneTreeNode = zone::TreeNode;  // ngx_rbtree_node_t

}  // namespace sse

#else

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

namespace sse {

using ZoneLink = ngx_queue_t;
using ZoneMsec = ngx_msec_t;
using ZoneTreeNode = ngx_rbtree_node_t;

// The stand-ins are nginx's types byte for byte: the records are the same either way.
static_assert(sizeof(ZoneLink) == sizeof(zone::ListLink) &&
              offsetof(ZoneLink, prev) == offsetof(zone::ListLink, prev) &&
              offsetof(ZoneLink, next) == offsetof(zone::ListLink, next));
static_assert(sizeof(ZoneMsec) == sizeof(std::uintptr_t) && ZoneMsec(-1) > 0);
static_assert(sizeof(ZoneTreeNode) == sizeof(zone::TreeNode) &&
              offsetof(ZoneTreeNode, color) == offsetof(zone::TreeNode, color) &&
              offsetof(ZoneTreeNode, data) == offsetof(zone::TreeNode, data));

}  // namespace sse

#endif

namespace sse {

using ZoneList = zone::List<ZoneLink>;

constexpr std::uintptr_t kMaxWorkerSlots = 128;  // old and new workers overlap during a reload

// Ids. A single node numbers its events one by one from its zone's creation time in
// microseconds. With Redis, every node takes ids from a hybrid clock so that they are unique
// and comparable across nodes without asking anyone: (microseconds << 10) | node bits, above
// every id the node has given out or seen. Node bits 1023 are those of events Redis numbers
// itself (published by other services).
constexpr std::uint64_t kIdsPerMicrosecond = 1024;
constexpr std::uint32_t kRedisAssignedNode = 1023;

// Ids of channels the zone forgot entirely (freed, closed, or published to with no history),
// by name hash: a new record of such a channel cannot prove that nothing before this was missed.
constexpr std::uintptr_t kForgottenBuckets = 1024;

struct ShmChannel {
    ZoneTreeNode node;  // key: hash of the name
    std::uint64_t last_event_id;
    std::uint64_t events_published;
    // Every event of this channel up to this id that is not in `history` is lost to replay, so a
    // position before it cannot be resumed exactly.
    std::uint64_t lost_through;
    ZoneLink history;  // EventChannelRef::history_link, oldest first
    std::uint32_t history_count;
    std::uint32_t history_limit;  // the last publishing location's sse_history
    ZoneMsec history_ttl;         // and its sse_history_ttl
    std::uint32_t subscribers;    // over all workers
    std::uint32_t events_in_log;  // events naming this channel that are still stored
    std::uint32_t per_slot[kMaxWorkerSlots];
    // With Redis: events from other nodes with ids above this are news to this channel's
    // streams (ids are clock-based); set when the channel is created here.
    std::uint64_t live_floor;
    ZoneLink pattern_link;      // in StoreHeader::patterns when the name is a prefix pattern (`blog.*`)
    std::uint64_t target_mark;  // the publish that last chose it as a target: each event names a channel once
    unsigned linked : 1;        // findable by name; a closed channel is unlinked at once
    // With Redis: this node listens to the channel there and has merged what Redis retains, so
    // its history here is as complete as Redis's.
    unsigned redis_synced : 1;
    unsigned pattern : 1;  // its name is a pattern: its streams take the events of every channel it covers
    std::uint16_t name_len;
    unsigned char name[1];

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
    ZoneLink history_link;
    bool retained;
};

struct ShmEvent {
    ZoneLink link;           // the delivery log (while in_log) or the orphan list, seq order
    ZoneLink retained_link;  // the global retention list while retained anywhere, seq order
    ZoneLink outbound_link;  // the queue of events waiting to go to Redis, while in_outbound
    std::uint64_t id;
    // Position in this zone's delivery order. Equal to the id's order on a single node; with
    // Redis, events from other nodes can carry lower ids than ones already delivered here.
    std::uint64_t seq;
    std::uint64_t needed_by[2];  // bit per worker slot; cleared atomically by that worker
    std::uint64_t pinned_by[2];  // bit per worker slot replaying it; cleared atomically
    ZoneMsec published_at;       // monotonic clock, for sse_history_ttl
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
    unsigned char* frame;

    ShmChannel* channel(std::size_t i) const { return refs[i].channel; }
    // A message's frame framed as one HTTP/1.1 chunk, "<hex>\r\n" frame "\r\n", stored once so that
    // a stream no nginx filter changes writes it as it is; nginx's filters are given the frame.
    unsigned char* chunk() const { return frame - chunk_head_len; }
    std::size_t chunk_len() const { return chunk_head_len + frame_len + kChunkTail.size(); }
    std::string_view name() const {
        if (name_len == 0) return {};
        return {reinterpret_cast<const char*>(frame) + event_name_offset(id), name_len};
    }
};

namespace zone {

// The bytes of an event record with its channel links and its frame, stored as one HTTP/1.1 chunk
// (see ShmEvent::chunk).
inline std::size_t event_alloc_size(std::size_t nchannels, std::size_t frame_len) {
    return sizeof(ShmEvent) + nchannels * sizeof(EventChannelRef) + chunk_head_size(frame_len) + frame_len +
           kChunkTail.size();
}

inline std::size_t channel_alloc_size(std::size_t name_len) {
    return sizeof(ShmChannel) + name_len;
}

// No worker slot's bit is set (needed_by, pinned_by).
inline bool mask_empty(const std::uint64_t mask[2]) {
    return __atomic_load_n(&mask[0], __ATOMIC_ACQUIRE) == 0 && __atomic_load_n(&mask[1], __ATOMIC_ACQUIRE) == 0;
}

inline EventChannelRef* history_ref(ZoneLink* q) {
    return SSE_LIST_DATA(q, EventChannelRef, history_link);
}

}  // namespace zone

}  // namespace sse
