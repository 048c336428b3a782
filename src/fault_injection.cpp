#include "fault_injection.h"

#ifdef SSE_FAULT_INJECTION

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <new>

namespace sse::fault {

namespace {

bool armed = false;
std::uint32_t threshold = 0;  // fails when the next random 32 bits fall below it
std::uint64_t state = 0;

std::uint32_t next_random() noexcept {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return std::uint32_t(state >> 32);
}

}  // namespace

void arm() noexcept {
    const char* rate = std::getenv("SSE_FAULT_RATE");
    double r = rate != nullptr ? std::strtod(rate, nullptr) : 0.0;
    if (r <= 0) return;
    if (r > 1) r = 1;
    threshold = std::uint32_t(r * 4294967295.0);
    state = 0x9e3779b97f4a7c15ULL ^ (std::uint64_t(getpid()) << 17);
    armed = true;
}

bool allocation_fails() noexcept {
    return armed && next_random() < threshold;
}

}  // namespace sse::fault

// Every C++ allocation of the module goes through these while the build switch is on.
void* operator new(std::size_t size) {
    if (sse::fault::allocation_fails()) throw std::bad_alloc();
    void* p = std::malloc(size ? size : 1);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}

void* operator new[](std::size_t size) {
    return ::operator new(size);
}

void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    if (sse::fault::allocation_fails()) return nullptr;
    return std::malloc(size ? size : 1);
}

void operator delete(void* p) noexcept {
    std::free(p);
}

void operator delete[](void* p) noexcept {
    std::free(p);
}

void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}

#endif
