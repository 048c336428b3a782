#!/usr/bin/env bash
# The test command: builds the module, runs the core's unit tests and fuzz targets, then the t/
# suite against real nginx processes: with the release build against each nginx of the version
# matrix (Debian's 1.22.1, and 1.31.4 built from ../shared/nginx), then with an
# AddressSanitizer + UndefinedBehaviorSanitizer build (Debian's nginx), then t/57 against a
# build whose allocations fail at random. Exits non-zero on any failure.
#   SSE_NGINX_LEGS="debian 1.31.4"  the nginx versions of the release pass (the default): debian
#                          is Debian's packaged nginx, x.y.z is built from
#                          ../shared/nginx/nginx-x.y.z.tar.gz (scripts/build-nginx.sh), which
#                          must be there; SSE_NGINX_LEGS=debian runs Debian's only
#   SSE_SKIP_SANITIZERS=1  runs the release pass only (quicker while developing); it also skips
#                          the allocation-failure pass (t/57 against FAULT_INJECTION=1 SANITIZE=1)
#   SSE_FUZZ_SECONDS=60    fuzzes each parser that long (default 5)
#   scripts/test.sh t/05_fanout.t  runs the named tests only
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/deps.sh

# The version matrix, checked before anything runs: a missing source release fails the run.
read -r -a legs <<<"${SSE_NGINX_LEGS:-debian 1.31.4}"
[ ${#legs[@]} -gt 0 ] || { echo "SSE_NGINX_LEGS names no nginx" >&2; exit 1; }
declare -A tarball
for leg in "${legs[@]}"; do
    [ "$leg" = debian ] && continue
    [[ "$leg" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "SSE_NGINX_LEGS: \"$leg\" is neither debian nor x.y.z" >&2; exit 1; }
    tarball[$leg]=$(shared_nginx_tarball "$leg") || {
        echo "the nginx $leg leg cannot run (SSE_NGINX_LEGS=debian leaves it out)" >&2; exit 1; }
done

ensure_test_deps
ensure_browser_test_packages "$repo/t/browser"

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(-r t/)

echo "== formatting"
# Every C and C++ file as the repo's .clang-format writes it (Debian's clang-format 14).
apt_install clang-format-14
find src t/unit t/fuzz bench \( -name '*.cpp' -o -name '*.h' -o -name '*.c' \) -print0 |
    xargs -0 clang-format-14 --dry-run --Werror

echo "== unit tests of the core"
scripts/unit.sh

echo "== fuzz the core's parsers"
# A few seconds each, so CI stays quick; scripts/fuzz.sh 600 for a real search.
scripts/fuzz.sh "${SSE_FUZZ_SECONDS:-5}"

echo "== build"
scripts/build.sh

for leg in "${legs[@]}"; do
    start=$SECONDS
    if [ "$leg" = debian ]; then
        echo "== t/ against the release build, Debian's $(nginx -v 2>&1 | sed 's/.*: //')"
        # Bounded: a test that hangs fails the run instead of holding CI.
        timeout "${SSE_PROVE_TIMEOUT:-900}" prove -j"${SSE_TEST_JOBS:-2}" "${tests[@]}"
    else
        echo "== build nginx $leg and the module for it"
        nginx_bin=$(scripts/build-nginx.sh "${tarball[$leg]}" | tail -1)
        SSE_BUILD_DIR="build/nginx-$leg/module" NGINX_SRC="${tarball[$leg]}" scripts/build.sh
        echo "== t/ against the release build, nginx/$leg built from ${tarball[$leg]}"
        SSE_NGINX="$nginx_bin" SSE_MODULE="$repo/build/nginx-$leg/module/ngx_http_sse_module.so" \
            timeout "${SSE_PROVE_TIMEOUT:-900}" prove -j"${SSE_TEST_JOBS:-2}" "${tests[@]}"
    fi
    echo "== nginx $leg: $((SECONDS - start)) s"
done

if [ "${SSE_SKIP_SANITIZERS:-0}" != 1 ]; then
    echo "== build with AddressSanitizer and UndefinedBehaviorSanitizer"
    SANITIZE=1 scripts/build.sh
    asan_preload="$(gcc -print-file-name=libasan.so):$(realpath "$(g++ -print-file-name=libstdc++.so.6)")"
    echo "== t/ against the sanitizer build"
    # The nginx binary is not instrumented: the ASan runtime must be loaded first, and libstdc++
    # with it (loaded later, by the module, ASan could not find the real __cxa_throw, and the
    # first exception thrown would stop the worker). nginx keeps
    # its configuration memory until exit by design, so leak checking is off; every other report
    # lands in error.log (nginx points stderr there) and fails the test that caused it.
    SSE_MODULE="$repo/build/asan/ngx_http_sse_module.so" \
    SSE_LD_PRELOAD="$asan_preload" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    SSE_SANITIZED=1 timeout "${SSE_PROVE_TIMEOUT:-900}" prove -j"${SSE_TEST_JOBS:-2}" "${tests[@]}"

    # Allocation-failure injection (t/57, skipped by the passes above): on a full run, or when named.
    if [ $# -eq 0 ] || [[ " $* " == *57_allocation_failures* ]]; then
        echo "== build with allocation-failure injection (and the sanitizers)"
        FAULT_INJECTION=1 SANITIZE=1 scripts/build.sh
        echo "== t/57_allocation_failures.t against the fault-injection build"
        # The module's operator new and delete (malloc and free) replace the ASan runtime's for
        # its own code, while libstdc++'s code keeps the runtime's: both are malloc underneath,
        # so ASan's new/free pairing check does not apply.
        SSE_FAULT_MODULE="$repo/build/asan/fault/ngx_http_sse_module.so" \
        SSE_LD_PRELOAD="$asan_preload" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:alloc_dealloc_mismatch=0" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        SSE_SANITIZED=1 timeout "${SSE_PROVE_TIMEOUT:-900}" prove t/57_allocation_failures.t
    fi
fi
echo "== all tests passed"
