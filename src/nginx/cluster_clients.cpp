// sse_clients?scope=cluster: every node's streams. The worker that takes the request opens a
// connection of its own to Redis, asks which nodes listen (each node's link subscribes to its
// own channel <prefix>#node:<origin>), subscribes to a reply channel for this request, and sends
// the request to every node through the control channel (queued like a DELETE). Each node's link
// publishes its page of streams to the reply channel. The answer comes when every node listening
// has replied, or after kClusterListWait; nodes that did not reply by then are named.
#include <cinttypes>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "guard.h"
#include "nginx/sse_module.h"
#include "protocol/client_text.h"
#include "redis/redis_entry.h"
#include "redis/redis_link.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

constexpr ngx_msec_t kClusterListWait = 1000;

using json = nlohmann::json;

class ClusterListing final : public RedisConnection::Owner {
public:
    ClusterListing(ngx_http_request_t* r, WorkerContext* w, const RedisConfig* config, const ClientQuery& q)
        : r_(r), w_(w), config_(config), query_(q), user_(q.user), channel_(q.channel) {
        query_.user = user_;
        query_.channel = channel_;
    }

    // Starts; false when it answered already (an error).
    ngx_int_t start();

    void connected(RedisConnection&) override {}
    void pushed(RedisConnection& connection, const redisReply& reply) override;
    void failed(RedisConnection& connection, const std::string& reason) override;

    static void on_timer(ngx_event_t* ev) noexcept;
    static void on_cleanup(void* data) noexcept;
    static void on_nodes(RedisConnection& c, const redisReply& reply, std::uintptr_t self) noexcept;
    static void on_auth(RedisConnection& c, const redisReply& reply, std::uintptr_t self) noexcept;

private:
    bool where_is_redis(RedisServer& server) const;
    void send_request();
    void finish(ngx_uint_t status, const std::string& error);

    ngx_http_request_t* r_;
    WorkerContext* w_;
    const RedisConfig* config_;
    ClientQuery query_;
    std::string user_;
    std::string channel_;
    std::string origin_;
    std::string reply_channel_;
    RedisConnection* connection_ = nullptr;
    ngx_event_t timer_{};
    std::set<std::string> expected_;       // origins of the other nodes listening
    std::map<std::string, json> answers_;  // by origin
    bool request_sent_ = false;
    bool done_ = false;
};

std::string origin_of(Store& store) {
    char origin[17];
    std::snprintf(origin, sizeof(origin), "%016" PRIx64, store.header()->cluster.origin);
    return origin;
}

// Where the nodes hear requests for every node: the one address of sse_redis, or the primary a
// sentinel named, or a cluster's primary that owns the control channel's slot (classic pub/sub is
// per node in a cluster, so PUBSUB CHANNELS must be asked there).
bool ClusterListing::where_is_redis(RedisServer& server) const {
    bool sharded = __atomic_load_n(&w_->store.header()->cluster.sharded, __ATOMIC_RELAXED);
    if (config_->address.master_name.empty() && !config_->seeds_a_cluster() && !sharded) {
        server = config_->servers.front();
        return true;
    }
    for (const RedisServerFigures& f : w_->store.redis_servers()) {
        if (!f.hears_control || f.state != RedisState::kConnected) continue;
        std::string address(f.address, strnlen(f.address, sizeof(f.address)));
        std::size_t colon = address.rfind(':');
        if (colon == std::string::npos) continue;
        std::string host = address.substr(0, colon);
        if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
        if (parse_redis_server(host, std::atoi(address.c_str() + colon + 1), server)) return true;
    }
    return false;
}

ngx_int_t ClusterListing::start() {
    origin_ = origin_of(w_->store);
    reply_channel_ = config_->prefix + "#reply:" + origin_ + ":" + std::to_string(ngx_pid) + ":" +
                     std::to_string(reinterpret_cast<std::uintptr_t>(this));
    RedisServer server;
    if (redis_publish_state(w_->store) != "forwarded" || !where_is_redis(server)) {
        return send_text(r_, NGX_HTTP_SERVICE_UNAVAILABLE,
                         "redis is not connected: this node's streams are listed without scope=cluster");
    }
    std::string reason;
    connection_ =
        RedisConnection::open(server, config_->tls, true, config_->connect_timeout, this, r_->connection->log, reason);
    if (connection_ == nullptr) {
        return send_text(r_, NGX_HTTP_BAD_GATEWAY, "cannot reach redis: " + escaped(reason));
    }
    const RedisAddress& a = config_->address;
    if (a.has_password) {
        if (a.user.empty()) {
            connection_->send({"AUTH", a.password}, on_auth, reinterpret_cast<std::uintptr_t>(this));
        } else {
            connection_->send({"AUTH", a.user, a.password}, on_auth, reinterpret_cast<std::uintptr_t>(this));
        }
    }
    connection_->send({"PUBSUB", "CHANNELS", config_->prefix + "#node:*"}, on_nodes,
                      reinterpret_cast<std::uintptr_t>(this));
    connection_->send({"SUBSCRIBE", reply_channel_}, nullptr);
    timer_.handler = on_timer;
    timer_.data = this;
    timer_.log = r_->connection->log;
    ngx_add_timer(&timer_, kClusterListWait);
    r_->main->count++;
    return NGX_DONE;
}

void ClusterListing::on_auth(RedisConnection&, const redisReply& reply, std::uintptr_t self) noexcept {
    auto* listing = reinterpret_cast<ClusterListing*>(self);
    if (reply.type == REDIS_REPLY_ERROR) {
        listing->finish(NGX_HTTP_BAD_GATEWAY,
                        "redis refused authentication: " + escaped(std::string_view(reply.str, reply.len)));
    }
}

void ClusterListing::on_nodes(RedisConnection&, const redisReply& reply, std::uintptr_t self) noexcept {
    auto* listing = reinterpret_cast<ClusterListing*>(self);
    guarded(listing->r_->connection->log, "listing the nodes", [&] {
        if (reply.type != REDIS_REPLY_ARRAY) {
            listing->finish(NGX_HTTP_BAD_GATEWAY, "redis did not list the nodes");
            return;
        }
        std::string prefix = listing->config_->prefix + "#node:";
        for (std::size_t i = 0; i < reply.elements; i++) {
            const redisReply& e = *reply.element[i];
            if (e.type != REDIS_REPLY_STRING) continue;
            std::string_view name(e.str, e.len);
            if (name.substr(0, prefix.size()) != prefix) continue;
            std::string origin(name.substr(prefix.size()));
            if (origin != listing->origin_) listing->expected_.insert(origin);
        }
    });
}

void ClusterListing::pushed(RedisConnection&, const redisReply& reply) {
    if (done_ || reply.type != REDIS_REPLY_ARRAY || reply.elements != 3 ||
        reply.element[0]->type != REDIS_REPLY_STRING || reply.element[2]->type == REDIS_REPLY_ARRAY) {
        return;
    }
    std::string_view type(reply.element[0]->str, reply.element[0]->len);
    if (type == "subscribe") {
        if (expected_.empty()) {
            finish(NGX_HTTP_OK, "");
        } else {
            send_request();
        }
        return;
    }
    if (type != "message" || reply.element[2]->type != REDIS_REPLY_STRING) return;
    // Another node's page: kept only if it is the JSON object a node sends.
    json page = json::parse(reply.element[2]->str, reply.element[2]->str + reply.element[2]->len, nullptr, false);
    if (!page.is_object() || !page.contains("node") || !page["node"].is_string() || !page.contains("clients")) return;
    std::string node = page["node"].get<std::string>();
    if (expected_.count(node) == 0) return;
    answers_[node] = std::move(page);
    if (answers_.size() == expected_.size()) finish(NGX_HTTP_OK, "");
}

void ClusterListing::send_request() {
    RedisControl control;
    control.op = "list";
    control.reply = reply_channel_;
    control.id = query_.id;
    control.user = user_;
    control.channel = channel_;
    control.after = query_.after;
    control.limit = query_.limit;
    std::uint64_t wake[2] = {0, 0};
    if (!w_->store.queue_control(control_json(control), wake, r_->connection->log)) {
        finish(NGX_HTTP_SERVICE_UNAVAILABLE, "the queue to redis is full");
        return;
    }
    WorkerWakeup::wake(w_->store.header(), wake);
    request_sent_ = true;
}

void ClusterListing::failed(RedisConnection&, const std::string& reason) {
    RedisConnection::release(connection_);  // closed already; freed once its handler returns
    connection_ = nullptr;
    finish(NGX_HTTP_BAD_GATEWAY, "redis: " + escaped(reason));
}

void ClusterListing::on_timer(ngx_event_t* ev) noexcept {
    auto* listing = static_cast<ClusterListing*>(ev->data);
    guarded(listing->r_->connection->log, "listing the cluster's clients", [&] { listing->finish(NGX_HTTP_OK, ""); });
}

void ClusterListing::on_cleanup(void* data) noexcept {
    auto* listing = static_cast<ClusterListing*>(data);
    if (listing->timer_.timer_set) ngx_del_timer(&listing->timer_);
    RedisConnection::release(listing->connection_);
    listing->connection_ = nullptr;
    listing->done_ = true;
    delete listing;
}

// Answers once: this node's page, every page that came, and the nodes that did not answer.
void ClusterListing::finish(ngx_uint_t status, const std::string& error) {
    if (done_) return;
    done_ = true;
    if (timer_.timer_set) ngx_del_timer(&timer_);
    ngx_int_t rc;
    if (!error.empty()) {
        rc = send_text(r_, status, error);
    } else {
        json own = json::parse(w_->store.clients_page_json(query_));
        std::string host(reinterpret_cast<const char*>(ngx_cycle->hostname.data), ngx_cycle->hostname.len);
        json nodes = json::array();
        json first = json::object();
        first["node"] = origin_;
        first["host"] = host;
        first["self"] = true;
        for (auto& [key, value] : own.items()) first[key] = value;
        nodes.push_back(std::move(first));
        for (auto& [origin, page] : answers_) nodes.push_back(std::move(page));
        json unanswered = json::array();
        for (const std::string& origin : expected_) {
            if (answers_.count(origin) == 0) unanswered.push_back(origin);
        }
        json body = {{"scope", "cluster"}, {"nodes", std::move(nodes)}, {"unanswered", std::move(unanswered)}};
        if (!request_sent_ && !expected_.empty()) body["unanswered_reason"] = "no reply channel within the wait";
        rc = send_json(r_, NGX_HTTP_OK, body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
    }
    ngx_http_finalize_request(r_, rc);
}

}  // namespace

ngx_int_t cluster_clients(ngx_http_request_t* r, WorkerContext* w, const ClientQuery& q) {
    auto* mcf = static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_sse_module));
    if (mcf == nullptr || mcf->redis == nullptr) {
        return send_text(r, NGX_HTTP_BAD_REQUEST, "scope=cluster needs sse_redis: this node is the only one");
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    auto* listing = new ClusterListing(r, w, mcf->redis, q);
    cln->handler = ClusterListing::on_cleanup;
    cln->data = listing;
    return listing->start();
}

}  // namespace sse
