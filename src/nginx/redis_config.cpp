// The sse_redis* directives: the Redis address (resolved here, when nginx reads its
// configuration, so that no worker ever waits on DNS) and the link's tuning.
#include <arpa/inet.h>
#include <netdb.h>

#include <new>

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

void delete_config(void* data) {
    delete static_cast<RedisConfig*>(data);
}

// The host as a numeric address: getaddrinfo() blocks, which is fine here and nowhere else.
bool resolve(ngx_conf_t* cf, RedisAddress& a) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = getaddrinfo(a.host.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sse_redis: cannot resolve \"%s\": %s", a.host.c_str(),
                           gai_strerror(rc));
        return false;
    }
    char text[INET6_ADDRSTRLEN] = {0};
    const void* addr = found->ai_family == AF_INET6
                           ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr)
                           : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr);
    inet_ntop(found->ai_family, addr, text, sizeof(text));
    freeaddrinfo(found);
    a.host = text;
    return true;
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

char* set_redis(ngx_conf_t* cf, ngx_command_t*, void* conf) try {
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
    if (!parse_redis_url(url, config->address, reason)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sse_redis: %s", reason.c_str());
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (config->address.socket_path.empty() && !resolve(cf, config->address)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    mcf->redis = config;
    return NGX_CONF_OK;
} catch (const std::bad_alloc&) {
    return static_cast<char*>(NGX_CONF_ERROR);
}

char* set_redis_reconnect(ngx_conf_t* cf, ngx_command_t*, void* conf) {
    auto* mcf = static_cast<MainConf*>(conf);
    if (mcf->redis_reconnect_min != NGX_CONF_UNSET_MSEC) return const_cast<char*>("is duplicate");
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_msec_t min = ngx_parse_time(&value[1], 0);
    ngx_msec_t max = ngx_parse_time(&value[2], 0);
    if (min == (ngx_msec_t)NGX_ERROR || max == (ngx_msec_t)NGX_ERROR || min == 0 || max < min) {
        return const_cast<char*>("needs two times, the first delay and the longest, as in 100ms 3s");
    }
    mcf->redis_reconnect_min = min;
    mcf->redis_reconnect_max = max;
    return NGX_CONF_OK;
}

char* finish_redis_config(ngx_conf_t* cf, MainConf* mcf) {
    ngx_conf_init_msec_value(mcf->redis_connect_timeout, kDefaultConnectTimeout);
    ngx_conf_init_msec_value(mcf->redis_command_timeout, kDefaultCommandTimeout);
    ngx_conf_init_msec_value(mcf->redis_reconnect_min, kDefaultReconnectMin);
    ngx_conf_init_msec_value(mcf->redis_reconnect_max, kDefaultReconnectMax);
    ngx_conf_init_uint_value(mcf->redis_queue, kDefaultQueue);
    ngx_conf_init_msec_value(mcf->redis_sync_timeout, kDefaultSyncTimeout);
    RedisConfig* config = mcf->redis;
    if (config == nullptr) return NGX_CONF_OK;
    if (mcf->redis_prefix.data != nullptr) {
        std::string_view prefix(reinterpret_cast<const char*>(mcf->redis_prefix.data), mcf->redis_prefix.len);
        if (prefix.find_first_of(" \t\r\n") != std::string_view::npos) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sse_redis_prefix may not hold spaces or line breaks");
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        config->prefix = std::string(prefix);
    }
    if (mcf->redis_queue == 0 || mcf->redis_queue > 10000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sse_redis_queue must be from 1 to 10000000");
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (mcf->redis_connect_timeout == 0 || mcf->redis_command_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sse_redis timeouts must be above zero");
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    config->connect_timeout = mcf->redis_connect_timeout;
    config->command_timeout = mcf->redis_command_timeout;
    config->reconnect_min = mcf->redis_reconnect_min;
    config->reconnect_max = mcf->redis_reconnect_max;
    config->queue = std::uint32_t(mcf->redis_queue);
    config->sync_timeout = mcf->redis_sync_timeout;
    return NGX_CONF_OK;
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
