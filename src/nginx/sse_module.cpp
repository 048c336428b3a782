// The nginx face of the module: directives, configuration, the shared zone and the life of a
// worker process. Handlers live in subscribe_handler.cpp, publish_handler.cpp, stats_handler.cpp
// and clients_handler.cpp; the sse_redis* directives in redis_config.cpp.
#include "nginx/sse_module.h"

#include <new>
#include <type_traits>

#include "fault_injection.h"
#include "guard.h"
#include "protocol/channel_list.h"
#include "protocol/event_filter.h"
#include "protocol/event_frame.h"
#include "redis/redis_link.h"
#include "wakeup/worker_wakeup.h"

namespace sse {

namespace {

ngx_str_t zone_name = ngx_string("ngx_http_sse_module");

WorkerContext* the_worker = nullptr;

void* create_main_conf(ngx_conf_t* cf) noexcept;
char* init_main_conf(ngx_conf_t* cf, void* conf) noexcept;
void* create_loc_conf(ngx_conf_t* cf) noexcept;
char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child) noexcept;
char* set_location_role(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_heartbeat(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_shm_size(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_number(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_time(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_size(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_event_filter(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_max_per_key(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_max_lifetime(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_subscribe_allow(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* set_user(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* check_bounds(ngx_conf_t* cf, void* post, void* data) noexcept;
char* check_positive_time(ngx_conf_t* cf, void* post, void* data) noexcept;
char* check_reset_event(ngx_conf_t* cf, void* post, void* data) noexcept;
char* check_connected_event(ngx_conf_t* cf, void* post, void* data) noexcept;
ngx_int_t init_module(ngx_cycle_t* cycle) noexcept;
ngx_int_t init_process(ngx_cycle_t* cycle) noexcept;
void exit_process(ngx_cycle_t* cycle) noexcept;

constexpr ngx_int_t kMaxHistory = 10000000;
constexpr ngx_int_t kMaxRedisQueue = 10000000;

ngx_conf_num_bounds_t max_channels_bounds = {check_bounds, 1, 1024};
ngx_conf_num_bounds_t history_bounds = {check_bounds, 0, kMaxHistory};
ngx_conf_num_bounds_t send_buffer_bounds = {check_bounds, 1024, -1};
ngx_conf_num_bounds_t redis_queue_bounds = {check_bounds, 1, kMaxRedisQueue};
ngx_conf_post_t positive_time = {check_positive_time};
ngx_conf_post_t reset_event_post = {check_reset_event};
ngx_conf_post_t connected_event_post = {check_connected_event};
ngx_conf_post_t redis_prefix_post = {check_redis_prefix};

constexpr ngx_uint_t kEverywhere = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

// What a location serves when one of the directives that give it its content handler is there
// (one of them per location): set_location_role reads each through its command's `post`.
struct LocationRole {
    const char* reading;  // what guarded() logs on a failure
    ngx_http_handler_pt handler;
    ngx_http_complex_value_t* LocConf::*value;  // the argument is compiled into it; nullptr: none
    LocConf::PublishTarget target;              // kToChannels: the argument is a channel list
    ngx_flag_t LocConf::*flag;                  // set to 1, for the directives without an argument
};

LocationRole subscribe_role = {"reading sse_subscribe", subscribe_handler, &LocConf::subscribe, LocConf::kToChannels,
                               nullptr};
LocationRole publish_role = {"reading sse_publish", publish_handler, &LocConf::publish, LocConf::kToChannels, nullptr};
LocationRole publish_client_role = {"reading sse_publish_client", publish_handler, &LocConf::publish,
                                    LocConf::kToClient, nullptr};
LocationRole publish_user_role = {"reading sse_publish_user", publish_handler, &LocConf::publish, LocConf::kToUser,
                                  nullptr};
LocationRole stats_role = {"reading sse_stats", stats_handler, nullptr, LocConf::kToChannels, &LocConf::stats};
LocationRole clients_role = {"reading sse_clients", clients_handler, nullptr, LocConf::kToChannels, &LocConf::clients};

// The module's directives are of three kinds; each row of the table names only what is its own:
// the name, the arguments, the handler, the field it sets and the handler's post data.
using DirectiveHandler = char* (*)(ngx_conf_t*, ngx_command_t*, void*);

template <std::size_t N>
ngx_str_t directive_name(const char (&name)[N]) {
    return {N - 1, reinterpret_cast<u_char*>(const_cast<char*>(name))};
}

// A directive that makes a location a stream, a publisher or a report (location level only).
template <std::size_t N>
ngx_command_t role_directive(const char (&name)[N], ngx_uint_t args, LocationRole* role) {
    return {directive_name(name), NGX_HTTP_LOC_CONF | args, set_location_role, NGX_HTTP_LOC_CONF_OFFSET, 0, role};
}

// A directive of LocConf, allowed in http, server and location, inherited inwards.
template <std::size_t N>
ngx_command_t location_directive(const char (&name)[N], ngx_uint_t args, DirectiveHandler set, ngx_uint_t field = 0,
                                 void* post = nullptr) {
    return {directive_name(name), kEverywhere | args, set, NGX_HTTP_LOC_CONF_OFFSET, field, post};
}

// A directive of MainConf, allowed in http only.
template <std::size_t N>
ngx_command_t main_directive(const char (&name)[N], ngx_uint_t args, DirectiveHandler set, ngx_uint_t field = 0,
                             void* post = nullptr) {
    return {directive_name(name), NGX_HTTP_MAIN_CONF | args, set, NGX_HTTP_MAIN_CONF_OFFSET, field, post};
}

ngx_command_t commands[] = {
    // What a location is: a stream, a publisher or a report.
    role_directive("sse_subscribe", NGX_CONF_TAKE1, &subscribe_role),
    role_directive("sse_publish", NGX_CONF_TAKE1, &publish_role),
    role_directive("sse_publish_client", NGX_CONF_TAKE1, &publish_client_role),
    role_directive("sse_publish_user", NGX_CONF_TAKE1, &publish_user_role),
    role_directive("sse_stats", NGX_CONF_NOARGS, &stats_role),
    role_directive("sse_clients", NGX_CONF_NOARGS, &clients_role),
    // The shared zone.
    main_directive("sse_shm_size", NGX_CONF_TAKE1, set_shm_size),
    // How a stream is written.
    location_directive("sse_heartbeat", NGX_CONF_TAKE1, set_heartbeat, offsetof(LocConf, heartbeat)),
    location_directive("sse_retry", NGX_CONF_TAKE1, set_time, offsetof(LocConf, retry)),
    location_directive("sse_send_buffer", NGX_CONF_TAKE1, set_size, offsetof(LocConf, send_buffer),
                       &send_buffer_bounds),
    location_directive("sse_max_channels", NGX_CONF_TAKE1, set_number, offsetof(LocConf, max_channels),
                       &max_channels_bounds),
    // History and resume.
    location_directive("sse_history", NGX_CONF_TAKE1, set_number, offsetof(LocConf, history), &history_bounds),
    location_directive("sse_history_ttl", NGX_CONF_TAKE1, set_time, offsetof(LocConf, history_ttl)),
    location_directive("sse_replay", NGX_CONF_TAKE1, set_number, offsetof(LocConf, replay), &history_bounds),
    location_directive("sse_reset_event", NGX_CONF_TAKE1, ngx_conf_set_str_slot, offsetof(LocConf, reset_event),
                       &reset_event_post),
    // Who may open a stream, and how many.
    location_directive("sse_event_filter", NGX_CONF_TAKE1, set_event_filter),
    location_directive("sse_max_subscribers", NGX_CONF_TAKE1, set_number, offsetof(LocConf, max_subscribers)),
    location_directive("sse_max_subscribers_per_key", NGX_CONF_TAKE2, set_max_per_key),
    location_directive("sse_max_lifetime", NGX_CONF_TAKE12, set_max_lifetime),
    location_directive("sse_user", NGX_CONF_TAKE1, set_user),
    location_directive("sse_subscribe_patterns", NGX_CONF_FLAG, ngx_conf_set_flag_slot,
                       offsetof(LocConf, subscribe_patterns)),
    location_directive("sse_client_channel", NGX_CONF_FLAG, ngx_conf_set_flag_slot, offsetof(LocConf, client_channel)),
    location_directive("sse_direct_write", NGX_CONF_FLAG, ngx_conf_set_flag_slot, offsetof(LocConf, direct_write)),
    location_directive("sse_connected_event", NGX_CONF_TAKE1, ngx_conf_set_str_slot, offsetof(LocConf, connected_event),
                       &connected_event_post),
    location_directive("sse_subscribe_allow", NGX_CONF_1MORE, set_subscribe_allow),
    // Redis, between nginx nodes.
    main_directive("sse_redis", NGX_CONF_1MORE, set_redis),
    main_directive("sse_redis_prefix", NGX_CONF_TAKE1, ngx_conf_set_str_slot, offsetof(MainConf, redis_prefix),
                   &redis_prefix_post),
    main_directive("sse_redis_connect_timeout", NGX_CONF_TAKE1, set_time, offsetof(MainConf, redis_connect_timeout),
                   &positive_time),
    main_directive("sse_redis_command_timeout", NGX_CONF_TAKE1, set_time, offsetof(MainConf, redis_command_timeout),
                   &positive_time),
    main_directive("sse_redis_reconnect", NGX_CONF_TAKE2, set_redis_reconnect),
    main_directive("sse_redis_queue", NGX_CONF_TAKE1, set_number, offsetof(MainConf, redis_queue), &redis_queue_bounds),
    main_directive("sse_redis_sync_timeout", NGX_CONF_TAKE1, set_time, offsetof(MainConf, redis_sync_timeout)),
    main_directive("sse_redis_tls_trusted_certificate", NGX_CONF_TAKE1, ngx_conf_set_str_slot,
                   offsetof(MainConf, redis_tls_trusted_certificate)),
    main_directive("sse_redis_tls_verify", NGX_CONF_FLAG, ngx_conf_set_flag_slot, offsetof(MainConf, redis_tls_verify)),
    main_directive("sse_redis_tls_server_name", NGX_CONF_TAKE1, ngx_conf_set_str_slot,
                   offsetof(MainConf, redis_tls_server_name)),
    main_directive("sse_redis_tls_certificate", NGX_CONF_TAKE1, ngx_conf_set_str_slot,
                   offsetof(MainConf, redis_tls_certificate)),
    main_directive("sse_redis_tls_certificate_key", NGX_CONF_TAKE1, ngx_conf_set_str_slot,
                   offsetof(MainConf, redis_tls_certificate_key)),
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

char* conf_error() {
    return static_cast<char*>(NGX_CONF_ERROR);
}

char* is_duplicate() {
    return const_cast<char*>("is duplicate");
}

ngx_str_t* args(ngx_conf_t* cf) {
    return static_cast<ngx_str_t*>(cf->args->elts);
}

// The setter of a directive a block takes once: `body(conf, arguments)` runs under guarded()
// unless `field` no longer holds `unset` (the directive came before in this block).
template <typename Conf, typename Field, typename Body>
char* set_once(ngx_conf_t* cf, void* conf, Field Conf::*field, std::common_type_t<Field> unset, const char* reading,
               Body&& body) noexcept {
    return guarded(cf->log, reading, conf_error(), [&]() -> char* {
        auto* c = static_cast<Conf*>(conf);
        if (c->*field != unset) return is_duplicate();
        return body(c, args(cf));
    });
}

void* create_main_conf(ngx_conf_t* cf) noexcept {
    return guarded(cf->log, "creating the configuration", static_cast<void*>(nullptr), [&]() -> void* {
        auto* mcf = static_cast<MainConf*>(ngx_pcalloc(cf->pool, sizeof(MainConf)));
        if (mcf == nullptr) return nullptr;
        mcf->shm_size = NGX_CONF_UNSET_SIZE;
        init_redis_main_conf(mcf);
        return mcf;
    });
}

// The zone's data is the MainConf that added it; on a reload nginx passes the previous cycle's
// MainConf, whose store header (and all the zone holds) carries over, as with limit_req's ctx.
ngx_int_t init_zone(ngx_shm_zone_t* zone, void* data) noexcept {
    return guarded(zone->shm.log, "setting up the zone", ngx_int_t(NGX_ERROR), [&]() -> ngx_int_t {
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
    });
}

char* init_main_conf(ngx_conf_t* cf, void* conf) noexcept {
    return guarded(cf->log, "reading the configuration", conf_error(), [&]() -> char* {
        auto* mcf = static_cast<MainConf*>(conf);
        ngx_conf_init_size_value(mcf->shm_size, kDefaultShmSize);
        char* rv = finish_redis_config(cf, mcf);
        if (rv != NGX_CONF_OK || !mcf->used) return rv;
        mcf->zone = ngx_shared_memory_add(cf, &zone_name, mcf->shm_size, &ngx_http_sse_module);
        if (mcf->zone == nullptr) return conf_error();
        mcf->zone->init = init_zone;
        mcf->zone->data = mcf;
        return NGX_CONF_OK;
    });
}

void* create_loc_conf(ngx_conf_t* cf) noexcept {
    return guarded(cf->log, "creating the configuration", static_cast<void*>(nullptr), [&]() -> void* {
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
        lcf->max_subscribers = NGX_CONF_UNSET_UINT;
        lcf->max_per_key = NGX_CONF_UNSET_UINT;
        lcf->max_lifetime = NGX_CONF_UNSET_MSEC;
        lcf->lifetime_jitter = NGX_CONF_UNSET_MSEC;
        lcf->client_channel = NGX_CONF_UNSET;
        lcf->subscribe_patterns = NGX_CONF_UNSET;
        lcf->direct_write = NGX_CONF_UNSET;
        return lcf;
    });
}

char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child) noexcept {
    return guarded(cf->log, "merging the configuration", conf_error(), [&]() -> char* {
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
        ngx_conf_merge_str_value(conf->reset_event, prev->reset_event, "reset");
        if (conf->user == nullptr) conf->user = prev->user;
        ngx_conf_merge_value(conf->client_channel, prev->client_channel, 0);
        ngx_conf_merge_value(conf->subscribe_patterns, prev->subscribe_patterns, 0);
        ngx_conf_merge_value(conf->direct_write, prev->direct_write, 1);
        ngx_conf_merge_str_value(conf->connected_event, prev->connected_event, "");
        return NGX_CONF_OK;
    });
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

// Runs one of nginx's ngx_conf_set_*_slot functions (and so the command's post handler); a
// value it cannot read is refused naming the value, which nginx's own wording does not.
char* run_slot(ngx_conf_t* cf, ngx_command_t* cmd, void* conf, char* (*slot)(ngx_conf_t*, ngx_command_t*, void*),
               const char* why) {
    char* rv = slot(cf, cmd, conf);
    if (rv == NGX_CONF_OK || rv == conf_error() || ngx_strcmp(rv, "is duplicate") == 0) return rv;
    return invalid_value(cf, 1, why);
}

char* set_number(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept {
    return guarded(cf->log, "reading a number", conf_error(),
                   [&] { return run_slot(cf, cmd, conf, ngx_conf_set_num_slot, "it must be a number"); });
}

char* set_time(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept {
    return guarded(cf->log, "reading a time", conf_error(),
                   [&] { return run_slot(cf, cmd, conf, ngx_conf_set_msec_slot, "it must be a time such as 30s"); });
}

char* set_size(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept {
    return guarded(cf->log, "reading a size", conf_error(),
                   [&] { return run_slot(cf, cmd, conf, ngx_conf_set_size_slot, "it must be a size such as 64k"); });
}

// ngx_conf_check_num_bounds's test (high -1: no upper bound) with a message that names the
// directive and the value, as ngx_conf_check_num_bounds's does not.
char* check_bounds(ngx_conf_t* cf, void* post, void* data) noexcept {
    return guarded(cf->log, "reading a number", conf_error(), [&]() -> char* {
        auto* bounds = static_cast<ngx_conf_num_bounds_t*>(post);
        ngx_int_t n = *static_cast<ngx_int_t*>(data);
        if (n >= bounds->low && (bounds->high == -1 || n <= bounds->high)) return NGX_CONF_OK;
        u_char why[64];
        u_char* end = bounds->high == -1 ? ngx_snprintf(why, sizeof(why) - 1, "it must be at least %i", bounds->low)
                                         : ngx_snprintf(why, sizeof(why) - 1, "it must be between %i and %i",
                                                        bounds->low, bounds->high);
        *end = '\0';
        return invalid_value(cf, 1, reinterpret_cast<char*>(why));
    });
}

char* check_positive_time(ngx_conf_t* cf, void*, void* data) noexcept {
    return guarded(cf->log, "reading a time", conf_error(), [&]() -> char* {
        if (*static_cast<ngx_msec_t*>(data) > 0) return NGX_CONF_OK;
        return invalid_value(cf, 1, "it must be a time above zero, such as 2s");
    });
}

bool is_off(const ngx_str_t& s) {
    return s.len == 3 && ngx_strncmp(s.data, "off", 3) == 0;
}

// sse_reset_event <name> | off: the event a resuming stream gets when events it missed are gone.
char* check_reset_event(ngx_conf_t* cf, void*, void* data) noexcept {
    return guarded(cf->log, "reading sse_reset_event", conf_error(), [&]() -> char* {
        auto* name = static_cast<ngx_str_t*>(data);
        if (is_off(*name)) {
            name->len = 0;  // data stays set: "off" here is not "unset" to the merge
            return NGX_CONF_OK;
        }
        if (name->len == 0 || !is_valid_event_name(to_view(*name)) ||
            ngx_strlchr(name->data, name->data + name->len, ' ') != nullptr) {
            return invalid_value(cf, 1,
                                 "it must be an event name (at most 128 bytes, no spaces or line breaks) or off");
        }
        return NGX_CONF_OK;
    });
}

// sse_connected_event <name> | off: a first event telling the stream its client id.
char* check_connected_event(ngx_conf_t* cf, void*, void* data) noexcept {
    return guarded(cf->log, "reading sse_connected_event", conf_error(), [&]() -> char* {
        auto* name = static_cast<ngx_str_t*>(data);
        if (is_off(*name)) {
            name->len = 0;
            return NGX_CONF_OK;
        }
        if (name->len == 0 || name->len > kMaxEventNameLength || !is_valid_event_name(to_view(*name))) {
            return invalid_value(cf, 1, "it must be an event name (1-128 bytes, no CR or LF) or off");
        }
        return NGX_CONF_OK;
    });
}

// sse_event_filter <patterns>: a list written without variables is checked here, not on each
// request.
char* set_event_filter(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        ngx_http_complex_value_t* cv = compile_value(cf, &value[1]);
        if (cv == nullptr) return conf_error();
        if (cv->lengths == nullptr) {
            EventFilter filter;
            std::string reason;
            if (!filter.parse(to_view(cv->value), reason)) return invalid_value(cf, 1, reason.c_str());
        }
        lcf->event_filter = cv;
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::event_filter, nullptr, "reading sse_event_filter", body);
}

// sse_max_subscribers_per_key <key> <n>: the key may hold variables ($remote_addr, a user id).
char* set_max_per_key(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        ngx_int_t n = ngx_atoi(value[2].data, value[2].len);
        if (n <= 0) return invalid_value(cf, 2, "it must be a number of streams of at least 1");
        ngx_http_complex_value_t* cv = compile_value(cf, &value[1]);
        if (cv == nullptr) return conf_error();
        lcf->limit_key = cv;
        lcf->max_per_key = ngx_uint_t(n);
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::limit_key, nullptr, "reading sse_max_subscribers_per_key", body);
}

// sse_max_lifetime <time> [<jitter>]: a stream ends cleanly after <time> minus a random part of
// <jitter>, so that clients reconnect spread out rather than all at once.
char* set_max_lifetime(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        ngx_msec_t lifetime = ngx_parse_time(&value[1], 0);
        if (lifetime == (ngx_msec_t)NGX_ERROR || lifetime == 0) {
            return invalid_value(cf, 1, "it must be a time such as 30m, optionally followed by a jitter");
        }
        ngx_msec_t jitter = 0;
        if (cf->args->nelts == 3) {
            jitter = ngx_parse_time(&value[2], 0);
            if (jitter == (ngx_msec_t)NGX_ERROR || jitter >= lifetime) {
                return invalid_value(cf, 2, "the jitter must be a time shorter than the lifetime");
            }
        }
        lcf->max_lifetime = lifetime;
        lcf->lifetime_jitter = jitter;
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::max_lifetime, NGX_CONF_UNSET_MSEC, "reading sse_max_lifetime", body);
}

// sse_subscribe_allow <pattern> ...: the channels a stream may ask for, by name or by prefix
// (`public.*`); patterns may hold variables (`user:$user_id`).
char* set_subscribe_allow(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        lcf->allow = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_http_complex_value_t));
        if (lcf->allow == nullptr) return conf_error();
        for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
            if (value[i].len == 0) return invalid_value(cf, i, "it must be a channel name or pattern");
            auto* cv = static_cast<ngx_http_complex_value_t*>(ngx_array_push(lcf->allow));
            if (cv == nullptr || !compile_value_into(cf, &value[i], cv)) return conf_error();
        }
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::allow, nullptr, "reading sse_subscribe_allow", body);
}

// sse_user <value>: the stream's user key (any variable, e.g. set by auth_request_set).
char* set_user(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        if (value[1].len == 0) return invalid_value(cf, 1, "it must be a user key, such as $user_id");
        lcf->user = compile_value(cf, &value[1]);
        return lcf->user == nullptr ? conf_error() : NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::user, nullptr, "reading sse_user", body);
}

// Sets the content handler of the location; only one of sse_subscribe, sse_publish (or
// sse_publish_client, sse_publish_user), sse_stats and sse_clients may be in a location.
char* set_handler(ngx_conf_t* cf, ngx_command_t* cmd, LocConf* lcf, ngx_http_handler_pt handler) {
    if (lcf->subscribe != nullptr || lcf->publish != nullptr || lcf->stats == 1 || lcf->clients == 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": a location takes only one of sse_subscribe, sse_publish (or sse_publish_client, "
                           "sse_publish_user), sse_stats and sse_clients",
                           &cmd->name);
        return conf_error();
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = handler;
    // Every such location needs the zone and the wake-ups.
    auto* mcf = static_cast<MainConf*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));
    mcf->used = 1;
    return NGX_CONF_OK;
}

// sse_subscribe <channels>, sse_publish <channels>, sse_publish_client <value> (one stream, by
// client id), sse_publish_user <value> (every stream of one user key), sse_stats, sse_clients.
char* set_location_role(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept {
    const auto& role = *static_cast<const LocationRole*>(cmd->post);
    return guarded(cf->log, role.reading, conf_error(), [&]() -> char* {
        auto* lcf = static_cast<LocConf*>(conf);
        char* rv = set_handler(cf, cmd, lcf, role.handler);
        if (rv != NGX_CONF_OK) return rv;
        if (role.flag != nullptr) lcf->*role.flag = 1;
        if (role.value == nullptr) return NGX_CONF_OK;
        ngx_str_t* value = args(cf);
        if (value[1].len == 0) {
            return invalid_value(cf, 1,
                                 role.target == LocConf::kToChannels ? "it must be a channel list"
                                                                     : "it must be a value, such as $arg_client");
        }
        lcf->*role.value = compile_value(cf, &value[1]);
        if (lcf->*role.value == nullptr) return conf_error();
        lcf->publish_target = role.target;
        return NGX_CONF_OK;
    });
}

char* set_heartbeat(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](LocConf* lcf, ngx_str_t* value) -> char* {
        if (is_off(value[1])) {
            lcf->heartbeat = 0;
            return NGX_CONF_OK;
        }
        ngx_msec_t ms = ngx_parse_time(&value[1], 0);
        if (ms == (ngx_msec_t)NGX_ERROR || ms == 0)
            return invalid_value(cf, 1, "it must be a time such as 30s, or off");
        lcf->heartbeat = ms;
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &LocConf::heartbeat, NGX_CONF_UNSET_MSEC, "reading sse_heartbeat", body);
}

char* set_shm_size(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto body = [&](MainConf* mcf, ngx_str_t* value) -> char* {
        ssize_t size = ngx_parse_size(&value[1]);
        if (size == NGX_ERROR) return invalid_value(cf, 1, "it must be a size such as 32m");
        if (size_t(size) < kMinShmSize) return invalid_value(cf, 1, "the zone needs at least 256k");
        mcf->shm_size = size_t(size);
        return NGX_CONF_OK;
    };
    return set_once(cf, conf, &MainConf::shm_size, NGX_CONF_UNSET_SIZE, "reading sse_shm_size", body);
}

MainConf* main_conf(ngx_cycle_t* cycle) {
    auto* ctx = reinterpret_cast<ngx_http_conf_ctx_t*>(cycle->conf_ctx[ngx_http_module.index]);
    if (ctx == nullptr) return nullptr;
    return static_cast<MainConf*>(ctx->main_conf[ngx_http_sse_module.ctx_index]);
}

ngx_int_t init_module(ngx_cycle_t* cycle) noexcept {
    return guarded(cycle->log, "setting up the module", ngx_int_t(NGX_ERROR), [&]() -> ngx_int_t {
        MainConf* mcf = main_conf(cycle);
        if (mcf == nullptr || !mcf->used) return NGX_OK;
        return WorkerWakeup::create_once(cycle->log);
    });
}

void on_shutdown() noexcept {
    if (the_worker == nullptr || the_worker->shutting_down) return;
    the_worker->shutting_down = true;
    if (the_worker->redis) the_worker->redis->stop();
    end_local_streams();
    WorkerWakeup::stop();
}

void on_wake() noexcept {
    deliver_to_local_subscribers();
    if (the_worker != nullptr && the_worker->redis) the_worker->redis->on_wake();
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

ngx_int_t init_process(ngx_cycle_t* cycle) noexcept {
    return guarded(cycle->log, "starting the worker", ngx_int_t(NGX_ERROR), [&]() -> ngx_int_t {
        MainConf* mcf = main_conf(cycle);
        if (mcf == nullptr || !mcf->used || mcf->zone == nullptr) return NGX_OK;
        if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return NGX_OK;

        auto* pool = reinterpret_cast<ngx_slab_pool_t*>(mcf->zone->shm.addr);
        auto* w = new WorkerContext();
        w->store = Store(pool, mcf->store_header);
        w->slot = w->store.claim_slot(ngx_pid, cycle->log);
        if (w->slot == NGX_ERROR) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: all %ui worker slots of the zone are taken",
                          kMaxWorkerSlots);
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
            w->redis = std::make_unique<RedisLink>(mcf->redis, &w->store, ngx_uint_t(w->slot), cycle->log);
        }
        fault::arm();
        return NGX_OK;
    });
}

void exit_process(ngx_cycle_t* cycle) noexcept {
    if (the_worker == nullptr) return;
    guarded(cycle->log, "stopping the worker", [&] {
        the_worker->redis.reset();  // gives the role back first
        WorkerWakeup::stop();
        the_worker->store.release_slot(ngx_uint_t(the_worker->slot));
    });
    delete the_worker;
    the_worker = nullptr;
}

}  // namespace

char* invalid_value(ngx_conf_t* cf, ngx_uint_t arg, const char* why) {
    ngx_str_t* value = args(cf);
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid value \"%V\" in \"%V\" directive, %s", &value[arg], &value[0],
                       why);
    return conf_error();
}

WorkerContext::WorkerContext() = default;

WorkerContext::~WorkerContext() {
    destroy_local_index(streams);
}

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
