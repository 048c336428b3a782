#!/usr/bin/env bash
# Builds an nginx binary from a source release, for running t/ against an nginx other than
# Debian's (scripts/test.sh's version matrix). Prints the binary's path on its last line.
#   scripts/build-nginx.sh /path/nginx-1.31.4.tar.gz   -> build/nginx-1.31.4/sbin/nginx
#   NGINX_FLAGS="..."   the configure options (default: below, what t/ needs, and HTTP/3)
#   CC=clang-14         the compiler (default cc)
# Built once: it builds again only when the tarball, the options or the compiler change. The
# module is built separately against the same source (NGINX_SRC=... scripts/build.sh), as a
# user of nginx.org's packages builds it; --with-compat on both sides makes them compatible.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
source scripts/deps.sh
ensure_build_deps

tarball=${1:?usage: scripts/build-nginx.sh /path/nginx-x.y.z.tar.gz}
[ -f "$tarball" ] || { echo "build-nginx: $tarball: not found" >&2; exit 1; }
tarball=$(realpath "$tarball")
name=$(basename "$tarball")
name=${name%.tar.gz}
[[ "$name" == nginx-* ]] || { echo "build-nginx: $tarball: not an nginx-x.y.z.tar.gz" >&2; exit 1; }

# What t/ uses beyond nginx's defaults: TLS, HTTP/2 and HTTP/3, auth_request (t/37).
flags=${NGINX_FLAGS:---with-compat --with-http_ssl_module --with-http_v2_module --with-http_v3_module --with-http_auth_request_module}
cc=${CC:-cc}
command -v "$cc" >/dev/null || { echo "CC=$cc: no such compiler" >&2; exit 1; }

out="$repo/build/$name"
binary="$out/sbin/nginx"
want="$(sha256sum <"$tarball" | cut -d' ' -f1) | $flags | $cc $("$cc" --version 2>/dev/null | head -1)"
if [ -x "$binary" ] && [ "$(cat "$out/.sse-built" 2>/dev/null)" = "$want" ]; then
    echo "$binary"
    exit 0
fi

echo "building $name ($flags)" >&2
# Only its own parts: build/nginx-x.y.z/module holds the module test.sh builds for it.
rm -rf "${out:?}/$name" "$out/sbin" "$out/.sse-built"
mkdir -p "$out/sbin"
tar -xzf "$tarball" -C "$out"
[ -x "$out/$name/configure" ] || { echo "build-nginx: $tarball has no $name/configure" >&2; exit 1; }
# The prefix is only a default: the tests start nginx with -p and -c.
# shellcheck disable=SC2086 # the options are words
(cd "$out/$name" && CC="$cc" ./configure --prefix="$out" $flags >"$out/configure.log" 2>&1) || {
    tail -30 "$out/configure.log" >&2; exit 1; }
make -C "$out/$name" -j"$(nproc)" >"$out/make.log" 2>&1 || {
    grep -E "error|warning" -A3 "$out/make.log" | head -60 >&2; exit 1; }
cp "$out/$name/objs/nginx" "$binary"
# The stamp is written last: an interrupted build starts over.
echo "$want" >"$out/.sse-built"
echo "built $binary" >&2
echo "$binary"
