// Redis Cluster: the link finds the map of slots (CLUSTER SLOTS, asked of the seeds in sse_redis,
// then of the nodes of the last map), connects to every primary in it, and sends each channel's
// commands and each event's calls to the shard that serves their slot.
#include "redis/redis_link_state.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "protocol/client_text.h"
#include "redis/cluster_slots.h"
#include "redis/redis_functions.h"

namespace sse {

// One server in sse_redis may be a node of a Redis Cluster: then the cluster's map says where
// each channel goes, and the link starts over reading it. (A user without INFO rights: no
// answer, go on as with one Redis.)
void Link::check_cluster(const redisReply& reply) {
    if (reply.type == REDIS_REPLY_STRING && text(reply).find("cluster_enabled:1") != std::string_view::npos) {
        if (!config->address.master_name.empty()) {
            fail("the server the sentinels named is a Redis Cluster node");
            return;
        }
        ngx_log_error(NGX_LOG_NOTICE, log, 0, "sse: redis at %s is a Redis Cluster node; reading its slots",
                      target().c_str());
        cluster = true;
        header()->cluster.sharded = true;
        drop_connections();
        connect_now();
        return;
    }
    handshake_done();
}

namespace {

// The host of a server as the link reached it: where a node that does not know its own address
// ("" in its map) is found.
std::string host_of(const RedisServer& server) {
    std::string host = server.display.substr(0, server.display.rfind(':'));
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    return host;
}

}  // namespace

// The shards of a map, each primary once, and every node to ask for the map next time.
bool Link::take_map(const RedisServer& asked, const std::vector<ClusterSlotRange>& ranges, std::string& reason) {
    std::vector<Shard> found;
    std::vector<RedisServer> nodes;
    slot_shard.assign(kClusterSlots, 0);
    for (const ClusterSlotRange& range : ranges) {
        std::string host = range.host.empty() ? host_of(asked) : range.host;
        RedisServer server;
        if (!parse_redis_server(host, range.port, server)) {
            reason = "the primary " + quoted_bytes(host + ":" + std::to_string(range.port)) + " of slots " +
                     std::to_string(range.first) + "-" + std::to_string(range.last) +
                     " is not a numeric address and port";
            return false;
        }
        std::size_t i = 0;
        while (i < found.size() && !found[i].server.same_address(server)) i++;
        if (i == found.size()) {
            found.push_back(Shard{server, nullptr, nullptr});
            nodes.push_back(server);
        }
        for (std::uint32_t at = range.first; at <= range.last; at++) slot_shard[at] = std::uint16_t(i);
        for (const std::string& replica : range.replicas) {
            std::size_t colon = replica.rfind(':');
            RedisServer node;
            if (parse_redis_server(replica.substr(0, colon), std::atoi(replica.c_str() + colon + 1), node)) {
                nodes.push_back(node);
            }
        }
    }
    shards = std::move(found);
    cluster_nodes = std::move(nodes);
    return true;
}

void Link::on_cluster_slots(RedisConnection& c, const redisReply& reply, std::uintptr_t) {
    if (reply.type == REDIS_REPLY_ERROR) {
        std::string message(text(reply));
        if (message.find("cluster support disabled") != std::string::npos) {
            if (!refusal_logged) {
                ngx_log_error(NGX_LOG_ERR, log, 0,
                              "sse: redis at %s is not a Redis Cluster node, but sse_redis names several servers "
                              "(the seeds of a cluster)",
                              c.server().display.c_str());
                refusal_logged = true;
            }
            fail("not a Redis Cluster node", true);
            return;
        }
        fail("node " + c.server().display + " refused CLUSTER SLOTS: " + message);
        return;
    }
    std::vector<ClusterSlotRange> ranges;
    std::string reason;
    if (!parse_cluster_slots(reply, ranges, reason) || !take_map(c.server(), ranges, reason)) {
        fail("an unusable map of slots from " + c.server().display + ": " + reason);
        return;
    }
    RedisConnection* asked = probe;
    probe = nullptr;
    RedisConnection::release(asked);
    connect_to_shards();
}

void Link::on_probe_auth(RedisConnection& c, const redisReply& reply, std::uintptr_t) {
    if (reply.type == REDIS_REPLY_ERROR) {
        fail("node " + c.server().display + " refused authentication: " + std::string(text(reply)));
    }
}

// Asks the seeds, then the nodes of the last map, one after another, for the map of slots.
void Link::ask_next_cluster_node() {
    const std::vector<RedisServer>& seeds = config->servers;
    std::string reason;
    while (nodes_asked < seeds.size() + cluster_nodes.size()) {
        std::size_t i = nodes_asked++;
        const RedisServer& node = i < seeds.size() ? seeds[i] : cluster_nodes[i - seeds.size()];
        probe = RedisConnection::open(node, config->tls, false, config->connect_timeout, this, log, reason);
        if (probe == nullptr) continue;
        if (config->address.has_password) send_auth(probe, reply_to<&Link::on_probe_auth>);
        probe->send({"CLUSTER", "SLOTS"}, reply_to<&Link::on_cluster_slots>);
        return;
    }
    fail(reason.empty() ? "no node of the cluster answered" : "no node of the cluster answered: " + reason);
}

void Link::discover_cluster() {
    phase = Phase::kDiscovering;
    nodes_asked = 0;
    primary = RedisServer{};
    ask_next_cluster_node();
}

// Connects to every primary of the map: the function library loaded on each, requests for every
// node heard in the control channel's shard (classic pub/sub: every node of a cluster hears it).
void Link::connect_to_shards() {
    phase = Phase::kConnecting;
    static const std::string library = redis_cluster_function_library();
    for (Shard& shard : shards) {
        if (!open_shard(shard)) return;
        handshake_pending++;
        shard.cmd->send({"FUNCTION", "LOAD", "REPLACE", library}, reply_to<&Link::on_handshake_reply>, kLoadFunctions);
    }
    control_index = slot_shard[cluster_slot(control_channel)];
    primary = control_shard().server;
    note_control(primary);
    handshake_pending += 2;
    control_shard().sub->send({"SUBSCRIBE", private_channel, control_channel}, nullptr);
}

// The shard that serves a channel: its key's slot's, in a cluster.
Link::Shard& Link::shard_for(std::string_view channel) {
    if (!cluster) return shards.front();
    return shards[slot_shard[cluster_slot(key_of(channel))]];
}

Link::Shard& Link::control_shard() {
    return shards[control_index];
}

void Link::group_keys(const OutboundEvent& o, EventKeys& k) {
    k.keys.reserve(o.channels.size());
    for (const std::string& channel : o.channels) k.keys.push_back(key_of(channel));
    for (const std::string& key : k.keys) {
        std::uint16_t key_slot = cluster ? cluster_slot(key) : 0;
        std::size_t i = std::size_t(std::find(k.slots.begin(), k.slots.end(), key_slot) - k.slots.begin());
        if (i == k.slots.size()) {
            k.slots.push_back(key_slot);
            k.by_slot.emplace_back();
        }
        k.by_slot[i].push_back(key);
    }
}

// One call of an event: its keys of one slot; when the event has several slots, every key after
// the resent flag, so that its entries name all the event's channels.
void Link::send_part(RedisConnection* cmd, const OutboundEvent& o, const EventKeys& k, std::size_t part) {
    std::string nkeys = std::to_string(k.by_slot[part].size());
    std::string limit = std::to_string(o.history_limit);
    std::string ttl = std::to_string(o.history_ttl);
    std::string id = std::to_string(o.id);
    bool resent = o.seq <= resend_through;
    bool split = k.by_slot.size() > 1;
    std::vector<std::string_view> args{"FCALL", "sse_publish", nkeys};
    args.insert(args.end(), k.by_slot[part].begin(), k.by_slot[part].end());
    args.insert(args.end(), {o.data, o.name, limit, ttl, id, origin});
    if (resent || split) args.push_back(resent ? "1" : "0");
    if (split) args.insert(args.end(), k.keys.begin(), k.keys.end());
    cmd->send(args, reply_to<&Link::on_published>, std::uintptr_t(o.seq));
    in_flight++;
}

// One event to Redis: one FCALL sse_publish, or in a cluster one per slot of its channels.
void Link::send_event(const OutboundEvent& o) {
    EventKeys k;
    group_keys(o, k);
    for (std::size_t i = 0; i < k.by_slot.size(); i++) {
        Shard& shard = cluster ? shards[slot_shard[k.slots[i]]] : shards.front();
        send_part(shard.cmd, o, k, i);
    }
    unacked.emplace_back(o.seq, unsigned(k.by_slot.size()));
}

// "ASK <slot> <host>:<port>": the slot is moving and this key is already at the primary named.
// That one call goes there, after ASKING; the map stays as it is until the move ends (then
// MOVED, or the shard's sunsubscribe, has the link read it again). False when the primary named
// is not one the link holds or the event is gone.
bool Link::follow_ask(std::uint64_t seq, std::string_view message) {
    std::size_t space = message.rfind(' ');
    std::size_t colon = message.rfind(':');
    if (space == std::string_view::npos || colon == std::string_view::npos || colon < space) return false;
    int moving = std::atoi(std::string(message.substr(4, space - 4)).c_str());
    RedisServer there;
    if (!parse_redis_server(message.substr(space + 1, colon - space - 1),
                            std::atoi(std::string(message.substr(colon + 1)).c_str()), there)) {
        return false;
    }
    auto shard =
        std::find_if(shards.begin(), shards.end(), [&](const Shard& s) { return s.server.same_address(there); });
    std::vector<OutboundEvent> batch;
    store->outbound_after(seq - 1, 1, batch);
    if (shard == shards.end() || batch.empty() || batch[0].seq != seq) return false;
    EventKeys k;
    group_keys(batch[0], k);
    std::size_t part = std::size_t(std::find(k.slots.begin(), k.slots.end(), moving) - k.slots.begin());
    if (part == k.slots.size()) return false;
    in_flight++;
    shard->cmd->send({"ASKING"}, reply_to<&Link::on_command_reply>);
    send_part(shard->cmd, batch[0], k, part);
    return true;
}

}  // namespace sse
