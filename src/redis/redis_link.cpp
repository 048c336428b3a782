#include "redis/redis_link.h"

#include "redis/redis_link_state.h"

extern "C" {
#include <ngx_event.h>
}

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "guard.h"
#include "protocol/channel_list.h"
#include "protocol/client_text.h"
#include "redis/redis_connection.h"
#include "redis/redis_entry.h"
#include "redis/redis_functions.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

constexpr ngx_msec_t kTickInterval = 200;
constexpr ngx_msec_t kOwnerStaleAfter = 2000;  // a holder that has not beaten for this long is gone
constexpr ngx_msec_t kIdlePingInterval = 5000;
constexpr unsigned kMaxInFlight = 1024;  // commands Redis has not answered yet: bounds the write buffer
constexpr std::size_t kDrainBatch = 256;
constexpr std::size_t kRecentIds = 4096;

}  // namespace

// static
const char* Link::step_name(std::uintptr_t step) {
    switch (step) {
        case kAuth:
            return "authentication";
        case kSelect:
            return "SELECT";
        case kSetName:
            return "CLIENT SETNAME";
        case kLoadFunctions:
            return "FUNCTION LOAD (Redis 7 or later is needed)";
        case kRole:
            return "ROLE";
        case kClusterCheck:
            return "INFO cluster";
    }
    return "a command";
}

StoreHeader* Link::header() {
    return store->header();
}

void Link::set_state(RedisState state) {
    __atomic_store_n(&header()->cluster.state, ngx_atomic_uint_t(state), __ATOMIC_RELEASE);
}

std::string Link::key_of(std::string_view channel) {
    std::string key = config->prefix;
    key.append(channel);
    return key;
}

// The channel a Redis key or pub/sub channel names; false when it is not under our prefix.
bool Link::channel_of(std::string_view key, std::string_view& channel) {
    const std::string& prefix = config->prefix;
    if (key.size() <= prefix.size() || key.substr(0, prefix.size()) != prefix) return false;
    channel = key.substr(prefix.size());
    return true;
}

void Link::wake(const PublishResult& result) {
    if (result.wake[0] != 0 || result.wake[1] != 0) WorkerWakeup::wake(header(), result.wake);
}

// Records a server's state for the stats; the zone gets the list when it changed.
void Link::note_server(const RedisServer& server, RedisRole role, RedisState state) {
    if (server.socklen == 0) return;
    std::string address = server.display.substr(0, kMaxRedisAddressShown - 1);
    std::size_t i = 0;
    while (i < figures.size() && (figures[i].role != role || address != figures[i].address)) i++;
    if (i == figures.size()) {
        if (figures.size() == kMaxRedisServersShown) {
            // Full (primaries a long run of failovers named): the oldest one not in use goes.
            std::size_t old = 0;
            while (old < figures.size() && (figures[old].role != role || figures[old].state == RedisState::kConnected))
                old++;
            if (old == figures.size()) return;
            figures.erase(figures.begin() + std::ptrdiff_t(old));
            connected_before.erase(connected_before.begin() + std::ptrdiff_t(old));
            i = figures.size();
        }
        RedisServerFigures f{};
        std::memcpy(f.address, address.c_str(), address.size() + 1);
        f.role = role;
        f.state = RedisState::kOff;
        figures.push_back(f);
        connected_before.push_back(false);
    }
    RedisServerFigures& f = figures[i];
    if (f.state == state) return;
    if (state == RedisState::kConnected) {
        if (connected_before[i]) f.reconnects++;
        connected_before[i] = true;
    }
    f.state = state;
    store->set_redis_servers(figures);
}

bool Link::is_subscriber(const RedisConnection& connection) {
    for (const Shard& s : shards) {
        if (s.sub == &connection) return true;
    }
    return false;
}

bool Link::is_command(const RedisConnection& connection) {
    for (const Shard& s : shards) {
        if (s.cmd == &connection) return true;
    }
    return false;
}

RedisRole Link::shard_role() {
    return cluster ? RedisRole::kClusterNode : RedisRole::kPrimary;
}

// The primary whose sub connection hears the control channel and the node's own: the one that
// sse_clients?scope=cluster must ask for the nodes listening (classic pub/sub is per node in a
// cluster).
void Link::note_control(const RedisServer& server) {
    std::string address = server.display.substr(0, kMaxRedisAddressShown - 1);
    for (RedisServerFigures& f : figures) {
        f.hears_control = f.role != RedisRole::kSentinel && address == f.address;
    }
    store->set_redis_servers(figures);
}

void Link::note_shards(RedisState state) {
    for (const Shard& s : shards) note_server(s.server, shard_role(), state);
}

// Drops every connection and forgets what they carried.
void Link::drop_connections() {
    std::vector<Shard> dropped;
    dropped.swap(shards);
    for (Shard& s : dropped) {
        RedisConnection::release(s.cmd);
        RedisConnection::release(s.sub);
    }
    RedisConnection* connections[2] = {watcher, probe};
    watcher = nullptr;
    probe = nullptr;
    for (RedisConnection* c : connections) RedisConnection::release(c);
    channels.clear();
    history_requests.clear();
    in_flight = 0;
    unacked.clear();
    resend_through = std::max(resend_through, sent_seq);
    sent_seq = 0;  // what Redis did not acknowledge is sent again
    handshake_pending = 0;
    header()->cluster.channels = 0;
    store->unsync_all();
}

ngx_msec_t Link::backoff_delay() {
    ngx_msec_t delay = config->reconnect_min;
    unsigned steps = std::max(attempts, refusals);
    for (unsigned i = 1; i < steps && delay < config->reconnect_max; i++) delay *= 2;
    if (delay > config->reconnect_max) delay = config->reconnect_max;
    // Jitter: nodes that lost Redis together do not all come back in the same millisecond.
    return delay / 2 + ngx_msec_t(ngx_random()) % (delay / 2 + 1);
}

// Where the link is going: the primary once known, else what sse_redis names.
std::string Link::target() {
    if (cluster && phase != Phase::kDiscovering && !shards.empty()) {
        std::string all = "the cluster of";
        for (const Shard& s : shards) all += (&s == &shards.front() ? " " : ", ") + s.server.display;
        return all;
    }
    return primary.socklen != 0 ? primary.display : where;
}

void Link::fail(const std::string& why, bool already_logged) {
    // Reasons may quote what a server sent: shown escaped.
    std::string reason = escaped(why);
    bool was_ready = phase == Phase::kReady;
    std::string at = failed_at.empty() ? target() : failed_at;
    failed_at.clear();
    note_shards(RedisState::kDisconnected);
    if (watcher != nullptr) note_server(watcher->server(), RedisRole::kSentinel, RedisState::kOff);
    drop_connections();
    attempts++;
    // Once per outage each: the loss, and why the attempts after it fail (the first of them).
    if (was_ready && !already_logged) {
        ngx_log_error(NGX_LOG_WARN, log, 0, "sse: redis connection to %s lost: %s; queueing events and reconnecting",
                      at.c_str(), reason.c_str());
    } else if (!outage_logged && !already_logged) {
        ngx_log_error(NGX_LOG_WARN, log, 0, "sse: redis at %s unreachable: %s; retrying", at.c_str(), reason.c_str());
        outage_logged = true;
    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, log, 0, "sse: redis at %s: %s", at.c_str(), reason.c_str());
    }
    set_state(ever_ready ? RedisState::kDisconnected : RedisState::kConnecting);
    phase = Phase::kBackoff;
    if (retry.timer_set) ngx_del_timer(&retry);
    ngx_add_timer(&retry, backoff_delay());
}

namespace {

// A reply no command of ours can come back as: the server (or whatever sits between) is not
// speaking Redis as we do, so the link starts over.
// An error reply is named by its text (the server says what is wrong); anything else by its type.
std::string shape_of(const redisReply& r) {
    switch (r.type) {
        case REDIS_REPLY_ERROR:
            return "the error " + quoted_bytes(std::string_view(r.str, r.len));
        case REDIS_REPLY_STRING:
            return "a string";
        case REDIS_REPLY_STATUS:
            return "a status";
        case REDIS_REPLY_INTEGER:
            return "an integer";
        case REDIS_REPLY_NIL:
            return "nil";
        case REDIS_REPLY_ARRAY:
            return "an array of " + std::to_string(r.elements);
    }
    return "a reply of type " + std::to_string(r.type);
}

}  // namespace

void Link::unexpected(const char* what, const redisReply& reply) {
    fail(std::string("an unexpected reply to ") + what + ": " + shape_of(reply));
}

void Link::ready() {
    phase = Phase::kReady;
    if (retry.timer_set) ngx_del_timer(&retry);
    std::uint32_t queued = store->outbound_count();
    std::string at = target();
    if (!ever_ready) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0, "sse: redis connected to %s", at.c_str());
    } else {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "sse: redis reconnected to %s after %ui attempts; sending %uD queued events", at.c_str(),
                      ngx_uint_t(attempts), queued);
        ngx_atomic_fetch_add(&header()->counters.redis_reconnects, 1);
    }
    note_shards(RedisState::kConnected);
    ever_ready = true;
    attempts = 0;
    outage_logged = false;
    refusal_logged = false;
    last_progress = ngx_current_msec;
    seen_changes = UINT64_MAX;  // subscribe to every channel in use
    set_state(RedisState::kConnected);
    pump();
}

void Link::handshake_done() {
    if (--handshake_pending == 0 && phase == Phase::kConnecting) ready();
}

void Link::on_handshake_reply(RedisConnection&, const redisReply& reply, std::uintptr_t step) {
    if (step == kClusterCheck) {
        check_cluster(reply);
        return;
    }
    if (reply.type == REDIS_REPLY_ERROR) {
        std::string message(reply.str, reply.len);
        if (!refusal_logged) {
            ngx_log_error(NGX_LOG_ERR, log, 0, "sse: redis at %s refused %s: %s", target().c_str(), step_name(step),
                          escaped(message).c_str());
            refusal_logged = true;
        }
        fail(std::string(step_name(step)) + " refused: " + message, true);
        return;
    }
    if (step == kRole) {
        // A sentinel may name a primary that has just become a replica: never write to one.
        if (reply.type != REDIS_REPLY_ARRAY || reply.elements == 0 || !is_string(*reply.element[0])) {
            unexpected("ROLE", reply);
        } else if (text(*reply.element[0]) != "master") {
            fail("the server the sentinels named is a " + std::string(text(*reply.element[0])) + ", not the primary");
        } else {
            handshake_done();
        }
        return;
    }
    if (!is_string(reply)) {
        unexpected(step_name(step), reply);
        return;
    }
    handshake_done();
}

void Link::log_bad_entry(const std::string& reason) {
    // Rate-limited: a misbehaving publisher must not flood the log.
    if (ngx_current_msec - bad_entry_logged_at < 60000 && bad_entry_logged_at != 0) return;
    bad_entry_logged_at = ngx_current_msec;
    ngx_log_error(NGX_LOG_WARN, log, 0, "sse: ignored a message from redis at %s: %s", target().c_str(),
                  reason.c_str());
}

// Parses what Redis brought with `parse`; false (logged, at most once a minute) if it is not one.
template <typename Message>
bool Link::parsed(bool (*parse)(const char*, std::size_t, Message&, std::string&), const char* text, std::size_t len,
                  Message& out) {
    std::string reason;
    if (parse(text, len, out, reason)) return true;
    log_bad_entry(reason);
    return false;
}

// False when the id was taken lately.
bool Link::remember(std::uint64_t id) {
    if (!recent.insert(id).second) return false;
    recent_order.push_back(id);
    if (recent_order.size() > kRecentIds) {
        recent.erase(recent_order.front());
        recent_order.pop_front();
    }
    return true;
}

void Link::take_entry(std::string_view channel, const RedisEntry& entry) {
    if (entry.origin == origin) return;  // ours, delivered here when published
    std::vector<std::string_view> names;
    // An event comes once per subscription it matches: once per channel of a multi-channel
    // event, and again for a pattern (`blog.*`) besides its channel. The first copy stands for
    // all (the others follow it at once, in Redis's order).
    if (!remember(entry.id)) return;
    if (entry.keys.size() > 1) {
        for (const std::string& key : entry.keys) {
            std::string_view c;
            if (channel_of(key, c)) names.push_back(c);
        }
    } else {
        names.push_back(channel);
    }
    PublishResult result;
    RemoteEvent e{entry.id, entry.published_ms, entry.name, entry.data};
    if (store->ingest(names, e, config->history, result, log)) wake(result);
}

// The channel's history is merged (or will not come): what arrived meanwhile follows it, except
// what the history already held (ids up to its newest).
void Link::release_held(std::string_view channel, ChannelSubscription& s, std::uint64_t newest_merged) {
    s.history_pending = false;
    std::deque<std::string> held;
    held.swap(s.held);
    for (const std::string& text : held) {
        RedisEntry entry;
        if (parsed(parse_redis_entry, text.data(), text.size(), entry) && entry.id > newest_merged) {
            take_entry(channel, entry);
        }
    }
}

void Link::take_history(const char* text, std::size_t len) {
    RedisHistory history;
    if (!parsed(parse_redis_history, text, len, history)) return;
    std::string_view channel;
    if (!channel_of(history.key, channel)) return;
    auto it = channels.find(std::string(channel));
    if (it == channels.end() || it->second.state != ChannelSubscription::kSubscribed) return;
    std::vector<RemoteEvent> events;
    events.reserve(history.entries.size());
    std::uint64_t lost = 0;
    std::uint64_t newest = 0;
    for (const RedisEntry& e : history.entries) {
        events.push_back(RemoteEvent{e.id, e.published_ms, e.name, e.data});
        lost = e.lost;
        newest = std::max(newest, e.id);
    }
    // In a cluster the history comes as a reply, on another connection than the channel's
    // messages: a message it holds may still arrive after it, and is then not taken again.
    if (cluster) {
        std::size_t from = history.entries.size() > kRecentIds ? history.entries.size() - kRecentIds : 0;
        for (std::size_t i = from; i < history.entries.size(); i++) remember(history.entries[i].id);
    }
    PublishResult result;
    store->merge_history(channel, events, lost, config->history, result, log);
    wake(result);
    release_held(it->first, it->second, newest);
}

void Link::take_event(std::string_view key, const char* text, std::size_t len) {
    std::string_view channel;
    if (!channel_of(key, channel)) return;
    auto it = channels.find(std::string(channel));
    if (it != channels.end() && it->second.history_pending) {
        ChannelSubscription& s = it->second;
        if (s.held.size() == kMaxHeldMessages) s.held.pop_front();  // the history holds it, unless trimmed
        s.held.emplace_back(text, len);
        return;
    }
    RedisEntry entry;
    if (parsed(parse_redis_entry, text, len, entry)) take_entry(channel, entry);
}

// sse_clients?scope=cluster on another node: this node's page of streams, published to the
// channel the asking node listens on (only a reply channel under the prefix: a control message
// cannot make a node publish elsewhere).
void Link::answer_listing(const RedisControl& control) {
    std::string reply_prefix = config->prefix + "#reply:";
    if (control.reply.compare(0, reply_prefix.size(), reply_prefix) != 0 || phase != Phase::kReady) return;
    ClientQuery q;
    q.id = control.id;
    q.user = control.user;
    q.channel = control.channel;
    q.after = control.after;
    if (control.limit != 0) q.limit = std::size_t(control.limit);
    std::string page = store->clients_page_json(q);  // {"clients":[...],...}\n
    std::string host(reinterpret_cast<const char*>(ngx_cycle->hostname.data), ngx_cycle->hostname.len);
    std::string message =
        "{\"node\":" + json_string(origin) + ",\"host\":" + json_string(host) + "," + page.substr(1, page.size() - 2);
    in_flight++;
    control_shard().cmd->send({"PUBLISH", control.reply, message}, reply_to<&Link::on_command_reply>);
}

// Another node's request: done here as it was there.
void Link::take_control(const char* text, std::size_t len) {
    RedisControl control;
    if (!parsed(parse_redis_control, text, len, control)) return;
    if (control.origin == origin) return;
    if (control.op == "list") {
        answer_listing(control);
        return;
    }
    if (control.op == "disconnect") {
        ClientQuery q;
        q.id = control.id;
        q.user = control.user;
        q.channel = control.channel;
        std::uint64_t mask[2];
        std::uint32_t n = store->disconnect_clients(q, mask);
        if (n > 0) WorkerWakeup::wake(header(), mask);
        ngx_log_error(NGX_LOG_INFO, log, 0, "sse: disconnecting %uD stream(s) as another node asked", n);
    } else {
        PublishResult result;
        std::uint32_t closed = 0;
        bool no_memory = false;
        if (store->close_channel(control.channel, result, closed, no_memory)) wake(result);
    }
}

void Link::answered() {
    if (in_flight > 0) in_flight--;
    last_progress = ngx_current_msec;
}

// PING's PONG and sse_history's count: anything but an error or a string or a number is wrong.
void Link::on_command_reply(RedisConnection&, const redisReply& reply, std::uintptr_t) {
    answered();
    if (reply.type == REDIS_REPLY_ERROR) {
        log_bad_entry("a command failed: " + escaped(std::string(text(reply))));
    } else if (!is_string(reply) && reply.type != REDIS_REPLY_INTEGER) {
        unexpected("a command", reply);
    }
}

// sse_history's count of entries; they come on the subscription connection. An error means
// they never will: what was held for the channel is delivered as it is.
void Link::on_history_requested(RedisConnection&, const redisReply& reply, std::uintptr_t request) {
    answered();
    auto asked = history_requests.find(request);
    if (asked == history_requests.end()) return;
    std::string channel = std::move(asked->second);
    history_requests.erase(asked);
    if (reply.type == REDIS_REPLY_INTEGER) return;
    if (cluster && reply.type == REDIS_REPLY_STRING) {
        take_history(reply.str, reply.len);
        return;
    }
    if (reply.type != REDIS_REPLY_ERROR) {
        unexpected("FCALL sse_history", reply);
        return;
    }
    log_bad_entry("reading the history of " + quoted_bytes(channel) + " failed: " + escaped(std::string(text(reply))));
    auto it = channels.find(channel);
    if (it != channels.end() && it->second.history_pending) release_held(it->first, it->second, 0);
}

void Link::request_history(ChannelSubscription& s, const std::string& channel) {
    s.history_pending = true;
    s.held.clear();
    std::uintptr_t request = ++last_history_request;
    history_requests[request] = channel;
    in_flight++;
    // In a cluster the history comes back as the reply (a classic message would cross every
    // node); the channel's messages meanwhile are held, and those the history holds dropped.
    std::string_view reply_channel = cluster ? std::string_view() : std::string_view(private_channel);
    shard_for(channel).cmd->send({"FCALL", "sse_history", "1", key_of(channel), reply_channel},
                                 reply_to<&Link::on_history_requested>, request);
}

// A subscription change confirmed: ["subscribe", name, count] and the like.
void Link::take_confirmation(std::string_view type, std::string_view name) {
    std::string_view channel;
    if (!channel_of(name, channel)) return;
    auto it = channels.find(std::string(channel));
    if (it == channels.end()) return;
    bool subscribed = type == "subscribe" || type == "ssubscribe";
    bool unsubscribed = type == "unsubscribe" || type == "punsubscribe" || type == "sunsubscribe";
    if (type == "sunsubscribe" && it->second.state != ChannelSubscription::kUnsubscribing) {
        // Unasked: the slot moved to another shard (a failover or a resharding). The map is read
        // again, and the channel's history merged again where it went.
        fail("the cluster moved channel " + quoted_bytes(it->first) + " to another shard");
        return;
    }
    if (subscribed && it->second.state == ChannelSubscription::kSubscribing) {
        // Listening from here on: what Redis retained comes next on this same connection,
        // after every message published before it and before every one published after.
        it->second.state = ChannelSubscription::kSubscribed;
        header()->cluster.channels++;
        request_history(it->second, it->first);
    } else if (type == "psubscribe" && it->second.state == ChannelSubscription::kSubscribing) {
        // A pattern has no history of its own in Redis: it starts from now (see create_channel).
        it->second.state = ChannelSubscription::kSubscribed;
        header()->cluster.channels++;
        store->set_synced({it->first}, true);
    } else if (unsubscribed && it->second.state == ChannelSubscription::kUnsubscribing) {
        if (it->second.resubscribe) {
            subscribe_channel(it->first);
        } else {
            channels.erase(it);
        }
    }
}

// Everything the subscription connection receives after its handshake. A message of a shape
// Redis never sends drops the link: whatever sent it cannot be trusted with the rest.
void Link::on_pubsub(const redisReply& reply) {
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements < 3 || !is_string(*reply.element[0]) ||
        !is_string(*reply.element[1])) {
        fail("an unexpected message on the subscription connection: " + shape_of(reply));
        return;
    }
    std::string_view type = text(*reply.element[0]);
    std::string_view name = text(*reply.element[1]);
    const redisReply& third = *reply.element[2];
    bool confirmation = type == "subscribe" || type == "unsubscribe" || type == "psubscribe" ||
                        type == "punsubscribe" || type == "ssubscribe" || type == "sunsubscribe";
    if (confirmation) {
        if (reply.elements != 3 || third.type != REDIS_REPLY_INTEGER) {
            fail("an unexpected subscription confirmation: " + shape_of(reply));
            return;
        }
    } else if (type == "message" || type == "smessage") {
        if (reply.elements != 3 || !is_string(third)) {
            fail("an unexpected pub/sub message: " + shape_of(reply));
            return;
        }
    } else if (type == "pmessage") {  // pattern, channel, message
        if (reply.elements != 4 || !is_string(third) || !is_string(*reply.element[3])) {
            fail("an unexpected pub/sub pattern message: " + shape_of(reply));
            return;
        }
    } else {
        fail("an unexpected message on the subscription connection: " + shape_of(reply));
        return;
    }
    if (name == private_channel || name == control_channel) {
        if (type == "subscribe") {
            handshake_done();
        } else if (type == "message") {
            if (name == private_channel) {
                take_history(third.str, third.len);
            } else {
                take_control(third.str, third.len);
            }
        }
        return;
    }
    if (type == "message" || type == "smessage") {
        take_event(name, third.str, third.len);
    } else if (type == "pmessage") {
        take_event(text(third), reply.element[3]->str, reply.element[3]->len);
    } else {
        take_confirmation(type, name);
    }
}

void Link::subscribe_channel(const std::string& channel) {
    ChannelSubscription& s = channels[channel];
    s.state = ChannelSubscription::kSubscribing;
    s.resubscribe = false;
    const char* command = cluster ? "SSUBSCRIBE" : is_channel_pattern(channel) ? "PSUBSCRIBE" : "SUBSCRIBE";
    shard_for(channel).sub->send({command, key_of(channel)}, nullptr);
}

// A pattern covers channels of every shard of a cluster, and sharded pub/sub has no patterns:
// pattern streams are refused while the link knows a cluster (see subscribe_handler.cpp); one
// opened before it knew gets this node's events only, said once.
bool Link::refuse_pattern(const std::string& channel) {
    if (!cluster || !is_channel_pattern(channel)) return false;
    if (!pattern_refusal_logged) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "sse: channel patterns cannot follow a Redis Cluster: streams on %s get this node's events only",
                      quoted_bytes(channel).c_str());
        pattern_refusal_logged = true;
    }
    return true;
}

// Listens in Redis to exactly the channels this node's streams use.
void Link::reconcile() {
    std::uint64_t changes = __atomic_load_n(&header()->cluster.subscriptions_changed, __ATOMIC_ACQUIRE);
    if (changes == seen_changes) return;
    seen_changes = changes;
    std::vector<std::string> in_use = store->channels_in_use();
    std::unordered_set<std::string> wanted(in_use.begin(), in_use.end());
    for (const std::string& channel : in_use) {
        if (refuse_pattern(channel)) continue;
        auto it = channels.find(channel);
        if (it == channels.end()) {
            subscribe_channel(channel);
        } else if (it->second.state == ChannelSubscription::kUnsubscribing) {
            it->second.resubscribe = true;
        }
    }
    std::vector<std::string> dropped;
    for (auto& [channel, s] : channels) {
        if (wanted.count(channel) != 0) {
            continue;
        }
        if (s.state == ChannelSubscription::kUnsubscribing) {
            s.resubscribe = false;
            continue;
        }
        if (s.state == ChannelSubscription::kSubscribed) header()->cluster.channels--;
        s.state = ChannelSubscription::kUnsubscribing;
        s.resubscribe = false;
        const char* command = cluster ? "SUNSUBSCRIBE" : is_channel_pattern(channel) ? "PUNSUBSCRIBE" : "UNSUBSCRIBE";
        shard_for(channel).sub->send({command, key_of(channel)}, nullptr);
        dropped.push_back(channel);
    }
    // From here on this node may miss the channel's events: its history here stops being whole.
    if (!dropped.empty()) store->set_synced(dropped, false);
}

// An error in reply to an event is never taken as its acknowledgement: what sse_publish can
// answer with well-formed arguments means "not here, not now" (READONLY from a replica,
// NOREPLICAS, OOM, LOADING, BUSY, a function flushed meanwhile). The event stays queued and the
// link starts over; while the same event keeps being refused the retries back off as after a
// failed connection, rather than at every reconnect.
void Link::refused(const redisReply& reply, const char* what) {
    refusals++;
    fail(std::string("it refused ") + what + " (" + std::string(text(reply)) + "); it stays queued");
}

// One call of the event `seq` answered. The zone's queue lets go of the events before the first
// one still waiting for a call (the shards of a cluster answer each at its own pace).
void Link::acknowledge(std::uint64_t seq, bool event) {
    auto it = unacked.begin();
    while (it != unacked.end() && it->first != seq) ++it;
    if (it == unacked.end() || it->second == 0) return;
    if (--it->second == 0 && event) ngx_atomic_fetch_add(&header()->counters.redis_events_sent, 1);
    std::uint64_t through = 0;
    while (!unacked.empty() && unacked.front().second == 0) {
        through = unacked.front().first;
        unacked.pop_front();
    }
    if (through != 0) store->outbound_sent(through);
}

// sse_publish answers with the event's id (a string).
void Link::on_published(RedisConnection&, const redisReply& reply, std::uintptr_t seq) {
    answered();
    if (reply.type == REDIS_REPLY_ERROR) {
        std::string_view message = text(reply);
        if (cluster && message.substr(0, 4) == "ASK " && follow_ask(seq, message)) return;
        if (cluster && message.substr(0, 6) == "MOVED ") {
            // The map changed: read again, the event resent where it now goes (not a refusal).
            fail("the cluster moved a slot (" + std::string(message) + "); reading its map again");
            return;
        }
        refused(reply, "an event");
        return;
    }
    if (!is_string(reply) && reply.type != REDIS_REPLY_INTEGER) {
        unexpected("FCALL sse_publish", reply);
        return;
    }
    refusals = 0;
    acknowledge(std::uint64_t(seq), true);
    pump();
}

void Link::on_control_sent(RedisConnection&, const redisReply& reply, std::uintptr_t seq) {
    answered();
    if (reply.type == REDIS_REPLY_ERROR) {
        refused(reply, "a request for every node");
        return;
    }
    if (reply.type != REDIS_REPLY_INTEGER) {
        unexpected("PUBLISH", reply);
        return;
    }
    acknowledge(std::uint64_t(seq), false);
    pump();
}

// Sends the node's waiting events, in order, keeping at most kMaxInFlight unanswered.
void Link::drain() {
    std::vector<OutboundEvent> batch;
    while (phase == Phase::kReady && in_flight < kMaxInFlight) {
        store->outbound_after(sent_seq, std::min<std::size_t>(kDrainBatch, kMaxInFlight - in_flight), batch);
        if (batch.empty()) return;
        for (OutboundEvent& o : batch) {
            if (in_flight == 0) last_progress = ngx_current_msec;
            if (o.control) {
                std::string message = control_with_origin(o.data, origin);
                control_shard().cmd->send({"PUBLISH", control_channel, message}, reply_to<&Link::on_control_sent>,
                                          std::uintptr_t(o.seq));
                in_flight++;
                unacked.emplace_back(o.seq, 1);
            } else {
                send_event(o);
            }
            sent_seq = o.seq;
        }
    }
}

void Link::pump() {
    if (phase != Phase::kReady) return;
    reconcile();
    drain();
}

void Link::send_auth(RedisConnection* c, RedisReplyHandler handler) {
    const RedisAddress& a = config->address;
    if (a.user.empty()) {
        c->send({"AUTH", a.password}, handler, kAuth);
    } else {
        c->send({"AUTH", a.user, a.password}, handler, kAuth);
    }
}

// Opens one connection to the primary with its handshake queued: it goes out, pipelined, as
// soon as the socket connects.
RedisConnection* Link::open_connection(const RedisServer& server, const char* role, bool takes_pushes,
                                       std::string& reason) {
    const RedisAddress& a = config->address;
    RedisConnection* c =
        RedisConnection::open(server, config->tls, takes_pushes, config->connect_timeout, this, log, reason);
    if (c == nullptr) return nullptr;
    if (a.has_password) {
        handshake_pending++;
        send_auth(c, reply_to<&Link::on_handshake_reply>);
    }
    if (a.db != 0) {
        handshake_pending++;
        c->send({"SELECT", std::to_string(a.db)}, reply_to<&Link::on_handshake_reply>, kSelect);
    }
    handshake_pending++;
    c->send({"CLIENT", "SETNAME", std::string("sse-") + role + "-" + std::to_string(ngx_pid)},
            reply_to<&Link::on_handshake_reply>, kSetName);
    return c;
}

// The two connections of a shard, their handshakes queued. False (the link failed) when one
// cannot be opened.
bool Link::open_shard(Shard& shard) {
    note_server(shard.server, shard_role(), RedisState::kConnecting);
    std::string reason;
    shard.cmd = open_connection(shard.server, "cmd", false, reason);
    if (shard.cmd != nullptr) shard.sub = open_connection(shard.server, "sub", true, reason);
    if (shard.cmd == nullptr || shard.sub == nullptr) {
        failed_at = shard.server.display;
        fail(reason);
        return false;
    }
    return true;
}

// Connects to the primary: the address sse_redis names, or the one a sentinel named.
void Link::connect_to_primary() {
    phase = Phase::kConnecting;
    shards.assign(1, Shard{primary, nullptr, nullptr});
    if (!open_shard(shards.front())) return;
    note_control(primary);
    RedisConnection* cmd = shards.front().cmd;
    if (!config->address.master_name.empty()) {
        handshake_pending++;
        cmd->send({"ROLE"}, reply_to<&Link::on_handshake_reply>, kRole);
    }
    handshake_pending += 4;
    cmd->send({"INFO", "cluster"}, reply_to<&Link::on_handshake_reply>, kClusterCheck);
    cmd->send({"FUNCTION", "LOAD", "REPLACE", kRedisFunctionLibrary}, reply_to<&Link::on_handshake_reply>,
              kLoadFunctions);
    shards.front().sub->send({"SUBSCRIBE", private_channel, control_channel}, nullptr);
}

// --- Sentinel -------------------------------------------------------------------------------

namespace {

// A port as a sentinel writes it, in decimal; out of range (refused by parse_redis_server) when
// it is anything else.
int port_number(std::string_view text) {
    int port = 0;
    for (char ch : text) port = ch >= '0' && ch <= '9' && port < 65536 ? port * 10 + (ch - '0') : 65536;
    return port;
}

}  // namespace

void Link::on_master_address(RedisConnection& c, const redisReply& reply, std::uintptr_t) {
    RedisServer named;
    if (reply.type == REDIS_REPLY_ERROR) {
        fail("sentinel " + c.server().display +
             " refused SENTINEL get-master-addr-by-name: " + std::string(text(reply)));
        return;
    }
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 2 || !is_string(*reply.element[0]) ||
        !is_string(*reply.element[1])) {
        // nil: this sentinel does not monitor that name (yet); another may.
        if (reply.type == REDIS_REPLY_NIL) {
            note_server(c.server(), RedisRole::kSentinel, RedisState::kOff);
            ngx_log_error(NGX_LOG_INFO, log, 0, "sse: redis sentinel %s does not know the primary %s",
                          c.server().display.c_str(), quoted_bytes(config->address.master_name).c_str());
            sentinel_said = "sentinel " + c.server().display + " does not know the primary " +
                            quoted_bytes(config->address.master_name);
            RedisConnection::release(watcher);
            watcher = nullptr;
            ask_next_sentinel();
            return;
        }
        unexpected("SENTINEL get-master-addr-by-name", reply);
        return;
    }
    std::string host(text(*reply.element[0]));
    std::string_view port_text = text(*reply.element[1]);
    note_server(c.server(), RedisRole::kSentinel, RedisState::kConnected);
    if (!parse_redis_server(host, port_number(port_text), named)) {
        fail("sentinel " + c.server().display + " named the primary " +
             quoted_bytes(host + ":" + std::string(port_text)) + ", which is not a numeric address and port");
        return;
    }
    if (phase == Phase::kReady) {
        // A watcher opened again while the link is up: the primary must not have moved.
        if (!named.same_address(primary)) fail("the sentinels now name " + named.display + " as the primary");
        return;
    }
    primary = named;
    connect_to_primary();
}

void Link::take_sentinel_message(const redisReply& reply) {
    // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
    if (reply.type != REDIS_REPLY_ARRAY || reply.elements != 3 || !is_string(*reply.element[0]) ||
        !is_string(*reply.element[2]) || reply.element[2]->type == REDIS_REPLY_ERROR) {
        if (reply.type == REDIS_REPLY_ARRAY && reply.elements == 3 && is_string(*reply.element[0]) &&
            text(*reply.element[0]) == "subscribe") {
            return;
        }
        fail("an unexpected message from sentinel " + watcher->server().display + ": " + shape_of(reply));
        return;
    }
    if (text(*reply.element[0]) != "message") return;
    std::string_view m = text(*reply.element[2]);
    const std::string& name = config->address.master_name;
    if (m.size() <= name.size() || m.substr(0, name.size()) != name || m[name.size()] != ' ') return;
    if (phase != Phase::kReady && phase != Phase::kConnecting) return;
    std::string_view switched = m.substr(name.size() + 1);
    if (names_current_primary(switched)) {
        // The link asked a sentinel after the failover and already follows the new primary: going
        // through it again would only resubscribe and merge every channel's history once more.
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "sse: redis sentinels switched the primary to %s, which this node already uses",
                      primary.display.c_str());
        return;
    }
    fail("the sentinels switched the primary (" + std::string(switched) + ")");
}

// "<old ip> <old port> <new ip> <new port>" of a +switch-master: whether the new primary is the
// one the link uses.
bool Link::names_current_primary(std::string_view switched) {
    std::vector<std::string_view> words;
    while (!switched.empty() && words.size() <= 4) {
        std::size_t space = switched.find(' ');
        words.push_back(switched.substr(0, space));
        switched = space == std::string_view::npos ? std::string_view() : switched.substr(space + 1);
    }
    RedisServer named;
    return words.size() == 4 && parse_redis_server(words[2], port_number(words[3]), named) &&
           named.same_address(primary);
}

// Asks the sentinels, one after another, where the primary is; keeps the connection to the one
// that answers, subscribed to +switch-master.
void Link::ask_next_sentinel() {
    const std::vector<RedisServer>& sentinels = config->servers;
    std::string reason;
    while (sentinels_asked < sentinels.size()) {
        const RedisServer& s = sentinels[next_sentinel % sentinels.size()];
        next_sentinel++;
        sentinels_asked++;
        RedisTls plain;
        watcher = RedisConnection::open(s, plain, true, config->connect_timeout, this, log, reason);
        if (watcher == nullptr) {
            note_server(s, RedisRole::kSentinel, RedisState::kDisconnected);
            continue;
        }
        note_server(s, RedisRole::kSentinel, RedisState::kConnecting);
        watcher->send({"SENTINEL", "get-master-addr-by-name", config->address.master_name},
                      reply_to<&Link::on_master_address>);
        watcher->send({"SUBSCRIBE", "+switch-master"}, nullptr);
        return;
    }
    // The last sentinel's own fault (a connection that failed, an answer without the primary)
    // says more than "none answered".
    std::string why = !reason.empty() ? reason : sentinel_said;
    if (phase != Phase::kReady) fail(why.empty() ? "no sentinel answered" : "no sentinel answered: " + why);
}

void Link::discover_primary() {
    phase = Phase::kDiscovering;
    sentinels_asked = 0;
    sentinel_said.clear();
    primary = RedisServer{};
    ask_next_sentinel();
}

void Link::pushed(RedisConnection& connection, const redisReply& reply) {
    if (is_subscriber(connection)) {
        on_pubsub(reply);
    } else if (&connection == watcher) {
        take_sentinel_message(reply);
    }
}

void Link::failed(RedisConnection& connection, const std::string& reason) {
    if (&connection == watcher) {
        ngx_log_error(NGX_LOG_INFO, log, 0, "sse: redis sentinel %s: %s", connection.server().display.c_str(),
                      escaped(reason).c_str());
        note_server(connection.server(), RedisRole::kSentinel, RedisState::kDisconnected);
        sentinel_said = "sentinel " + connection.server().display + ": " + reason;
        RedisConnection::release(watcher);
        watcher = nullptr;
        if (phase == Phase::kDiscovering) ask_next_sentinel();
        // While the link is up, the tick opens a watcher again.
        return;
    }
    if (&connection == probe) {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, log, 0, "sse: redis cluster node %s: %s",
                       connection.server().display.c_str(), reason.c_str());
        RedisConnection::release(probe);
        probe = nullptr;
        if (phase == Phase::kDiscovering) ask_next_cluster_node();
        return;
    }
    if (!is_command(connection) && !is_subscriber(connection)) return;
    failed_at = connection.server().display;
    fail(reason);
}

void Link::connect_now() {
    connect_started = ngx_current_msec;
    handshake_pending = 0;
    if (!config->address.master_name.empty()) {
        discover_primary();
    } else if (cluster) {
        discover_cluster();
    } else {
        primary = config->servers.front();
        connect_to_primary();
    }
}

// While the link is up through a sentinel's answer, one sentinel is watched for failovers.
void Link::watch_sentinels() {
    if (config->address.master_name.empty() || watcher != nullptr) return;
    sentinels_asked = 0;
    ask_next_sentinel();
}

// Gives up the connections without a word: the role went to another worker, or this one exits.
void Link::go_idle() {
    if (phase != Phase::kIdle && phase != Phase::kBackoff) drop_connections();
    if (retry.timer_set) ngx_del_timer(&retry);
    phase = Phase::kIdle;
    owner = false;
}

// static
void Link::on_retry(ngx_event_t* ev) noexcept {
    Link* link = static_cast<Link*>(ev->data);
    if (!link->owner || link->stopped) return;
    guarded(link->log, "connecting to redis", [link] { link->connect_now(); });
}

void Link::check_link(ngx_msec_t now) {
    if ((phase == Phase::kConnecting || phase == Phase::kDiscovering) &&
        now - connect_started > config->connect_timeout) {
        fail("no answer within sse_redis_connect_timeout");
    } else if (phase == Phase::kReady) {
        if (in_flight > 0 && now - last_progress > config->command_timeout) {
            fail("no reply within sse_redis_command_timeout");
            return;
        }
        if (in_flight == 0 && now - last_progress > kIdlePingInterval) {
            last_progress = now;
            for (Shard& shard : shards) {
                in_flight++;
                shard.cmd->send({"PING"}, reply_to<&Link::on_command_reply>);
            }
        }
        watch_sentinels();
        pump();
    }
}

// The figures the previous holder of the link left (their reconnect counts go on), with every
// server named in sse_redis listed even before it is used.
void Link::take_over_figures() {
    figures = store->redis_servers();
    connected_before.assign(figures.size(), true);
    bool sentinels = !config->address.master_name.empty();
    for (const RedisServer& s : config->servers) {
        note_server(s, sentinels ? RedisRole::kSentinel : shard_role(), RedisState::kOff);
    }
    for (RedisServerFigures& f : figures) {
        if (f.state != RedisState::kOff) f.state = RedisState::kDisconnected;
    }
    store->set_redis_servers(figures);
}

// static
void Link::on_tick(ngx_event_t* ev) noexcept {
    Link* link = static_cast<Link*>(ev->data);
    if (link->stopped) return;
    guarded(link->log, "running the redis link", [link] {
        bool claimed = link->store->claim_redis(link->slot, ngx_current_msec, kOwnerStaleAfter);
        if (claimed && !link->owner) {
            link->owner = true;
            link->ever_ready = false;
            link->attempts = 0;
            // A worker before this one may have found that the one server named is a cluster's.
            link->cluster = link->config->seeds_a_cluster() || link->header()->cluster.sharded;
            link->take_over_figures();
            link->connect_now();
        } else if (!claimed && link->owner) {
            link->go_idle();
        } else if (claimed) {
            link->check_link(ngx_current_msec);
        }
    });
    if (!link->stopped) ngx_add_timer(&link->tick, kTickInterval);
}

Link::Link(const RedisConfig* config, Store* store, ngx_uint_t slot, ngx_log_t* log)
    : config(config), store(store), slot(slot), log(log), where(config->address.display()) {
    char id[17];
    std::snprintf(id, sizeof(id), "%016" PRIx64, store->header()->cluster.origin);
    origin = id;
    // '#' cannot be in a channel name, so this never meets a channel of ours.
    private_channel = config->prefix + "#node:" + origin;
    control_channel = config->prefix + "#control";
    cluster = config->seeds_a_cluster();
    for (ngx_event_t* ev : {&tick, &retry}) {
        ev->data = this;
        ev->log = log;
        ev->cancelable = 1;  // must not keep a retiring worker alive
    }
    tick.handler = on_tick;
    retry.handler = on_retry;
    ngx_add_timer(&tick, kTickInterval);
}

// stop() has taken the timers away; should it have failed halfway, no handler may find the
// Link freed.
Link::~Link() {
    if (tick.timer_set) ngx_del_timer(&tick);
    if (retry.timer_set) ngx_del_timer(&retry);
}

void Link::on_wake() {
    if (!owner || stopped) return;
    guarded(log, "waking the redis link", [this] { pump(); });
}

void Link::stop() {
    if (stopped) return;
    stopped = true;
    guarded(log, "stopping the redis link", [this] {
        bool was_owner = owner;
        go_idle();
        if (tick.timer_set) ngx_del_timer(&tick);
        if (was_owner) {
            store->release_redis(slot);
            set_state(RedisState::kConnecting);  // until another worker takes the role
        }
    });
}

// The worker's link: RedisLink's constructor makes it, its destructor frees it.
RedisLink::RedisLink(const RedisConfig* config, Store* store, ngx_uint_t slot, ngx_log_t* log)
    : link_(std::make_unique<Link>(config, store, slot, log)) {}

RedisLink::~RedisLink() {
    stop();
}

void RedisLink::on_wake() {
    link_->on_wake();
}

void RedisLink::stop() {
    link_->stop();
}

}  // namespace sse
