// The nginx face of the module: directives, configuration, the shared zone and the life of a
// worker process. Handlers live in subscribe_handler.cpp, publish_handler.cpp, stats_handler.cpp
// and clients_handler.cpp; the sse_redis* directives in redis_config.cpp.
#include "nginx/sse_module.h"

#include <new>

#include "protocol/channel_list.h"
#include "protocol/event_frame.h"
#include "redis/redis_link.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

ngx_str_t zone_name = ngx_string("ngx_http_sse_module");

WorkerContext* the_worker = nullptr;

void* create_main_conf(ngx_conf_t* cf);
char* init_main_conf(ngx_conf_t* cf, void* conf);
void* create_loc_conf(ngx_conf_t* cf);
char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child);
char* set_subscribe(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_publish(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_stats(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_heartbeat(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_shm_size(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* check_max_channels(ngx_conf_t* cf, void* post, void* data);
char* check_history(ngx_conf_t* cf, void* post, void* data);
char* set_reset_event(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_event_filter(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_max_per_key(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_max_lifetime(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_subscribe_allow(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_user(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_clients(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_publish_client(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_publish_user(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
char* set_handler(ngx_conf_t* cf, ngx_command_t* cmd, LocConf* lcf, ngx_http_handler_pt handler);
char* set_connected_event(ngx_conf_t* cf, ngx_command_t* cmd, void* conf);
ngx_int_t init_module(ngx_cycle_t* cycle) noexcept;
ngx_int_t init_process(ngx_cycle_t* cycle) noexcept;
void exit_process(ngx_cycle_t* cycle) noexcept;

ngx_conf_post_t max_channels_post = {check_max_channels};
ngx_conf_post_t history_post = {check_history};

ngx_command_t commands[] = {
    {ngx_string("sse_subscribe"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, set_subscribe, NGX_HTTP_LOC_CONF_OFFSET, 0,
     nullptr},
    {ngx_string("sse_publish"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, set_publish, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_stats"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, set_stats, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_clients"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, set_clients, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_shm_size"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_shm_size, NGX_HTTP_MAIN_CONF_OFFSET, 0,
     nullptr},
    {ngx_string("sse_heartbeat"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_heartbeat, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, heartbeat), nullptr},
    {ngx_string("sse_retry"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, retry), nullptr},
    {ngx_string("sse_send_buffer"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, send_buffer), nullptr},
    {ngx_string("sse_max_channels"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, max_channels), &max_channels_post},
    {ngx_string("sse_history"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, history), &history_post},
    {ngx_string("sse_history_ttl"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, history_ttl), nullptr},
    {ngx_string("sse_replay"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, replay), &history_post},
    {ngx_string("sse_reset_event"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_reset_event, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_event_filter"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_event_filter, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_max_subscribers"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, max_subscribers), nullptr},
    {ngx_string("sse_max_subscribers_per_key"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE2, set_max_per_key,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_max_lifetime"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE12,
     set_max_lifetime, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_publish_client"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, set_publish_client, NGX_HTTP_LOC_CONF_OFFSET,
     0, nullptr},
    {ngx_string("sse_publish_user"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, set_publish_user, NGX_HTTP_LOC_CONF_OFFSET,
     0, nullptr},
    {ngx_string("sse_user"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1, set_user,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_subscribe_patterns"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, subscribe_patterns), nullptr},
    {ngx_string("sse_client_channel"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, client_channel), nullptr},
    {ngx_string("sse_connected_event"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_connected_event, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_redis, NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_redis_prefix"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, redis_prefix), nullptr},
    {ngx_string("sse_redis_connect_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, redis_connect_timeout), nullptr},
    {ngx_string("sse_redis_command_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, redis_command_timeout), nullptr},
    {ngx_string("sse_redis_reconnect"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2, set_redis_reconnect,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("sse_redis_queue"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_num_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, redis_queue), nullptr},
    {ngx_string("sse_redis_sync_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, redis_sync_timeout), nullptr},
    {ngx_string("sse_subscribe_allow"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     set_subscribe_allow, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    ngx_null_command};

ngx_http_module_t module_ctx = {
    nullptr,           // preconfiguration
    nullptr,           // postconfiguration
    create_main_conf,  // create main configuration
    init_main_conf,    // init main configuration
    nullptr,           // create server configuration
    nullptr,           // merge server configuration
    create_loc_conf,   // create location configuration
    merge_loc_conf     // merge location configuration
};

constexpr size_t kDefaultShmSize = 32 * 1024 * 1024;
constexpr size_t kMinShmSize = 256 * 1024;
constexpr ngx_msec_t kDefaultHeartbeat = 30000;
constexpr size_t kDefaultSendBuffer = 256 * 1024;
constexpr ngx_uint_t kDefaultHistory = 100;
constexpr ngx_msec_t kDefaultHistoryTtl = 60 * 60 * 1000;
constexpr ngx_uint_t kMaxHistory = 10000000;

void* create_main_conf(ngx_conf_t* cf) {
    auto* mcf = static_cast<MainConf*>(ngx_pcalloc(cf->pool, sizeof(MainConf)));
    if (mcf == nullptr) return nullptr;
    mcf->shm_size = NGX_CONF_UNSET_SIZE;
    init_redis_main_conf(mcf);
    return mcf;
}

// The zone's data is the MainConf that added it; on a reload nginx passes the previous cycle's
// MainConf, whose store header (and all the zone holds) carries over, as with limit_req's ctx.
ngx_int_t init_zone(ngx_shm_zone_t* zone, void* data) {
    auto* mcf = static_cast<MainConf*>(zone->data);
    auto* previous = static_cast<MainConf*>(data);
    auto* pool = reinterpret_cast<ngx_slab_pool_t*>(zone->shm.addr);
    if (previous != nullptr) {
        mcf->store_header = previous->store_header;
    } else if (zone->shm.exists) {
        mcf->store_header = static_cast<StoreHeader*>(pool->data);
    } else {
        mcf->store_header = Store::create(pool);
        if (mcf->store_header == nullptr) return NGX_ERROR;
    }
    bool enabled = mcf->redis != nullptr;
    Store::configure_cluster(pool, mcf->store_header, enabled, enabled ? mcf->redis->queue : 0);
    return NGX_OK;
}

char* init_main_conf(ngx_conf_t* cf, void* conf) {
    auto* mcf = static_cast<MainConf*>(conf);
    ngx_conf_init_size_value(mcf->shm_size, kDefaultShmSize);
    if (finish_redis_config(cf, mcf) != NGX_CONF_OK) return static_cast<char*>(NGX_CONF_ERROR);
    if (!mcf->used) return NGX_CONF_OK;
    mcf->zone = ngx_shared_memory_add(cf, &zone_name, mcf->shm_size, &ngx_http_sse_module);
    if (mcf->zone == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    mcf->zone->init = init_zone;
    mcf->zone->data = mcf;
    return NGX_CONF_OK;
}

void* create_loc_conf(ngx_conf_t* cf) {
    auto* lcf = static_cast<LocConf*>(ngx_pcalloc(cf->pool, sizeof(LocConf)));
    if (lcf == nullptr) return nullptr;
    lcf->stats = NGX_CONF_UNSET;
    lcf->heartbeat = NGX_CONF_UNSET_MSEC;
    lcf->retry = NGX_CONF_UNSET_MSEC;
    lcf->send_buffer = NGX_CONF_UNSET_SIZE;
    lcf->max_channels = NGX_CONF_UNSET_UINT;
    lcf->history = NGX_CONF_UNSET_UINT;
    lcf->history_ttl = NGX_CONF_UNSET_MSEC;
    lcf->replay = NGX_CONF_UNSET_UINT;
    lcf->reset_event_set = NGX_CONF_UNSET;
    lcf->max_subscribers = NGX_CONF_UNSET_UINT;
    lcf->max_per_key = NGX_CONF_UNSET_UINT;
    lcf->max_lifetime = NGX_CONF_UNSET_MSEC;
    lcf->lifetime_jitter = NGX_CONF_UNSET_MSEC;
    lcf->client_channel = NGX_CONF_UNSET;
    lcf->subscribe_patterns = NGX_CONF_UNSET;
    lcf->connected_event_set = NGX_CONF_UNSET;
    return lcf;
}

char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child) {
    auto* prev = static_cast<LocConf*>(parent);
    auto* conf = static_cast<LocConf*>(child);
    ngx_conf_merge_msec_value(conf->heartbeat, prev->heartbeat, kDefaultHeartbeat);
    ngx_conf_merge_msec_value(conf->retry, prev->retry, NGX_CONF_UNSET_MSEC);
    ngx_conf_merge_size_value(conf->send_buffer, prev->send_buffer, kDefaultSendBuffer);
    ngx_conf_merge_uint_value(conf->max_channels, prev->max_channels, kDefaultMaxChannels);
    ngx_conf_merge_value(conf->stats, prev->stats, 0);
    ngx_conf_merge_uint_value(conf->history, prev->history, kDefaultHistory);
    ngx_conf_merge_msec_value(conf->history_ttl, prev->history_ttl, kDefaultHistoryTtl);
    ngx_conf_merge_uint_value(conf->replay, prev->replay, 0);
    if (conf->event_filter == nullptr) conf->event_filter = prev->event_filter;
    ngx_conf_merge_uint_value(conf->max_subscribers, prev->max_subscribers, 0);
    if (conf->limit_key == nullptr) {
        conf->limit_key = prev->limit_key;
        conf->max_per_key = prev->max_per_key;
    }
    ngx_conf_merge_msec_value(conf->max_lifetime, prev->max_lifetime, 0);
    if (conf->allow == nullptr) conf->allow = prev->allow;
    ngx_conf_merge_msec_value(conf->lifetime_jitter, prev->lifetime_jitter, 0);
    if (conf->reset_event_set == NGX_CONF_UNSET) {
        conf->reset_event_set = prev->reset_event_set == NGX_CONF_UNSET ? 0 : prev->reset_event_set;
        conf->reset_event = prev->reset_event;
        if (prev->reset_event_set == NGX_CONF_UNSET) {
            ngx_str_set(&conf->reset_event, "reset");
        }
    }
    if (conf->user == nullptr) conf->user = prev->user;
    ngx_conf_merge_value(conf->client_channel, prev->client_channel, 0);
    ngx_conf_merge_value(conf->subscribe_patterns, prev->subscribe_patterns, 0);
    if (conf->connected_event_set == NGX_CONF_UNSET) {
        conf->connected_event_set = prev->connected_event_set;
        conf->connected_event = prev->connected_event;
    }
    if (conf->send_buffer < 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"sse_send_buffer\" must be at least 1k");
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

// Compiles a directive's argument, which may hold variables, into cv.
bool compile_value_into(ngx_conf_t* cf, ngx_str_t* value, ngx_http_complex_value_t* cv) {
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = cv;
    return ngx_http_compile_complex_value(&ccv) == NGX_OK;
}

ngx_http_complex_value_t* compile_value(ngx_conf_t* cf, ngx_str_t* value) {
    auto* cv = static_cast<ngx_http_complex_value_t*>(ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == nullptr || !compile_value_into(cf, value, cv)) return nullptr;
    return cv;
}

char* check_max_channels(ngx_conf_t* cf, void* post, void* data) {
    auto* n = static_cast<ngx_uint_t*>(data);
    if (*n == 0 || *n > 1024) return const_cast<char*>("must be between 1 and 1024");
    return NGX_CONF_OK;
}

char* check_history(ngx_conf_t* cf, void* post, void* data) {
    auto* n = static_cast<ngx_uint_t*>(data);
    if (*n > kMaxHistory) return const_cast<char*>("must be at most 10000000");
    return NGX_CONF_OK;
}

char* set_reset_event(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->reset_event_set != NGX_CONF_UNSET) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    lcf->reset_event_set = 1;
    if (ngx_strcmp(value[1].data, "off") == 0) {
        lcf->reset_event.len = 0;
        lcf->reset_event.data = nullptr;
        return NGX_CONF_OK;
    }
    if (value[1].len == 0 || !is_valid_event_name(to_view(value[1])) ||
        ngx_strlchr(value[1].data, value[1].data + value[1].len, ' ') != nullptr) {
        return const_cast<char*>("needs an event name (at most 128 bytes, no spaces or line breaks) or off");
    }
    lcf->reset_event = value[1];
    return NGX_CONF_OK;
}

char* set_event_filter(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->event_filter != nullptr) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_http_complex_value_t* cv = compile_value(cf, &value[1]);
    if (cv == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    lcf->event_filter = cv;
    return NGX_CONF_OK;
}

// sse_max_subscribers_per_key <key> <n>: the key may hold variables ($remote_addr, a user id).
char* set_max_per_key(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->limit_key != nullptr) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_int_t n = ngx_atoi(value[2].data, value[2].len);
    if (n <= 0) return const_cast<char*>("needs a key and a number of streams of at least 1");
    ngx_http_complex_value_t* cv = compile_value(cf, &value[1]);
    if (cv == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    lcf->limit_key = cv;
    lcf->max_per_key = ngx_uint_t(n);
    return NGX_CONF_OK;
}

// sse_max_lifetime <time> [<jitter>]: a stream ends cleanly after <time> minus a random part of
// <jitter>, so that clients reconnect spread out rather than all at once.
char* set_max_lifetime(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->max_lifetime != NGX_CONF_UNSET_MSEC) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_msec_t lifetime = ngx_parse_time(&value[1], 0);
    if (lifetime == (ngx_msec_t)NGX_ERROR || lifetime == 0) {
        return const_cast<char*>("has an invalid value: use a time such as 30m, optionally followed by a jitter");
    }
    ngx_msec_t jitter = 0;
    if (cf->args->nelts == 3) {
        jitter = ngx_parse_time(&value[2], 0);
        if (jitter == (ngx_msec_t)NGX_ERROR || jitter >= lifetime) {
            return const_cast<char*>("has an invalid jitter: use a time shorter than the lifetime");
        }
    }
    lcf->max_lifetime = lifetime;
    lcf->lifetime_jitter = jitter;
    return NGX_CONF_OK;
}

// sse_subscribe_allow <pattern> ...: the channels a stream may ask for, by name or by prefix
// (`public.*`); patterns may hold variables (`user:$user_id`).
char* set_subscribe_allow(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->allow != nullptr) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    lcf->allow = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_http_complex_value_t));
    if (lcf->allow == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0) return const_cast<char*>("takes no empty pattern");
        auto* cv = static_cast<ngx_http_complex_value_t*>(ngx_array_push(lcf->allow));
        if (cv == nullptr || !compile_value_into(cf, &value[i], cv)) return static_cast<char*>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}

// sse_user <value>: the stream's user key (any variable, e.g. set by auth_request_set).
char* set_user(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->user != nullptr) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (value[1].len == 0) return const_cast<char*>("needs a value, such as $user_id");
    lcf->user = compile_value(cf, &value[1]);
    return lcf->user == nullptr ? static_cast<char*>(NGX_CONF_ERROR) : NGX_CONF_OK;
}

// sse_connected_event <name> | off: a first event telling the stream its client id.
char* set_connected_event(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->connected_event_set != NGX_CONF_UNSET) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    lcf->connected_event_set = 1;
    if (ngx_strcmp(value[1].data, "off") == 0) {
        ngx_str_null(&lcf->connected_event);
        return NGX_CONF_OK;
    }
    if (value[1].len == 0 || value[1].len > kMaxEventNameLength || !is_valid_event_name(to_view(value[1]))) {
        return const_cast<char*>("needs an event name (1-128 bytes, no CR or LF) or off");
    }
    lcf->connected_event = value[1];
    return NGX_CONF_OK;
}

// sse_publish_client <value> / sse_publish_user <value>: the location publishes to one stream
// (by client id) or to every stream of one user key, wherever they are.
char* set_publish_target(ngx_conf_t* cf, ngx_command_t* cmd, LocConf* lcf, LocConf::PublishTarget target) {
    char* rv = set_handler(cf, cmd, lcf, publish_handler);
    if (rv != NGX_CONF_OK) return rv;
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (value[1].len == 0) return const_cast<char*>("needs a value, such as $arg_client");
    lcf->publish = compile_value(cf, &value[1]);
    if (lcf->publish == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    lcf->publish_target = target;
    return NGX_CONF_OK;
}

char* set_publish_client(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    return set_publish_target(cf, cmd, static_cast<LocConf*>(conf), LocConf::kToClient);
}

char* set_publish_user(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    return set_publish_target(cf, cmd, static_cast<LocConf*>(conf), LocConf::kToUser);
}

// Sets the content handler of the location; only one of sse_subscribe, sse_publish (or
// sse_publish_client, sse_publish_user), sse_stats and sse_clients may be in a location.
char* set_handler(ngx_conf_t* cf, ngx_command_t* cmd, LocConf* lcf, ngx_http_handler_pt handler) {
    if (lcf->subscribe != nullptr || lcf->publish != nullptr || lcf->stats == 1 || lcf->clients == 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": a location takes only one of sse_subscribe, sse_publish (or sse_publish_client, "
                           "sse_publish_user), sse_stats and sse_clients",
                           &cmd->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = handler;
    // Every such location needs the zone and the wake-ups.
    auto* mcf = static_cast<MainConf*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));
    mcf->used = 1;
    return NGX_CONF_OK;
}

char* compile_channels(ngx_conf_t* cf, ngx_command_t* cmd, ngx_http_complex_value_t** out) {
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" needs a channel list, got an empty string", &cmd->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    ngx_http_complex_value_t* cv = compile_value(cf, &value[1]);
    if (cv == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    *out = cv;
    return NGX_CONF_OK;
}

char* set_subscribe(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    char* rv = set_handler(cf, cmd, lcf, subscribe_handler);
    if (rv != NGX_CONF_OK) return rv;
    return compile_channels(cf, cmd, &lcf->subscribe);
}

char* set_publish(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    char* rv = set_handler(cf, cmd, lcf, publish_handler);
    if (rv != NGX_CONF_OK) return rv;
    return compile_channels(cf, cmd, &lcf->publish);
}

char* set_stats(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    char* rv = set_handler(cf, cmd, lcf, stats_handler);
    if (rv != NGX_CONF_OK) return rv;
    lcf->stats = 1;
    return NGX_CONF_OK;
}

char* set_clients(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    char* rv = set_handler(cf, cmd, lcf, clients_handler);
    if (rv != NGX_CONF_OK) return rv;
    lcf->clients = 1;
    return NGX_CONF_OK;
}

char* set_heartbeat(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->heartbeat != NGX_CONF_UNSET_MSEC) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (ngx_strcmp(value[1].data, "off") == 0) {
        lcf->heartbeat = 0;
        return NGX_CONF_OK;
    }
    ngx_msec_t ms = ngx_parse_time(&value[1], 0);
    if (ms == (ngx_msec_t)NGX_ERROR || ms == 0)
        return const_cast<char*>("has an invalid value: use a time such as 30s, or off");
    lcf->heartbeat = ms;
    return NGX_CONF_OK;
}

char* set_shm_size(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) {
    auto* mcf = static_cast<MainConf*>(conf);
    if (mcf->shm_size != NGX_CONF_UNSET_SIZE) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ssize_t size = ngx_parse_size(&value[1]);
    if (size == NGX_ERROR) return const_cast<char*>("has an invalid value: use a size such as 32m");
    if (size_t(size) < kMinShmSize) return const_cast<char*>("is too small: the zone needs at least 256k");
    mcf->shm_size = size_t(size);
    return NGX_CONF_OK;
}

MainConf* main_conf(ngx_cycle_t* cycle) {
    auto* ctx = reinterpret_cast<ngx_http_conf_ctx_t*>(cycle->conf_ctx[ngx_http_module.index]);
    if (ctx == nullptr) return nullptr;
    return static_cast<MainConf*>(ctx->main_conf[ngx_http_sse_module.ctx_index]);
}

ngx_int_t init_module(ngx_cycle_t* cycle) noexcept try {
    MainConf* mcf = main_conf(cycle);
    if (mcf == nullptr || !mcf->used) return NGX_OK;
    return WorkerWakeup::create_once(cycle->log);
} catch (...) {
    ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "sse: unexpected exception in init_module");
    return NGX_ERROR;
}

void on_shutdown() noexcept {
    if (the_worker == nullptr || the_worker->shutting_down) return;
    the_worker->shutting_down = true;
    RedisLink::stop();
    end_local_streams();
    WorkerWakeup::stop();
}

void on_wake() noexcept {
    deliver_to_local_subscribers();
    RedisLink::on_wake();
}

// What events of other nodes keep on channels never published to here: the http level's
// sse_history and sse_history_ttl.
HistoryPolicy http_level_history(ngx_cycle_t* cycle) {
    auto* ctx = reinterpret_cast<ngx_http_conf_ctx_t*>(cycle->conf_ctx[ngx_http_module.index]);
    auto* lcf = static_cast<LocConf*>(ctx->loc_conf[ngx_http_sse_module.ctx_index]);
    HistoryPolicy policy;
    policy.limit = std::uint32_t(lcf->history == NGX_CONF_UNSET_UINT ? kDefaultHistory : lcf->history);
    policy.ttl = lcf->history_ttl == NGX_CONF_UNSET_MSEC ? kDefaultHistoryTtl : lcf->history_ttl;
    return policy;
}

ngx_int_t init_process(ngx_cycle_t* cycle) noexcept try {
    MainConf* mcf = main_conf(cycle);
    if (mcf == nullptr || !mcf->used || mcf->zone == nullptr) return NGX_OK;
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return NGX_OK;

    auto* pool = reinterpret_cast<ngx_slab_pool_t*>(mcf->zone->shm.addr);
    auto* w = new WorkerContext();
    w->store = Store(pool, mcf->store_header);
    w->slot = w->store.claim_slot(ngx_pid, cycle->log);
    if (w->slot == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: all %ui worker slots of the zone are taken", kMaxWorkerSlots);
        delete w;
        return NGX_OK;
    }
    ngx_fd_t fd = WorkerWakeup::descriptor_of(ngx_uint_t(w->slot));
    if (WorkerWakeup::listen(cycle, fd, on_wake, on_shutdown) != NGX_OK) {
        w->store.release_slot(ngx_uint_t(w->slot));
        delete w;
        return NGX_ERROR;
    }
    the_worker = w;
    if (mcf->redis != nullptr) {
        mcf->redis->history = http_level_history(cycle);
        RedisLink::start(mcf->redis, &w->store, ngx_uint_t(w->slot), cycle->log);
    }
    return NGX_OK;
} catch (...) {
    ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: unexpected exception in init_process");
    return NGX_ERROR;
}

void exit_process(ngx_cycle_t* cycle) noexcept {
    if (the_worker == nullptr) return;
    try {
        RedisLink::stop();
        WorkerWakeup::stop();
        the_worker->store.release_slot(ngx_uint_t(the_worker->slot));
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: unexpected exception in exit_process");
    }
    delete the_worker;
    the_worker = nullptr;
}

}  // namespace

WorkerContext* worker_context() {
    return the_worker;
}

namespace {
int hex_value(u_char c) {
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}
}  // namespace

bool url_decode(ngx_http_request_t* r, ngx_str_t& value) {
    if (ngx_strlchr(value.data, value.data + value.len, '%') == nullptr &&
        ngx_strlchr(value.data, value.data + value.len, '+') == nullptr) {
        return true;
    }
    auto* decoded = static_cast<u_char*>(ngx_pnalloc(r->pool, value.len));
    if (decoded == nullptr) return false;
    // Not ngx_unescape_uri: it drops the '%' of a malformed escape ("a%zz" would become the
    // valid name "azz"); here it stays, and the name is refused. Forms encode spaces as '+'.
    size_t n = 0;
    for (size_t i = 0; i < value.len; i++) {
        u_char c = value.data[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < value.len && hex_value(value.data[i + 1]) >= 0 &&
                   hex_value(value.data[i + 2]) >= 0) {
            c = u_char(hex_value(value.data[i + 1]) * 16 + hex_value(value.data[i + 2]));
            i += 2;
        }
        decoded[n++] = c;
    }
    value.data = decoded;
    value.len = n;
    return true;
}

ngx_int_t evaluate_channel_list(ngx_http_request_t* r, ngx_http_complex_value_t* value, ngx_str_t& out) {
    if (ngx_http_complex_value(r, value, &out) != NGX_OK) return NGX_ERROR;
    return url_decode(r, out) ? NGX_OK : NGX_ERROR;
}

bool request_header(ngx_http_request_t* r, std::string_view name, ngx_str_t& out) {
    ngx_list_part_t* part = &r->headers_in.headers.part;
    auto* h = static_cast<ngx_table_elt_t*>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) return false;
            part = part->next;
            h = static_cast<ngx_table_elt_t*>(part->elts);
            i = 0;
        }
        if (h[i].hash == 0 || h[i].key.len != name.size()) continue;
        if (ngx_strncasecmp(h[i].key.data, reinterpret_cast<u_char*>(const_cast<char*>(name.data())), name.size()) ==
            0) {
            out = h[i].value;
            return true;
        }
    }
}

bool query_arg(ngx_http_request_t* r, const char* name, ngx_str_t& value) {
    return ngx_http_arg(r, reinterpret_cast<u_char*>(const_cast<char*>(name)), ngx_strlen(name), &value) == NGX_OK;
}

std::string_view to_view(const ngx_str_t& s) {
    return {reinterpret_cast<const char*>(s.data), s.len};
}

ngx_int_t send_body(ngx_http_request_t* r, ngx_uint_t status, std::string_view type, std::string_view body) {
    if (r->header_sent) return NGX_ERROR;
    ngx_http_discard_request_body(r);
    r->headers_out.status = status;
    r->headers_out.content_type.len = type.size();
    r->headers_out.content_type.data = reinterpret_cast<u_char*>(const_cast<char*>(type.data()));
    r->headers_out.content_type_len = type.size();
    r->headers_out.content_length_n = off_t(body.size());
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;

    auto* b = static_cast<ngx_buf_t*>(ngx_calloc_buf(r->pool));
    if (b == nullptr) return NGX_ERROR;
    auto* data = static_cast<u_char*>(ngx_pnalloc(r->pool, body.size()));
    if (data == nullptr && !body.empty()) return NGX_ERROR;
    ngx_memcpy(data, body.data(), body.size());
    b->pos = data;
    b->last = data + body.size();
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t send_text(ngx_http_request_t* r, ngx_uint_t status, std::string_view text) {
    std::string line(text);
    line += '\n';
    return send_body(r, status, "text/plain", line);
}

ngx_int_t send_json(ngx_http_request_t* r, ngx_uint_t status, std::string_view json) {
    return send_body(r, status, "application/json", json);
}

}  // namespace sse

extern "C" {
ngx_module_t ngx_http_sse_module = {NGX_MODULE_V1,
                                    &sse::module_ctx,   // module context
                                    sse::commands,      // module directives
                                    NGX_HTTP_MODULE,    // module type
                                    nullptr,            // init master
                                    sse::init_module,   // init module
                                    sse::init_process,  // init process
                                    nullptr,            // init thread
                                    nullptr,            // exit thread
                                    sse::exit_process,  // exit process
                                    nullptr,            // exit master
                                    NGX_MODULE_V1_PADDING};
}
