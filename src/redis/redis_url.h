// The address sse_redis names:
//   redis://[[user]:password@]host[:port][/db]       one server
//   rediss://...                                      the same over TLS
//   unix:/path/to/socket[?db=N]
//   redis-sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[?db=N]
// Pure C++, unit-tested in t/unit.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sse {

struct RedisHostPort {
    std::string host;
    int port = 0;
};

struct RedisAddress {
    std::string host;  // empty for a unix socket and for sentinels
    int port = 6379;
    bool tls = false;  // rediss://
    // redis-sentinel://: the sentinels to ask, in order, and the name they know the primary by.
    std::vector<RedisHostPort> sentinels;
    std::string master_name;
    std::string socket_path;
    std::string user;  // empty: the default user
    std::string password;
    bool has_password = false;
    int db = 0;

    // How the log names it: host:port, unix:path or sentinel name (never the password).
    std::string display() const;
};

// On a bad URL returns false and a one-line reason.
bool parse_redis_url(std::string_view url, RedisAddress& out, std::string& reason);

}  // namespace sse
