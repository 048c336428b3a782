// Fuzzes the sse_redis address (src/redis/redis_url.h). What it accepts has the shape the
// header documents, and written back canonically parses to the same address.
#include <cctype>
#include <string>

#include "fuzz_check.h"
#include "redis/redis_url.h"

using namespace sse;

namespace {

bool all_digits(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
    }
    return true;
}

// Every '%' starts an escape of exactly two hex digits.
bool escapes_well_formed(std::string_view s) {
    for (std::size_t i = 0; i < s.size(); i++) {
        if (s[i] != '%') continue;
        if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
            return false;
        }
        i += 2;
    }
    return true;
}

std::string escaped(std::string_view s) {
    static const char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        out += '%';
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
    }
    return out;
}

std::string canonical(const RedisAddress& a) {
    if (!a.socket_path.empty()) return "unix:" + a.socket_path + "?db=" + std::to_string(a.db);
    std::string credentials = a.has_password ? escaped(a.user) + ":" + escaped(a.password) + "@" : "";
    if (!a.sentinels.empty()) {
        std::string url = "redis-sentinel://" + credentials;
        for (std::size_t i = 0; i < a.sentinels.size(); i++) {
            const std::string& host = a.sentinels[i].host;
            url += (i > 0 ? "," : "") + (host[0] == '[' ? "[" + host + "]" : host) + ":" +
                   std::to_string(a.sentinels[i].port);
        }
        return url + "/" + a.master_name + "?db=" + std::to_string(a.db);
    }
    std::string url = (a.tls ? "rediss://" : "redis://") + credentials;
    // Brackets only where the host would otherwise read differently; a port always.
    url += a.host[0] == '[' ? "[" + a.host + "]" : a.host;
    return url + ":" + std::to_string(a.port) + "/" + std::to_string(a.db);
}

bool same(const RedisAddress& a, const RedisAddress& b) {
    if (a.sentinels.size() != b.sentinels.size()) return false;
    for (std::size_t i = 0; i < a.sentinels.size(); i++) {
        if (a.sentinels[i].host != b.sentinels[i].host || a.sentinels[i].port != b.sentinels[i].port) return false;
    }
    return a.tls == b.tls && a.master_name == b.master_name && a.host == b.host && a.port == b.port &&
           a.socket_path == b.socket_path && a.user == b.user && a.password == b.password &&
           a.has_password == b.has_password && a.db == b.db;
}

// What the host part of a redis:// URL (after the credentials, before the database) may be.
void check_host_part(std::string_view url, const RedisAddress& a) {
    std::string_view rest = url.substr(url.find("://") + 3);
    if (a.has_password) {
        std::string_view credentials = rest.substr(0, rest.rfind('@'));
        FUZZ_CHECK(escapes_well_formed(credentials));
        rest.remove_prefix(credentials.size() + 1);
    }
    auto [host_port, db] = fuzz::split_once(rest, '/');
    FUZZ_CHECK(db.empty() || all_digits(db));
    std::string host = host_port.substr(0, 1) == "[" ? "[" + a.host + "]" : a.host;
    FUZZ_CHECK(host_port.substr(0, host.size()) == host);
    std::string_view port = host_port.substr(host.size());
    FUZZ_CHECK(port.empty() || (port[0] == ':' && all_digits(port.substr(1))));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
    std::string_view url = fuzz::as_text(data, size);
    RedisAddress address;
    std::string reason;
    if (!parse_redis_url(url, address, reason)) {
        FUZZ_CHECK(fuzz::is_one_line(reason));
        return 0;
    }
    FUZZ_CHECK(address.db >= 0 && address.db <= (1 << 20));
    if (!address.socket_path.empty()) {
        FUZZ_CHECK(url.substr(0, 5) == "unix:" && address.socket_path[0] == '/' && address.host.empty());
        FUZZ_CHECK(!address.has_password);
        auto [path, query] = fuzz::split_once(url.substr(5), '?');
        FUZZ_CHECK(path == address.socket_path);
        FUZZ_CHECK(query.empty() ? address.db == 0 : query.substr(0, 3) == "db=" && all_digits(query.substr(3)));
    } else if (!address.sentinels.empty()) {
        FUZZ_CHECK(url.substr(0, 17) == "redis-sentinel://" && address.host.empty() && !address.tls);
        FUZZ_CHECK(!address.master_name.empty() && address.master_name.find_first_of(" /,@?") == std::string::npos);
        for (const RedisHostPort& s : address.sentinels) {
            FUZZ_CHECK(!s.host.empty() && s.port >= 1 && s.port <= 65535);
            FUZZ_CHECK(s.host.find_first_of(",/@") == std::string::npos);
        }
    } else {
        FUZZ_CHECK(url.substr(0, address.tls ? 9 : 8) == (address.tls ? "rediss://" : "redis://"));
        FUZZ_CHECK(!address.host.empty() && address.master_name.empty());
        FUZZ_CHECK(address.port >= 1 && address.port <= 65535);
        check_host_part(url, address);
    }
    // The log's name for it never shows the password.
    std::string shown = address.display();
    FUZZ_CHECK(shown == (!address.socket_path.empty() ? "unix:" + address.socket_path
                         : !address.sentinels.empty() ? "sentinel primary \"" + address.master_name + "\""
                                                      : address.host + ":" + std::to_string(address.port)));
    RedisAddress again;
    FUZZ_CHECK(parse_redis_url(canonical(address), again, reason));
    FUZZ_CHECK(same(address, again));
    return 0;
}
