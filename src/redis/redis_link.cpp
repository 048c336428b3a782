#include "redis/redis_link.h"

extern "C" {
#include <ngx_event.h>
}

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <cinttypes>
#include <cstdio>
#include <deque>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "guard.h"
#include "protocol/channel_list.h"
#include "protocol/client_text.h"
#include "redis/redis_entry.h"
#include "redis/redis_event_adapter.h"
#include "redis/redis_functions.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

constexpr ngx_msec_t kTickInterval = 200;
constexpr ngx_msec_t kOwnerStaleAfter = 2000;  // a holder that has not beaten for this long is gone
constexpr ngx_msec_t kIdlePingInterval = 5000;
constexpr unsigned kMaxInFlight = 1024;  // commands Redis has not answered yet: bounds hiredis's buffers
constexpr std::size_t kDrainBatch = 256;
constexpr std::size_t kRecentIds = 4096;

enum class Phase { kIdle, kConnecting, kReady, kBackoff };

// Handshake steps, told apart in their replies.
enum HandshakeStep : std::uintptr_t { kAuth = 1, kSelect, kSetName, kLoadFunctions };

const char* step_name(std::uintptr_t step) {
    switch (step) {
        case kAuth:
            return "authentication";
        case kSelect:
            return "SELECT";
        case kSetName:
            return "CLIENT SETNAME";
        case kLoadFunctions:
            return "FUNCTION LOAD (Redis 7 or later is needed)";
    }
    return "a command";
}

struct ChannelSubscription {
    enum State { kSubscribing, kSubscribed, kUnsubscribing } state = kSubscribing;
    bool resubscribe = false;  // wanted again while its UNSUBSCRIBE was on its way
};

struct Link {
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
    redisAsyncContext* cmd = nullptr;
    redisAsyncContext* sub = nullptr;
    int handshake_pending = 0;
    ngx_msec_t connect_started = 0;

    unsigned attempts = 0;  // failed attempts since the link was last ready
    bool ever_ready = false;
    bool outage_logged = false;  // a failed attempt of this outage was logged
    bool refusal_logged = false;

    std::unordered_map<std::string, ChannelSubscription> channels;  // by channel name
    std::uint64_t seen_changes = UINT64_MAX;
    std::uint64_t sent_seq = 0;
    unsigned in_flight = 0;
    ngx_msec_t last_progress = 0;
    ngx_msec_t bad_entry_logged_at = 0;
    std::unordered_set<std::uint64_t> recent;  // ids of events taken lately
    std::deque<std::uint64_t> recent_order;

    ngx_event_t tick;
    ngx_event_t retry;
};

Link* link = nullptr;

StoreHeader* header() {
    return link->store->header();
}

void set_state(RedisState state) {
    __atomic_store_n(&header()->cluster.state, ngx_atomic_uint_t(state), __ATOMIC_RELEASE);
}

std::string key_of(std::string_view channel) {
    std::string key = link->config->prefix;
    key.append(channel);
    return key;
}

// The channel a Redis key or pub/sub channel names; false when it is not under our prefix.
bool channel_of(std::string_view key, std::string_view& channel) {
    const std::string& prefix = link->config->prefix;
    if (key.size() <= prefix.size() || key.substr(0, prefix.size()) != prefix) return false;
    channel = key.substr(prefix.size());
    return true;
}

void wake(const PublishResult& result) {
    if (result.wake[0] != 0 || result.wake[1] != 0) WorkerWakeup::wake(header(), result.wake);
}

void send(redisAsyncContext* ac, redisCallbackFn* fn, void* privdata, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const std::string& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    redisAsyncCommandArgv(ac, fn, privdata, int(argv.size()), argv.data(), lens.data());
}

void fail(const std::string& reason, const redisAsyncContext* dying, bool already_logged);
void pump();

// hiredis calls the reply callbacks from inside its own C code: nothing may be thrown through
// it. A reply that cannot be handled (no memory) drops the link, and the resync after the
// reconnect recovers what Redis retains, rather than an event being lost silently.
template <void (*Handle)(redisAsyncContext*, void*, void*)>
void guarded_reply(redisAsyncContext* ac, void* reply, void* privdata) noexcept {
    bool handled = guarded(link != nullptr ? link->log : nullptr, "handling a redis reply", false, [&] {
        Handle(ac, reply, privdata);
        return true;
    });
    if (handled || link == nullptr || link->stopped) return;
    if (link->phase != Phase::kReady && link->phase != Phase::kConnecting) return;
    guarded(link->log, "dropping the redis link", [] { fail("a reply could not be handled", nullptr, true); });
}

// Drops both connections (hiredis frees `dying` itself) and forgets what they carried.
void drop_connections(const redisAsyncContext* dying) {
    redisAsyncContext* contexts[2] = {link->cmd, link->sub};
    link->cmd = nullptr;
    link->sub = nullptr;
    for (redisAsyncContext* ac : contexts) {
        if (ac != nullptr && ac != dying) redisAsyncFree(ac);  // deferred when inside its callback
    }
    link->channels.clear();
    link->in_flight = 0;
    link->sent_seq = 0;  // what Redis did not acknowledge is sent again
    link->handshake_pending = 0;
    header()->cluster.channels = 0;
    link->store->unsync_all();
}

ngx_msec_t backoff_delay() {
    ngx_msec_t delay = link->config->reconnect_min;
    for (unsigned i = 1; i < link->attempts && delay < link->config->reconnect_max; i++) delay *= 2;
    if (delay > link->config->reconnect_max) delay = link->config->reconnect_max;
    // Jitter: nodes that lost Redis together do not all come back in the same millisecond.
    return delay / 2 + ngx_msec_t(ngx_random()) % (delay / 2 + 1);
}

void fail(const std::string& why, const redisAsyncContext* dying, bool already_logged) {
    // hiredis quotes what a server sent in some of its errors: shown escaped.
    std::string reason = escaped(why);
    bool was_ready = link->phase == Phase::kReady;
    drop_connections(dying);
    link->attempts++;
    // Once per outage each: the loss, and why the attempts after it fail (the first of them).
    if (was_ready && !already_logged) {
        ngx_log_error(NGX_LOG_WARN, link->log, 0,
                      "sse: redis connection to %s lost: %s; queueing events and reconnecting", link->where.c_str(),
                      reason.c_str());
    } else if (!link->outage_logged && !already_logged) {
        ngx_log_error(NGX_LOG_WARN, link->log, 0, "sse: redis at %s unreachable: %s; retrying", link->where.c_str(),
                      reason.c_str());
        link->outage_logged = true;
    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, link->log, 0, "sse: redis at %s: %s", link->where.c_str(), reason.c_str());
    }
    set_state(link->ever_ready ? RedisState::kDisconnected : RedisState::kConnecting);
    link->phase = Phase::kBackoff;
    if (link->retry.timer_set) ngx_del_timer(&link->retry);
    ngx_add_timer(&link->retry, backoff_delay());
}

void ready() {
    link->phase = Phase::kReady;
    if (link->retry.timer_set) ngx_del_timer(&link->retry);
    std::uint32_t queued = link->store->outbound_count();
    if (!link->ever_ready) {
        ngx_log_error(NGX_LOG_NOTICE, link->log, 0, "sse: redis connected to %s", link->where.c_str());
    } else {
        ngx_log_error(NGX_LOG_NOTICE, link->log, 0,
                      "sse: redis reconnected to %s after %ui attempts; sending %uD queued events", link->where.c_str(),
                      ngx_uint_t(link->attempts), queued);
        ngx_atomic_fetch_add(&header()->counters.redis_reconnects, 1);
    }
    link->ever_ready = true;
    link->attempts = 0;
    link->outage_logged = false;
    link->refusal_logged = false;
    link->last_progress = ngx_current_msec;
    link->seen_changes = UINT64_MAX;  // subscribe to every channel in use
    set_state(RedisState::kConnected);
    pump();
}

void handshake_done() {
    if (--link->handshake_pending == 0 && link->phase == Phase::kConnecting) ready();
}

void on_handshake_reply(redisAsyncContext* ac, void* r, void* privdata) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply == nullptr || link == nullptr || (ac != link->cmd && ac != link->sub)) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        std::uintptr_t step = reinterpret_cast<std::uintptr_t>(privdata);
        std::string message(reply->str, reply->len);
        if (!link->refusal_logged) {
            ngx_log_error(NGX_LOG_ERR, link->log, 0, "sse: redis at %s refused %s: %s", link->where.c_str(),
                          step_name(step), message.c_str());
            link->refusal_logged = true;
        }
        fail(std::string(step_name(step)) + " refused: " + message, nullptr, true);
        return;
    }
    handshake_done();
}

void log_bad_entry(const std::string& reason) {
    // Rate-limited: a misbehaving publisher must not flood the log.
    if (ngx_current_msec - link->bad_entry_logged_at < 60000 && link->bad_entry_logged_at != 0) return;
    link->bad_entry_logged_at = ngx_current_msec;
    ngx_log_error(NGX_LOG_WARN, link->log, 0, "sse: ignored a message from redis at %s: %s", link->where.c_str(),
                  reason.c_str());
}

void take_history(const char* text, std::size_t len) {
    RedisHistory history;
    std::string reason;
    if (!parse_redis_history(text, len, history, reason)) {
        log_bad_entry(reason);
        return;
    }
    std::string_view channel;
    if (!channel_of(history.key, channel)) return;
    auto it = link->channels.find(std::string(channel));
    if (it == link->channels.end() || it->second.state != ChannelSubscription::kSubscribed) return;
    std::vector<RemoteEvent> events;
    events.reserve(history.entries.size());
    std::uint64_t lost = 0;
    for (const RedisEntry& e : history.entries) {
        events.push_back(RemoteEvent{e.id, e.published_ms, e.name, e.data});
        lost = e.lost;
    }
    PublishResult result;
    link->store->merge_history(channel, events, lost, link->config->history, result, link->log);
    wake(result);
}

void take_event(std::string_view key, const char* text, std::size_t len) {
    std::string_view channel;
    if (!channel_of(key, channel)) return;
    RedisEntry entry;
    std::string reason;
    if (!parse_redis_entry(text, len, entry, reason)) {
        log_bad_entry(reason);
        return;
    }
    if (entry.origin == link->origin) return;  // ours, delivered here when published
    std::vector<std::string_view> channels;
    // An event comes once per subscription it matches: once per channel of a multi-channel
    // event, and again for a pattern (`blog.*`) besides its channel. The first copy stands for
    // all (the others follow it at once, in Redis's order).
    if (link->recent.count(entry.id) != 0) return;
    link->recent.insert(entry.id);
    link->recent_order.push_back(entry.id);
    if (link->recent_order.size() > kRecentIds) {
        link->recent.erase(link->recent_order.front());
        link->recent_order.pop_front();
    }
    if (entry.keys.size() > 1) {
        for (const std::string& key : entry.keys) {
            std::string_view c;
            if (channel_of(key, c)) channels.push_back(c);
        }
    } else {
        channels.push_back(channel);
    }
    PublishResult result;
    RemoteEvent e{entry.id, entry.published_ms, entry.name, entry.data};
    if (link->store->ingest(channels, e, link->config->history, result, link->log)) wake(result);
}

// Another node's request: done here as it was there.
void take_control(const char* text, std::size_t len) {
    RedisControl control;
    std::string reason;
    if (!parse_redis_control(text, len, control, reason)) {
        log_bad_entry(reason);
        return;
    }
    if (control.origin == link->origin) return;
    if (control.op == "disconnect") {
        ClientQuery q;
        q.id = control.id;
        q.user = control.user;
        q.channel = control.channel;
        std::uint64_t mask[2];
        std::uint32_t n = link->store->disconnect_clients(q, mask);
        if (n > 0) WorkerWakeup::wake(header(), mask);
        ngx_log_error(NGX_LOG_INFO, link->log, 0, "sse: disconnecting %uD stream(s) as another node asked", n);
    } else {
        PublishResult result;
        std::uint32_t closed = 0;
        bool no_memory = false;
        if (link->store->close_channel(control.channel, result, closed, no_memory)) wake(result);
    }
}

void on_command_reply(redisAsyncContext* ac, void* r, void*) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply == nullptr || link == nullptr || ac != link->cmd) return;
    if (link->in_flight > 0) link->in_flight--;
    link->last_progress = ngx_current_msec;
    if (reply->type == REDIS_REPLY_ERROR) log_bad_entry("a command failed: " + std::string(reply->str, reply->len));
}

void request_history(const std::string& channel) {
    link->in_flight++;
    send(link->cmd, guarded_reply<on_command_reply>, nullptr,
         {"FCALL", "sse_history", "1", key_of(channel), link->private_channel});
}

void subscribe_channel(const std::string& channel);

void on_pubsub(redisAsyncContext* ac, void* r, void*) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply == nullptr || link == nullptr || ac != link->sub) return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 || reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        return;
    }
    std::string_view type(reply->element[0]->str, reply->element[0]->len);
    std::string_view name(reply->element[1]->str, reply->element[1]->len);
    redisReply* payload = reply->element[2];
    if (name == link->private_channel || name == link->control_channel) {
        if (type == "subscribe") {
            handshake_done();
        } else if (type == "message" && payload->type == REDIS_REPLY_STRING) {
            if (name == link->private_channel) {
                take_history(payload->str, payload->len);
            } else {
                take_control(payload->str, payload->len);
            }
        }
        return;
    }
    if (type == "message") {
        if (payload->type == REDIS_REPLY_STRING) take_event(name, payload->str, payload->len);
        return;
    }
    if (type == "pmessage") {  // pattern, channel, message
        if (reply->elements == 4 && reply->element[2]->type == REDIS_REPLY_STRING &&
            reply->element[3]->type == REDIS_REPLY_STRING) {
            take_event(std::string_view(reply->element[2]->str, reply->element[2]->len), reply->element[3]->str,
                       reply->element[3]->len);
        }
        return;
    }
    std::string_view channel;
    if (!channel_of(name, channel)) return;
    auto it = link->channels.find(std::string(channel));
    if (it == link->channels.end()) return;
    if (type == "subscribe" && it->second.state == ChannelSubscription::kSubscribing) {
        // Listening from here on: what Redis retained comes next on this same connection,
        // after every message published before it and before every one published after.
        it->second.state = ChannelSubscription::kSubscribed;
        header()->cluster.channels++;
        request_history(it->first);
    } else if (type == "psubscribe" && it->second.state == ChannelSubscription::kSubscribing) {
        // A pattern has no history of its own in Redis: it starts from now (see create_channel).
        it->second.state = ChannelSubscription::kSubscribed;
        header()->cluster.channels++;
        link->store->set_synced({it->first}, true);
    } else if ((type == "unsubscribe" || type == "punsubscribe") &&
               it->second.state == ChannelSubscription::kUnsubscribing) {
        if (it->second.resubscribe) {
            subscribe_channel(it->first);
        } else {
            link->channels.erase(it);
        }
    }
}

void subscribe_channel(const std::string& channel) {
    ChannelSubscription& s = link->channels[channel];
    s.state = ChannelSubscription::kSubscribing;
    s.resubscribe = false;
    send(link->sub, guarded_reply<on_pubsub>, nullptr,
         {is_channel_pattern(channel) ? "PSUBSCRIBE" : "SUBSCRIBE", key_of(channel)});
}

// Listens in Redis to exactly the channels this node's streams use.
void reconcile() {
    std::uint64_t changes = __atomic_load_n(&header()->cluster.subscriptions_changed, __ATOMIC_ACQUIRE);
    if (changes == link->seen_changes) return;
    link->seen_changes = changes;
    std::vector<std::string> in_use = link->store->channels_in_use();
    std::unordered_set<std::string> wanted(in_use.begin(), in_use.end());
    for (const std::string& channel : in_use) {
        auto it = link->channels.find(channel);
        if (it == link->channels.end()) {
            subscribe_channel(channel);
        } else if (it->second.state == ChannelSubscription::kUnsubscribing) {
            it->second.resubscribe = true;
        }
    }
    std::vector<std::string> dropped;
    for (auto& [channel, s] : link->channels) {
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
        send(link->sub, guarded_reply<on_pubsub>, nullptr,
             {is_channel_pattern(channel) ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", key_of(channel)});
        dropped.push_back(channel);
    }
    // From here on this node may miss the channel's events: its history here stops being whole.
    if (!dropped.empty()) link->store->set_synced(dropped, false);
}

void on_published(redisAsyncContext* ac, void* r, void* privdata) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply == nullptr || link == nullptr || ac != link->cmd) return;
    if (link->in_flight > 0) link->in_flight--;
    link->last_progress = ngx_current_msec;
    if (reply->type == REDIS_REPLY_ERROR) {
        log_bad_entry("publishing failed: " + std::string(reply->str, reply->len));
    } else {
        ngx_atomic_fetch_add(&header()->counters.redis_events_sent, 1);
    }
    link->store->outbound_sent(std::uint64_t(reinterpret_cast<std::uintptr_t>(privdata)));
    pump();
}

void on_control_sent(redisAsyncContext* ac, void* r, void* privdata) {
    auto* reply = static_cast<redisReply*>(r);
    if (reply == nullptr || link == nullptr || ac != link->cmd) return;
    if (link->in_flight > 0) link->in_flight--;
    link->last_progress = ngx_current_msec;
    link->store->outbound_sent(std::uint64_t(reinterpret_cast<std::uintptr_t>(privdata)));
    pump();
}

// Sends the node's waiting events, in order, keeping at most kMaxInFlight unanswered.
void drain() {
    std::vector<OutboundEvent> batch;
    std::vector<std::string> args;
    while (link->phase == Phase::kReady && link->in_flight < kMaxInFlight) {
        link->store->outbound_after(link->sent_seq, std::min<std::size_t>(kDrainBatch, kMaxInFlight - link->in_flight),
                                    batch);
        if (batch.empty()) return;
        for (OutboundEvent& o : batch) {
            args.clear();
            if (o.control) {
                std::string message = control_with_origin(o.data, link->origin);
                if (link->in_flight == 0) link->last_progress = ngx_current_msec;
                send(link->cmd, guarded_reply<on_control_sent>, reinterpret_cast<void*>(std::uintptr_t(o.seq)),
                     {"PUBLISH", link->control_channel, message});
                link->sent_seq = o.seq;
                link->in_flight++;
                continue;
            }
            args.emplace_back("FCALL");
            args.emplace_back("sse_publish");
            args.push_back(std::to_string(o.channels.size()));
            for (const std::string& channel : o.channels) args.push_back(key_of(channel));
            args.push_back(std::move(o.data));
            args.push_back(std::move(o.name));
            args.push_back(std::to_string(o.history_limit));
            args.push_back(std::to_string(o.history_ttl));
            args.push_back(std::to_string(o.id));
            args.push_back(link->origin);
            if (link->in_flight == 0) link->last_progress = ngx_current_msec;
            send(link->cmd, guarded_reply<on_published>, reinterpret_cast<void*>(std::uintptr_t(o.seq)), args);
            link->sent_seq = o.seq;
            link->in_flight++;
        }
    }
}

void pump() {
    if (link == nullptr || link->phase != Phase::kReady) return;
    reconcile();
    drain();
}

void on_connected_unguarded(const redisAsyncContext* ac, int status) {
    if (link == nullptr || (ac != link->cmd && ac != link->sub) || status == REDIS_OK) return;
    std::string reason = ac->errstr != nullptr ? ac->errstr : "connect failed";
    if (ac == link->cmd) link->cmd = nullptr;
    if (ac == link->sub) link->sub = nullptr;
    fail(reason, ac, false);  // hiredis frees the context after this callback
}

void on_disconnected_unguarded(const redisAsyncContext* ac, int status) {
    if (link == nullptr || (ac != link->cmd && ac != link->sub)) return;  // one we dropped ourselves
    std::string reason = ac->err != 0 && ac->errstr != nullptr ? ac->errstr : "closed by the server";
    if (ac == link->cmd) link->cmd = nullptr;
    if (ac == link->sub) link->sub = nullptr;
    fail(reason, ac, false);
}

void on_connected(const redisAsyncContext* ac, int status) noexcept {
    guarded(link != nullptr ? link->log : nullptr, "connecting to redis", [&] { on_connected_unguarded(ac, status); });
}

void on_disconnected(const redisAsyncContext* ac, int status) noexcept {
    guarded(link != nullptr ? link->log : nullptr, "losing redis", [&] { on_disconnected_unguarded(ac, status); });
}

redisAsyncContext* open_connection(const char* role, std::string& reason) {
    const RedisAddress& a = link->config->address;
    redisAsyncContext* ac = a.socket_path.empty() ? redisAsyncConnect(a.host.c_str(), a.port)
                                                  : redisAsyncConnectUnix(a.socket_path.c_str());
    if (ac == nullptr) {
        reason = "out of memory";
        return nullptr;
    }
    if (ac->err != 0) {
        reason = ac->errstr;
        redisAsyncFree(ac);
        return nullptr;
    }
    if (!attach_to_event_loop(ac, link->log)) {
        reason = "no free nginx connection (raise worker_connections)";
        redisAsyncFree(ac);
        return nullptr;
    }
    redisAsyncSetConnectCallback(ac, on_connected);
    redisAsyncSetDisconnectCallback(ac, on_disconnected);
    // The handshake goes out at once, pipelined; hiredis sends it when the socket connects.
    if (a.has_password) {
        link->handshake_pending++;
        if (a.user.empty()) {
            send(ac, guarded_reply<on_handshake_reply>, reinterpret_cast<void*>(kAuth), {"AUTH", a.password});
        } else {
            send(ac, guarded_reply<on_handshake_reply>, reinterpret_cast<void*>(kAuth), {"AUTH", a.user, a.password});
        }
    }
    if (a.db != 0) {
        link->handshake_pending++;
        send(ac, guarded_reply<on_handshake_reply>, reinterpret_cast<void*>(kSelect), {"SELECT", std::to_string(a.db)});
    }
    link->handshake_pending++;
    send(ac, guarded_reply<on_handshake_reply>, reinterpret_cast<void*>(kSetName),
         {"CLIENT", "SETNAME", std::string("sse-") + role + "-" + std::to_string(ngx_pid)});
    return ac;
}

void connect_now() {
    link->phase = Phase::kConnecting;
    link->connect_started = ngx_current_msec;
    link->handshake_pending = 0;
    std::string reason;
    link->cmd = open_connection("cmd", reason);
    if (link->cmd != nullptr) link->sub = open_connection("sub", reason);
    if (link->cmd == nullptr || link->sub == nullptr) {
        fail(reason, nullptr, false);
        return;
    }
    link->handshake_pending += 3;
    send(link->cmd, guarded_reply<on_handshake_reply>, reinterpret_cast<void*>(kLoadFunctions),
         {"FUNCTION", "LOAD", "REPLACE", std::string(kRedisFunctionLibrary)});
    send(link->sub, guarded_reply<on_pubsub>, nullptr, {"SUBSCRIBE", link->private_channel, link->control_channel});
}

// Gives up the connections without a word: the role went to another worker, or this one exits.
void go_idle() {
    if (link->phase == Phase::kReady || link->phase == Phase::kConnecting) drop_connections(nullptr);
    if (link->retry.timer_set) ngx_del_timer(&link->retry);
    link->phase = Phase::kIdle;
    link->owner = false;
}

void on_retry(ngx_event_t*) noexcept {
    if (link == nullptr || !link->owner || link->stopped) return;
    guarded(link->log, "connecting to redis", [] { connect_now(); });
}

void on_tick(ngx_event_t*) noexcept {
    if (link == nullptr || link->stopped) return;
    try {
        bool owner = link->store->claim_redis(link->slot, ngx_current_msec, kOwnerStaleAfter);
        if (owner && !link->owner) {
            link->owner = true;
            link->ever_ready = false;
            link->attempts = 0;
            connect_now();
        } else if (!owner && link->owner) {
            go_idle();
        } else if (owner) {
            ngx_msec_t now = ngx_current_msec;
            if (link->phase == Phase::kConnecting && now - link->connect_started > link->config->connect_timeout) {
                fail("no answer within sse_redis_connect_timeout", nullptr, false);
            } else if (link->phase == Phase::kReady) {
                if (link->in_flight > 0 && now - link->last_progress > link->config->command_timeout) {
                    fail("no reply within sse_redis_command_timeout", nullptr, false);
                } else {
                    if (link->in_flight == 0 && now - link->last_progress > kIdlePingInterval) {
                        link->in_flight++;
                        link->last_progress = now;
                        send(link->cmd, guarded_reply<on_command_reply>, nullptr, {"PING"});
                    }
                    pump();
                }
            }
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0, "sse: unexpected exception in the redis link");
    }
    if (link != nullptr && !link->stopped) ngx_add_timer(&link->tick, kTickInterval);
}

}  // namespace

void RedisLink::start(const RedisConfig* config, Store* store, ngx_uint_t slot, ngx_log_t* log) {
    link = new Link();
    link->config = config;
    link->store = store;
    link->slot = slot;
    link->log = log;
    link->where = config->address.display();
    char origin[17];
    std::snprintf(origin, sizeof(origin), "%016" PRIx64, store->header()->cluster.origin);
    link->origin = origin;
    // '#' cannot be in a channel name, so this never meets a channel of ours.
    link->private_channel = config->prefix + "#node:" + link->origin;
    link->control_channel = config->prefix + "#control";
    for (ngx_event_t* ev : {&link->tick, &link->retry}) {
        ev->data = link;
        ev->log = log;
        ev->cancelable = 1;  // must not keep a retiring worker alive
    }
    link->tick.handler = on_tick;
    link->retry.handler = on_retry;
    ngx_add_timer(&link->tick, kTickInterval);
}

void RedisLink::on_wake() {
    if (link == nullptr || !link->owner || link->stopped) return;
    try {
        pump();
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0, "sse: unexpected exception in the redis link");
    }
}

void RedisLink::stop() {
    if (link == nullptr || link->stopped) return;
    link->stopped = true;
    try {
        bool was_owner = link->owner;
        go_idle();
        if (link->tick.timer_set) ngx_del_timer(&link->tick);
        if (was_owner) {
            link->store->release_redis(link->slot);
            set_state(RedisState::kConnecting);  // until another worker takes the role
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, link->log, 0, "sse: unexpected exception stopping the redis link");
    }
}

}  // namespace sse
