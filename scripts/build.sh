#!/usr/bin/env bash
# Builds build/ngx_http_sse_module.so against Debian 12's packaged nginx (nginx-dev),
# or against another nginx source tree given as NGINX_SRC.
#   SANITIZE=1 scripts/build.sh   -> build/asan/ngx_http_sse_module.so (ASan + UBSan)
#   FAULT_INJECTION=1 scripts/build.sh -> build/fault/...: the module's allocations fail at the
#                                  rate SSE_FAULT_RATE (with SANITIZE=1: build/asan/fault/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

source scripts/deps.sh
ensure_build_deps

out=build
cc_opt="-O2 -g"
ld_opt=""
if [ "${SANITIZE:-0}" = 1 ]; then
    out=build/asan
    cc_opt="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
    ld_opt="-fsanitize=address,undefined"
fi
if [ "${FAULT_INJECTION:-0}" = 1 ]; then
    # Allocation-failure injection (src/fault_injection.h), on top of the sanitizers when both are asked.
    out=$out/fault
    cc_opt="$cc_opt -DSSE_FAULT_INJECTION"
    # The module's own operator new must win over the ASan runtime's, which is preloaded.
    ld_opt="$ld_opt -Wl,-Bsymbolic"
fi

src=${NGINX_SRC:-/usr/share/nginx/src}
tree="$repo/$out/nginx-src"
mkdir -p "$out"

# configure writes into the tree, so work on a private copy of it.
if [ ! -x "$tree/configure" ]; then
    rm -rf "$tree"
    cp -r "$src" "$tree"
fi

flags=()
if [ -f "$src/conf_flags" ]; then
    # Debian records the flags its nginx was configured with; the module must match them.
    source "$src/conf_flags"
    flags=("${NGX_CONF_FLAGS[@]}")
else
    flags=(--with-compat --with-http_v2_module --with-http_ssl_module)
fi

stamp="$tree/.sse-configured"
want="$(cat config) ${flags[*]} $cc_opt $ld_opt"
if [ ! -f "$tree/objs/Makefile" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    (cd "$tree" && ./configure "${flags[@]}" \
        --with-cc-opt="$cc_opt -fPIC" --with-ld-opt="$ld_opt" \
        --add-dynamic-module="$repo" >"$repo/$out/configure.log" 2>&1) || {
        tail -30 "$repo/$out/configure.log"; exit 1; }
    echo "$want" >"$stamp"
fi

make -C "$tree" -f objs/Makefile modules -j"$(nproc)" >"$repo/$out/make.log" 2>&1 || {
    grep -E "error|warning" -A3 "$repo/$out/make.log" | head -60; exit 1; }
# Replaced, not overwritten: an nginx still running the old module keeps its copy intact.
cp "$tree/objs/ngx_http_sse_module.so" "$out/.ngx_http_sse_module.so.new"
mv -f "$out/.ngx_http_sse_module.so.new" "$out/ngx_http_sse_module.so"
echo "built $out/ngx_http_sse_module.so"
