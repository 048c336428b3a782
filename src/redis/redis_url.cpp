#include "redis/redis_url.h"

#include <cctype>
#include <charconv>

namespace sse {

namespace {

bool parse_number(std::string_view text, int min, int max, int& out) {
    // from_chars takes a leading '-': "-0" is not a number written in a URL.
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return false;
    int value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) return false;
    out = value;
    return true;
}

// %XX escapes in the user and password (a password may hold ':' or '@').
bool percent_decode(std::string_view in, std::string& out) {
    out.clear();
    for (std::size_t i = 0; i < in.size(); i++) {
        if (in[i] != '%') {
            out.push_back(in[i]);
            continue;
        }
        // Two hex digits exactly: from_chars alone would read "%-1" as -1.
        if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
            return false;
        }
        int value = 0;
        auto [end, ec] = std::from_chars(in.data() + i + 1, in.data() + i + 3, value, 16);
        if (ec != std::errc() || end != in.data() + i + 3) return false;
        out.push_back(char(value));
        i += 2;
    }
    return true;
}

// host[:port] or [v6][:port]; the port is left as it was when not written.
bool parse_host_port(std::string_view hostport, std::string& host, int& port, std::string& reason) {
    std::size_t colon = hostport.rfind(':');
    if (!hostport.empty() && hostport.front() == '[') {  // [v6]:port
        std::size_t close = hostport.find(']');
        if (close == std::string_view::npos) {
            reason = "an unterminated [IPv6] address";
            return false;
        }
        if (hostport.size() > close + 1 && hostport[close + 1] != ':') {
            reason = "after an [IPv6] address comes :port or nothing";
            return false;
        }
        host = std::string(hostport.substr(1, close - 1));
        colon = hostport.size() > close + 1 && hostport[close + 1] == ':' ? close + 1 : std::string_view::npos;
    } else {
        host = std::string(hostport.substr(0, colon));
    }
    if (host.empty()) {
        reason = "the address names no host";
        return false;
    }
    if (colon != std::string_view::npos && !parse_number(hostport.substr(colon + 1), 1, 65535, port)) {
        reason = "the port must be a number from 1 to 65535";
        return false;
    }
    return true;
}

// After the credentials: host:port[,host:port...]/<master-name>[?db=N]
bool parse_sentinels(std::string_view rest, RedisAddress& out, std::string& reason) {
    std::size_t slash = rest.find('/');
    if (slash == std::string_view::npos) {
        reason = "a sentinel address ends with /<master-name>, as in redis-sentinel://10.0.0.1:26379/mymaster";
        return false;
    }
    std::string_view hosts = rest.substr(0, slash);
    std::string_view name = rest.substr(slash + 1);
    std::size_t q = name.find('?');
    if (q != std::string_view::npos) {
        std::string_view query = name.substr(q + 1);
        name = name.substr(0, q);
        if (query.substr(0, 3) != "db=" || !parse_number(query.substr(3), 0, 1 << 20, out.db)) {
            reason = "the only argument of a sentinel address is db=<number>";
            return false;
        }
    }
    if (name.empty() || name.find_first_of(" /,@?") != std::string_view::npos) {
        reason = "a sentinel address ends with /<master-name>, as in redis-sentinel://10.0.0.1:26379/mymaster";
        return false;
    }
    out.master_name = std::string(name);
    for (;;) {
        std::size_t comma = hosts.find(',');
        RedisHostPort sentinel;
        sentinel.port = 26379;
        if (!parse_host_port(hosts.substr(0, comma), sentinel.host, sentinel.port, reason)) return false;
        out.sentinels.push_back(std::move(sentinel));
        if (comma == std::string_view::npos) return true;
        hosts = hosts.substr(comma + 1);
    }
}

}  // namespace

std::string RedisAddress::display() const {
    if (!socket_path.empty()) return "unix:" + socket_path;
    if (!master_name.empty()) return "sentinel primary \"" + master_name + "\"";
    return host + ":" + std::to_string(port);
}

bool parse_redis_url(std::string_view url, RedisAddress& out, std::string& reason) {
    out = RedisAddress{};
    constexpr std::string_view kUnix = "unix:";
    constexpr std::string_view kRedis = "redis://";
    constexpr std::string_view kRedisTls = "rediss://";
    constexpr std::string_view kSentinel = "redis-sentinel://";
    if (url.substr(0, kUnix.size()) == kUnix) {
        std::string_view rest = url.substr(kUnix.size());
        std::size_t q = rest.find('?');
        out.socket_path = std::string(rest.substr(0, q));
        if (out.socket_path.empty() || out.socket_path[0] != '/') {
            reason = "a unix socket must be an absolute path, as in unix:/run/redis/redis.sock";
            return false;
        }
        if (q != std::string_view::npos) {
            std::string_view query = rest.substr(q + 1);
            if (query.substr(0, 3) != "db=" || !parse_number(query.substr(3), 0, 1 << 20, out.db)) {
                reason = "the only argument of a unix socket is db=<number>";
                return false;
            }
        }
        return true;
    }
    std::string_view rest;
    bool sentinel = false;
    if (url.substr(0, kRedis.size()) == kRedis) {
        rest = url.substr(kRedis.size());
    } else if (url.substr(0, kRedisTls.size()) == kRedisTls) {
        rest = url.substr(kRedisTls.size());
        out.tls = true;
        out.port = 6379;
    } else if (url.substr(0, kSentinel.size()) == kSentinel) {
        rest = url.substr(kSentinel.size());
        sentinel = true;
    } else {
        reason = "the address must start with redis://, rediss://, redis-sentinel:// or unix:";
        return false;
    }
    std::size_t at = rest.rfind('@');
    if (at != std::string_view::npos) {
        std::string_view credentials = rest.substr(0, at);
        rest = rest.substr(at + 1);
        std::size_t colon = credentials.find(':');
        if (colon == std::string_view::npos) {
            reason = "credentials are written user:password@ or :password@";
            return false;
        }
        if (!percent_decode(credentials.substr(0, colon), out.user) ||
            !percent_decode(credentials.substr(colon + 1), out.password)) {
            reason = "a bad %-escape in the credentials";
            return false;
        }
        out.has_password = true;
    }
    if (sentinel) return parse_sentinels(rest, out, reason);
    std::size_t slash = rest.find('/');
    std::string_view hostport = rest.substr(0, slash);
    if (slash != std::string_view::npos) {
        std::string_view db = rest.substr(slash + 1);
        if (!db.empty() && !parse_number(db, 0, 1 << 20, out.db)) {
            reason = "the database must be a number, as in redis://host:6379/2";
            return false;
        }
    }
    if (!parse_host_port(hostport, out.host, out.port, reason)) return false;
    return true;
}

}  // namespace sse
