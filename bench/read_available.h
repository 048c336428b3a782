// Reading a non-blocking socket to its end for now, shared by bench/loadgen.cpp and
// bench/floor.cpp (both header-only builds: see scripts/bench.sh).
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <string>

// Appends to `in` everything the connection has to read now. Edge-triggered epoll reports new
// bytes once, so a reader that stops before EAGAIN would wait for an edge that never comes.
// `read` has recv()'s contract: bytes read, 0 at the end, -1 with errno (EAGAIN: nothing more
// now), so that a TLS connection's read can stand in for it. True when the connection has ended
// (the peer closed it, or an error).
template <class Read>
bool read_available(std::string& in, Read&& read) {
    char buf[16384];
    while (true) {
        ssize_t n = read(buf, sizeof buf);
        if (n > 0) {
            in.append(buf, size_t(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return false;
        return true;
    }
}

inline bool read_available(int fd, std::string& in) {
    return read_available(in, [fd](char* buf, size_t size) { return recv(fd, buf, size, 0); });
}
