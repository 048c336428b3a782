// The one way code that nginx or hiredis calls into keeps exceptions from crossing back into C:
// an exception escaping a callback would terminate the worker. Every such entry point is
// `noexcept` and runs its body through guarded(), which logs what failed and returns the
// caller's error value.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <exception>
#include <new>
#include <type_traits>

namespace sse {

namespace guard_detail {

inline void log_failure(ngx_log_t* log, const char* what) noexcept {
    if (log == nullptr) log = ngx_cycle->log;
    try {
        throw;
    } catch (const std::bad_alloc&) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "sse: out of memory %s", what);
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "sse: unexpected exception %s: %s", what, e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "sse: unexpected exception %s", what);
    }
}

}  // namespace guard_detail

// Runs `body()`; on an exception logs "sse: out of memory <what>" (or the exception) at error
// level and returns `on_error`. `what` reads after "out of memory", e.g. "publishing".
template <typename Result, typename Body>
Result guarded(ngx_log_t* log, const char* what, Result on_error, Body&& body) noexcept {
    try {
        return body();
    } catch (...) {
        guard_detail::log_failure(log, what);
    }
    return on_error;
}

// The same for a callback that returns nothing.
template <typename Body>
void guarded(ngx_log_t* log, const char* what, Body&& body) noexcept {
    static_assert(std::is_void_v<decltype(body())>, "a guarded body with a result needs an error value");
    try {
        body();
    } catch (...) {
        guard_detail::log_failure(log, what);
    }
}

}  // namespace sse
