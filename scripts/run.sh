#!/usr/bin/env bash
# Runs the product: builds the module when needed and starts nginx in the foreground with
# conf/nginx.conf, serving a demo page at http://127.0.0.1:8080/ . Ctrl-C stops it.
#   SSE_LISTEN=0.0.0.0:8080 scripts/run.sh   (listens on every address)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ ! -f build/ngx_http_sse_module.so ] || [ -n "$(find src config -newer build/ngx_http_sse_module.so -print -quit)" ]; then
    scripts/build.sh
fi

prefix="$repo/build/run"
mkdir -p "$prefix/logs" "$prefix/tmp" "$prefix/modules"
ln -sfn "$repo/build/ngx_http_sse_module.so" "$prefix/modules/ngx_http_sse_module.so"
ln -sfn "$repo/conf/html" "$prefix/html"
cp /etc/nginx/mime.types "$prefix/mime.types"
echo "listen ${SSE_LISTEN:-127.0.0.1:8080};" >"$prefix/listen.conf"
cp conf/nginx.conf "$prefix/nginx.conf"

nginx -p "$prefix/" -c "$prefix/nginx.conf" -t -q
echo "serving http://${SSE_LISTEN:-127.0.0.1:8080}/ (logs in $prefix/logs/error.log); Ctrl-C stops"
exec nginx -p "$prefix/" -c "$prefix/nginx.conf" -g 'daemon off;'
