#!/usr/bin/env bash
# Builds the libFuzzer targets of the pure core (t/fuzz/*_fuzz.cpp) with ASan and UBSan into
# build/fuzz/, then runs each for the given seconds (default 60) on a copy of its seed corpus
# (t/fuzz/corpus/<name>/, which stays as checked in). Exits non-zero if any target crashes or
# breaks an invariant, naming the input that did it.
#   scripts/fuzz.sh 5                      five seconds each
#   scripts/fuzz.sh 60 redis_url utf8      only the named targets
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/deps.sh
ensure_fuzz_deps

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in t/fuzz/*_fuzz.cpp; do targets+=("$(basename "$f" _fuzz.cpp)"); done
fi

out=build/fuzz
mkdir -p "$out"
# _GLIBCXX_ASSERTIONS: a string_view's front() of nothing aborts instead of reading past it.
flags=(-std=c++17 -g -O1 -fno-sanitize-recover=undefined -D_GLIBCXX_ASSERTIONS -Wall -Wextra -Werror -I src -I t/fuzz)
core=(src/protocol/*.cpp src/redis/redis_url.cpp src/redis/redis_entry.cpp src/redis/resp_reader.cpp src/redis/cluster_slots.cpp)

# The core is compiled once into objects every target links.
echo "== build the fuzz targets"
objects=()
for src in "${core[@]}"; do
    obj="$out/core_$(basename "$src" .cpp).o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find src -name '*.h' -newer "$obj" -print -quit)" ]; then
        nice -n 10 clang++-14 "${flags[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj"
    fi
    objects+=("$obj")
done
for name in "${targets[@]}"; do
    binary="$out/${name}_fuzz"
    if [ -f "$binary" ] && [ -z "$(find "t/fuzz/${name}_fuzz.cpp" t/fuzz/*.h "${objects[@]}" -newer "$binary" -print -quit)" ]; then
        continue
    fi
    nice -n 10 clang++-14 "${flags[@]}" -fsanitize=fuzzer,address,undefined "t/fuzz/${name}_fuzz.cpp" "${objects[@]}" \
        -lhiredis -o "$binary"
done

failed=()
for name in "${targets[@]}"; do
    echo "== fuzz $name for ${seconds}s"
    work="$out/run/$name"
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/crashes"
    cp "t/fuzz/corpus/$name/"* "$work/corpus/"
    # A crash lands in $work/crashes/ as crash-<sha1>; the log keeps libFuzzer's report.
    if ! nice -n 10 "$out/${name}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=0 -artifact_prefix="$work/crashes/" "$work/corpus" >"$work/log" 2>&1; then
        grep -E "ERROR|invariant broken|runtime error|SUMMARY" "$work/log" | head -5 || true
        for crash in "$work/crashes/"*; do
            [ -e "$crash" ] && echo "reproduce with: $out/${name}_fuzz $crash"
        done
        failed+=("$name")
    else
        tail -n 1 "$work/log"
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]} (logs in $out/run/<name>/log)" >&2
    exit 1
fi
echo "== fuzzing found nothing"
