#!/usr/bin/env bash
# Builds and runs the unit tests of the pure C++ core (src/protocol, and the pure parts of
# src/redis): no nginx needed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mkdir -p build/unit
g++ -std=c++17 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined -I src \
    src/protocol/*.cpp src/redis/redis_url.cpp src/redis/redis_entry.cpp src/store/process_identity.cpp t/unit/*.cpp -lgtest -lgtest_main -pthread -o build/unit/protocol_test
build/unit/protocol_test --gtest_brief=1
