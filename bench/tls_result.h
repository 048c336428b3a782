// What an OpenSSL call on a non-blocking socket said, in recv()'s and send()'s terms: shared by
// bench/loadgen.cpp and bench/floor.cpp (both header-only builds: see scripts/bench.sh).
#pragma once

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/types.h>

#include <cerrno>

// What an SSL_read, SSL_write or SSL_do_handshake that returned r <= 0 means: -1 with errno
// EAGAIN (wait for the socket), 0 (the peer closed), -1 with another errno (failed). The error
// queue is left empty, so that the next call's SSL_get_error is its own.
inline ssize_t tls_result(SSL* ssl, int r) {
    const int e = SSL_get_error(ssl, r);
    ERR_clear_error();
    switch (e) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
            errno = EAGAIN;
            return -1;
        case SSL_ERROR_ZERO_RETURN:
            return 0;
        case SSL_ERROR_SYSCALL:
            if (errno == 0 || errno == EAGAIN) errno = ECONNRESET;
            return -1;
        default:
            errno = EPROTO;
            return -1;
    }
}
