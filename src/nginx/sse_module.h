// Declarations shared by the files of the nginx boundary: configuration, the per-worker context
// and the handlers. Only src/nginx/ sees nginx's HTTP types.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <memory>
#include <string_view>

#include "protocol/stats_report.h"
#include "store/event_store.h"

extern "C" ngx_module_t ngx_http_sse_module;

namespace sse {

struct RedisConfig;
class RedisLink;

struct MainConf {
    ngx_shm_zone_t* zone;       // its data is this MainConf, as ngx_http_limit_req_module keeps its ctx
    StoreHeader* store_header;  // in the zone; set by the zone's init, carried over on reload
    size_t shm_size;
    ngx_flag_t used;     // some location subscribes or publishes: the zone and wake-ups are needed
    RedisConfig* redis;  // sse_redis; nullptr: a single node
    // The sse_redis_* directives as written (checked by their setters), put into `redis` by
    // finish_redis_config.
    ngx_str_t redis_prefix;
    ngx_msec_t redis_connect_timeout;
    ngx_msec_t redis_command_timeout;
    ngx_msec_t redis_reconnect_min;
    ngx_msec_t redis_reconnect_max;
    ngx_uint_t redis_queue;
    ngx_msec_t redis_sync_timeout;
    // sse_redis_tls_*: for rediss://
    ngx_str_t redis_tls_trusted_certificate;
    ngx_flag_t redis_tls_verify;
    ngx_str_t redis_tls_server_name;
    ngx_str_t redis_tls_certificate;
    ngx_str_t redis_tls_certificate_key;
};

// Refuses the directive's argument number `arg` in nginx's words, naming it:
// `invalid value "x" in "sse_y" directive, <why>`; returns NGX_CONF_ERROR.
char* invalid_value(ngx_conf_t* cf, ngx_uint_t arg, const char* why);

// The sse_redis* directives (redis_config.cpp).
char* set_redis(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_redis_reconnect(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* check_redis_prefix(ngx_conf_t* cf, void* post, void* data) noexcept;
void init_redis_main_conf(MainConf* mcf);
char* finish_redis_config(ngx_conf_t* cf, MainConf* mcf);
// Whether this node's events go to Redis at once ("forwarded") or wait ("queued"); empty
// without Redis.
std::string_view redis_publish_state(Store& store);

struct LocConf {
    ngx_http_complex_value_t* subscribe;
    ngx_http_complex_value_t* publish;
    ngx_flag_t stats;
    ngx_flag_t clients;    // sse_clients
    ngx_msec_t heartbeat;  // 0: off
    ngx_msec_t retry;      // NGX_CONF_UNSET_MSEC: no retry field
    size_t send_buffer;
    ngx_uint_t max_channels;
    ngx_uint_t history;                      // events kept per channel published to from here
    ngx_msec_t history_ttl;                  // 0: no time limit
    ngx_uint_t replay;                       // most recent events sent on a first connect
    ngx_str_t reset_event;                   // len 0: off; data nullptr: not set here
    ngx_http_complex_value_t* event_filter;  // event type patterns a stream keeps; nullptr: all
    ngx_uint_t max_subscribers;              // over all workers; 0: no limit
    ngx_http_complex_value_t* limit_key;     // sse_max_subscribers_per_key's key
    ngx_uint_t max_per_key;
    ngx_array_t* allow;       // sse_subscribe_allow: ngx_http_complex_value_t patterns; nullptr: any channel
    ngx_msec_t max_lifetime;  // 0: none
    ngx_msec_t lifetime_jitter;
    ngx_http_complex_value_t* user;  // sse_user: the stream's user key; nullptr: none
    ngx_flag_t client_channel;       // sse_client_channel: the stream can be published to by client id
    ngx_flag_t subscribe_patterns;   // sse_subscribe_patterns: `blog.*` and `*` may be asked for
    ngx_str_t connected_event;       // sse_connected_event: the first event's name; len 0: off
    // sse_direct_write: a stream no nginx body filter changes is written as framed chunks past
    // the filters (subscribe_handler.cpp); off for a third-party body filter it cannot see.
    ngx_flag_t direct_write;
    enum PublishTarget : ngx_uint_t { kToChannels = 0, kToClient, kToUser } publish_target;
};

// The index of a worker's streams by channel, with its frame buffers (subscribe_handler.cpp).
struct LocalIndex;
LocalIndex* create_local_index();
void destroy_local_index(LocalIndex* index) noexcept;

// What one worker process owns; built in init_process, torn down in exit_process.
struct WorkerContext {
    Store store;
    ngx_int_t slot = -1;
    bool shutting_down = false;
    LocalIndex* streams = create_local_index();
    std::unique_ptr<RedisLink> redis;  // with sse_redis

    WorkerContext();
    ~WorkerContext();  // in sse_module.cpp, where RedisLink is complete
    WorkerContext(const WorkerContext&) = delete;
    WorkerContext& operator=(const WorkerContext&) = delete;
};

// nullptr outside a worker that serves the module (e.g. in the master or before init).
WorkerContext* worker_context();

// A channel's figures as the stats and GET on a publish location report them.
ChannelReport channel_report(std::string name, const ChannelState& state);

ngx_int_t subscribe_handler(ngx_http_request_t* r) noexcept;
ngx_int_t publish_handler(ngx_http_request_t* r) noexcept;
ngx_int_t stats_handler(ngx_http_request_t* r) noexcept;
ngx_int_t clients_handler(ngx_http_request_t* r) noexcept;

// Called when this worker is woken: delivers what the log holds for it.
void deliver_to_local_subscribers() noexcept;
// Graceful shutdown of this worker: every local stream ends cleanly.
void end_local_streams() noexcept;

// Answers with a status and a one-line plain-text reason.
ngx_int_t send_text(ngx_http_request_t* r, ngx_uint_t status, std::string_view text);
// Answers with a body of the given type.
ngx_int_t send_body(ngx_http_request_t* r, ngx_uint_t status, std::string_view type, std::string_view body);
// Answers with a JSON body.
ngx_int_t send_json(ngx_http_request_t* r, ngx_uint_t status, std::string_view json);
// sse_clients?scope=cluster (cluster_clients.cpp): answers later, through Redis.
ngx_int_t cluster_clients(ngx_http_request_t* r, WorkerContext* w, const ClientQuery& q);

std::string_view to_view(const ngx_str_t& s);

// The value of the request's first header of this name (any case); false when it has none.
bool request_header(ngx_http_request_t* r, std::string_view name, ngx_str_t& out);

// The raw value of a query argument; false when the request has none.
bool query_arg(ngx_http_request_t* r, const char* name, ngx_str_t& value);

// Whether this node's link to Redis is up (false without Redis).
bool redis_connected(Store& store);

// URL-decodes a query value ('+' is a space) into the request pool when it holds escapes.
bool url_decode(ngx_http_request_t* r, ngx_str_t& value);

// Evaluates a channel-list value and URL-decodes it: `$arg_topics` is raw, and browsers send
// the commas of `new EventSource('/events?topics=' + encodeURIComponent('a,b'))` as %2C.
// No channel name holds '%' or '+', so decoding cannot change a valid list's meaning.
ngx_int_t evaluate_channel_list(ngx_http_request_t* r, ngx_http_complex_value_t* value, ngx_str_t& out);

}  // namespace sse
