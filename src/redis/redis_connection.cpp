#include "redis/redis_connection.h"

#include <cstdlib>
#include <cstring>

#include "guard.h"
#include "protocol/client_text.h"

namespace sse {

namespace {

constexpr std::size_t kReadChunk = 16384;
constexpr int kReadsPerEvent = 64;  // then the read event is posted again: other connections get a turn

}  // namespace

bool RedisServer::same_address(const RedisServer& other) const {
    return ngx_cmp_sockaddr(const_cast<struct sockaddr*>(&sockaddr.sockaddr), socklen,
                            const_cast<struct sockaddr*>(&other.sockaddr.sockaddr), other.socklen, 1) == NGX_OK;
}

bool parse_redis_server(std::string_view host, int port, RedisServer& out) {
    if (host.empty() || host.size() > NGX_SOCKADDR_STRLEN || port < 1 || port > 65535) return false;
    ngx_addr_t addr{};
    // ngx_parse_addr takes its memory from a pool: a small one, only for this call.
    ngx_pool_t* pool = ngx_create_pool(512, ngx_cycle->log);
    if (pool == nullptr) throw std::bad_alloc();
    std::string text(host);
    bool ok = ngx_parse_addr(pool, &addr, reinterpret_cast<u_char*>(text.data()), text.size()) == NGX_OK &&
              addr.socklen <= sizeof(out.sockaddr);
    if (ok) {
        std::memcpy(&out.sockaddr, addr.sockaddr, addr.socklen);
        out.socklen = addr.socklen;
        ngx_inet_set_port(&out.sockaddr.sockaddr, in_port_t(port));
        bool v6 = out.sockaddr.sockaddr.sa_family == AF_INET6;
        out.display = (v6 ? "[" + text + "]" : text) + ":" + std::to_string(port);
        out.server_name = text;
    }
    ngx_destroy_pool(pool);
    return ok;
}

RedisConnection::RedisConnection(const RedisServer& server, bool takes_pushes, Owner* owner, ngx_log_t* log)
    : server_(server), takes_pushes_(takes_pushes), owner_(owner), log_(log) {}

RedisConnection::~RedisConnection() {
    close_now();
}

RedisConnection* RedisConnection::open(const RedisServer& server, const RedisTls& tls, bool takes_pushes,
                                       ngx_msec_t connect_timeout, Owner* owner, ngx_log_t* log, std::string& reason) {
    auto* self = new RedisConnection(server, takes_pushes, owner, log);
    self->pool_ = ngx_create_pool(1024, log);
    if (self->pool_ == nullptr) {
        delete self;
        throw std::bad_alloc();
    }
    ngx_peer_connection_t peer{};
    peer.sockaddr = &self->server_.sockaddr.sockaddr;
    peer.socklen = self->server_.socklen;
    ngx_str_t name = {self->server_.display.size(), reinterpret_cast<u_char*>(self->server_.display.data())};
    peer.name = &name;
    peer.get = ngx_event_get_peer;
    peer.log = log;
    // A refused connection is this module's to report, once per outage, not nginx's per attempt.
    peer.log_error = NGX_ERROR_INFO;
    ngx_int_t rc = ngx_event_connect_peer(&peer);
    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED || peer.connection == nullptr) {
        ngx_err_t err = ngx_socket_errno;  // nginx has closed the socket, if there was one
        delete self;
        reason = err != 0 ? std::string("connect() failed: ") + std::strerror(err)
                          : std::string("connect() failed (no free nginx connection?)");
        return nullptr;
    }
    ngx_connection_t* c = peer.connection;
    self->connection_ = c;
    c->data = self;
    c->pool = self->pool_;
    c->log_error = NGX_ERROR_INFO;
    c->read->handler = on_read;
    c->write->handler = on_write;
    c->read->log = log;
    c->write->log = log;
    if (tls.ssl != nullptr) {
#if (NGX_SSL)
        self->verify_ = tls.verify;
        self->tls_name_ = tls.server_name.empty() ? server.server_name : tls.server_name;
        if (!self->start_tls(tls, reason)) {
            delete self;
            return nullptr;
        }
#else
        delete self;
        reason = "nginx was built without SSL";
        return nullptr;
#endif
    }
    ngx_add_timer(c->write, connect_timeout);
    if (rc == NGX_OK) {
        // Connected at once (a unix socket): carry on from the event loop, as for TCP, so that
        // the owner hears about it only after open() has returned.
        ngx_post_event(c->write, &ngx_posted_events);
    }
    return self;
}

void RedisConnection::release(RedisConnection* connection) {
    if (connection == nullptr) return;
    if (connection->depth_ > 0) {
        // A handler of this connection is on the stack: it frees the object when it returns.
        connection->close_now();
        connection->release_when_done_ = true;
        return;
    }
    delete connection;
}

void RedisConnection::close_now() {
    if (connection_ == nullptr) return;
    ngx_connection_t* c = connection_;
    connection_ = nullptr;
#if (NGX_SSL)
    if (c->ssl != nullptr) {
        c->ssl->no_wait_shutdown = 1;
        c->ssl->no_send_shutdown = 1;
        ngx_ssl_shutdown(c);
    }
#endif
    ngx_close_connection(c);
    if (pool_ != nullptr) {
        ngx_destroy_pool(pool_);
        pool_ = nullptr;
    }
    waiting_.clear();
}

void RedisConnection::fail(const std::string& reason) {
    if (connection_ == nullptr) return;
    close_now();
    owner_->failed(*this, reason);
}

void RedisConnection::send(const std::vector<std::string_view>& args, RedisReplyHandler handler,
                           std::uintptr_t context) {
    if (connection_ == nullptr) return;
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (std::string_view a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    char* command = nullptr;
    int len = redisFormatCommandArgv(&command, int(argv.size()), argv.data(), lens.data());
    if (len < 0 || command == nullptr) throw std::bad_alloc();
    try {
        out_.append(command, std::size_t(len));
        if (handler != nullptr) waiting_.push_back(Waiting{handler, context});
    } catch (...) {
        redisFreeCommand(command);
        throw;
    }
    redisFreeCommand(command);
    // Written from the event loop, after whatever else this turn sends: one write for them all.
    if (ready_ && !connection_->write->posted) {
        ngx_post_event(connection_->write, &ngx_posted_events);
    }
}

void RedisConnection::on_write(ngx_event_t* ev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    auto* self = static_cast<RedisConnection*>(c->data);
    self->depth_++;
    std::string failure;
    bool ok = guarded(self->log_, "writing to redis", false, [&] {
        self->writable();
        return true;
    });
    if (!ok) failure = "out of memory";
    self->depth_--;
    if (!failure.empty()) self->fail(failure);
    if (self->depth_ == 0 && self->release_when_done_) delete self;
}

void RedisConnection::on_read(ngx_event_t* ev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    auto* self = static_cast<RedisConnection*>(c->data);
    self->depth_++;
    bool ok = guarded(self->log_, "reading from redis", false, [&] {
        self->readable();
        return true;
    });
    self->depth_--;
    // A reply that could not be handled (no memory): the owner resyncs after reconnecting,
    // rather than an event being lost silently.
    if (!ok) self->fail("a reply could not be handled");
    if (self->depth_ == 0 && self->release_when_done_) delete self;
}

void RedisConnection::writable() {
    if (connection_ == nullptr) return;
    ngx_connection_t* c = connection_;
    if (!ready_) {
        if (c->write->timedout) {
            fail("no connection within sse_redis_connect_timeout");
            return;
        }
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) err = ngx_socket_errno;
        if (err != 0) {
            fail(std::string("connect() failed: ") + std::strerror(err));
            return;
        }
#if (NGX_SSL)
        if (c->ssl != nullptr) {
            ngx_int_t rc = ngx_ssl_handshake(c);
            if (rc == NGX_AGAIN) {
                c->ssl->handler = on_handshake;
                return;
            }
            on_handshake(c);
            return;
        }
#endif
        became_ready();
        return;
    }
    std::string reason;
    if (!flush(reason)) {
        fail(reason);
        return;
    }
    if (read_wants_write_) {
        // A read that waited for a TLS message to go out.
        read_wants_write_ = false;
        ngx_post_event(c->read, &ngx_posted_events);
    }
}

void RedisConnection::became_ready() {
    ngx_connection_t* c = connection_;
    if (c->write->timer_set) ngx_del_timer(c->write);
    ready_ = true;
    owner_->connected(*this);
    if (connection_ == nullptr) return;
    std::string reason;
    if (!flush(reason)) {
        fail(reason);
        return;
    }
    // Whatever arrived while connecting (a server may speak first).
    if (connection_->read->ready) {
        ngx_post_event(connection_->read, &ngx_posted_events);
    }
}

bool RedisConnection::flush(std::string& reason) {
    ngx_connection_t* c = connection_;
    while (out_sent_ < out_.size()) {
        ssize_t n = c->send(c, reinterpret_cast<u_char*>(out_.data()) + out_sent_, out_.size() - out_sent_);
        if (n == NGX_AGAIN) break;
        if (n == NGX_ERROR || n <= 0) {
            reason = "writing failed";
            return false;
        }
        out_sent_ += std::size_t(n);
    }
    if (out_sent_ == out_.size()) {
        out_.clear();
        out_sent_ = 0;
    }
    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        reason = "cannot watch the socket for writing";
        return false;
    }
    return true;
}

void RedisConnection::readable() {
    if (connection_ == nullptr) return;
    ngx_connection_t* c = connection_;
    if (!ready_) {
        if (c->read->timedout) fail("no connection within sse_redis_connect_timeout");
        return;  // the write event finishes connecting
    }
    std::string reason;
    if (!read_replies(reason)) fail(reason);
}

// Reads what arrived: through nginx for plain TCP; over TLS with SSL_read here, so that what the
// server's TLS says (an alert such as "certificate required") becomes this connection's one
// reason rather than a [crit] line of nginx's SSL layer.
ssize_t RedisConnection::receive(u_char* buffer, std::size_t size, std::string& reason) {
    ngx_connection_t* c = connection_;
#if (NGX_SSL)
    if (c->ssl != nullptr) {
        ERR_clear_error();
        int n = SSL_read(c->ssl->connection, buffer, int(size));
        if (n > 0) return n;
        int error = SSL_get_error(c->ssl->connection, n);
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
            c->read->ready = 0;
            if (error == SSL_ERROR_WANT_WRITE) {
                // A TLS message to send first (a key update): the write event reads again.
                read_wants_write_ = true;
                ngx_post_event(c->write, &ngx_posted_events);
            }
            return NGX_AGAIN;
        }
        unsigned long e = ERR_peek_last_error();
        ERR_clear_error();
        if (error == SSL_ERROR_ZERO_RETURN || (error == SSL_ERROR_SYSCALL && e == 0 && n == 0)) return 0;
        const char* why = e != 0 ? ERR_reason_error_string(e) : nullptr;
        reason = std::string("TLS: ") + (why != nullptr               ? why
                                         : error == SSL_ERROR_SYSCALL ? std::strerror(errno)
                                                                      : "error");
        return NGX_ERROR;
    }
#endif
    ssize_t n = c->recv(c, buffer, size);
    if (n == NGX_ERROR) reason = std::string("reading failed: ") + std::strerror(ngx_socket_errno);
    return n;
}

bool RedisConnection::read_replies(std::string& reason) {
    u_char buffer[kReadChunk];
    for (int reads = 0; reads < kReadsPerEvent; reads++) {
        ngx_connection_t* c = connection_;
        if (c == nullptr) return true;  // closed by the owner while handling a reply
        ssize_t n = receive(buffer, sizeof(buffer), reason);
        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                reason = "cannot watch the socket for reading";
                return false;
            }
            return true;
        }
        if (n == 0) {
            reason = "closed by the server";
            return false;
        }
        if (n < 0) return false;
        if (!reader_.feed(reinterpret_cast<const char*>(buffer), std::size_t(n), reason)) return false;
        for (;;) {
            RedisReplyPtr reply;
            RespReader::Result r = reader_.next(reply, reason);
            if (r == RespReader::Result::kBroken) return false;
            if (r == RespReader::Result::kNeedMore) break;
            if (!dispatch(*reply, reason)) return false;
            if (connection_ == nullptr) return true;
        }
    }
    // More may be waiting: read it on a later turn of the event loop.
    if (connection_ != nullptr) {
        ngx_post_event(connection_->read, &ngx_posted_events);
    }
    return true;
}

bool RedisConnection::dispatch(const redisReply& reply, std::string& reason) {
    if (!waiting_.empty()) {
        Waiting w = waiting_.front();
        waiting_.pop_front();
        w.handler(*this, reply, w.context);
        return true;
    }
    if (!takes_pushes_) {
        reason = "an unexpected reply (no command was waiting for one)";
        return false;
    }
    owner_->pushed(*this, reply);
    return true;
}

#if (NGX_SSL)

bool RedisConnection::start_tls(const RedisTls& tls, std::string& reason) {
    ngx_connection_t* c = connection_;
    if (ngx_ssl_create_connection(tls.ssl, c, NGX_SSL_BUFFER | NGX_SSL_CLIENT) != NGX_OK) {
        reason = "cannot start TLS";
        return false;
    }
    // SNI carries a host name, never an address.
    ngx_str_t name = {tls_name_.size(), reinterpret_cast<u_char*>(tls_name_.data())};
    if (!tls_name_.empty() && ngx_inet_addr(name.data, name.len) == INADDR_NONE &&
        tls_name_.find(':') == std::string::npos) {
        if (SSL_set_tlsext_host_name(c->ssl->connection, tls_name_.c_str()) == 0) {
            reason = "cannot set the TLS server name";
            return false;
        }
    }
    return true;
}

void RedisConnection::on_handshake(ngx_connection_t* c) noexcept {
    auto* self = static_cast<RedisConnection*>(c->data);
    self->depth_++;
    bool ok = guarded(self->log_, "finishing the TLS handshake with redis", false, [&] {
        if (self->connection_ == nullptr) return true;
        std::string reason;
        if (!c->ssl->handshaked) {
            self->fail(c->write->timedout || c->read->timedout ? "no TLS handshake within sse_redis_connect_timeout"
                                                               : "the TLS handshake failed");
            return true;
        }
        if (self->verify_ && !self->check_certificate(reason)) {
            self->fail(reason);
            return true;
        }
        c->read->handler = on_read;
        c->write->handler = on_write;
        self->became_ready();
        return true;
    });
    self->depth_--;
    if (!ok) self->fail("out of memory");
    if (self->depth_ == 0 && self->release_when_done_) delete self;
}

bool RedisConnection::check_certificate(std::string& reason) {
    ngx_connection_t* c = connection_;
    long rc = SSL_get_verify_result(c->ssl->connection);
    if (rc != X509_V_OK) {
        reason = std::string("the server's TLS certificate did not verify: ") + X509_verify_cert_error_string(rc);
        return false;
    }
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509* cert = SSL_get1_peer_certificate(c->ssl->connection);
#else
    X509* cert = SSL_get_peer_certificate(c->ssl->connection);
#endif
    if (cert == nullptr) {
        reason = "the server sent no TLS certificate";
        return false;
    }
    bool address = ngx_inet_addr(reinterpret_cast<u_char*>(tls_name_.data()), tls_name_.size()) != INADDR_NONE ||
                   tls_name_.find(':') != std::string::npos;
    int matched = address ? X509_check_ip_asc(cert, tls_name_.c_str(), 0)
                          : X509_check_host(cert, tls_name_.data(), tls_name_.size(), 0, nullptr);
    X509_free(cert);
    if (matched != 1) {
        reason = "the server's TLS certificate does not match " + quoted_bytes(tls_name_);
        return false;
    }
    return true;
}

#endif

}  // namespace sse
