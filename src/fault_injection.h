// Allocation-failure injection, for tests. Built with -DSSE_FAULT_INJECTION (scripts/build.sh
// with FAULT_INJECTION=1), the module's own allocations in a worker process fail at the rate
// given by the environment variable SSE_FAULT_RATE (a fraction such as 0.02): zone slab
// allocations, request-pool allocations, frame buffers and every C++ `new` of the module (which
// then throws std::bad_alloc). In other builds allocation_fails() is a constant false.
#pragma once

namespace sse::fault {

#ifdef SSE_FAULT_INJECTION
bool allocation_fails() noexcept;
// Called once the worker process is set up: failures before would only stop it starting.
void arm() noexcept;
#else
constexpr bool allocation_fails() noexcept {
    return false;
}
inline void arm() noexcept {}
#endif

}  // namespace sse::fault
