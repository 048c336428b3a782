// The address sse_redis names: redis://[[user]:password@]host[:port][/db] or
// unix:/path/to/socket[?db=N]. Pure C++, unit-tested in t/unit.
#pragma once

#include <string>
#include <string_view>

namespace sse {

struct RedisAddress {
    std::string host;  // empty for a unix socket
    int port = 6379;
    std::string socket_path;
    std::string user;  // empty: the default user
    std::string password;
    bool has_password = false;
    int db = 0;

    // How the log names it: host:port or unix:path (never the password).
    std::string display() const;
};

// On a bad URL returns false and a one-line reason.
bool parse_redis_url(std::string_view url, RedisAddress& out, std::string& reason);

}  // namespace sse
