// The sse_redis* directives: the Redis address (resolved here, when nginx reads its
// configuration, so that no worker ever waits on DNS) and the link's tuning. Each value is
// checked by its directive's setter or post handler, so an error names the directive's line.
#include <arpa/inet.h>
#include <netdb.h>

#include <string>

#include "guard.h"
#include "nginx/sse_module.h"
#include "redis/redis_link.h"
#include "redis/redis_url.h"

namespace sse {

namespace {

constexpr ngx_msec_t kDefaultConnectTimeout = 2000;
constexpr ngx_msec_t kDefaultCommandTimeout = 5000;
constexpr ngx_msec_t kDefaultReconnectMin = 100;
constexpr ngx_msec_t kDefaultReconnectMax = 3000;
constexpr ngx_uint_t kDefaultQueue = 10000;
constexpr ngx_msec_t kDefaultSyncTimeout = 1000;

void delete_config(void* data) noexcept {
    guarded(ngx_cycle->log, "releasing the Redis settings", [&] { delete static_cast<RedisConfig*>(data); });
}

// The URL as it may appear in an error log: credentials are not echoed.
std::string without_credentials(std::string_view url) {
    constexpr std::string_view kRedis = "redis://";
    if (url.substr(0, kRedis.size()) != kRedis) return std::string(url);
    std::size_t at = url.rfind('@');
    if (at == std::string_view::npos || at < kRedis.size()) return std::string(url);
    return std::string(kRedis) + "***" + std::string(url.substr(at));
}

// Refuses sse_redis's URL, naming it without its credentials.
char* invalid_url(ngx_conf_t* cf, std::string_view url, const std::string& why) {
    std::string shown = without_credentials(url);
    ngx_str_t value = {shown.size(), reinterpret_cast<u_char*>(shown.data())};
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid value \"%V\" in \"sse_redis\" directive, %s", &value,
                       why.c_str());
    return static_cast<char*>(NGX_CONF_ERROR);
}

// The host as a numeric address: getaddrinfo() blocks, which is fine here and nowhere else.
char* resolve(ngx_conf_t* cf, std::string_view url, RedisAddress& a) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(a.host.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
        return invalid_url(cf, url, "cannot resolve \"" + a.host + "\": " + gai_strerror(rc));
    }
    char text[INET6_ADDRSTRLEN] = {0};
    const void* addr = found->ai_family == AF_INET6
                           ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr)
                           : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr);
    inet_ntop(found->ai_family, addr, text, sizeof(text));
    freeaddrinfo(found);
    a.host = text;
    return NGX_CONF_OK;
}

}  // namespace

void init_redis_main_conf(MainConf* mcf) {
    mcf->redis_connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_command_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_reconnect_min = NGX_CONF_UNSET_MSEC;
    mcf->redis_reconnect_max = NGX_CONF_UNSET_MSEC;
    mcf->redis_queue = NGX_CONF_UNSET_UINT;
    mcf->redis_sync_timeout = NGX_CONF_UNSET_MSEC;
}

char* set_redis(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    return guarded(cf->log, "reading sse_redis", static_cast<char*>(NGX_CONF_ERROR), [&]() -> char* {
        auto* mcf = static_cast<MainConf*>(conf);
        if (mcf->redis != nullptr) return const_cast<char*>("is duplicate");
        auto* value = static_cast<ngx_str_t*>(cf->args->elts);
        if (ngx_strcmp(value[1].data, "off") == 0) return NGX_CONF_OK;
        auto* config = new RedisConfig();
        ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (cln == nullptr) {
            delete config;
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        cln->handler = delete_config;
        cln->data = config;
        std::string reason;
        std::string_view url(reinterpret_cast<const char*>(value[1].data), value[1].len);
        if (!parse_redis_url(url, config->address, reason)) return invalid_url(cf, url, reason);
        if (config->address.socket_path.empty()) {
            char* rv = resolve(cf, url, config->address);
            if (rv != NGX_CONF_OK) return rv;
        }
        mcf->redis = config;
        return NGX_CONF_OK;
    });
}

char* set_redis_reconnect(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    return guarded(cf->log, "reading sse_redis_reconnect", static_cast<char*>(NGX_CONF_ERROR), [&]() -> char* {
        auto* mcf = static_cast<MainConf*>(conf);
        if (mcf->redis_reconnect_min != NGX_CONF_UNSET_MSEC) return const_cast<char*>("is duplicate");
        auto* value = static_cast<ngx_str_t*>(cf->args->elts);
        ngx_msec_t min = ngx_parse_time(&value[1], 0);
        if (min == (ngx_msec_t)NGX_ERROR || min == 0) {
            return invalid_value(cf, 1, "the first delay must be a time above zero, as in 100ms 3s");
        }
        ngx_msec_t max = ngx_parse_time(&value[2], 0);
        if (max == (ngx_msec_t)NGX_ERROR || max < min) {
            return invalid_value(cf, 2, "the longest delay must be a time no shorter than the first, as in 100ms 3s");
        }
        mcf->redis_reconnect_min = min;
        mcf->redis_reconnect_max = max;
        return NGX_CONF_OK;
    });
}

// sse_redis_prefix <prefix>: the start of every Redis key and channel name of this module.
char* check_redis_prefix(ngx_conf_t* cf, void*, void* data) noexcept {
    return guarded(cf->log, "reading sse_redis_prefix", static_cast<char*>(NGX_CONF_ERROR), [&]() -> char* {
        std::string_view prefix = to_view(*static_cast<ngx_str_t*>(data));
        if (prefix.find_first_of(" \t\r\n") == std::string_view::npos) return NGX_CONF_OK;
        return invalid_value(cf, 1, "it may not hold spaces or line breaks");
    });
}

void finish_redis_config(MainConf* mcf) {
    ngx_conf_init_msec_value(mcf->redis_connect_timeout, kDefaultConnectTimeout);
    ngx_conf_init_msec_value(mcf->redis_command_timeout, kDefaultCommandTimeout);
    ngx_conf_init_msec_value(mcf->redis_reconnect_min, kDefaultReconnectMin);
    ngx_conf_init_msec_value(mcf->redis_reconnect_max, kDefaultReconnectMax);
    ngx_conf_init_uint_value(mcf->redis_queue, kDefaultQueue);
    ngx_conf_init_msec_value(mcf->redis_sync_timeout, kDefaultSyncTimeout);
    RedisConfig* config = mcf->redis;
    if (config == nullptr) return;
    if (mcf->redis_prefix.data != nullptr) config->prefix = std::string(to_view(mcf->redis_prefix));
    config->connect_timeout = mcf->redis_connect_timeout;
    config->command_timeout = mcf->redis_command_timeout;
    config->reconnect_min = mcf->redis_reconnect_min;
    config->reconnect_max = mcf->redis_reconnect_max;
    config->queue = std::uint32_t(mcf->redis_queue);
    config->sync_timeout = mcf->redis_sync_timeout;
}

bool redis_connected(Store& store) {
    return redis_publish_state(store) == "forwarded";
}

std::string_view redis_publish_state(Store& store) {
    const ClusterState& cs = store.header()->cluster;
    if (!cs.enabled) return {};
    return __atomic_load_n(&cs.state, __ATOMIC_ACQUIRE) == ngx_atomic_uint_t(RedisState::kConnected) ? "forwarded"
                                                                                                     : "queued";
}

}  // namespace sse
