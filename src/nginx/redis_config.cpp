// The sse_redis* directives: the Redis address (resolved here, when nginx reads its
// configuration, so that no worker ever waits on DNS) and the link's tuning. Each value is
// checked by its directive's setter or post handler, so an error names the directive's line.
#include <cstring>
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
    std::size_t scheme = url.find("://");
    if (scheme == std::string_view::npos) return std::string(url);
    scheme += 3;
    std::size_t at = url.rfind('@');
    if (at == std::string_view::npos || at < scheme) return std::string(url);
    return std::string(url.substr(0, scheme)) + "***" + std::string(url.substr(at));
}

// Refuses sse_redis's URL, naming it without its credentials.
char* invalid_url(ngx_conf_t* cf, std::string_view url, const std::string& why) {
    std::string shown = without_credentials(url);
    ngx_str_t value = {shown.size(), reinterpret_cast<u_char*>(shown.data())};
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid value \"%V\" in \"sse_redis\" directive, %s", &value,
                       why.c_str());
    return static_cast<char*>(NGX_CONF_ERROR);
}

// A host (or unix socket) as a numeric address: nginx's resolution blocks, which is fine here
// and nowhere else.
char* resolve(ngx_conf_t* cf, std::string_view url, const std::string& host, int port, const std::string& socket,
              RedisServer& out) {
    std::string text = !socket.empty()                       ? "unix:" + socket
                       : host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port)
                                                             : host + ":" + std::to_string(port);
    ngx_url_t u{};
    u.url.len = text.size();
    u.url.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, text.size()));
    if (u.url.data == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    ngx_memcpy(u.url.data, text.data(), text.size());
    u.default_port = in_port_t(port);
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        std::string why = u.err != nullptr ? u.err : "no address";
        return invalid_url(cf, url, "cannot resolve \"" + (socket.empty() ? host : socket) + "\": " + why);
    }
    if (u.addrs[0].socklen > sizeof(out.sockaddr)) return invalid_url(cf, url, "an address too long");
    std::memcpy(&out.sockaddr, u.addrs[0].sockaddr, u.addrs[0].socklen);
    out.socklen = u.addrs[0].socklen;
    out.display = !socket.empty() ? "unix:" + socket : std::string(to_view(u.addrs[0].name));
    out.server_name = host;
    return NGX_CONF_OK;
}

// Another seed of a Redis Cluster (sse_redis's second URL and after): a node the link may ask for
// the cluster's map. Every seed names the same cluster, so they share the first URL's scheme and
// credentials; a cluster has only database 0.
char* add_cluster_seed(ngx_conf_t* cf, const RedisAddress& first, std::string_view url, RedisConfig& config) {
    RedisAddress seed;
    std::string reason;
    if (!parse_redis_url(url, seed, reason)) return invalid_url(cf, url, reason);
    if (!first.sentinels.empty() || !seed.sentinels.empty() || !first.socket_path.empty() ||
        !seed.socket_path.empty()) {
        return invalid_url(cf, url,
                           "several URLs name the seeds of a Redis Cluster: each is redis:// or rediss:// with a host");
    }
    if (seed.tls != first.tls || seed.user != first.user || seed.password != first.password ||
        seed.has_password != first.has_password) {
        return invalid_url(cf, url, "the seeds of a Redis Cluster share the first URL's scheme and credentials");
    }
    if (first.db != 0 || seed.db != 0) return invalid_url(cf, url, "a Redis Cluster has only database 0");
    config.servers.emplace_back();
    return resolve(cf, url, seed.host, seed.port, "", config.servers.back());
}

}  // namespace

void init_redis_main_conf(MainConf* mcf) {
    mcf->redis_connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_command_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_reconnect_min = NGX_CONF_UNSET_MSEC;
    mcf->redis_reconnect_max = NGX_CONF_UNSET_MSEC;
    mcf->redis_queue = NGX_CONF_UNSET_UINT;
    mcf->redis_sync_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_tls_verify = NGX_CONF_UNSET;
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
        const RedisAddress& a = config->address;
        if (a.sentinels.empty()) {
            config->servers.emplace_back();
            char* rv = resolve(cf, url, a.host, a.port, a.socket_path, config->servers.back());
            if (rv != NGX_CONF_OK) return rv;
        }
        for (const RedisHostPort& sentinel : a.sentinels) {
            config->servers.emplace_back();
            char* rv = resolve(cf, url, sentinel.host, sentinel.port, "", config->servers.back());
            if (rv != NGX_CONF_OK) return rv;
        }
        for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
            char* rv = add_cluster_seed(cf, a, to_view(value[i]), *config);
            if (rv != NGX_CONF_OK) return rv;
        }
#if !(NGX_SSL)
        if (a.tls) return invalid_url(cf, url, "this nginx was built without SSL");
#endif
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

#if (NGX_SSL)

// rediss://: one client TLS context for the node's connections, as proxy_ssl_* make one for a
// location's upstream connections.
char* set_up_tls(ngx_conf_t* cf, const MainConf* mcf, RedisConfig* config) {
    auto* ssl = static_cast<ngx_ssl_t*>(ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t)));
    if (ssl == nullptr) return static_cast<char*>(NGX_CONF_ERROR);
    ssl->log = cf->log;
    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3, nullptr) != NGX_OK) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        ngx_ssl_cleanup_ctx(ssl);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;
    ngx_str_t certificate = mcf->redis_tls_certificate;
    ngx_str_t key = mcf->redis_tls_certificate_key;
    if (certificate.len != 0 && key.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no \"sse_redis_tls_certificate_key\" is defined for certificate \"%V\"", &certificate);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (key.len != 0 && certificate.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "no \"sse_redis_tls_certificate\" is defined for key \"%V\"", &key);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (certificate.len != 0 && ngx_ssl_certificate(cf, ssl, &certificate, &key, nullptr) != NGX_OK) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    config->tls.verify = mcf->redis_tls_verify != 0;
    if (config->tls.verify) {
        ngx_str_t trusted = mcf->redis_tls_trusted_certificate;
        if (trusted.len != 0) {
            if (ngx_ssl_trusted_certificate(cf, ssl, &trusted, 9) != NGX_OK) return static_cast<char*>(NGX_CONF_ERROR);
        } else if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
            // No sse_redis_tls_trusted_certificate: the system's CAs, as a managed Redis needs.
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          const_cast<char*>("sse_redis: cannot load the system's trusted certificates"));
            return static_cast<char*>(NGX_CONF_ERROR);
        }
    }
    config->tls.server_name = std::string(to_view(mcf->redis_tls_server_name));
    config->tls.ssl = ssl;
    return NGX_CONF_OK;
}

#endif

char* finish_redis_config(ngx_conf_t* cf, MainConf* mcf) {
    ngx_conf_init_msec_value(mcf->redis_connect_timeout, kDefaultConnectTimeout);
    ngx_conf_init_msec_value(mcf->redis_command_timeout, kDefaultCommandTimeout);
    ngx_conf_init_msec_value(mcf->redis_reconnect_min, kDefaultReconnectMin);
    ngx_conf_init_msec_value(mcf->redis_reconnect_max, kDefaultReconnectMax);
    ngx_conf_init_uint_value(mcf->redis_queue, kDefaultQueue);
    ngx_conf_init_msec_value(mcf->redis_sync_timeout, kDefaultSyncTimeout);
    ngx_conf_init_value(mcf->redis_tls_verify, 1);
    RedisConfig* config = mcf->redis;
    if (config == nullptr) return NGX_CONF_OK;
    if (mcf->redis_prefix.data != nullptr) config->prefix = std::string(to_view(mcf->redis_prefix));
    config->connect_timeout = mcf->redis_connect_timeout;
    config->command_timeout = mcf->redis_command_timeout;
    config->reconnect_min = mcf->redis_reconnect_min;
    config->reconnect_max = mcf->redis_reconnect_max;
    config->queue = std::uint32_t(mcf->redis_queue);
    config->sync_timeout = mcf->redis_sync_timeout;
#if (NGX_SSL)
    if (config->address.tls) return set_up_tls(cf, mcf, config);
#endif
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
