#!/usr/bin/env bash
# Builds build/ngx_http_sse_module.so against Debian 12's packaged nginx (nginx-dev), or against
# another nginx given as NGINX_SRC (docs/building.md):
#   NGINX_SRC=/path/nginx-1.x.y.tar.gz | /path/nginx-1.x.y (./configure) | /path/nginx (repository
#             layout, auto/configure); the module must be built against the nginx that loads it
#   CC=clang-14               the compiler (nginx's configure reads CC; default cc, i.e. gcc)
#   SSE_CC_OPT=... SSE_LD_OPT=...  extra compiler / linker options (--with-cc-opt / --with-ld-opt)
#   SANITIZE=1         -> build/asan/ngx_http_sse_module.so (ASan + UBSan, with debug info)
#   FAULT_INJECTION=1  -> build/fault/...: the module's allocations fail at the rate
#                         SSE_FAULT_RATE (with SANITIZE=1: build/asan/fault/), with debug info
#   SSE_BUILD_DIR=dir  -> dir/ngx_http_sse_module.so (dir/asan/... with SANITIZE=1) instead of
#                         build/: a module for another nginx beside the default one
# The plain build is stripped of debug info; the unstripped one stays in build/nginx-src/objs/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

source scripts/deps.sh
ensure_build_deps

out=${SSE_BUILD_DIR:-build}
cc_opt="-O2 -g"
ld_opt=""
strip_debug=1
if [ "${SANITIZE:-0}" = 1 ]; then
    out=$out/asan
    cc_opt="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
    ld_opt="-fsanitize=address,undefined"
    strip_debug=0
fi
if [ "${FAULT_INJECTION:-0}" = 1 ]; then
    # Allocation-failure injection (src/fault_injection.h), on top of the sanitizers when both are asked.
    out=$out/fault
    cc_opt="$cc_opt -DSSE_FAULT_INJECTION"
    # The module's own operator new must win over the ASan runtime's, which is preloaded.
    ld_opt="$ld_opt -Wl,-Bsymbolic"
    strip_debug=0
fi
cc_opt="$cc_opt -fPIC${SSE_CC_OPT:+ $SSE_CC_OPT}"
ld_opt="$ld_opt${SSE_LD_OPT:+ $SSE_LD_OPT}"
case "$out" in /*) ;; *) out="$repo/$out" ;; esac
cc=${CC:-cc}
command -v "$cc" >/dev/null || { echo "CC=$cc: no such compiler" >&2; exit 1; }

src=${NGINX_SRC:-/usr/share/nginx/src}
[ -e "$src" ] || { echo "NGINX_SRC=$src: not found" >&2; exit 1; }
src=$(realpath "$src")
tree="$out/nginx-src"
mkdir -p "$out"

# The source's identity: where it is, its version, and what would change under the same name.
if [ -d "$src" ]; then
    header="$src/src/core/nginx.h"
    [ -f "$header" ] || { echo "NGINX_SRC=$src: no src/core/nginx.h, not an nginx source tree" >&2; exit 1; }
    identity="dir $src $(stat -c '%s %Y' "$header")"
    # A git checkout of nginx (not a directory inside some other repository): its commit and changes.
    if [ "$(git -C "$src" rev-parse --show-toplevel 2>/dev/null)" = "$src" ]; then
        identity="$identity git $(git -C "$src" rev-parse HEAD) $(git -C "$src" status --porcelain | md5sum | cut -c1-12)"
    fi
    version=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$header")
else
    case "$src" in
        *.tar.gz | *.tgz | *.tar.xz | *.tar.bz2 | *.tar) ;;
        *) echo "NGINX_SRC=$src: neither a directory nor a tarball" >&2; exit 1 ;;
    esac
    identity="tarball $src $(stat -c '%s %Y' "$src")"
    version=$(tar -xOf "$src" --wildcards '*src/core/nginx.h' 2>/dev/null \
        | sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p')
fi
[ -n "$version" ] || { echo "NGINX_SRC=$src: no NGINX_VERSION in src/core/nginx.h" >&2; exit 1; }
identity="$identity nginx $version"

# configure writes into the tree, so work on a private copy of it, made again when the source changes.
if [ "$(cat "$tree/.sse-source" 2>/dev/null)" != "$identity" ]; then
    rm -rf "$tree" "$tree.new"
    mkdir -p "$tree.new"
    if [ -d "$src" ]; then
        # Not its .git, nor what an earlier configure there left.
        (cd "$src" && tar -cf - --exclude=./.git --exclude=./objs --exclude=./Makefile .) | tar -xf - -C "$tree.new"
    else
        tar -xf "$src" -C "$tree.new"
        # A tarball holds the tree in one top directory (nginx-1.x.y/, or a repository archive's).
        if [ ! -f "$tree.new/src/core/nginx.h" ]; then
            top=$(find "$tree.new" -mindepth 2 -maxdepth 4 -path '*/src/core/nginx.h' | head -1)
            [ -n "$top" ] || { echo "NGINX_SRC=$src: no src/core/nginx.h in the tarball" >&2; exit 1; }
            top=${top%/src/core/nginx.h}
            mv "$top" "$tree"
            rm -rf "$tree.new"
        fi
    fi
    [ ! -d "$tree.new" ] || mv "$tree.new" "$tree"
    echo "$identity" >"$tree/.sse-source"
fi
if [ -x "$tree/configure" ]; then
    configure=./configure            # nginx.org's release layout
elif [ -f "$tree/auto/configure" ]; then
    configure="sh auto/configure"    # nginx's repository layout
else
    echo "NGINX_SRC=$src: neither configure nor auto/configure" >&2; exit 1
fi

flags=()
if [ -f "$tree/conf_flags" ]; then
    # Debian records the flags its nginx was configured with; the module must match them.
    source "$tree/conf_flags"
    flags=("${NGX_CONF_FLAGS[@]}")
else
    flags=(--with-compat --with-http_v2_module --with-http_ssl_module)
fi

stamp="$tree/.sse-configured"
want="$identity | $cc $("$cc" --version 2>/dev/null | head -1) | ${flags[*]} | $cc_opt | $ld_opt | $(cat config config.make | md5sum)"
if [ ! -f "$tree/objs/Makefile" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$tree/objs" "$stamp"
    (cd "$tree" && CC="$cc" $configure "${flags[@]}" \
        --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" \
        --add-dynamic-module="$repo" >"$out/configure.log" 2>&1) || {
        tail -30 "$out/configure.log"; exit 1; }
    echo "$want" >"$stamp"
fi

make -C "$tree" -f objs/Makefile modules -j"$(nproc)" >"$out/make.log" 2>&1 || {
    grep -E "error|warning" -A3 "$out/make.log" | head -60; exit 1; }
# Replaced, not overwritten: an nginx still running the old module keeps its copy intact.
cp "$tree/objs/ngx_http_sse_module.so" "$out/.ngx_http_sse_module.so.new"
[ "$strip_debug" = 0 ] || strip --strip-debug "$out/.ngx_http_sse_module.so.new"
mv -f "$out/.ngx_http_sse_module.so.new" "$out/ngx_http_sse_module.so"
echo "built ${out#"$repo"/}/ngx_http_sse_module.so for nginx $version ($cc)"
