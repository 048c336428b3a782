// Telling whether a worker process is still the one that took a slot. A pid alone cannot say:
// once a dead worker's pid is reused, kill(pid, 0) succeeds and the slot, with every event it
// holds, would be kept forever. A pid with its start time names one process for good.
// Plain POSIX and Linux's /proc: no nginx types, unit-tested in t/unit.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace sse {

// When the process started, in clock ticks since boot (/proc/<pid>/stat, field 22); 0 when
// there is no such process or it cannot be read.
std::uint64_t process_start_time(pid_t pid) noexcept;

// Whether the process `pid` that started at `started` still runs. With `started` 0 (unknown),
// only whether some process has that pid.
bool same_process_alive(pid_t pid, std::uint64_t started) noexcept;

}  // namespace sse
