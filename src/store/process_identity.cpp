#include "store/process_identity.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

namespace sse {

std::uint64_t process_start_time(pid_t pid) noexcept {
    char path[64];
    std::snprintf(path, sizeof(path), "/proc/%ld/stat", static_cast<long>(pid));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // after it start after the last ')'.
    char* p = std::strrchr(buf, ')');
    if (p == nullptr) return 0;
    // Field 3 (state) follows; the start time is field 22, 20 fields on.
    for (int field = 2; field < 22; field++) {
        p = std::strchr(p + 1, ' ');
        if (p == nullptr) return 0;
    }
    std::uint64_t started = 0;
    for (p++; *p >= '0' && *p <= '9'; p++) started = started * 10 + std::uint64_t(*p - '0');
    return started;
}

bool same_process_alive(pid_t pid, std::uint64_t started) noexcept {
    if (pid <= 0) return false;
    if (started == 0) return kill(pid, 0) == 0 || errno != ESRCH;
    return process_start_time(pid) == started;
}

}  // namespace sse
