// One connection to one Redis server on nginx's own machinery: ngx_event_connect_peer connects,
// nginx's SSL layer does TLS, nginx's timers bound the connect. hiredis is only the RESP codec:
// its reader parses what arrives, redisFormatCommandArgv writes commands.
//
// Everything a server sends is checked before it is used. A reply that breaks RESP or the
// reader's bounds (resp_reader.h), or that no command is waiting for (on a connection that takes
// no pushes), closes the connection, and its owner hears why in one line.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
}

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "redis/resp_reader.h"

namespace sse {

// Where one server listens: resolved when nginx reads its configuration (or, for an address a
// sentinel or a cluster node names, a numeric address parsed at run time), so no worker waits
// on DNS.
struct RedisServer {
    ngx_sockaddr_t sockaddr{};
    socklen_t socklen = 0;
    std::string display;      // host:port or unix:path, as logs name it
    std::string server_name;  // for TLS: the name sent by SNI and checked in the certificate

    bool same_address(const RedisServer& other) const;
};

// Parses a numeric address ("10.0.0.5", "::1") and port as a sentinel or a cluster reports it.
bool parse_redis_server(std::string_view host, int port, RedisServer& out);

// TLS as sse_redis_tls_* configured it; ssl == nullptr for plain TCP.
struct RedisTls {
    ngx_ssl_t* ssl = nullptr;
    bool verify = true;
    std::string server_name;  // sse_redis_tls_server_name; empty: the URL's host
};

class RedisConnection;

// Called for the reply to a command, in the order the commands were sent. `context` is what
// send() was given.
using RedisReplyHandler = void (*)(RedisConnection& connection, const redisReply& reply, std::uintptr_t context);

class RedisConnection {
public:
    class Owner {
    public:
        // TCP (and TLS) is up; commands sent before this are on their way.
        virtual void connected(RedisConnection& connection) = 0;
        // A reply with no command waiting for it: a pub/sub message. Only called on a connection
        // opened with takes_pushes; on any other, such a reply fails the connection.
        virtual void pushed(RedisConnection& connection, const redisReply& reply) = 0;
        // The connection is closed: it cannot be used again, only released. Called once, never
        // from inside a call the owner made on it.
        virtual void failed(RedisConnection& connection, const std::string& reason) = 0;

    protected:
        ~Owner() = default;
    };

    // Starts connecting. Returns nullptr, with a one-line reason, when that fails at once.
    static RedisConnection* open(const RedisServer& server, const RedisTls& tls, bool takes_pushes,
                                 ngx_msec_t connect_timeout, Owner* owner, ngx_log_t* log, std::string& reason);
    // Closes the connection if it is open and frees it (once the handler on its stack, if any,
    // has returned). No owner call follows.
    static void release(RedisConnection* connection);

    // Queues a command; it goes out with the next write. `handler` gets its reply; a command
    // whose replies come as pushes (SUBSCRIBE) passes nullptr.
    void send(const std::vector<std::string_view>& args, RedisReplyHandler handler, std::uintptr_t context = 0);
    // Commands sent whose replies have not come yet.
    std::size_t waiting() const { return waiting_.size(); }
    const RedisServer& server() const { return server_; }
    // Who hears about the connection: where a reply handler (a plain function) finds its object.
    Owner* owner() const { return owner_; }
    bool closed() const { return connection_ == nullptr; }

private:
    struct Waiting {
        RedisReplyHandler handler;
        std::uintptr_t context;
    };

    RedisConnection(const RedisServer& server, bool takes_pushes, Owner* owner, ngx_log_t* log);
    ~RedisConnection();

    static void on_write(ngx_event_t* ev) noexcept;
    static void on_read(ngx_event_t* ev) noexcept;
#if (NGX_SSL)
    static void on_handshake(ngx_connection_t* c) noexcept;
    bool start_tls(const RedisTls& tls, std::string& reason);
    bool check_certificate(std::string& reason);
#endif

    void writable();
    void readable();
    void became_ready();
    bool flush(std::string& reason);
    ssize_t receive(u_char* buffer, std::size_t size, std::string& reason);
    bool read_replies(std::string& reason);
    bool dispatch(const redisReply& reply, std::string& reason);
    void fail(const std::string& reason);
    void close_now();

    RedisServer server_;
    bool takes_pushes_;
    Owner* owner_;
    ngx_log_t* log_;
    ngx_connection_t* connection_ = nullptr;
    ngx_pool_t* pool_ = nullptr;  // for nginx's SSL state
    RespReader reader_;
    bool ready_ = false;  // connected (and TLS done)
    bool read_wants_write_ = false;
    bool verify_ = false;
    std::string tls_name_;
    std::string out_;  // formatted commands not written yet
    std::size_t out_sent_ = 0;
    std::deque<Waiting> waiting_;
    int depth_ = 0;  // handlers of this connection on the stack
    bool release_when_done_ = false;
};

}  // namespace sse
