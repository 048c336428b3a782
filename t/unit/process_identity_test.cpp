// A worker slot is reaped when its process is gone, even when its pid now names another process
// (issue 10, point 11: kill(pid, 0) alone took a reused pid for the dead worker).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "store/process_identity.h"

using sse::process_start_time;
using sse::same_process_alive;

TEST(ProcessIdentity, OwnProcessIsAlive) {
    std::uint64_t started = process_start_time(getpid());
    ASSERT_NE(started, 0u);
    EXPECT_TRUE(same_process_alive(getpid(), started));
}

TEST(ProcessIdentity, ReusedPidIsNotTheDeadWorker) {
    // A live process whose start time is not the one recorded: what a reused pid looks like.
    std::uint64_t started = process_start_time(getpid());
    EXPECT_FALSE(same_process_alive(getpid(), started + 1));
    // Without a recorded start time only the pid can be asked about, as before.
    EXPECT_TRUE(same_process_alive(getpid(), 0));
}

TEST(ProcessIdentity, ExitedProcessIsGone) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        pause();
        _exit(0);
    }
    std::uint64_t started = process_start_time(child);
    ASSERT_NE(started, 0u);
    EXPECT_TRUE(same_process_alive(child, started));
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    EXPECT_EQ(process_start_time(child), 0u);
    EXPECT_FALSE(same_process_alive(child, started));
}

TEST(ProcessIdentity, CommandNamesWithSpacesAndParentheses) {
    // The start time is read after the last ')' of the command name, whatever the name holds.
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        prctl(PR_SET_NAME, "a) 1 2 (b");
        pause();
        _exit(0);
    }
    for (int i = 0; i < 100; i++) {  // until the child has renamed itself
        char path[64], buf[256] = {0};
        std::snprintf(path, sizeof(path), "/proc/%d/comm", int(child));
        FILE* f = std::fopen(path, "r");
        if (f != nullptr) {
            std::fgets(buf, sizeof(buf), f);
            std::fclose(f);
        }
        if (std::string(buf).find("a) 1") == 0) break;
        usleep(10000);
    }
    std::uint64_t started = process_start_time(child);
    std::uint64_t ours = process_start_time(getpid());
    // Read from the right field: the child started after this test, and within a minute of it.
    EXPECT_GE(started, ours);
    EXPECT_LE(started, ours + 60 * std::uint64_t(sysconf(_SC_CLK_TCK)));
    EXPECT_TRUE(same_process_alive(child, started));
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
}
