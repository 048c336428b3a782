// SSE load generator used by scripts/bench.sh.
//
// Opens N Server-Sent Events subscribers spread over C channels, waits until every one has its
// response headers, then publishes M events at a fixed rate by HTTP POST and checks what each
// subscriber received: lost, duplicated, out of order, delivery latency and publish response
// time. The result is one JSON line on stdout and a readable summary on stderr.
// With --idle-only it connects the subscribers, prints "ready" and holds them until SIGTERM,
// SIGINT or the end of its standard input (to measure the server's memory per idle stream).
// With --replay it publishes the M events first and then connects the subscribers, which are
// owed every event of their channel from the server's history (a reconnect storm).
// With --pub-port the events are published to another server (port) than the one the subscribers
// read: two nodes sharing a broker, so that each event crosses from one node to the other.
// With --tls every connection (subscribers and publishers) speaks TLS (OpenSSL), to measure what
// TLS costs the servers.
//
// Threads, one per role: the main thread owns every subscriber socket; a publisher thread owns
// the publish connections, so that publish response times do not include the time the main
// thread spends reading thousands of streams.
//
// Build: g++ -std=c++17 -O2 -pthread -o loadgen loadgen.cpp -lssl -lcrypto

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "read_available.h"
#include "tls_result.h"

namespace {

int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  // one clock for both threads: same-machine latency
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

double to_ms(int64_t ns) {
    return double(ns) / 1e6;
}

[[noreturn]] void die(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("loadgen: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
    std::exit(2);
}

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    int pub_port = 0;  // publish to this port instead (another node); 0 = --port
    std::string sub_path = "/sub?channels={ch}";
    std::string pub_path = "/pub?channel={ch}";
    long subscribers = 100;
    long channels = 1;
    long events = 100;
    double rate = 100;    // events/s over all channels; 0 = as fast as the answers come
    double timeout = 30;  // seconds for connecting, and for deliveries after the last publish
    bool idle_only = false;
    bool replay = false;         // publish first, then connect: the events come from history
    std::string channel_prefix;  // default: "bench-<run id>-", fresh per run (see main)
    long pub_conns = 1;
    long payload = 0;           // pad each event body to at least this many bytes
    long connect_window = 256;  // subscribers connecting at once
    long src_addrs = 1;         // spread subscribers over 127.0.0.1 .. 127.0.0.<n>
    double settle = 0;          // seconds to wait between "all connected" and the first publish
    std::string label;
    std::vector<int> cpu_pids;  // server processes whose CPU time is sampled around publishing
    bool tls = false;           // every connection speaks TLS
};

void usage() {
    std::fputs(
        "usage: loadgen --port P [options]\n"
        "  --host H             server address (default 127.0.0.1)\n"
        "  --port P             server port (required)\n"
        "  --pub-port P         publish to this port instead (another node; default: --port)\n"
        "  --sub-path T         subscribe path, {ch} = channel (default /sub?channels={ch})\n"
        "  --pub-path T         publish path, {ch} = channel (default /pub?channel={ch})\n"
        "  --subscribers N      subscribers, subscriber i on channel i mod C (default 100)\n"
        "  --channels C         channels (default 1)\n"
        "  --events M           events in all, event k to channel k mod C (default 100)\n"
        "  --rate R             events/s in all; 0 = closed loop (default 100)\n"
        "  --timeout S          limit for connecting and for deliveries after the last publish (30)\n"
        "  --idle-only          connect, print \"ready\", hold until SIGTERM/SIGINT/stdin EOF\n"
        "  --replay             publish the events first, then connect: each subscriber is owed\n"
        "                       every event of its channel from the server's history\n"
        "  --pub-conns P        keep-alive publish connections, channel c on connection c mod P (1)\n"
        "  --payload B          pad each event body to at least B bytes (default 0: no padding)\n"
        "  --channel-prefix S   channel names are S0, S1, ... (default bench-<run id>-)\n"
        "  --connect-window W   subscribers connecting at once (default 256)\n"
        "  --src-addrs K        bind subscribers to 127.0.0.1..127.0.0.K (default 1: no bind)\n"
        "  --settle S           seconds between all connected and the first publish (default 0)\n"
        "  --cpu-pids P1,P2     sample these processes' CPU time and read/write syscalls around the\n"
        "                       publish window\n"
        "  --label L            copied into the JSON result\n"
        "  --tls                every connection speaks TLS (the server's certificate is not checked)\n"
        "loadgen --self-test    checks the stream and response parsers, then exits\n",
        stderr);
}

long parse_long(const char* flag, const char* v, long lo, long hi) {
    char* end = nullptr;
    errno = 0;
    long n = std::strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi)
        die("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, v);
    return n;
}

double parse_double(const char* flag, const char* v, double lo) {
    char* end = nullptr;
    double d = std::strtod(v, &end);
    if (end == v || *end || !(d >= lo) || !std::isfinite(d)) die("%s: expected a number >= %g, got '%s'", flag, lo, v);
    return d;
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        std::string value;
        bool has_value = false;
        if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = arg.substr(eq + 1);
            arg.resize(eq);
            has_value = true;
        }
        auto need = [&]() -> const char* {
            if (has_value) return value.c_str();
            if (i + 1 >= argc) die("%s needs a value", arg.c_str());
            return argv[++i];
        };
        const char* f = arg.c_str();
        if (arg == "--help" || arg == "-h") {
            usage();
            std::exit(0);
        } else if (arg == "--host")
            o.host = need();
        else if (arg == "--port")
            o.port = int(parse_long(f, need(), 1, 65535));
        else if (arg == "--pub-port")
            o.pub_port = int(parse_long(f, need(), 1, 65535));
        else if (arg == "--sub-path")
            o.sub_path = need();
        else if (arg == "--pub-path")
            o.pub_path = need();
        else if (arg == "--subscribers")
            o.subscribers = parse_long(f, need(), 0, 1000000);
        else if (arg == "--channels")
            o.channels = parse_long(f, need(), 1, 1000000);
        else if (arg == "--events")
            o.events = parse_long(f, need(), 0, 100000000);
        else if (arg == "--rate")
            o.rate = parse_double(f, need(), 0);
        else if (arg == "--timeout")
            o.timeout = parse_double(f, need(), 0.1);
        else if (arg == "--idle-only")
            o.idle_only = true;
        else if (arg == "--replay")
            o.replay = true;
        else if (arg == "--pub-conns")
            o.pub_conns = parse_long(f, need(), 1, 1000);
        else if (arg == "--payload")
            o.payload = parse_long(f, need(), 0, 16 * 1024 * 1024);
        else if (arg == "--channel-prefix")
            o.channel_prefix = need();
        else if (arg == "--connect-window")
            o.connect_window = parse_long(f, need(), 1, 1000000);
        else if (arg == "--src-addrs")
            o.src_addrs = parse_long(f, need(), 1, 254);
        else if (arg == "--settle")
            o.settle = parse_double(f, need(), 0);
        else if (arg == "--label")
            o.label = need();
        else if (arg == "--tls")
            o.tls = true;
        else if (arg == "--cpu-pids") {
            std::string list = need();
            for (size_t p = 0; p < list.size();) {
                size_t q = list.find(',', p);
                if (q == std::string::npos) q = list.size();
                if (q > p) o.cpu_pids.push_back(int(parse_long(f, list.substr(p, q - p).c_str(), 1, 1 << 30)));
                p = q + 1;
            }
        } else {
            usage();
            die("unknown option %s", argv[i]);
        }
    }
    if (!o.port) {
        usage();
        die("--port is required");
    }
    if (!o.pub_port) o.pub_port = o.port;
    if (o.pub_conns > o.channels) o.pub_conns = o.channels;  // a connection per channel at most
    return o;
}

std::string expand(const std::string& tmpl, const std::string& channel) {
    std::string out;
    for (size_t i = 0; i < tmpl.size();) {
        if (tmpl.compare(i, 4, "{ch}") == 0) {
            out += channel;
            i += 4;
        } else
            out += tmpl[i++];
    }
    return out;
}

// A process's user + system CPU time in clock ticks, from /proc/<pid>/stat; -1 if unreadable.
long long cpu_ticks(int pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = std::fopen(path, "r");
    if (!f) return -1;
    char buf[1024];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    // The command name (field 2) may hold spaces; the fields after it start past the last ')'.
    const char* p = std::strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long utime = 0, stime = 0;
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return -1;
    return (long long)(utime + stime);
}

long long cpu_ticks_sum(const std::vector<int>& pids) {
    long long sum = 0;
    for (int pid : pids) {
        long long t = cpu_ticks(pid);
        if (t < 0) return -1;
        sum += t;
    }
    return sum;
}

// Read and write syscalls of processes, from /proc/<pid>/io: syscw counts write() and writev()
// (whatever they return), not send() or sendmsg(); syscr counts read(), not recv(). nginx writes
// its sockets with writev, so the write syscalls tell how many writes carried the deliveries
// (scripts/bench.sh works out frames per write from them). -1 when unreadable.
struct SyscallCounts {
    long long reads = -1, writes = -1;
};

SyscallCounts syscall_counts(const std::vector<int>& pids) {
    SyscallCounts sum{0, 0};
    for (int pid : pids) {
        char path[64];
        std::snprintf(path, sizeof path, "/proc/%d/io", pid);
        FILE* f = std::fopen(path, "r");
        if (!f) return {};
        char line[128];
        long long r = -1, w = -1;
        while (std::fgets(line, sizeof line, f)) {
            std::sscanf(line, "syscr: %lld", &r);
            std::sscanf(line, "syscw: %lld", &w);
        }
        std::fclose(f);
        if (r < 0 || w < 0) return {};
        sum.reads += r;
        sum.writes += w;
    }
    return sum;
}

// ---------------------------------------------------------------------------------------------
// HTTP pieces

// Case-insensitive lookup of a header's value in a response head (status line included).
std::string_view header_value(std::string_view head, std::string_view name) {
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos && pos + 2 < head.size()) {
        size_t start = pos + 2;
        size_t end = head.find("\r\n", start);
        if (end == std::string_view::npos) end = head.size();
        std::string_view line = head.substr(start, end - start);
        if (line.size() > name.size() && line[name.size()] == ':' &&
            std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
                return std::tolower((unsigned char)a) == std::tolower((unsigned char)b);
            })) {
            std::string_view v = line.substr(name.size() + 1);
            while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
            return v;
        }
        pos = end;
    }
    return {};
}

bool contains_token_ci(std::string_view v, std::string_view token) {
    if (v.size() < token.size()) return false;
    for (size_t i = 0; i + token.size() <= v.size(); ++i) {
        if (std::equal(token.begin(), token.end(), v.begin() + i,
                       [](char a, char b) { return std::tolower((unsigned char)a) == std::tolower((unsigned char)b); }))
            return true;
    }
    return false;
}

// "HTTP/1.1 200 OK" -> 200; 0 if the line is not a status line.
int status_code(std::string_view head) {
    if (head.size() < 12 || head.compare(0, 5, "HTTP/") != 0) return 0;
    size_t sp = head.find(' ');
    if (sp == std::string_view::npos || sp + 4 > head.size()) return 0;
    int code = 0;
    for (size_t i = sp + 1; i < sp + 4; ++i) {
        if (head[i] < '0' || head[i] > '9') return 0;
        code = code * 10 + (head[i] - '0');
    }
    return code;
}

// Incremental decoder of a chunked HTTP/1.1 body; hands the payload bytes to a sink.
class ChunkedDecoder {
public:
    enum class Result { more, done, error };

    template <class Sink>
    Result feed(const char* p, size_t n, Sink&& sink) {
        for (size_t i = 0; i < n;) {
            char c = p[i];
            switch (st_) {
                case St::size:
                    if (int v = hex(c); v >= 0) {
                        if (size_ > (uint64_t(1) << 40)) return error();
                        size_ = size_ * 16 + uint64_t(v);
                        digits_ = true;
                    } else if (c == ';' || c == ' ' || c == '\t') {
                        st_ = St::ext;
                    } else if (c == '\r') {
                        st_ = St::size_lf;
                    } else if (c == '\n') {
                        if (!size_line_done()) return error();
                    } else {
                        return error();
                    }
                    ++i;
                    break;
                case St::ext:  // chunk extensions: skipped
                    if (c == '\n' && !size_line_done()) return error();
                    ++i;
                    break;
                case St::size_lf:
                    if (c != '\n' || !size_line_done()) return error();
                    ++i;
                    break;
                case St::data: {
                    size_t take = size_t(std::min<uint64_t>(left_, n - i));
                    sink(p + i, take);
                    i += take;
                    left_ -= take;
                    if (left_ == 0) st_ = St::data_cr;
                    break;
                }
                case St::data_cr:
                    if (c == '\r')
                        st_ = St::data_lf;
                    else if (c == '\n')
                        next_chunk();
                    else
                        return error();
                    ++i;
                    break;
                case St::data_lf:
                    if (c != '\n') return error();
                    next_chunk();
                    ++i;
                    break;
                case St::trailer_bol:
                    st_ = c == '\r' ? St::trailer_end_lf : c == '\n' ? St::done : St::trailer_line;
                    ++i;
                    break;
                case St::trailer_end_lf:
                    if (c != '\n') return error();
                    st_ = St::done;
                    ++i;
                    break;
                case St::trailer_line:
                    if (c == '\n') st_ = St::trailer_bol;
                    ++i;
                    break;
                case St::done:
                    return Result::done;
                case St::failed:
                    return Result::error;
            }
        }
        return st_ == St::done ? Result::done : st_ == St::failed ? Result::error : Result::more;
    }

private:
    enum class St {
        size,
        ext,
        size_lf,
        data,
        data_cr,
        data_lf,
        trailer_bol,
        trailer_end_lf,
        trailer_line,
        done,
        failed
    };

    static int hex(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }
    bool size_line_done() {
        if (!digits_) return false;
        if (size_ == 0)
            st_ = St::trailer_bol;  // last chunk: the body ends after the trailer
        else {
            st_ = St::data;
            left_ = size_;
        }
        return true;
    }
    void next_chunk() {
        st_ = St::size;
        size_ = 0;
        digits_ = false;
    }
    Result error() {
        st_ = St::failed;
        return Result::error;
    }

    St st_ = St::size;
    uint64_t size_ = 0, left_ = 0;
    bool digits_ = false;
};

// Incremental text/event-stream parser (the WHATWG rules that matter here): lines end with CRLF,
// LF or CR; "data" values are joined with LF; a blank line dispatches the event if it has data.
// Comments (":ok", ": heartbeat", ": hi") and the id/event/retry fields are ignored.
class SseParser {
public:
    template <class OnEvent>
    void feed(const char* p, size_t n, OnEvent&& on_event) {
        size_t i = 0;
        if (skip_lf_ && n > 0) {  // the CR of a CRLF ended the previous buffer
            if (p[0] == '\n') ++i;
            skip_lf_ = false;
        }
        while (i < n) {
            size_t j = i;
            while (j < n && p[j] != '\n' && p[j] != '\r') ++j;
            line_.append(p + i, j - i);
            if (j == n) break;  // partial line: wait for more
            if (p[j] == '\r') {
                if (j + 1 < n) {
                    if (p[j + 1] == '\n') ++j;
                } else
                    skip_lf_ = true;
            }
            i = j + 1;
            line_done(on_event);
        }
    }

private:
    template <class OnEvent>
    void line_done(OnEvent& on_event) {
        if (line_.empty()) {
            if (has_data_) on_event(std::string_view(data_));
            data_.clear();
            has_data_ = false;
        } else if (line_[0] != ':') {
            size_t colon = line_.find(':');
            std::string_view field(line_.data(), colon == std::string::npos ? line_.size() : colon);
            if (field == "data") {
                std::string_view value;
                if (colon != std::string::npos) {
                    value = std::string_view(line_).substr(colon + 1);
                    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
                }
                if (has_data_) data_ += '\n';
                data_.append(value.data(), value.size());
                has_data_ = true;
            }
        }
        line_.clear();
    }

    std::string line_, data_;
    bool has_data_ = false, skip_lf_ = false;
};

// ---------------------------------------------------------------------------------------------
// Sockets

int new_socket() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", std::strerror(errno));
    return fd;
}

// Starts a non-blocking connect. Returns false (errno set) on an immediate failure.
bool start_connect(int fd, const sockaddr_in& dst, const sockaddr_in* src) {
    if (src) {
        // Without this, bind() would pick the source port before knowing the destination and
        // every source address would get only its own share of the ephemeral range.
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, reinterpret_cast<const sockaddr*>(src), sizeof *src) != 0) return false;
    }
    if (connect(fd, reinterpret_cast<const sockaddr*>(&dst), sizeof dst) == 0) return true;
    return errno == EINPROGRESS;
}

int socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
    return err;
}

// Closes with a reset: the client side then keeps no TIME_WAIT entries, so that back-to-back
// runs of 10,000 subscribers do not run out of ephemeral ports.
void close_reset(int fd) {
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

sockaddr_in resolve(const std::string& host, int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) == 1) return a;
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) die("cannot resolve %s", host.c_str());
    a.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return a;
}

// ---------------------------------------------------------------------------------------------
// TLS (--tls): OpenSSL sessions over the same non-blocking sockets. The server's certificate is
// not checked (the bench makes its own); every connection makes a full handshake, as new clients
// do. A connection's bytes go through conn_recv() and conn_send(), which keep recv()'s and send()'s
// contracts (-1 with errno EAGAIN: wait for the socket) for a session as for a bare socket.

SSL_CTX* g_tls = nullptr;  // set by --tls

void init_tls() {
    g_tls = SSL_CTX_new(TLS_client_method());
    if (!g_tls) die("SSL_CTX_new failed");
    SSL_CTX_set_verify(g_tls, SSL_VERIFY_NONE, nullptr);
    SSL_CTX_set_session_cache_mode(g_tls, SSL_SESS_CACHE_OFF);
    // A peer that closes without close_notify ends the stream as a plain socket's FIN does.
    SSL_CTX_set_options(g_tls, SSL_OP_IGNORE_UNEXPECTED_EOF);
    // SSL_write as send(): a part may go, and the rest is retried from wherever it now lies.
    SSL_CTX_set_mode(g_tls, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

ssize_t conn_recv(int fd, SSL* ssl, char* buf, size_t n) {
    if (!ssl) return recv(fd, buf, n, 0);
    int r = SSL_read(ssl, buf, int(std::min<size_t>(n, INT32_MAX)));
    return r > 0 ? r : tls_result(ssl, r);
}

ssize_t conn_send(int fd, SSL* ssl, const char* buf, size_t n) {
    if (!ssl) return send(fd, buf, n, MSG_NOSIGNAL);
    int r = SSL_write(ssl, buf, int(std::min<size_t>(n, INT32_MAX)));
    return r > 0 ? r : tls_result(ssl, r);
}

// Starts (ssl == nullptr) or goes on with the TLS handshake on a connected socket: 1 done, 0
// waiting for the socket, -1 failed (errno set).
int tls_handshake(int fd, SSL*& ssl) {
    if (!ssl) {
        ssl = SSL_new(g_tls);
        if (!ssl || SSL_set_fd(ssl, fd) != 1) die("SSL_new failed");
        SSL_set_connect_state(ssl);
    }
    int r = SSL_do_handshake(ssl);
    if (r == 1) return 1;
    return tls_result(ssl, r) < 0 && errno == EAGAIN ? 0 : -1;
}

void tls_free(SSL*& ssl) {
    if (ssl) SSL_free(ssl);
    ssl = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Event bodies: {"run":"<run id>","seq":<k>,"t":<CLOCK_MONOTONIC ns at send>[,"pad":"xx.."]}

std::string make_body(const std::string& run_id, long seq, int64_t t, long payload) {
    char buf[128];
    int n = std::snprintf(buf, sizeof buf, "{\"run\":\"%s\",\"seq\":%ld,\"t\":%" PRId64, run_id.c_str(), seq, t);
    std::string body(buf, size_t(n));
    if (long(body.size()) + 1 < payload) {
        const std::string pad_key = ",\"pad\":\"\"";
        long pad = payload - long(body.size()) - 1 - long(pad_key.size());
        body += ",\"pad\":\"";
        if (pad > 0) body.append(size_t(pad), 'x');
        body += '"';
    }
    body += '}';
    return body;
}

enum class BodyKind { ours, foreign, malformed };

// Strict parse of the body format above; anything else is foreign (another run's event, such as
// a server replaying its channel buffer) or malformed.
BodyKind parse_body(std::string_view d, std::string_view run_id, long& seq, int64_t& t) {
    static constexpr std::string_view run_key = "{\"run\":\"";
    if (d.substr(0, run_key.size()) != run_key) return BodyKind::malformed;
    d.remove_prefix(run_key.size());
    size_t q = d.find('"');
    if (q == std::string_view::npos) return BodyKind::malformed;
    if (d.substr(0, q) != run_id) return BodyKind::foreign;
    d.remove_prefix(q);
    auto number = [&](std::string_view key, int64_t& out) {
        if (d.substr(0, key.size()) != key) return false;
        d.remove_prefix(key.size());
        size_t k = 0;
        int64_t v = 0;
        while (k < d.size() && d[k] >= '0' && d[k] <= '9' && k < 19) v = v * 10 + (d[k++] - '0');
        if (k == 0) return false;
        d.remove_prefix(k);
        out = v;
        return true;
    };
    int64_t s = 0;
    if (!number("\",\"seq\":", s) || !number(",\"t\":", t)) return BodyKind::malformed;
    seq = long(s);
    return BodyKind::ours;
}

// Nearest-rank percentile; sorts a copy's worth of work in place.
double percentile_ms(std::vector<int64_t>& v, double p) {
    if (v.empty()) return -1;
    size_t rank = size_t(std::ceil(p * double(v.size())));
    if (rank > 0) --rank;
    if (rank >= v.size()) rank = v.size() - 1;
    std::nth_element(v.begin(), v.begin() + long(rank), v.end());
    return to_ms(v[rank]);
}

std::atomic<bool> g_stop{false};
void on_signal(int) {
    g_stop = true;
}

// ---------------------------------------------------------------------------------------------
// Publisher thread

struct PublishOutcome {
    std::vector<int> status;        // per event: HTTP status, 0 = no answer (error or timeout)
    std::vector<int64_t> sent_at;   // per event: CLOCK_MONOTONIC ns at send, 0 = never sent
    std::vector<int64_t> response;  // per answered event: send -> full response, ns
    int64_t first_send = 0, last_send = 0, finished = 0;
    long reconnects = 0;
    std::string error;  // set when the publisher could not run at all
};

class Publisher {
public:
    Publisher(const Options& o, const sockaddr_in& dst, const std::string& run_id, std::vector<std::string> channels)
        : o_(o), dst_(dst), run_id_(run_id), channels_(std::move(channels)), conns_(size_t(o.pub_conns)) {
        out_.status.assign(size_t(o.events), 0);
        out_.sent_at.assign(size_t(o.events), 0);
        out_.response.reserve(size_t(o.events));
        for (size_t c = 0; c < channels_.size(); ++c) paths_.push_back(expand(o.pub_path, channels_[c]));
    }

    PublishOutcome run() {
        ep_ = epoll_create1(EPOLL_CLOEXEC);
        if (ep_ < 0) die("epoll_create1: %s", std::strerror(errno));
        for (size_t i = 0; i < conns_.size(); ++i) connect_conn(i);
        // Connect everything before the clock starts, so the first events do not pay for it.
        int64_t deadline = now_ns() + int64_t(o_.timeout * 1e9);
        while (!all_idle()) {
            if (now_ns() > deadline || failed_connects_ > 3 * long(conns_.size()) || g_stop) {
                out_.error = "publish connections could not be established";
                return finish();
            }
            for (size_t i = 0; i < conns_.size(); ++i)
                if (conns_[i].st == St::closed) connect_conn(i);
            poll(50);
        }

        const int64_t t0 = now_ns();
        const double interval_ns = o_.rate > 0 ? 1e9 / o_.rate : 0;
        long next = 0;  // next event to schedule
        int64_t give_up = 0;
        while (true) {
            int64_t now = now_ns();
            while (next < o_.events && (interval_ns == 0 || now >= t0 + int64_t(double(next) * interval_ns))) {
                size_t ch = size_t(next % o_.channels);
                conns_[ch % conns_.size()].queue.push_back(next);
                ++next;
            }
            for (size_t i = 0; i < conns_.size(); ++i) pump(i);
            if (next == o_.events) {
                if (all_drained()) break;
                if (!give_up) give_up = now + int64_t(o_.timeout * 1e9);
                if (now > give_up || g_stop) break;  // unanswered events stay at status 0
            } else if (g_stop) {
                break;
            }
            int wait_ms = 10;
            if (next < o_.events && interval_ns > 0) {
                int64_t due = t0 + int64_t(double(next) * interval_ns) - now_ns();
                wait_ms = due <= 0 ? 0 : int(std::min<int64_t>(10, (due + 999999) / 1000000));
            }
            poll(wait_ms);
        }
        return finish();
    }

private:
    enum class St { closed, connecting, handshake, idle, writing, waiting };
    struct Conn {
        int fd = -1;
        SSL* ssl = nullptr;  // --tls
        St st = St::closed;
        std::deque<long> queue;  // events due on this connection, oldest first
        long event = -1;         // event in flight
        std::string out, in;
        size_t out_off = 0;
    };

    PublishOutcome finish() {
        for (auto& c : conns_) {
            tls_free(c.ssl);
            if (c.fd >= 0) close(c.fd);
        }
        close(ep_);
        out_.finished = now_ns();
        return std::move(out_);
    }

    bool all_idle() const {
        for (auto& c : conns_)
            if (c.st != St::idle) return false;
        return true;
    }
    bool all_drained() const {
        for (auto& c : conns_)
            if (!c.queue.empty() || c.event >= 0) return false;
        return true;
    }

    void connect_conn(size_t i) {
        Conn& c = conns_[i];
        c.fd = new_socket();
        int one = 1;
        setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c.in.clear();
        c.st = St::connecting;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.u64 = i;
        if (!start_connect(c.fd, dst_, nullptr) || epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
            ++failed_connects_;
            drop(i);
        }
    }

    // The connection is gone: the event in flight (if any) stays unanswered; connect again.
    void drop(size_t i) {
        Conn& c = conns_[i];
        tls_free(c.ssl);
        if (c.fd >= 0) close(c.fd);
        c.fd = -1;
        c.st = St::closed;
        c.event = -1;
        c.out.clear();
        c.in.clear();
    }

    void pump(size_t i) {
        Conn& c = conns_[i];
        if (c.st == St::closed && (!c.queue.empty() || c.event >= 0)) {
            if (failed_connects_ > 100) {  // the server is gone: give the queue up
                c.queue.clear();
                return;
            }
            ++out_.reconnects;
            connect_conn(i);
            return;
        }
        if (c.st != St::idle || c.queue.empty()) return;
        long k = c.queue.front();
        c.queue.pop_front();
        int64_t t = now_ns();
        std::string body = make_body(run_id_, k, t, o_.payload);
        const std::string& path = paths_[size_t(k % o_.channels)];
        c.out = "POST " + path + " HTTP/1.1\r\nHost: " + o_.host + ":" + std::to_string(o_.pub_port) +
                "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                body;
        c.out_off = 0;
        c.event = k;
        out_.sent_at[size_t(k)] = t;
        if (!out_.first_send) out_.first_send = t;
        out_.last_send = t;
        c.st = St::writing;
        write_some(i);
    }

    void write_some(size_t i) {
        Conn& c = conns_[i];
        while (c.out_off < c.out.size()) {
            ssize_t n = conn_send(c.fd, c.ssl, c.out.data() + c.out_off, c.out.size() - c.out_off);
            if (n > 0) {
                c.out_off += size_t(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) return;  // EPOLLOUT (edge) resumes
            drop(i);
            return;
        }
        c.st = St::waiting;
    }

    void poll(int timeout_ms) {
        epoll_event evs[64];
        int n = epoll_wait(ep_, evs, 64, timeout_ms);
        for (int e = 0; e < n; ++e) {
            size_t i = size_t(evs[e].data.u64);
            Conn& c = conns_[i];
            if (c.fd < 0) continue;
            if (c.st == St::connecting) {
                if (!(evs[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                if (socket_error(c.fd) != 0) {
                    ++failed_connects_;
                    drop(i);
                    continue;
                }
                c.st = g_tls ? St::handshake : St::idle;
            }
            if (c.st == St::handshake) {
                int h = tls_handshake(c.fd, c.ssl);
                if (h < 0) {
                    ++failed_connects_;
                    drop(i);
                } else if (h > 0) {
                    c.st = St::idle;
                }
                continue;
            }
            if (c.st == St::writing && (evs[e].events & EPOLLOUT)) write_some(i);
            if (c.fd >= 0 && (evs[e].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) read_some(i);
        }
    }

    void read_some(size_t i) {
        Conn& c = conns_[i];
        const bool eof = read_available(c.in, [&](char* buf, size_t n) { return conn_recv(c.fd, c.ssl, buf, n); });
        bool reopen = false;
        while (c.st == St::waiting) {
            size_t used = 0;
            bool close_after = false;
            int code = complete_response(c.in, eof, used, close_after);
            if (code < 0) break;
            int64_t t = now_ns();
            out_.status[size_t(c.event)] = code;
            out_.response.push_back(t - out_.sent_at[size_t(c.event)]);
            c.event = -1;
            c.in.erase(0, used);
            c.st = St::idle;
            if (close_after) {
                reopen = true;
                break;
            }
        }
        if (reopen || eof) drop(i);  // an unanswered event in flight stays at status 0
        if (reopen) {                // e.g. nginx's keepalive_requests limit: have a fresh one ready at once
            ++out_.reconnects;
            connect_conn(i);
        }
    }

public:
    // If `in` starts with a complete response: its status (0 if unparseable), the bytes it takes
    // and whether the server closes after it. -1 while incomplete.
    static int complete_response(const std::string& in, bool eof, size_t& used, bool& close_after) {
        size_t he = in.find("\r\n\r\n");
        if (he == std::string::npos) return -1;
        std::string_view head(in.data(), he + 2);
        int code = status_code(head);
        close_after = contains_token_ci(header_value(head, "Connection"), "close");
        size_t body = he + 4;
        if (contains_token_ci(header_value(head, "Transfer-Encoding"), "chunked")) {
            ChunkedDecoder dec;
            size_t consumed = 0;
            auto r = ChunkedDecoder::Result::more;
            // Feed byte by byte so that we know where the body ends (responses here are tiny).
            for (size_t k = body; k < in.size() && r == ChunkedDecoder::Result::more; ++k, ++consumed)
                r = dec.feed(in.data() + k, 1, [](const char*, size_t) {});
            if (r == ChunkedDecoder::Result::more) return -1;
            used = body + consumed;
            if (r == ChunkedDecoder::Result::error) close_after = true;
            return code;
        }
        std::string_view cl = header_value(head, "Content-Length");
        if (!cl.empty()) {
            size_t len = size_t(std::strtoull(std::string(cl).c_str(), nullptr, 10));
            if (in.size() < body + len) return -1;
            used = body + len;
            return code;
        }
        if (code == 204 || code == 304 || (code >= 100 && code < 200)) {
            used = body;
            return code;
        }
        if (!eof) return -1;  // body delimited by the end of the connection
        used = in.size();
        close_after = true;
        return code;
    }

private:
    const Options& o_;
    sockaddr_in dst_;
    std::string run_id_;
    std::vector<std::string> channels_, paths_;
    std::vector<Conn> conns_;
    PublishOutcome out_;
    int ep_ = -1;
    long failed_connects_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Subscribers (main thread)

enum class SubSt : uint8_t { pending, connecting, handshake, head, streaming, closed };

struct Subscriber {
    int fd = -1;
    SSL* ssl = nullptr;  // --tls
    SubSt st = SubSt::pending;
    bool chunked = false;
    uint8_t attempts = 0;
    uint32_t channel = 0;
    size_t out_off = 0;
    long max_seq = -1;
    std::string head;
    ChunkedDecoder chunks;
    SseParser sse;
    std::vector<uint64_t> seen;  // bit j: the j-th event of this subscriber's channel arrived
};

struct Tally {
    long delivered = 0, duplicated = 0, out_of_order = 0, foreign = 0, malformed = 0, misrouted = 0;
    long closed_by_server = 0, stream_errors = 0;
    int64_t first_delivery = 0, last_delivery = 0;
    std::vector<int64_t> latency;  // first receipt of each (subscriber, event): receive - send, ns
};

class Subscribers {
public:
    Subscribers(const Options& o, const sockaddr_in& dst, const std::string& run_id,
                const std::vector<std::string>& channels)
        : o_(o), dst_(dst), run_id_(run_id), subs_(size_t(o.subscribers)) {
        ep_ = epoll_create1(EPOLL_CLOEXEC);
        if (ep_ < 0) die("epoll_create1: %s", std::strerror(errno));
        const long per_channel = (o.events + o.channels - 1) / o.channels;
        for (size_t i = 0; i < subs_.size(); ++i) {
            subs_[i].channel = uint32_t(long(i) % o.channels);
            subs_[i].seen.assign(size_t((per_channel + 63) / 64), 0);
            pending_.push_back(i);
        }
        for (auto& ch : channels) {
            requests_.push_back("GET " + expand(o.sub_path, ch) + " HTTP/1.1\r\nHost: " + o.host + ":" +
                                std::to_string(o.port) +
                                "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n");
        }
    }

    ~Subscribers() {
        for (auto& s : subs_) {
            tls_free(s.ssl);
            if (s.fd >= 0) close_reset(s.fd);
        }
        close(ep_);
    }

    // Connects every subscriber (a bounded number at a time, so the server's accept queue does
    // not overflow into SYN retransmits). False on timeout or when one fails three times.
    bool connect_all(std::string& error) {
        const int64_t deadline = now_ns() + int64_t(o_.timeout * 1e9);
        while (connected_ < long(subs_.size())) {
            while (in_flight_ < o_.connect_window && !pending_.empty()) {
                size_t i = pending_.front();
                pending_.pop_front();
                start(i);
            }
            if (!error_.empty()) {
                error = error_;
                return false;
            }
            if (g_stop) {
                error = "interrupted";
                return false;
            }
            if (now_ns() > deadline) {
                error = "timed out: " + std::to_string(connected_) + " of " + std::to_string(subs_.size()) +
                        " subscribers connected";
                return false;
            }
            poll(50);
        }
        return true;
    }

    void poll(int timeout_ms) {
        epoll_event evs[512];
        int n = epoll_wait(ep_, evs, 512, timeout_ms);
        for (int e = 0; e < n; ++e) {
            size_t i = size_t(evs[e].data.u64);
            if (i == kStdin) {
                stdin_event();
                continue;
            }
            handle(i, evs[e].events);
        }
    }

    // Idle mode: stop on stdin EOF too (when stdin is something epoll can watch: a pipe or tty).
    void watch_stdin() {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = kStdin;
        epoll_ctl(ep_, EPOLL_CTL_ADD, 0, &ev);  // EPERM for /dev/null or a file: not watched
    }

    long connected() const { return connected_; }
    long open_streams() const { return connected_ - tally_.closed_by_server - tally_.stream_errors; }
    const Tally& tally() const { return tally_; }
    Tally& tally() { return tally_; }
    const std::vector<Subscriber>& subs() const { return subs_; }
    int64_t connect_started() const { return connect_started_; }
    int64_t connect_finished() const { return connect_finished_; }

private:
    static constexpr size_t kStdin = ~size_t(0);

    void start(size_t i) {
        Subscriber& s = subs_[i];
        if (!connect_started_) connect_started_ = now_ns();
        s.fd = new_socket();
        s.st = SubSt::connecting;
        s.out_off = 0;
        s.head.clear();
        ++s.attempts;
        ++in_flight_;
        sockaddr_in src{};
        const sockaddr_in* srcp = nullptr;
        if (o_.src_addrs > 1) {
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl((127u << 24) | uint32_t(1 + long(i) % o_.src_addrs));
            srcp = &src;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.u64 = i;
        if (!start_connect(s.fd, dst_, srcp) || epoll_ctl(ep_, EPOLL_CTL_ADD, s.fd, &ev) != 0) {
            retry(i, std::string("connect: ") + std::strerror(errno));
        }
    }

    // A failed attempt before the stream opened: try again later, up to three attempts in all.
    void retry(size_t i, const std::string& why) {
        Subscriber& s = subs_[i];
        tls_free(s.ssl);
        if (s.fd >= 0) close(s.fd);
        s.fd = -1;
        --in_flight_;
        if (s.attempts >= 3) {
            error_ = "subscriber " + std::to_string(i) + ": " + why;
            s.st = SubSt::closed;
            return;
        }
        s.st = SubSt::pending;
        pending_.push_back(i);
    }

    void handle(size_t i, uint32_t events) {
        Subscriber& s = subs_[i];
        if (s.fd < 0) return;
        if (s.st == SubSt::connecting) {
            if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
            if (int err = socket_error(s.fd)) {
                retry(i, std::string("connect: ") + std::strerror(err));
                return;
            }
            if (g_tls) s.st = SubSt::handshake;
        }
        if (s.st == SubSt::handshake) {
            int h = tls_handshake(s.fd, s.ssl);
            if (h < 0) {
                retry(i, std::string("TLS handshake: ") + std::strerror(errno));
                return;
            }
            if (h == 0) return;
        }
        if (s.st == SubSt::connecting || s.st == SubSt::handshake) {
            const std::string& req = requests_[s.channel];
            while (s.out_off < req.size()) {
                ssize_t n = conn_send(s.fd, s.ssl, req.data() + s.out_off, req.size() - s.out_off);
                if (n > 0) {
                    s.out_off += size_t(n);
                    continue;
                }
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && errno == EAGAIN) return;  // next EPOLLOUT edge
                retry(i, std::string("send: ") + std::strerror(errno));
                return;
            }
            s.st = SubSt::head;
        }
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_some(i, events);
    }

    void read_some(size_t i, uint32_t events) {
        Subscriber& s = subs_[i];
        static char buf[65536];
        // A short read leaves the socket empty; with edge-triggered epoll any later data raises a
        // new edge, so the recv() that would only say EAGAIN is skipped: it would double the
        // syscalls per delivery, and this process shares the CPUs with the server it measures.
        // Not when the peer has hung up: no new edge would come for the end of the stream. Nor
        // with TLS: a read gives one record at most, so a short one does not mean the socket is empty.
        const bool hangup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
        while (s.fd >= 0) {
            ssize_t n = conn_recv(s.fd, s.ssl, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) return;
            if (n <= 0) {
                stream_ended(i, n == 0 ? "closed by the server" : std::strerror(errno));
                return;
            }
            if (!consume(i, buf, size_t(n), now_ns())) return;  // all events of one read arrived together
            if (size_t(n) < sizeof buf && !hangup && !s.ssl) return;
        }
    }

    // Takes bytes read from subscriber i: response head, then the (chunked) event stream.
    // False when the subscriber was closed or sent to retry.
    bool consume(size_t i, const char* p, size_t len, int64_t t) {
        Subscriber& s = subs_[i];
        if (s.st == SubSt::head) {
            size_t old = s.head.size();
            s.head.append(p, len);
            size_t he = s.head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
            if (he == std::string::npos) {
                if (s.head.size() > 65536) {
                    retry(i, "response head too large");
                    return false;
                }
                return true;
            }
            std::string_view head(s.head.data(), he + 2);
            int code = status_code(head);
            if (code != 200) {
                std::string line(head.substr(0, head.find("\r\n")));
                retry(i, "answered '" + line + "'");
                return false;
            }
            s.chunked = contains_token_ci(header_value(head, "Transfer-Encoding"), "chunked");
            size_t body_off = he + 4 - old;  // where the body starts in these bytes
            p += body_off;
            len -= body_off;
            s.head.clear();
            s.head.shrink_to_fit();
            s.st = SubSt::streaming;
            --in_flight_;
            ++connected_;
            if (connected_ == long(subs_.size())) connect_finished_ = now_ns();
        }
        if (s.st != SubSt::streaming || len == 0) return true;
        auto on_event = [&](std::string_view data) { event(s, data, t); };
        if (!s.chunked) {
            s.sse.feed(p, len, on_event);
            return true;
        }
        auto r = s.chunks.feed(p, len, [&](const char* d, size_t m) { s.sse.feed(d, m, on_event); });
        if (r == ChunkedDecoder::Result::done) {
            stream_ended(i, "closed by the server");
            return false;
        }
        if (r == ChunkedDecoder::Result::error) {
            stream_ended(i, "bad chunked encoding");
            return false;
        }
        return true;
    }

    void stream_ended(size_t i, const char* why) {
        Subscriber& s = subs_[i];
        if (s.st != SubSt::streaming) {
            retry(i, why);
            return;
        }
        tls_free(s.ssl);
        close(s.fd);
        s.fd = -1;
        s.st = SubSt::closed;
        if (std::strcmp(why, "closed by the server") == 0)
            ++tally_.closed_by_server;
        else
            ++tally_.stream_errors;
        if (tally_.closed_by_server + tally_.stream_errors <= 3)
            std::fprintf(stderr, "loadgen: subscriber %zu: stream ended: %s\n", i, why);
    }

    void event(Subscriber& s, std::string_view data, int64_t t) {
        long seq = 0;
        int64_t sent = 0;
        switch (parse_body(data, run_id_, seq, sent)) {
            case BodyKind::foreign:
                ++tally_.foreign;
                return;
            case BodyKind::malformed:
                ++tally_.malformed;
                return;
            case BodyKind::ours:
                break;
        }
        if (seq < 0 || seq >= o_.events || seq % o_.channels != long(s.channel)) {
            ++tally_.misrouted;
            return;
        }
        size_t j = size_t(seq / o_.channels);
        uint64_t bit = uint64_t(1) << (j % 64);
        if (s.seen[j / 64] & bit) {
            ++tally_.duplicated;
            return;
        }
        s.seen[j / 64] |= bit;
        ++tally_.delivered;
        if (seq < s.max_seq)
            ++tally_.out_of_order;
        else
            s.max_seq = seq;
        tally_.latency.push_back(t - sent);
        if (!tally_.first_delivery) tally_.first_delivery = t;
        tally_.last_delivery = t;
    }

    void stdin_event() {
        char buf[4096];
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            epoll_ctl(ep_, EPOLL_CTL_DEL, 0, nullptr);
            g_stop = true;
        }
    }

    const Options& o_;
    sockaddr_in dst_;
    std::string run_id_;
    std::vector<Subscriber> subs_;
    std::vector<std::string> requests_;  // the GET of each channel
    std::deque<size_t> pending_;
    Tally tally_;
    int ep_ = -1;
    long in_flight_ = 0, connected_ = 0;
    int64_t connect_started_ = 0, connect_finished_ = 0;
    std::string error_;
};

// ---------------------------------------------------------------------------------------------
// Output

class JsonLine {
public:
    void str(const char* k, const std::string& v) {
        key(k);
        s_ += '"';
        for (char c : v) {
            if (c == '"' || c == '\\') {
                s_ += '\\';
                s_ += c;
            } else if ((unsigned char)c < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", c);
                s_ += b;
            } else
                s_ += c;
        }
        s_ += '"';
    }
    void num(const char* k, long long v) {
        key(k);
        s_ += std::to_string(v);
    }
    void num(const char* k, double v, int decimals = 3) {
        key(k);
        if (!std::isfinite(v) || v < 0) {
            s_ += "null";
            return;
        }  // -1 marks "not measured"
        char b[64];
        std::snprintf(b, sizeof b, "%.*f", decimals, v);
        s_ += b;
    }
    void boolean(const char* k, bool v) {
        key(k);
        s_ += v ? "true" : "false";
    }
    std::string done() { return s_ + "}"; }

private:
    void key(const char* k) {
        s_ += s_.size() > 1 ? ",\"" : "\"";
        s_ += k;
        s_ += "\":";
    }
    std::string s_ = "{";
};

void emit(JsonLine& j) {
    std::string line = j.done();
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
}

void raise_fd_limit(long need) {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit: %s", std::strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != RLIM_INFINITY && long(rl.rlim_cur) < need)
        die("need %ld file descriptors, the limit is %llu (raise the hard limit: ulimit -Hn)", need,
            (unsigned long long)rl.rlim_cur);
}

// This process's user + system CPU time, seconds (both threads).
double self_cpu_s() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string make_run_id() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = uint64_t(ts.tv_nsec) ^ (uint64_t(ts.tv_sec) << 20) ^ (uint64_t(getpid()) << 40);
    x ^= x >> 33;  // mix so that two runs in the same second differ in every digit
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    char b[17];
    std::snprintf(b, sizeof b, "%08llx", (unsigned long long)(x & 0xffffffffULL));
    return b;
}

// --self-test: the stream decoding against hand-made input cut at every possible point, since a
// parser bug would show up in the benchmark as lost or malformed events, not as a crash.
int self_test() {
    int failures = 0;
    auto check = [&](bool ok, const char* what) {
        if (!ok) {
            std::fprintf(stderr, "self-test FAILED: %s\n", what);
            ++failures;
        }
    };
    // Stream text: comments, every line ending, multi-line data, ignored fields, a data-less block.
    const std::string sse =
        ":ok\n\nid: 1\ndata: {\"a\":1}\n\n: heartbeat\r\n\r\nevent: x\rdata:two\rdata: lines\r\r"
        "retry: 5\n\nid: 3\r\ndata\r\ndata: z\r\n\r\n";
    const std::vector<std::string> want = {"{\"a\":1}", "two\nlines", "\nz"};
    // The same text as a chunked body: chunks of 7 bytes with an extension on one, then a trailer.
    std::string chunked;
    for (size_t k = 0; k < sse.size(); k += 7) {
        std::string part = sse.substr(k, 7);
        char size[32];
        std::snprintf(size, sizeof size, k == 14 ? "%zx;ext=1\r\n" : "%zX\r\n", part.size());
        chunked += size + part + "\r\n";
    }
    chunked += "0\r\nX-Trailer: y\r\n\r\n";
    for (int mode = 0; mode < 2; ++mode) {
        const std::string& input = mode == 0 ? sse : chunked;
        for (size_t cut1 = 0; cut1 <= input.size(); ++cut1) {
            for (size_t cut2 = cut1; cut2 <= input.size(); cut2 += 5) {
                SseParser parser;
                ChunkedDecoder dec;
                std::vector<std::string> got;
                auto on_event = [&](std::string_view d) { got.emplace_back(d); };
                auto r = ChunkedDecoder::Result::more;
                size_t cuts[] = {0, cut1, cut2, input.size()};
                for (int k = 0; k < 3; ++k) {
                    const char* p = input.data() + cuts[k];
                    size_t n = cuts[k + 1] - cuts[k];
                    if (mode == 0)
                        parser.feed(p, n, on_event);
                    else if (n)
                        r = dec.feed(p, n, [&](const char* d, size_t m) { parser.feed(d, m, on_event); });
                }
                if (got != want || (mode == 1 && r != ChunkedDecoder::Result::done)) {
                    check(false, mode == 0 ? "SSE parser with split input" : "chunked decoder with split input");
                    cut1 = input.size();
                    break;
                }
            }
        }
    }
    // Event bodies.
    long seq = 0;
    int64_t t = 0;
    std::string body = make_body("abcd1234", 42, 123456789, 200);
    check(body.size() == 200, "padded body size");
    check(parse_body(body, "abcd1234", seq, t) == BodyKind::ours && seq == 42 && t == 123456789, "body round trip");
    check(parse_body(body, "other", seq, t) == BodyKind::foreign, "foreign body");
    check(parse_body("hello", "abcd1234", seq, t) == BodyKind::malformed, "malformed body");
    // Publish responses: length-delimited, chunked, close-delimited.
    size_t used = 0;
    bool close_after = false;
    std::string r1 = "HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1";
    check(Publisher::complete_response(r1, false, used, close_after) == 202 && used == r1.size() - 8 && !close_after,
          "response with Content-Length");
    std::string r2 =
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    check(Publisher::complete_response(r2, false, used, close_after) == 201 && used == r2.size() && close_after,
          "chunked response with Connection: close");
    check(Publisher::complete_response(r2.substr(0, r2.size() - 1), false, used, close_after) == -1,
          "incomplete response");
    std::string r3 = "HTTP/1.0 200 OK\r\n\r\nbody";
    check(Publisher::complete_response(r3, false, used, close_after) == -1 &&
              Publisher::complete_response(r3, true, used, close_after) == 200 && used == r3.size(),
          "close-delimited response");
    std::fprintf(stderr, "self-test: %s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}

// The result fields both modes report: what was owed, what arrived and how.
void delivery_fields(JsonLine& j, long expected, long lost, const Tally& t, double window_s) {
    j.num("expected", (long long)expected);
    j.num("delivered", (long long)t.delivered);
    j.num("lost", (long long)lost);
    j.num("duplicated", (long long)t.duplicated);
    j.num("out_of_order", (long long)t.out_of_order);
    j.num("foreign", (long long)t.foreign);
    j.num("malformed", (long long)t.malformed);
    j.num("misrouted", (long long)t.misrouted);
    j.num("closed_by_server", (long long)t.closed_by_server);
    j.num("stream_errors", (long long)t.stream_errors);
    j.num("window_s", window_s);
    j.num("delivered_per_s", window_s > 0 ? double(t.delivered) / window_s : -1, 1);
}

// The server's CPU time over the window (clock ticks sampled before and after), per delivery.
void cpu_fields(JsonLine& j, long long cpu_before, long long cpu_after, long delivered) {
    if (cpu_before < 0 || cpu_after < 0) return;
    const double cpu_s = double(cpu_after - cpu_before) / double(sysconf(_SC_CLK_TCK));
    j.num("server_cpu_s", cpu_s, 2);
    j.num("server_cpu_us_per_delivery", delivered ? cpu_s * 1e6 / double(delivered) : -1, 3);
}

// The server's read and write syscalls over the same window.
void syscall_fields(JsonLine& j, const SyscallCounts& before, const SyscallCounts& after) {
    if (before.writes < 0 || after.writes < 0) return;
    j.num("server_syscr", after.reads - before.reads);
    j.num("server_syscw", after.writes - before.writes);
}

// --replay: publishes every event, then connects the subscribers and waits until each has every
// event of its channel, sent from the server's history as the stream opens. The window runs from
// the first connect to the last delivery; the server's CPU is sampled over it.
int run_replay(const Options& o, const sockaddr_in& pub_dst, const std::string& run_id,
               const std::vector<std::string>& channels, Subscribers& subs, JsonLine& j) {
    Publisher p(o, pub_dst, run_id, channels);
    PublishOutcome pub = p.run();
    std::vector<long> subs_per_channel(size_t(o.channels), 0);
    for (auto& s : subs.subs()) ++subs_per_channel[s.channel];
    long expected = 0, published_ok = 0;
    for (long k = 0; k < o.events; ++k) {
        if (pub.status[size_t(k)] / 100 != 2) continue;
        ++published_ok;
        expected += subs_per_channel[size_t(k % o.channels)];
    }

    const long long cpu_before = o.cpu_pids.empty() ? -1 : cpu_ticks_sum(o.cpu_pids);
    const SyscallCounts sys_before = o.cpu_pids.empty() ? SyscallCounts{} : syscall_counts(o.cpu_pids);
    const double self_cpu_before = self_cpu_s();
    std::string error;
    bool ok = subs.connect_all(error);  // deliveries are counted while connecting
    const int64_t deadline = now_ns() + int64_t(o.timeout * 1e9);
    bool timed_out = false;
    while (ok && subs.tally().delivered < expected && subs.open_streams() > 0) {
        if (g_stop || now_ns() > deadline) {
            timed_out = true;
            break;
        }
        subs.poll(10);
    }
    const long long cpu_after = o.cpu_pids.empty() ? -1 : cpu_ticks_sum(o.cpu_pids);
    const SyscallCounts sys_after = o.cpu_pids.empty() ? SyscallCounts{} : syscall_counts(o.cpu_pids);
    const Tally& t = subs.tally();
    const int64_t window_end = t.last_delivery ? t.last_delivery : now_ns();
    const double window_s = double(window_end - subs.connect_started()) / 1e9;
    const long lost = std::max(0L, expected - t.delivered);

    j.num("connected", (long long)subs.connected());
    j.num("events", (long long)o.events);
    j.num("published_ok", (long long)published_ok);
    j.num("publish_failed", (long long)(o.events - published_ok));
    delivery_fields(j, expected, lost, t, window_s);
    cpu_fields(j, cpu_before, cpu_after, t.delivered);
    syscall_fields(j, sys_before, sys_after);
    j.num("loadgen_cpu_s", self_cpu_s() - self_cpu_before, 2);
    j.boolean("timed_out", timed_out);
    if (!ok)
        j.str("error", error);
    else if (!pub.error.empty())
        j.str("error", pub.error);
    emit(j);
    std::fprintf(stderr,
                 "loadgen%s%s: replay of %ld events (%ld published) to %ld subscribers: expected %ld, delivered %ld, "
                 "lost %ld, duplicated %ld, out of order %ld%s; %.0f deliveries/s over %.2f s\n",
                 o.label.empty() ? "" : " ", o.label.c_str(), o.events, published_ok, o.subscribers, expected,
                 t.delivered, lost, t.duplicated, t.out_of_order, timed_out ? " (timed out)" : "",
                 window_s > 0 ? double(t.delivered) / window_s : 0.0, window_s);
    if (!ok) std::fprintf(stderr, "loadgen: %s\n", error.c_str());
    return ok && pub.error.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "--self-test") return self_test();
    Options o = parse_args(argc, argv);
    const std::string run_id = make_run_id();
    if (o.channel_prefix.empty()) o.channel_prefix = "bench-" + run_id + "-";  // fresh channels: no replayed history

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    raise_fd_limit(o.subscribers + o.pub_conns + 32);
    if (o.tls) init_tls();

    std::vector<std::string> channels;
    for (long c = 0; c < o.channels; ++c) channels.push_back(o.channel_prefix + std::to_string(c));
    const sockaddr_in dst = resolve(o.host, o.port);
    const sockaddr_in pub_dst = resolve(o.host, o.pub_port);

    JsonLine j;
    if (!o.label.empty()) j.str("label", o.label);
    j.str("mode", o.idle_only ? "idle" : o.replay ? "replay" : "run");
    j.num("subscribers", (long long)o.subscribers);
    j.num("channels", (long long)o.channels);
    if (o.tls) j.boolean("tls", true);

    Subscribers subs(o, dst, run_id, channels);
    if (o.pub_port != o.port) j.num("pub_port", (long long)o.pub_port);
    if (o.replay) return run_replay(o, pub_dst, run_id, channels, subs, j);
    std::string error;
    bool ok = subs.connect_all(error);
    const double connect_s =
        subs.connect_finished() ? double(subs.connect_finished() - subs.connect_started()) / 1e9 : -1;
    j.num("connected", (long long)subs.connected());
    j.num("connect_s", connect_s);
    if (!ok) {
        j.str("error", error);
        emit(j);
        std::fprintf(stderr, "loadgen: %s\n", error.c_str());
        return 1;
    }
    std::fprintf(stderr, "loadgen: %ld subscribers connected in %.2f s\n", subs.connected(), connect_s);

    if (o.idle_only) {
        std::printf("ready\n");
        std::fflush(stdout);
        subs.watch_stdin();
        while (!g_stop) subs.poll(200);
        j.num("open_at_end", (long long)subs.open_streams());
        j.num("closed_by_server", (long long)subs.tally().closed_by_server);
        emit(j);
        return 0;
    }

    if (o.settle > 0) {
        const int64_t until = now_ns() + int64_t(o.settle * 1e9);
        while (now_ns() < until && !g_stop) subs.poll(10);
    }

    const int64_t run_start = now_ns();
    const long long cpu_before = o.cpu_pids.empty() ? -1 : cpu_ticks_sum(o.cpu_pids);
    const SyscallCounts sys_before = o.cpu_pids.empty() ? SyscallCounts{} : syscall_counts(o.cpu_pids);
    const double self_cpu_before = self_cpu_s();

    // Publish from a thread of its own; the main thread keeps reading the streams meanwhile.
    std::atomic<bool> pub_done{false};
    PublishOutcome pub;
    std::thread publisher([&] {
        Publisher p(o, pub_dst, run_id, channels);
        pub = p.run();
        pub_done = true;
    });

    // Deliveries are complete when every subscriber has every successfully published event of
    // its channel; that count is known once the publisher is done.
    std::vector<long> subs_per_channel(size_t(o.channels), 0);
    for (auto& s : subs.subs()) ++subs_per_channel[s.channel];
    long expected = -1;
    bool timed_out = false;
    while (true) {
        subs.poll(10);
        if (expected < 0 && pub_done) {
            publisher.join();
            expected = 0;
            for (long k = 0; k < o.events; ++k)
                if (pub.status[size_t(k)] / 100 == 2) expected += subs_per_channel[size_t(k % o.channels)];
        }
        if (expected >= 0) {
            if (subs.tally().delivered >= expected) break;
            if (subs.open_streams() == 0) break;
            if (now_ns() > std::max(pub.last_send, pub.finished) + int64_t(o.timeout * 1e9)) {
                timed_out = true;
                break;
            }
        }
        if (g_stop) {
            timed_out = true;
            if (expected < 0) continue;  // the publisher stops too (it watches g_stop)
            break;
        }
    }
    const int64_t run_end = now_ns();
    const long long cpu_after = o.cpu_pids.empty() ? -1 : cpu_ticks_sum(o.cpu_pids);
    const SyscallCounts sys_after = o.cpu_pids.empty() ? SyscallCounts{} : syscall_counts(o.cpu_pids);
    const double self_cpu = self_cpu_s() - self_cpu_before;

    const Tally& t = subs.tally();
    long published_ok = 0, publish_failed = 0;
    for (long k = 0; k < o.events; ++k) (pub.status[size_t(k)] / 100 == 2 ? published_ok : publish_failed)++;
    // The window runs from the first publish to the last delivery (or to the end of waiting).
    const int64_t window_end = t.last_delivery ? t.last_delivery : run_end;
    const double window_s = pub.first_send ? double(window_end - pub.first_send) / 1e9 : -1;
    const double publish_s = pub.first_send ? double(pub.last_send - pub.first_send) / 1e9 : -1;
    std::vector<int64_t> lat = t.latency;
    std::vector<int64_t> resp = pub.response;
    const long lost = std::max(0L, expected - t.delivered);

    j.num("events", (long long)o.events);
    j.num("rate", o.rate, 1);
    j.num("published_ok", (long long)published_ok);
    j.num("publish_failed", (long long)publish_failed);
    j.num("publish_rate", publish_s > 0 ? double(published_ok + publish_failed - 1) / publish_s : -1, 1);
    delivery_fields(j, expected, lost, t, window_s);
    j.num("latency_ms_p50", percentile_ms(lat, 0.50));
    j.num("latency_ms_p99", percentile_ms(lat, 0.99));
    j.num("latency_ms_max", lat.empty() ? -1 : to_ms(*std::max_element(lat.begin(), lat.end())));
    j.num("publish_ms_p50", percentile_ms(resp, 0.50));
    j.num("publish_ms_p99", percentile_ms(resp, 0.99));
    j.num("publish_reconnects", (long long)pub.reconnects);
    cpu_fields(j, cpu_before, cpu_after, t.delivered);
    syscall_fields(j, sys_before, sys_after);
    // The load generator shares the machine with the server: its own share tells whether it,
    // rather than the server, was the limit.
    j.num("loadgen_cpu_s", self_cpu, 2);
    j.boolean("timed_out", timed_out);
    if (!pub.error.empty()) j.str("error", pub.error);
    j.num("run_s", double(run_end - run_start) / 1e9);
    emit(j);

    std::fprintf(stderr,
                 "loadgen%s%s: %ld subscribers, %ld channels, %ld events at %.1f/s\n"
                 "  published ok %ld, failed %ld; publish response p50 %.3f ms, p99 %.3f ms\n"
                 "  expected %ld, delivered %ld, lost %ld, duplicated %ld, out of order %ld%s\n"
                 "  %.0f deliveries/s over %.2f s; latency p50 %.3f ms, p99 %.3f ms\n",
                 o.label.empty() ? "" : " ", o.label.c_str(), o.subscribers, o.channels, o.events, o.rate, published_ok,
                 publish_failed, percentile_ms(resp, 0.5), percentile_ms(resp, 0.99), expected, t.delivered, lost,
                 t.duplicated, t.out_of_order, timed_out ? " (timed out)" : "",
                 window_s > 0 ? double(t.delivered) / window_s : 0.0, window_s, percentile_ms(lat, 0.5),
                 percentile_ms(lat, 0.99));
    if (t.foreign || t.malformed || t.misrouted || t.closed_by_server || t.stream_errors)
        std::fprintf(stderr, "  foreign %ld, malformed %ld, misrouted %ld, closed by server %ld, stream errors %ld\n",
                     t.foreign, t.malformed, t.misrouted, t.closed_by_server, t.stream_errors);
    if (!pub.error.empty()) std::fprintf(stderr, "loadgen: %s\n", pub.error.c_str());
    return pub.error.empty() ? 0 : 1;
}
