// The worker's link to Redis (redis_link.h says what it does): its state and the steps that use
// it. Private to the redis_link sources: redis_link.cpp holds the link's life, its handshake,
// subscriptions, events and sentinels; redis_cluster_link.cpp a Redis Cluster's map of slots and
// the routing of channels and events to its shards.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
}

#include <hiredis/hiredis.h>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "redis/cluster_slots.h"
#include "redis/redis_connection.h"
#include "redis/redis_entry.h"
#include "redis/redis_link.h"
#include "store/event_store.h"

namespace sse {

inline bool is_string(const redisReply& r) {
    return r.type == REDIS_REPLY_STRING || r.type == REDIS_REPLY_STATUS;
}

inline std::string_view text(const redisReply& r) {
    return std::string_view(r.str, r.len);
}

class Link final : public RedisConnection::Owner {
public:
    // Starts the timer that claims the role; its events point at this object, which never moves.
    Link(const RedisConfig* config, Store* store, ngx_uint_t slot, ngx_log_t* log);
    Link(const Link&) = delete;
    Link& operator=(const Link&) = delete;
    ~Link();

    void connected(RedisConnection&) override {}
    void pushed(RedisConnection& connection, const redisReply& reply) override;
    void failed(RedisConnection& connection, const std::string& reason) override;

    // What RedisLink asks of it.
    void on_wake();
    void stop();

private:
    // kDiscovering: asking a sentinel where the primary is, or a cluster node for its slot map.
    enum class Phase { kIdle, kDiscovering, kConnecting, kReady, kBackoff };

    // Handshake steps, told apart in their replies.
    enum HandshakeStep : std::uintptr_t { kAuth = 1, kSelect, kSetName, kLoadFunctions, kRole, kClusterCheck };
    static const char* step_name(std::uintptr_t step);

    // Messages of a channel that arrive between its SUBSCRIBE and its history, held until the
    // history is merged: delivered at once, a newer event would reach streams before the older
    // ones the history brings.
    static constexpr std::size_t kMaxHeldMessages = 10000;

    struct ChannelSubscription {
        enum State { kSubscribing, kSubscribed, kUnsubscribing } state = kSubscribing;
        bool resubscribe = false;      // wanted again while its UNSUBSCRIBE was on its way
        bool history_pending = false;  // subscribed, its history not merged yet
        std::deque<std::string> held;  // payloads of its messages meanwhile, in arrival order
    };

    // One primary the link writes to and listens on: the only one, or one of a cluster's.
    struct Shard {
        RedisServer server;
        RedisConnection* cmd = nullptr;
        RedisConnection* sub = nullptr;
    };

    // An event's channels' keys grouped by slot, in order (one group without a cluster): a
    // call's keys must share a slot.
    struct EventKeys {
        std::vector<std::string> keys;
        std::vector<std::uint16_t> slots;
        std::vector<std::vector<std::string_view>> by_slot;
    };

    // A reply handler as RedisConnection takes one (a plain function): the Link is the owner of
    // every connection it opens.
    template <void (Link::*handler)(RedisConnection&, const redisReply&, std::uintptr_t)>
    static void reply_to(RedisConnection& connection, const redisReply& reply, std::uintptr_t context) {
        (static_cast<Link*>(connection.owner())->*handler)(connection, reply, context);
    }

    // The timers' handlers: the Link is the event's data.
    static void on_tick(ngx_event_t* ev) noexcept;
    static void on_retry(ngx_event_t* ev) noexcept;

    // The zone, names and the figures sse_stats shows.
    StoreHeader* header();
    void set_state(RedisState state);
    std::string key_of(std::string_view channel);
    bool channel_of(std::string_view key, std::string_view& channel);
    void wake(const PublishResult& result);
    void note_server(const RedisServer& server, RedisRole role, RedisState state);
    void note_control(const RedisServer& server);
    void note_shards(RedisState state);
    void take_over_figures();
    bool is_subscriber(const RedisConnection& connection);
    bool is_command(const RedisConnection& connection);
    RedisRole shard_role();
    std::string target();

    // Connecting, failing, retrying.
    void drop_connections();
    ngx_msec_t backoff_delay();
    void fail(const std::string& why, bool already_logged = false);
    void unexpected(const char* what, const redisReply& reply);
    void ready();
    void handshake_done();
    void on_handshake_reply(RedisConnection&, const redisReply& reply, std::uintptr_t step);
    void send_auth(RedisConnection* c, RedisReplyHandler handler);
    RedisConnection* open_connection(const RedisServer& server, const char* role, bool takes_pushes,
                                     std::string& reason);
    bool open_shard(Shard& shard);
    void connect_to_primary();
    void connect_now();
    void go_idle();
    void check_link(ngx_msec_t now);

    // What Redis brings in.
    void log_bad_entry(const std::string& reason);
    template <typename Message>
    bool parsed(bool (*parse)(const char*, std::size_t, Message&, std::string&), const char* text, std::size_t len,
                Message& out);
    bool remember(std::uint64_t id);
    void take_entry(std::string_view channel, const RedisEntry& entry);
    void release_held(std::string_view channel, ChannelSubscription& s, std::uint64_t newest_merged);
    void take_history(const char* text, std::size_t len);
    void take_event(std::string_view key, const char* text, std::size_t len);
    void answer_listing(const RedisControl& control);
    void take_control(const char* text, std::size_t len);
    void answered();
    void on_command_reply(RedisConnection&, const redisReply& reply, std::uintptr_t);
    void on_history_requested(RedisConnection&, const redisReply& reply, std::uintptr_t request);
    void request_history(ChannelSubscription& s, const std::string& channel);
    void take_confirmation(std::string_view type, std::string_view name);
    void on_pubsub(const redisReply& reply);

    // Subscriptions and the node's events out.
    void subscribe_channel(const std::string& channel);
    bool refuse_pattern(const std::string& channel);
    void reconcile();
    void refused(const redisReply& reply, const char* what);
    void acknowledge(std::uint64_t seq, bool event);
    void on_published(RedisConnection&, const redisReply& reply, std::uintptr_t seq);
    void on_control_sent(RedisConnection&, const redisReply& reply, std::uintptr_t seq);
    void drain();
    void pump();

    // Redis Cluster: the map of slots and the routing by it (redis_cluster_link.cpp).
    void check_cluster(const redisReply& reply);
    Shard& shard_for(std::string_view channel);
    Shard& control_shard();
    void group_keys(const OutboundEvent& o, EventKeys& k);
    void send_part(RedisConnection* cmd, const OutboundEvent& o, const EventKeys& k, std::size_t part);
    void send_event(const OutboundEvent& o);
    bool follow_ask(std::uint64_t seq, std::string_view message);
    void connect_to_shards();
    bool take_map(const RedisServer& asked, const std::vector<ClusterSlotRange>& ranges, std::string& reason);
    void on_cluster_slots(RedisConnection& c, const redisReply& reply, std::uintptr_t);
    void on_probe_auth(RedisConnection& c, const redisReply& reply, std::uintptr_t);
    void ask_next_cluster_node();
    void discover_cluster();

    // Sentinel.
    void on_master_address(RedisConnection& c, const redisReply& reply, std::uintptr_t);
    void take_sentinel_message(const redisReply& reply);
    bool names_current_primary(std::string_view switched);
    void ask_next_sentinel();
    void discover_primary();
    void watch_sentinels();

    const RedisConfig* config = nullptr;
    Store* store = nullptr;
    ngx_uint_t slot = 0;
    ngx_log_t* log = nullptr;
    std::string where;  // the address as logged
    std::string origin;
    std::string private_channel;
    std::string control_channel;  // requests for every node (disconnects, closed channels)

    bool owner = false;
    bool stopped = false;
    Phase phase = Phase::kIdle;
    std::vector<Shard> shards;  // the primary, or a cluster's primaries
    // redis-sentinel://: the sentinel that named the primary, subscribed to +switch-master.
    RedisConnection* watcher = nullptr;
    std::size_t next_sentinel = 0;
    std::size_t sentinels_asked = 0;  // in this discovery
    std::string sentinel_said;        // why the last sentinel asked did not name the primary
    RedisServer primary;              // where the shard goes (a cluster: the control channel's shard)
    // Redis Cluster (several seeds in sse_redis, or a server that said cluster_enabled:1): which
    // shard serves each slot, and the node asked for that map.
    bool cluster = false;
    std::vector<std::uint16_t> slot_shard;
    std::size_t control_index = 0;  // where requests for every node are heard: the control channel's slot
    RedisConnection* probe = nullptr;
    std::vector<RedisServer> cluster_nodes;  // every node of the last map: asked after the seeds
    std::size_t nodes_asked = 0;
    bool pattern_refusal_logged = false;
    std::string failed_at;  // the server whose connection failed, when not the one target() names
    // What sse_stats shows of each server, mirrored into the zone when it changes.
    std::vector<RedisServerFigures> figures;
    std::vector<bool> connected_before;  // by figure: a connection now is a reconnect
    int handshake_pending = 0;
    ngx_msec_t connect_started = 0;

    unsigned attempts = 0;  // failed attempts since the link was last ready
    unsigned refusals = 0;  // events refused in a row (an error reply), across reconnects
    bool ever_ready = false;
    bool outage_logged = false;  // a failed attempt of this outage was logged
    bool refusal_logged = false;

    std::unordered_map<std::string, ChannelSubscription> channels;     // by channel name
    std::unordered_map<std::uintptr_t, std::string> history_requests;  // FCALL sse_history sent, by number
    std::uintptr_t last_history_request = 0;
    std::uint64_t seen_changes = UINT64_MAX;
    std::uint64_t sent_seq = 0;
    // Events up to this seq were sent on a connection that broke: Redis may have applied them.
    std::uint64_t resend_through = 0;
    unsigned in_flight = 0;
    // Events sent and not wholly acknowledged, in order, with their calls not answered yet (an
    // event of channels in several slots of a cluster is one call per slot).
    std::deque<std::pair<std::uint64_t, unsigned>> unacked;
    ngx_msec_t last_progress = 0;
    ngx_msec_t bad_entry_logged_at = 0;
    std::unordered_set<std::uint64_t> recent;  // ids of events taken lately
    std::deque<std::uint64_t> recent_order;

    ngx_event_t tick{};
    ngx_event_t retry{};
};

}  // namespace sse
