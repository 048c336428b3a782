// This node's link to Redis. In each node one worker (whichever claims the role in the zone)
// holds two connections: one subscribed to the channels the node's streams use plus a private
// channel of its own, one for commands. It sends the node's events out in publish order from
// the zone's bounded queue, takes other nodes' events in, and fetches a channel's history from
// Redis when the node starts listening to it. Every other worker only wakes it.
//
// Connection loss: the queue keeps filling (dropping its oldest when full), the link retries with
// exponential backoff and jitter, then subscribes again to exactly the channels in use, merges
// what Redis retained meanwhile and sends the queue in order. Each change of state is logged
// once.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <memory>
#include <string>
#include <vector>

#include "redis/redis_connection.h"
#include "redis/redis_url.h"
#include "store/event_store.h"

namespace sse {

struct RedisConfig {
    RedisAddress address;
    // The server sse_redis names, or the sentinels to ask (resolved when nginx reads its
    // configuration).
    std::vector<RedisServer> servers;
    RedisTls tls;
    std::string prefix = "sse:";
    ngx_msec_t connect_timeout = 2000;
    ngx_msec_t command_timeout = 5000;
    ngx_msec_t reconnect_min = 100;
    ngx_msec_t reconnect_max = 3000;
    std::uint32_t queue = 10000;
    ngx_msec_t sync_timeout = 1000;
    HistoryPolicy history;  // for events of other nodes on channels never published to here

    // Several servers in sse_redis are the seeds of a Redis Cluster.
    bool seeds_a_cluster() const { return servers.size() > 1 && address.master_name.empty(); }
};

class Link;  // redis_link_state.h

// One per worker of a node with sse_redis, owned by the worker's context: made in
// init_process, destroyed in exit_process. Only one worker of the node (whichever claims the
// role in the zone) holds the connections at a time.
class RedisLink {
public:
    // Starts the timer that claims the role.
    RedisLink(const RedisConfig* config, Store* store, ngx_uint_t slot, ngx_log_t* log);
    // Gives the role back, if held, and frees everything.
    ~RedisLink();
    RedisLink(const RedisLink&) = delete;
    RedisLink& operator=(const RedisLink&) = delete;

    // The worker was woken: when it holds the link, there may be events to send or channels to
    // subscribe to.
    void on_wake();
    // The worker is retiring (reload, quit): hands the role back at once.
    void stop();

private:
    std::unique_ptr<Link> link_;
};

}  // namespace sse
