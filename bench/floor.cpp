// The floor: a bare Server-Sent Events writer with no nginx, run by scripts/bench.sh beside ours
// and nchan (issue 13), so that CPU per delivery can be read against the cost of the socket
// writes alone.
//
// One process, one thread, one edge-triggered epoll instance, listening on 127.0.0.1:P (--port)
// and, with --tls-port T --tls-cert CERT --tls-key KEY, on 127.0.0.1:T for TLS 1.3 too (below).
// It answers the load generator's requests with the bytes ngx_http_sse_module sends, so loadgen
// drives it unchanged (with --tls on the TLS port) and checks every event it is sent:
//   GET /sub?channels=C       a stream: the module's response head (chunked), then the chunk
//                             "5\r\n:ok\n\n\r\n"
//   GET /replay?channels=C    the same head, then one chunk: ":ok\n\n" and the channel's last 100
//                             events
//   POST /pub?channel=C       (or /pubr) the body becomes the event "id: <id>\ndata: <line>\n...\n",
//                             appended to the channel; answered 202 at once with
//                             {"id":"<id>","events":1,"subscribers":<n>}\n, before any delivery
//   GET /stats                counters as JSON: writes on streams (writev or SSL_write calls),
//                             frames they carried, writes that found the socket full
//   GET /set?frames_per_write=F&hold_ms=H   the coalescing rule (below)
// Event ids are microseconds since the epoch, one more than the last id when the clock has not
// moved on: the module's rule, so frames have the same length as ours.
//
// Writing: after each turn of the event loop, every stream whose channel has frames it has not
// taken gets all of them in one writev: one chunk (its size line, the frames, CRLF), as nginx's
// chunked filter frames what one flush of ours carries. A stream whose socket is full keeps what
// is left and takes everything due once it is writable again (that is the coalescing ours does
// on its own when it falls behind). With frames_per_write F > 1, a channel's frames are instead
// released to its streams F at a time (on average: the threshold alternates between floor(F)
// and ceil(F)), or when the oldest has waited hold_ms: the bench sets F to the factor ours
// measured in the same repetition, so that both pay for the same number of writes. A writev here
// takes up to 512 frames; nginx's takes 64 iovecs (NGX_IOVS_PREALLOCATE), so a chunk of more than
// about 60 frames (a replay of 100) costs ours two writes and the floor one.
//
// TLS (s2tls): OpenSSL, with the context nginx makes (no compression, SSL_MODE_RELEASE_BUFFERS,
// read-ahead; OpenSSL's defaults otherwise, session tickets included), TLS 1.3 only. The
// handshake runs in the same loop, non-blocking, driven by the connection's edges; then a stream
// is written as above, each writev becoming one SSL_write of the same bytes: what the writev would
// carry is copied into one buffer first, as nginx's ngx_ssl_send_chain copies a chain into its
// 16 KB buffer before SSL_write (nginx cuts more than 16 KB into several SSL_writes; the floor
// gives OpenSSL up to 512 frames at once, which it cuts into 16 KB records). SSL_write goes whole
// or not at all (no SSL_MODE_ENABLE_PARTIAL_WRITE): one that meets SSL_ERROR_WANT_WRITE (or
// WANT_READ) keeps its buffer and is retried with exactly that buffer once the socket is ready,
// before the stream takes anything new. Requests are read with SSL_read, answers sent with one
// SSL_write each. /stats and /set answer on either port; the bench asks them on the plain one.
//
// Build: g++ -std=c++17 -O2 -Wall -Wextra -o floor floor.cpp -lssl -lcrypto

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "read_available.h"
#include "tls_result.h"

namespace {

[[noreturn]] void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("floor: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
    std::exit(2);
}

int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The module's event ids: microseconds of the wall clock, strictly increasing.
uint64_t clock_us() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
}

// "Date: ..." as nginx writes it, remade once a second.
const std::string& http_date() {
    static time_t last = 0;
    static std::string text;
    time_t t = time(nullptr);
    if (t != last) {
        char b[64];
        tm g;
        gmtime_r(&t, &g);
        strftime(b, sizeof b, "%a, %d %b %Y %H:%M:%S GMT", &g);
        text = b;
        last = t;
    }
    return text;
}

// The value of key in a query string ("a=1&b=2"), undecoded; empty when absent.
std::string_view query_value(std::string_view query, std::string_view key) {
    while (!query.empty()) {
        size_t amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        if (pair.size() > key.size() && pair.compare(0, key.size(), key) == 0 && pair[key.size()] == '=')
            return pair.substr(key.size() + 1);
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return {};
}

bool equal_ci(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower((unsigned char)x) == std::tolower((unsigned char)y);
           });
}

// The module's frame: the id, then one "data: " line per line of the body (LF, CRLF or CR
// ending a line; an empty line as "data:"), then a blank line.
std::string event_frame(uint64_t id, std::string_view data) {
    std::string f = "id: " + std::to_string(id) + "\n";
    size_t start = 0;
    auto line = [&](std::string_view l) { f += l.empty() ? std::string("data:\n") : "data: " + std::string(l) + "\n"; };
    for (size_t i = 0; i < data.size(); ++i) {
        if (data[i] != '\n' && data[i] != '\r') continue;
        line(data.substr(start, i - start));
        if (data[i] == '\r' && i + 1 < data.size() && data[i + 1] == '\n') ++i;
        start = i + 1;
    }
    line(data.substr(start));
    f += '\n';
    return f;
}

// Opens a stream's first chunk: alone ("5\r\n:ok\n\n\r\n"), or before a replay's frames in the same
// chunk, as ours writes it.
constexpr std::string_view kPreamble = ":ok\n\n";
constexpr size_t kReplay = 100;     // events a /replay stream is sent first (sse_replay 100)
constexpr size_t kMaxFrames = 512;  // frames in one writev (IOV_MAX is 1024)

struct Channel {
    std::string name;
    std::deque<std::string> frames;  // every event of the channel, in order; frame k at index k
    size_t released = 0;             // frames [0, released) are due to every stream
    std::vector<int> streams;        // their descriptors
    bool had_streams = false;        // forgotten once the last has gone
    bool dirty = false;              // in Floor::dirty_
    int64_t held_since = 0;          // when the oldest unreleased frame came (frames_per_write mode)
    double credit = 0;               // frames_per_write mode: carries the fraction of F between releases
    size_t threshold = 1;            // frames_per_write mode: unreleased frames that trigger a release
};

enum class Kind : uint8_t { request, stream };

struct Stream {
    Channel* channel = nullptr;
    size_t index = 0;       // in channel->streams
    size_t next = 0;        // the next frame of the channel this stream has not taken
    std::string rest;       // bytes that go before anything else: the head, or the rest of a partial writev
    std::string tls_out;    // TLS: the buffer of an SSL_write that has not completed, retried as it is
    bool preamble = false;  // kPreamble still to open the stream's first chunk
    bool blocked = false;
};

struct Conn {
    int fd = -1;
    uint32_t gen = 0;  // tells a stale epoll event from a descriptor reused in the same batch
    Kind kind = Kind::request;
    SSL* ssl = nullptr;        // accepted on the TLS port
    bool handshaking = false;  // its TLS handshake is not done yet
    std::string in;
    Stream stream;
};

// The TLS context of the --tls-port listener, set as nginx sets its own (ngx_ssl_create: no
// compression, SSL_MODE_RELEASE_BUFFERS, read-ahead, an unexpected EOF as a close), TLS 1.3 only,
// and OpenSSL's defaults otherwise (as nginx's, with no ssl_* directive but the certificate: its
// session tickets, its TLS 1.3 cipher suites and groups).
SSL_CTX* make_tls_context(const std::string& cert, const std::string& key) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) die("cannot load the certificate %s", cert.c_str());
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1)
        die("cannot load the key %s", key.c_str());
    if (SSL_CTX_check_private_key(ctx) != 1) die("the key %s does not match the certificate", key.c_str());
    return ctx;
}

class Floor {
public:
    // Listens on 127.0.0.1:port (plain) and, with a TLS context, on 127.0.0.1:tls_port too.
    Floor(int port, int tls_port, SSL_CTX* tls) : tls_(tls) {
        ep_ = epoll_create1(EPOLL_CLOEXEC);
        if (ep_ < 0) die("epoll_create1: %s", std::strerror(errno));
        listener_ = listen_on(port, kListener);
        if (tls_) tls_listener_ = listen_on(tls_port, kTlsListener);
    }

    void run(const volatile sig_atomic_t& stop) {
        epoll_event evs[512];
        while (!stop) {
            int n = epoll_wait(ep_, evs, 512, wait_ms());
            if (n < 0 && errno != EINTR) die("epoll_wait: %s", std::strerror(errno));
            for (int e = 0; e < n; ++e) {
                if (evs[e].data.u64 == kListener || evs[e].data.u64 == kTlsListener) {
                    accept_all(evs[e].data.u64 == kTlsListener);
                    continue;
                }
                int fd = int(evs[e].data.u64 & 0xffffffff);
                uint32_t gen = uint32_t(evs[e].data.u64 >> 32);
                if (size_t(fd) >= conns_.size() || conns_[size_t(fd)].fd != fd || conns_[size_t(fd)].gen != gen)
                    continue;
                handle(conns_[size_t(fd)], evs[e].events);
            }
            deliver();
        }
        std::fprintf(
            stderr,
            "floor: stopping: %llu stream writes carried %llu frames (%llu found the socket full), %llu publishes\n",
            (unsigned long long)stream_writes_, (unsigned long long)frames_written_,
            (unsigned long long)writes_blocked_, (unsigned long long)publishes_);
    }

private:
    static constexpr uint64_t kListener = ~uint64_t(0);
    static constexpr uint64_t kTlsListener = ~uint64_t(1);

    int listen_on(int port, uint64_t id) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket: %s", std::strerror(errno));
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(uint16_t(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
            die("bind 127.0.0.1:%d: %s", port, std::strerror(errno));
        if (listen(fd, 4096) != 0) die("listen: %s", std::strerror(errno));
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = id;
        epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
        return fd;
    }

    int wait_ms() const {
        if (frames_per_write_ <= 0 || dirty_.empty()) return -1;
        int64_t oldest = now_ns();
        for (Channel* ch : dirty_)
            if (ch->held_since) oldest = std::min(oldest, ch->held_since);
        int64_t due = oldest + hold_ns_ - now_ns();
        return due <= 0 ? 0 : int((due + 999999) / 1000000);
    }

    void accept_all(bool tls) {
        while (true) {
            int fd = accept4(tls ? tls_listener_ : listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno != EAGAIN) std::fprintf(stderr, "floor: accept4: %s\n", std::strerror(errno));
                return;
            }
            if (size_t(fd) >= conns_.size()) conns_.resize(size_t(fd) + 1024);
            Conn& c = conns_[size_t(fd)];
            c.fd = fd;
            ++c.gen;
            c.kind = Kind::request;
            c.in.clear();
            c.stream = Stream{};
            if (tls) {
                // As nginx does to a connection whose first byte is a TLS handshake's
                // (tcp_nodelay on, its default): without it a small answer written while the
                // session tickets are unacknowledged waits for the client's delayed ACK.
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                // The handshake is driven by the connection's events (handle()); the client
                // speaks first.
                c.ssl = SSL_new(tls_);
                if (!c.ssl || SSL_set_fd(c.ssl, fd) != 1) die("SSL_new failed");
                SSL_set_accept_state(c.ssl);
                c.handshaking = true;
            }
            epoll_event ev{};
            // As nginx registers a connection: both directions, edge-triggered.
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            ev.data.u64 = uint64_t(fd) | uint64_t(c.gen) << 32;
            if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) close_conn(c);
        }
    }

    // recv() on the connection: SSL_read on a TLS one, with recv()'s contract.
    static ssize_t conn_recv(Conn& c, char* buf, size_t size) {
        if (!c.ssl) return recv(c.fd, buf, size, 0);
        int r = SSL_read(c.ssl, buf, int(size));
        return r > 0 ? r : tls_result(c.ssl, r);
    }

    // A whole answer in one write: write() (not send(): /proc/<pid>/io counts it among the write
    // syscalls, as it counts nginx's writev of the same answer), or one SSL_write (whose record
    // goes out by write() too). False when it did not all go.
    static bool send_answer(Conn& c, const std::string& out) {
        if (!c.ssl) return write(c.fd, out.data(), out.size()) == ssize_t(out.size());
        int r = SSL_write(c.ssl, out.data(), int(out.size()));
        if (r <= 0) tls_result(c.ssl, r);
        return r == int(out.size());
    }

    void handle(Conn& c, uint32_t events) {
        if (c.handshaking) {
            int r = SSL_do_handshake(c.ssl);
            if (r != 1) {
                // Waiting for the socket: the handshake goes on at its next edge.
                if (tls_result(c.ssl, r) < 0 && errno == EAGAIN && !(events & (EPOLLHUP | EPOLLERR))) return;
                close_conn(c);
                return;
            }
            c.handshaking = false;
            // The request may have come with the client's Finished and be read already (read
            // ahead): read it now, as no new edge will say it is there.
            events |= EPOLLIN;
        }
        if (c.kind == Kind::stream) {
            if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                // A stream's client sends nothing more: any readable event is its end.
                char buf[512];
                ssize_t n;
                while ((n = conn_recv(c, buf, sizeof buf)) > 0) {
                }
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || (events & (EPOLLHUP | EPOLLERR))) {
                    close_conn(c);
                    return;
                }
            }
            // An SSL_write waiting for the socket resumes on either edge (SSL_ERROR_WANT_READ is
            // possible, if unlikely, in a write).
            if (c.stream.blocked && ((events & EPOLLOUT) || (c.ssl && (events & EPOLLIN)))) {
                c.stream.blocked = false;
                write_stream(c);
            }
            return;
        }
        if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
        const bool eof = read_available(c.in, [&c](char* buf, size_t size) { return conn_recv(c, buf, size); });
        while (c.fd >= 0 && c.kind == Kind::request && request(c)) {
        }
        if (eof && c.fd >= 0 && c.kind == Kind::request) close_conn(c);
    }

    // Handles one complete request at the start of c.in; false while it is incomplete.
    bool request(Conn& c) {
        size_t he = c.in.find("\r\n\r\n");
        if (he == std::string::npos) {
            if (c.in.size() > 65536) close_conn(c);
            return false;
        }
        std::string_view head(c.in.data(), he + 2);
        size_t sp1 = head.find(' ');
        size_t sp2 = sp1 == std::string_view::npos ? sp1 : head.find(' ', sp1 + 1);
        if (sp2 == std::string_view::npos) {
            close_conn(c);
            return false;
        }
        std::string_view method = head.substr(0, sp1);
        std::string_view target = head.substr(sp1 + 1, sp2 - sp1 - 1);
        size_t q = target.find('?');
        std::string_view path = target.substr(0, q);
        std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
        size_t length = 0;
        for (size_t pos = head.find("\r\n"); pos != std::string_view::npos && pos + 2 < head.size();) {
            size_t end = head.find("\r\n", pos + 2);
            std::string_view line = head.substr(pos + 2, end - pos - 2);
            size_t colon = line.find(':');
            if (colon != std::string_view::npos && equal_ci(line.substr(0, colon), "content-length"))
                length = size_t(std::strtoull(std::string(line.substr(colon + 1)).c_str(), nullptr, 10));
            pos = end;
        }
        if (c.in.size() < he + 4 + length) return false;
        std::string_view body(c.in.data() + he + 4, length);
        const size_t used = he + 4 + length;

        if (method == "POST" && (path == "/pub" || path == "/pubr")) {
            publish(c, query_value(query, "channel"), body);
        } else if (method == "GET" && (path == "/sub" || path == "/replay")) {
            subscribe(c, query_value(query, "channels"), path == "/replay");
            return false;  // the connection is a stream now
        } else if (method == "GET" && path == "/stats") {
            char b[200];
            std::snprintf(
                b, sizeof b,
                "{\"stream_writes\":%llu,\"frames_written\":%llu,\"writes_blocked\":%llu,\"publishes\":%llu}\n",
                (unsigned long long)stream_writes_, (unsigned long long)frames_written_,
                (unsigned long long)writes_blocked_, (unsigned long long)publishes_);
            answer_and_close(c, "200 OK", b);
            return false;
        } else if (method == "GET" && path == "/set") {
            set(c, query);
            return false;
        } else {
            answer_and_close(c, "404 Not Found", "{\"error\":\"not found\"}\n");
            return false;
        }
        c.in.erase(0, used);
        return true;
    }

    Channel& channel(std::string_view name) {
        auto it = channels_.find(std::string(name));
        if (it == channels_.end()) {
            auto ch = std::make_unique<Channel>();
            ch->name = std::string(name);
            it = channels_.emplace(ch->name, std::move(ch)).first;
        }
        return *it->second;
    }

    void publish(Conn& c, std::string_view name, std::string_view data) {
        if (name.empty()) {
            answer_and_close(c, "400 Bad Request", "{\"error\":\"no channel\"}\n");
            return;
        }
        Channel& ch = channel(name);
        last_id_ = std::max(last_id_ + 1, clock_us());
        ch.frames.push_back(event_frame(last_id_, data));
        ++publishes_;
        mark_dirty(ch);
        // Answered before any delivery, as ours answers once the event is stored.
        char body[128];
        int n = std::snprintf(body, sizeof body, "{\"id\":\"%" PRIu64 "\",\"events\":1,\"subscribers\":%zu}\n",
                              last_id_, ch.streams.size());
        std::string out = "HTTP/1.1 202 Accepted\r\nServer: floor\r\nDate: " + http_date() +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(n) +
                          "\r\nConnection: keep-alive\r\n\r\n" + std::string(body, size_t(n));
        if (!send_answer(c, out)) close_conn(c);
    }

    void subscribe(Conn& c, std::string_view name, bool replay) {
        if (name.empty()) {
            answer_and_close(c, "400 Bad Request", "{\"error\":\"no channel\"}\n");
            return;
        }
        Channel& ch = channel(name);
        c.kind = Kind::stream;
        c.in.clear();
        c.in.shrink_to_fit();
        Stream& s = c.stream;
        s.channel = &ch;
        s.index = ch.streams.size();
        ch.streams.push_back(c.fd);
        ch.had_streams = true;
        s.next = replay ? ch.released - std::min(ch.released, kReplay) : ch.released;
        c.in = "HTTP/1.1 200 OK\r\nServer: floor\r\nDate: " + http_date() +
               "\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
               "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n";
        s.rest = std::move(c.in);  // the head goes out first, in the same writev as the first chunk
        c.in = std::string();
        s.preamble = true;
        write_stream(c);
    }

    void set(Conn& c, std::string_view query) {
        std::string_view f = query_value(query, "frames_per_write");
        std::string_view h = query_value(query, "hold_ms");
        if (!f.empty()) frames_per_write_ = std::strtod(std::string(f).c_str(), nullptr);
        if (!h.empty()) hold_ns_ = int64_t(std::strtod(std::string(h).c_str(), nullptr) * 1e6);
        for (auto& [name, ch] : channels_) {
            ch->credit = 0;
            ch->threshold = next_threshold(*ch);
        }
        char b[128];
        std::snprintf(b, sizeof b, "{\"frames_per_write\":%g,\"hold_ms\":%g}\n", frames_per_write_,
                      double(hold_ns_) / 1e6);
        answer_and_close(c, "200 OK", b);
    }

    size_t next_threshold(Channel& ch) const {
        if (frames_per_write_ <= 1) return 1;
        ch.credit += frames_per_write_;
        size_t k = size_t(std::floor(ch.credit));
        ch.credit -= double(k);
        return std::max<size_t>(1, k);
    }

    void answer_and_close(Conn& c, const char* status, std::string_view body) {
        std::string out = std::string("HTTP/1.1 ") + status + "\r\nServer: floor\r\nDate: " + http_date() +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\nConnection: close\r\n\r\n" + std::string(body);
        if (send_answer(c, out) && c.ssl) {
            SSL_shutdown(c.ssl);  // close_notify, not waiting for the client's
            ERR_clear_error();
        }
        close_conn(c);
    }

    void mark_dirty(Channel& ch) {
        if (!ch.held_since) ch.held_since = now_ns();
        if (ch.dirty) return;
        ch.dirty = true;
        dirty_.push_back(&ch);
    }

    // End of a turn of the event loop: release what is due and write it to every stream.
    void deliver() {
        if (dirty_.empty()) return;
        const int64_t now = frames_per_write_ > 1 ? now_ns() : 0;
        size_t keep = 0;
        for (size_t i = 0; i < dirty_.size(); ++i) {
            Channel* ch = dirty_[i];
            const size_t waiting = ch->frames.size() - ch->released;
            const bool due = frames_per_write_ <= 1 || waiting >= ch->threshold || ch->streams.empty() ||
                             now - ch->held_since >= hold_ns_;
            if (!due) {
                dirty_[keep++] = ch;
                continue;
            }
            ch->released = ch->frames.size();
            ch->held_since = 0;
            ch->threshold = next_threshold(*ch);
            for (size_t k = 0; k < ch->streams.size();) {
                const int fd = ch->streams[k];
                Conn& c = conns_[size_t(fd)];
                if (!c.stream.blocked) write_stream(c);
                // A failed write closes the stream, which moves the last stream into slot k.
                if (k < ch->streams.size() && ch->streams[k] == fd) ++k;
            }
            ch->dirty = false;  // only now: close_conn() leaves a dirty channel alone
            if (ch->streams.empty() && ch->had_streams) channels_.erase(ch->name);
        }
        dirty_.resize(keep);
    }

    // Writes what is left of a partial write, then every frame due to the stream, in one writev
    // per kMaxFrames frames: one chunk each. On a TLS stream the same bytes go in one SSL_write
    // per writev: what the writev would carry is copied into one buffer first (as nginx's
    // ngx_ssl_send_chain copies a chain into its 16 KB buffer), and an SSL_write that could not
    // complete is retried with that same buffer, alone, before anything new is taken.
    void write_stream(Conn& c) {
        Stream& s = c.stream;
        Channel& ch = *s.channel;
        while (!s.blocked && (!s.tls_out.empty() || !s.rest.empty() || s.preamble || s.next < ch.released)) {
            if (!s.tls_out.empty()) {
                if (!ssl_write_out(c)) return;
                continue;
            }
            iovec iov[kMaxFrames + 4];
            size_t n = 0, bytes = 0;
            if (!s.rest.empty()) {
                iov[n++] = {s.rest.data(), s.rest.size()};
                bytes += s.rest.size();
            }
            const size_t frames = std::min(ch.released - s.next, kMaxFrames);
            char size_line[24];
            if (frames || s.preamble) {
                size_t payload = s.preamble ? kPreamble.size() : 0;
                for (size_t k = 0; k < frames; ++k) payload += ch.frames[s.next + k].size();
                int len = std::snprintf(size_line, sizeof size_line, "%zx\r\n", payload);
                iov[n++] = {size_line, size_t(len)};
                if (s.preamble) iov[n++] = {const_cast<char*>(kPreamble.data()), kPreamble.size()};
                for (size_t k = 0; k < frames; ++k) {
                    std::string& f = ch.frames[s.next + k];
                    iov[n++] = {f.data(), f.size()};
                }
                iov[n++] = {const_cast<char*>("\r\n"), 2};
                bytes += size_t(len) + payload + 2;
            }
            if (c.ssl) {
                // The frames are taken now: from here on they are in s.tls_out until it has gone.
                s.tls_out.reserve(bytes);
                for (size_t k = 0; k < n; ++k)
                    s.tls_out.append(static_cast<const char*>(iov[k].iov_base), iov[k].iov_len);
                s.rest.clear();
                s.next += frames;
                s.preamble = false;
                frames_written_ += frames;
                if (!ssl_write_out(c)) return;
                continue;
            }
            ssize_t w = writev(c.fd, iov, int(n));
            ++stream_writes_;
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) {
                    s.blocked = true;  // EPOLLOUT resumes
                    ++writes_blocked_;
                    return;
                }
                close_conn(c);
                return;
            }
            s.next += frames;
            s.preamble = false;
            frames_written_ += frames;
            if (size_t(w) < bytes) {
                // Keep the unsent tail; it goes first once the socket is writable again.
                std::string tail;
                size_t skip = size_t(w);
                for (size_t k = 0; k < n; ++k) {
                    if (skip >= iov[k].iov_len) {
                        skip -= iov[k].iov_len;
                        continue;
                    }
                    tail.append(static_cast<char*>(iov[k].iov_base) + skip, iov[k].iov_len - skip);
                    skip = 0;
                }
                s.rest = std::move(tail);
                s.blocked = true;
                ++writes_blocked_;
                return;
            }
            s.rest.clear();
        }
    }

    // One SSL_write of a TLS stream's s.tls_out: true when it has all gone. Without
    // SSL_MODE_ENABLE_PARTIAL_WRITE it goes whole or not at all; SSL_ERROR_WANT_WRITE (or
    // WANT_READ) marks the stream blocked, s.tls_out left as it is for the retry OpenSSL requires
    // (the same buffer and length). False too when the write failed and closed the stream.
    bool ssl_write_out(Conn& c) {
        Stream& s = c.stream;
        int r = SSL_write(c.ssl, s.tls_out.data(), int(s.tls_out.size()));
        ++stream_writes_;
        if (r > 0) {
            s.tls_out.clear();  // keeps its capacity: one buffer per stream, as nginx's
            return true;
        }
        if (tls_result(c.ssl, r) < 0 && errno == EAGAIN) {
            s.blocked = true;  // the next edge resumes (handle())
            ++writes_blocked_;
            return false;
        }
        close_conn(c);
        return false;
    }

    void close_conn(Conn& c) {
        if (c.fd < 0) return;
        if (c.kind == Kind::stream && c.stream.channel) {
            Channel& ch = *c.stream.channel;
            const int last = ch.streams.back();
            ch.streams[c.stream.index] = last;
            conns_[size_t(last)].stream.index = c.stream.index;
            ch.streams.pop_back();
            // A channel whose streams have all gone is forgotten (bench channels are fresh names
            // every run); one still in dirty_ waits for deliver().
            if (ch.streams.empty() && !ch.dirty) channels_.erase(ch.name);
        }
        if (c.ssl) SSL_free(c.ssl);
        c.ssl = nullptr;
        c.handshaking = false;
        close(c.fd);
        c.fd = -1;
        c.kind = Kind::request;
        c.in = std::string();
        c.stream = Stream{};
    }

    SSL_CTX* tls_ = nullptr;
    int listener_ = -1, tls_listener_ = -1, ep_ = -1;
    std::vector<Conn> conns_ = std::vector<Conn>(1024);
    std::unordered_map<std::string, std::unique_ptr<Channel>> channels_;
    std::vector<Channel*> dirty_;
    uint64_t last_id_ = 0;
    double frames_per_write_ = 0;  // 0 or 1: every turn of the loop delivers everything
    int64_t hold_ns_ = 50 * 1000000LL;
    uint64_t stream_writes_ = 0, frames_written_ = 0, publishes_ = 0;
    uint64_t writes_blocked_ = 0;  // stream writes that left the stream waiting for its socket
};

volatile sig_atomic_t g_stop = 0;
void on_signal(int) {
    g_stop = 1;
}

}  // namespace

int main(int argc, char** argv) {
    const char* usage =
        "usage: floor --port P [--tls-port T --tls-cert CERT.pem --tls-key KEY.pem]\n"
        "  listens on 127.0.0.1:P, and with --tls-port on 127.0.0.1:T for TLS 1.3 too\n"
        "  (see the top of bench/floor.cpp)\n";
    int port = 0, tls_port = 0;
    std::string cert, key;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--port" && i + 1 < argc)
            port = std::atoi(argv[++i]);
        else if (a == "--tls-port" && i + 1 < argc)
            tls_port = std::atoi(argv[++i]);
        else if (a == "--tls-cert" && i + 1 < argc)
            cert = argv[++i];
        else if (a == "--tls-key" && i + 1 < argc)
            key = argv[++i];
        else if (a == "--help" || a == "-h") {
            std::fputs(usage, stderr);
            return 0;
        } else
            die("unknown option %s\n%s", argv[i], usage);
    }
    if (port <= 0 || port > 65535) die("--port P is required");
    const bool tls = tls_port != 0 || !cert.empty() || !key.empty();
    if (tls && (tls_port <= 0 || tls_port > 65535 || tls_port == port || cert.empty() || key.empty()))
        die("TLS needs all of --tls-port (not P), --tls-cert and --tls-key");
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    Floor floor(port, tls_port, tls ? make_tls_context(cert, key) : nullptr);
    floor.run(g_stop);
    return 0;
}
