#!/usr/bin/env bash
# Builds and runs the unit tests: the pure C++ core (src/protocol, and the pure parts of
# src/redis), the store's history, resume planning and eviction without nginx, on malloc with a
# byte budget (src/store/history.h, t/unit/history), then the whole shared-memory store
# (src/store) on nginx's own slab allocator, tree, queue and CRC32, compiled from the nginx
# source tarball (t/unit/store). No nginx runs.
#   NGINX_TARBALL=/path/nginx-x.y.z.tar.gz  another nginx source for the store test
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/deps.sh
apt_install g++ make libgtest-dev nlohmann-json3-dev
mkdir -p build/unit

# The nginx sources: ../shared/nginx next to the repository, or next to its main checkout
# when this is a git worktree (shared_nginx_dirs, scripts/deps.sh).
find_tarball() {
    local dirs d
    mapfile -t dirs < <(shared_nginx_dirs)
    for d in "${dirs[@]}"; do
        [ -f "$d/nginx-1.30.4.tar.gz" ] && { echo "$d/nginx-1.30.4.tar.gz"; return; }
    done
    for d in "${dirs[@]}"; do
        ls "$d"/nginx-*.tar.gz 2>/dev/null | sort -V | tail -1 | grep . && return
    done
    return 1
}
tarball=${NGINX_TARBALL:-$(find_tarball)} || { echo "no nginx-*.tar.gz in ../shared/nginx (set NGINX_TARBALL)" >&2; exit 1; }
name=$(basename "$tarball" .tar.gz)
ngx="build/unit/$name"

# Extracted and configured once (configure only writes objs/ngx_auto_config.h and
# ngx_auto_headers.h for this machine; nothing of nginx is built but the few files the test
# compiles). The stamp is written last, so an interrupted run starts over.
want="$(basename "$tarball") $(stat -c %s "$tarball") --without-http --without-pcre"
if [ "$(cat "$ngx/.sse-configured" 2>/dev/null)" != "$want" ]; then
    rm -rf "$ngx"
    tar -xzf "$tarball" -C build/unit
    [ -x "$ngx/configure" ] || { echo "$tarball has no $name/configure" >&2; exit 1; }
    (cd "$ngx" && ./configure --without-http --without-pcre >configure.log 2>&1) || {
        tail -20 "$ngx/configure.log" >&2; exit 1; }
    echo "$want" >"$ngx/.sse-configured"
fi

# The test binaries, each object rebuilt only when its source or a header it includes changed.
make -s -f t/unit/Makefile -j"$(nproc)" NGX="$ngx" >build/unit/make.log 2>&1 || {
    grep -E "error|undefined" -A3 build/unit/make.log | head -60 >&2; exit 1; }
build/unit/protocol_test --gtest_brief=1
build/unit/history_test --gtest_brief=1
build/unit/store_test --gtest_brief=1
