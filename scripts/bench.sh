#!/usr/bin/env bash
# Benchmarks this module against nchan (Debian's libnginx-mod-nchan) loaded into the same nginx
# binary, with the same worker settings, using our own load generator (bench/loadgen.cpp).
#
# Scenarios (see BENCHMARKS.md):
#   idle  memory per idle subscriber: workers' RSS with 0 vs IDLE_SUBS open streams
#   s1    10,000 subscribers on 1 channel (also gives publish response time under a big fan-out
#         and the workers' CPU time per delivered event)
#   s2    1,000 subscribers over 10 channels
#   s3/s4 the same sizes as s1/s2, published in a closed loop (throughput)
#   s5    reconnect storm: 100 events published first, then 10,000 subscribers connect and each
#         is sent all 100 from the channel's history (ours: sse_replay 100; nchan:
#         nchan_subscriber_first_message oldest, both keeping 100 messages per channel)
#   s6    cross-node, through one redis-server: two nginx instances ("nodes", 2 workers each) per
#         server, both using Redis (ours: sse_redis; nchan: nchan_redis_pass to an upstream with
#         nchan_redis_server). Latency with 100 subscribers at 200 events/s, subscribers on the
#         publishing node A (baseline) and on node B (crossing); then delivered events/s with 1,000
#         subscribers on B and closed-loop publishing on A. Not in the default list (opt-in).
#   s6tls s6 through a TLS-only redis-server (ours: sse_redis rediss:// with
#         sse_redis_tls_trusted_certificate; nchan: nchan_redis_server rediss:// with nchan_redis_ssl
#         on), certificates made once with openssl in build/bench/tls/. Opt-in like s6. Named
#         with s6 (BENCH_SCENARIOS="s6 s6tls"), both run in one loop, taking turns in every
#         repetition, and a table sets TLS beside plain.
#   s2tls s2 with every connection over TLS: both servers also listen with `listen ... ssl` (the
#         certificate of s6tls, build/bench/tls/), and loadgen --tls speaks TLS (OpenSSL) to them.
#         The floor too, on a second port of the same process (floor-writer --tls-port, the same
#         certificate): one SSL_write per write of plain s2. Opt-in (BENCH_SCENARIOS="s2 s2tls").
#   s6cluster s6 through a Redis Cluster of 3 primaries and no replicas (redis-server
#         --cluster-enabled yes on free loopback ports, in build/bench/redis-cluster/<port>/,
#         joined by redis-cli --cluster create), each node given two of them as seeds (ours:
#         sse_redis redis://P1 redis://P2, sharded pub/sub; nchan: two nchan_redis_server lines in
#         its upstream, which it finds to be a cluster). Opt-in like s6; named with s6
#         (BENCH_SCENARIOS="s6 s6cluster") they take turns as s6 and s6tls do, and a table sets the
#         cluster beside the single redis-server. CPU per delivery counts all three redis-servers.
# s1 to s6cluster run BENCH_REPS times (default 3), the two servers taking turns; the table shows medians.
#
# The floor (issue 13): in s1 to s5 and s2tls a bare writer (bench/floor.cpp: one process, epoll,
# no nginx) runs beside both, right after ours in every repetition, on the same sockets with the
# same bytes: the cost of the socket writes alone (in s2tls, of one SSL_write per delivery). In s3
# and s4 it publishes at the rate ours achieved in that repetition and is told to coalesce as ours
# did (frames per write, from the write syscalls in /proc/<pid>/io), so that the two pay for the
# same number of writes; in s1, s2, s2tls and s5 it writes whatever is due after every turn of its
# event loop. s2tls's table adds floor / nchan: the best ratio to nchan that a server writing each
# delivery with its own SSL_write could reach.
#
#   scripts/bench.sh                   full run (about 5 minutes)
#   BENCH_QUICK=1 scripts/bench.sh     tiny run (a few seconds): checks that everything works
#   BENCH_ONLY=nchan|ours|floor        one server only
#   BENCH_FLOOR=0                      leave the floor out
#   BENCH_SCENARIOS="s1 idle"          a subset of the scenarios (s2tls, s6, s6tls and s6cluster only
#                                      when named: BENCH_SCENARIOS="s2 s2tls", BENCH_SCENARIOS="s6 s6tls")
#   BENCH_REPS=5                       repetitions of s1 to s6cluster (default 3)
#   BENCH_SKIP_BUILD=1                 use build/ngx_http_sse_module.so as it is
#   S1_EVENTS, S1_RATE, S2_EVENTS, S2_RATE, IDLE_SUBS   override the scenario sizes
#   BENCH_SERVER_CONF="request_pool_size 1k; connection_pool_size 256;"   directives for the server{}
#                                      of both servers (every node), e.g. to measure a memory recipe
#   S6_SUBS, S6_EVENTS, S6_RATE, S6_TPUT_SUBS, S6_TPUT_CHANNELS, S6_TPUT_EVENTS, S6_SETTLE   s6's
#                                      (and s6tls's, s6cluster's)
#
# Output: a Markdown table on stdout (also build/bench/summary.md), every loadgen result as one
# JSON line in build/bench/results.json, server logs under build/bench/<server>/, and a plot of the
# worker CPU per delivery in each scenario for the floor, ours and nchan
# (build/bench/cpu_per_delivery.svg, drawn by scripts/bench-plot.sh with gnuplot).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

source scripts/deps.sh
ensure_bench_deps
apt_install jq

out="$repo/build/bench"
mkdir -p "$out"

# --- scenario sizes -----------------------------------------------------------------------
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    : "${BENCH_REPS:=1}"
    : "${S1_SUBS:=200}" "${S1_EVENTS:=50}" "${S1_RATE:=50}"
    : "${S2_SUBS:=200}" "${S2_CHANNELS:=10}" "${S2_EVENTS:=50}" "${S2_RATE:=100}"
    : "${S3_SUBS:=200}" "${S3_EVENTS:=50}"
    : "${S4_SUBS:=200}" "${S4_CHANNELS:=10}" "${S4_EVENTS:=200}"
    : "${S5_SUBS:=200}" "${S5_EVENTS:=100}"
    : "${S6_SUBS:=20}" "${S6_EVENTS:=100}" "${S6_RATE:=100}"
    : "${S6_TPUT_SUBS:=100}" "${S6_TPUT_CHANNELS:=10}" "${S6_TPUT_EVENTS:=500}"
    : "${IDLE_SUBS:=200}"
    : "${RUN_TIMEOUT:=10}"
else
    : "${BENCH_REPS:=3}"
    # 5/s keeps both servers below saturation on a 2-core machine that also runs the load
    # generator (50,000 deliveries/s for 20 s). At 10/s nchan falls behind: its publish takes
    # 80-100 ms with 10,000 subscribers, and one connection has one publish in flight.
    : "${S1_SUBS:=10000}" "${S1_EVENTS:=100}" "${S1_RATE:=5}"
    : "${S2_SUBS:=1000}" "${S2_CHANNELS:=10}" "${S2_EVENTS:=4000}" "${S2_RATE:=200}"
    # Throughput: closed-loop publishing (the next publish goes when the previous is answered),
    # so each server delivers as fast as it can.
    : "${S3_SUBS:=10000}" "${S3_EVENTS:=200}"
    : "${S4_SUBS:=1000}" "${S4_CHANNELS:=10}" "${S4_EVENTS:=4000}"
    # Reconnect storm: every subscriber is sent the channel's whole history (100 events) as it connects.
    : "${S5_SUBS:=10000}" "${S5_EVENTS:=100}"
    # Cross-node (Redis): latency at a moderate fixed rate (200 events/s for 10 s to 100 streams
    # on one channel), then throughput with 1,000 streams over 10 channels, closed loop.
    : "${S6_SUBS:=100}" "${S6_EVENTS:=2000}" "${S6_RATE:=200}"
    : "${S6_TPUT_SUBS:=1000}" "${S6_TPUT_CHANNELS:=10}" "${S6_TPUT_EVENTS:=10000}"
    : "${IDLE_SUBS:=10000}"
    : "${RUN_TIMEOUT:=30}"
fi
# s6: seconds between "every stream has its headers" and the first publish, so that node B has
# subscribed to the channels in Redis (both servers do it after answering the stream's headers).
: "${S6_SETTLE:=1}"
scenarios=${BENCH_SCENARIOS:-idle s1 s2 s3 s4 s5}
servers=(ours nchan)
with_floor=${BENCH_FLOOR:-1}
case "${BENCH_ONLY:-}" in
    "") ;;
    ours | nchan) servers=("$BENCH_ONLY") with_floor=0 ;;
    floor) servers=() with_floor=1 ;;
    *) echo "BENCH_ONLY must be ours, nchan or floor" >&2; exit 2 ;;
esac

# --- load generator -------------------------------------------------------------------------
g++ -std=c++17 -O2 -Wall -Wextra -pthread -o "$out/loadgen" bench/loadgen.cpp -lssl -lcrypto
loadgen="$out/loadgen"
g++ -std=c++17 -O2 -Wall -Wextra -o "$out/floor-writer" bench/floor.cpp -lssl -lcrypto
floor="$out/floor-writer"  # not build/bench/floor: that is its prefix, like ours' and nchan's
"$loadgen" --self-test

# 10,000 streams need 10,000 descriptors in the load generator and in whichever worker accepts
# them. worker_rlimit_nofile can only go as high as the hard limit nginx inherits (raising it
# needs CAP_SYS_RESOURCE, which containers often lack, and nginx logs an [alert] when it fails).
ulimit -n "$(ulimit -Hn)"
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=40000
nofile=$((hard < 40000 ? hard : 40000))
if [ "$nofile" -lt $((S1_SUBS + 100)) ] || [ "$nofile" -lt $((IDLE_SUBS + 100)) ]; then
    echo "the open-file limit ($nofile) is too low for the subscriber counts" >&2
    exit 1
fi

# --- servers ----------------------------------------------------------------------------------
declare -A prefix port master
# With s2tls in the run: each single-node server's second port, `listen ... ssl` (the floor's:
# floor-writer --tls-port).
declare -A tls_port
tls_listen=0
[[ " ${BENCH_SCENARIOS:-} " == *" s2tls "* ]] && tls_listen=1
# One redis-server per s6 variant: redis_pid[s6] (plain TCP), redis_pid[s6tls] (TLS only);
# s6cluster's three as redis_pid[s6cluster-1] to [s6cluster-3] (start_redis_cluster).
declare -A redis_pid redis_port
loadgen_pid=
cleanup() {
    [ -n "$loadgen_pid" ] && kill -TERM "$loadgen_pid" 2>/dev/null || true
    for s in "${!master[@]}"; do stop_server "$s"; done
    for v in "${!redis_pid[@]}"; do stop_redis "$v"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through the EXIT trap: no nginx left running

free_port() {
    # Below the ephemeral range (32768+), so the subscribers' own ports never collide with it.
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Hltn "sport = :$p")" ]; then echo "$p"; return 0; fi
    done
    return 1
}

write_conf() {  # server-or-node dir port [redis port [tls]]
    # A node of s6 is named <server>-a or <server>-b (s6tls: <server>-tls-a, -b; s6cluster:
    # <server>-cluster-a, -b; see s6_node) and gets the
    # Redis port: its http{} then uses that redis-server (ours: sse_redis; nchan: an upstream
    # with nchan_redis_server, passed to every publish and subscribe location, nchan storing in
    # Redis: distributed mode). With tls = 1 it connects over TLS, checking the server's
    # certificate against the bench's CA. Several ports ("P1 P2", s6cluster) are a Redis Cluster's
    # seeds: one URL each (ours: all in one sse_redis; nchan: one nchan_redis_server each).
    local s=${1%%-*} dir=$2 p=$3 rp=${4:-} tls=${5:-0} load locations redis= pass= stats= ssl= rp1
    # s2tls: the single-node servers listen for TLS too, on their second port, with the same
    # certificate (one TLS stack, nginx's, for both servers).
    if [ -n "${tls_port[$1]:-}" ]; then
        ssl="listen 127.0.0.1:${tls_port[$1]} ssl;
        ssl_certificate $tls_dir/server.pem;
        ssl_certificate_key $tls_dir/server.key;"
    fi
    if [ "$s" = ours ]; then
        load="load_module $out/ngx_http_sse_module.so;"
        if [ -n "$rp" ] && [ "$tls" = 1 ]; then
            redis="sse_redis rediss://127.0.0.1:$rp;
    sse_redis_tls_trusted_certificate $tls_dir/ca.pem;"
            stats="location = /stats { sse_stats; }"
        elif [ -n "$rp" ]; then
            redis="sse_redis"
            for rp1 in $rp; do redis+=" redis://127.0.0.1:$rp1"; done
            redis+=";"
            stats="location = /stats { sse_stats; }"
        fi
        locations="sse_shm_size 256m;
    $redis
    server {
        listen 127.0.0.1:$p;
        $ssl
        ${BENCH_SERVER_CONF:-}
        $stats
        location = /sub { sse_subscribe \$arg_channels; }
        location = /pub { sse_publish \$arg_channel; }
        location = /replay { sse_subscribe \$arg_channels; sse_replay 100; }
        location = /pubr { sse_publish \$arg_channel; sse_history 100; }
    }"
    else
        load="load_module /usr/lib/nginx/modules/ngx_nchan_module.so;"
        if [ -n "$rp" ] && [ "$tls" = 1 ]; then
            # nchan_redis_ssl_verify_certificate is left at its default (on): nchan 1.3.6 refuses
            # the directive itself, whatever its value ("directive is duplicate").
            redis="upstream nchan_redis {
        nchan_redis_server rediss://127.0.0.1:$rp;
        nchan_redis_ssl on;
        nchan_redis_ssl_trusted_certificate $tls_dir/ca.pem;
        nchan_redis_storage_mode distributed;
    }"
            pass=" nchan_redis_pass nchan_redis;"
        elif [ -n "$rp" ]; then
            redis="upstream nchan_redis {"
            for rp1 in $rp; do redis+="
        nchan_redis_server redis://127.0.0.1:$rp1;"; done
            redis+="
        nchan_redis_storage_mode distributed;
    }"
            pass=" nchan_redis_pass nchan_redis;"
        fi
        locations="$redis
    server {
        listen 127.0.0.1:$p;
        $ssl
        ${BENCH_SERVER_CONF:-}
        location = /sub { nchan_subscriber eventsource; nchan_channel_id \$arg_channels;$pass }
        location = /pub { nchan_publisher; nchan_channel_id \$arg_channel;$pass }
        location = /replay {
            nchan_subscriber eventsource; nchan_channel_id \$arg_channels;
            nchan_subscriber_first_message oldest;$pass
        }
        location = /pubr { nchan_publisher; nchan_channel_id \$arg_channel; nchan_message_buffer_length 100;$pass }
    }"
    fi
    cat >"$dir/nginx.conf" <<EOF
$load
worker_processes 2;
worker_rlimit_nofile $nofile;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {
    worker_connections 20000;
}
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    $locations
}
EOF
}

workers() {
    if [ "$1" = floor ]; then echo "${master[floor]}"; return; fi  # one process: the floor itself
    ps --ppid "${master[$1]}" -o pid= | tr -d ' ' | paste -sd, -
}

start_server() {  # server-or-node [redis port [tls]]; returns non-zero (with a message) if it cannot start
    local s=$1 dir p
    dir="$out/$s"
    rm -rf "$dir"
    mkdir -p "$dir/logs" "$dir/tmp"
    p=$(free_port) || { echo "no free port" >&2; return 1; }
    if [ "$tls_listen" = 1 ] && [[ $s != *-* ]]; then
        tls_port[$s]=$(free_port) || { echo "no free port" >&2; return 1; }
    fi
    write_conf "$s" "$dir" "$p" "${2:-}" "${3:-0}"
    if ! nginx -p "$dir/" -c "$dir/nginx.conf" -t -q 2>"$dir/logs/configtest.log"; then
        echo "[$s] nginx -t failed:" >&2; cat "$dir/logs/configtest.log" >&2; return 1
    fi
    nginx -p "$dir/" -c "$dir/nginx.conf" 2>>"$dir/logs/error.log" || { echo "[$s] nginx did not start" >&2; return 1; }
    for _ in $(seq 100); do
        [ -s "$dir/logs/nginx.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        sleep 0.1
    done
    [ -s "$dir/logs/nginx.pid" ] || { echo "[$s] nginx wrote no pid file" >&2; tail -5 "$dir/logs/error.log" >&2; return 1; }
    prefix[$s]=$dir port[$s]=$p master[$s]=$(cat "$dir/logs/nginx.pid")
    for _ in $(seq 50); do
        [ "$(workers "$s" | tr , '\n' | grep -c .)" -ge 2 ] && break
        sleep 0.1
    done
    echo "[$s] nginx master ${master[$s]}, workers $(workers "$s"), port $p${tls_port[$s]:+, TLS port ${tls_port[$s]}}, prefix $dir" >&2
}

stop_server() {
    local s=$1 m=${master[$1]:-}
    [ -n "$m" ] || return 0
    if [ "$s" = floor ]; then
        kill -TERM "$m" 2>/dev/null || true
        wait "$m" 2>/dev/null || true
        unset "master[$s]"
        return 0
    fi
    kill -QUIT "$m" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$m" 2>/dev/null; then kill -TERM "$m" 2>/dev/null || true; sleep 1; fi
    unset "master[$s]"
}

alive() {  # pid: running (a child of ours that exited stays a zombie until waited for)
    local st
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ "${st:0:1}" != Z ]
}

# The floor: build/bench/floor-writer on a free loopback port, its stderr in build/bench/floor/logs/.
# With s2tls in the run, the same process listens for TLS on a second port (tls_port[floor]) with
# the servers' certificate; /set and /stats go to the plain port all the same.
start_floor() {
    local dir="$out/floor" p tp= pid tls=()
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    p=$(free_port) || { echo "no free port" >&2; return 1; }
    if [ "$tls_listen" = 1 ]; then
        tp=$p
        while [ "$tp" = "$p" ]; do tp=$(free_port) || { echo "no free port" >&2; return 1; }; done
        tls=(--tls-port "$tp" --tls-cert "$tls_dir/server.pem" --tls-key "$tls_dir/server.key")
    fi
    "$floor" --port "$p" "${tls[@]}" </dev/null >"$dir/logs/error.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        alive "$pid" || { echo "[floor] exited at start:" >&2; cat "$dir/logs/error.log" >&2; return 1; }
        sleep 0.1
    done
    prefix[floor]=$dir port[floor]=$p master[floor]=$pid
    [ -z "$tp" ] || tls_port[floor]=$tp
    echo "[floor] pid $pid, port $p${tp:+, TLS port $tp}" >&2
}

floor_get() {  # path: the body of the floor's answer (it closes after /stats and /set)
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/${port[floor]}" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
    reply=$(cat <&3)
    exec 3<&-
    printf '%s\n' "${reply##*$'\r\n\r\n'}"
}

# s6's certificates (s6tls): a CA and a server certificate for 127.0.0.1 (EC keys, quick to
# make), made once in build/bench/tls/ and reused while they have a day left.
tls_dir="$out/tls"
make_tls_certs() {
    local d=$tls_dir
    if [ -s "$d/ca.pem" ] && [ -s "$d/server.key" ] &&
        openssl x509 -checkend 86400 -noout -in "$d/server.pem" >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$d"
    mkdir -p "$d"
    local key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" >"$d/server.ext"
    {
        openssl req -x509 "${key[@]}" -days 365 -subj "/CN=sse bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
        openssl req "${key[@]}" -subj /CN=localhost -keyout "$d/server.key" -out "$d/server.csr" &&
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 365 \
            -extfile "$d/server.ext" -out "$d/server.pem"
    } >"$d/openssl.log" 2>&1 || { echo "openssl failed:" >&2; cat "$d/openssl.log" >&2; rm -rf "$d"; return 1; }
    # nchan loads the CA in its workers, which run as nobody.
    chmod 0755 "$d"
    chmod 0644 "$d/ca.pem" "$d/server.pem"
    echo "[tls] made a CA and a server certificate in $d" >&2
}

rcli() {  # variant redis-cli-args...: redis-cli to that variant's redis-server
    local v=$1 tls_opts=()
    shift
    [ "$v" = s6tls ] && tls_opts=(--tls --cacert "$tls_dir/ca.pem")
    redis-cli -h 127.0.0.1 -p "${redis_port[$v]}" "${tls_opts[@]}" "$@"
}

# s6's redis-server: on a free loopback port, nothing persisted, in build/bench/redis/; s6tls's
# listens for TLS only (--port 0), in build/bench/redis-tls/, and asks no client certificate.
start_redis() {  # variant (s6 or s6tls)
    local v=$1 dir p listen
    dir="$out/redis"
    [ "$v" = s6tls ] && dir="$out/redis-tls"
    rm -rf "$dir"
    mkdir -p "$dir"
    p=$(free_port) || { echo "no free port for redis-server" >&2; return 1; }
    redis_port[$v]=$p
    listen=(--port "$p")
    if [ "$v" = s6tls ]; then
        make_tls_certs || return 1
        listen=(--port 0 --tls-port "$p" --tls-cert-file "$tls_dir/server.pem" --tls-key-file "$tls_dir/server.key"
            --tls-ca-cert-file "$tls_dir/ca.pem" --tls-auth-clients no)
    fi
    redis-server --bind 127.0.0.1 "${listen[@]}" --save '' --appendonly no --protected-mode no \
        --dir "$dir" --logfile "$dir/redis.log" --daemonize no </dev/null >"$dir/redis.stdout" 2>&1 &
    redis_pid[$v]=$!
    for _ in $(seq 100); do
        [ "$(rcli "$v" ping 2>/dev/null)" = PONG ] && break
        alive "${redis_pid[$v]}" || { echo "redis-server exited at start:" >&2; tail -5 "$dir/redis.log" >&2; unset "redis_pid[$v]"; return 1; }
        sleep 0.1
    done
    [ "$(rcli "$v" ping 2>/dev/null)" = PONG ] || { echo "redis-server ($v) does not answer" >&2; return 1; }
    echo "[redis $v] $(redis-server --version | cut -d' ' -f1-3), pid ${redis_pid[$v]}, port $p$([ "$v" = s6tls ] && echo ' (TLS only)')" >&2
}

stop_redis() {  # variant
    local v=$1 pid=${redis_pid[$1]:-}
    [ -n "$pid" ] || return 0
    rcli "$v" shutdown nosave >/dev/null 2>&1 || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; sleep 1; fi
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    unset "redis_pid[$v]"
}

# s6cluster's Redis Cluster: 3 primaries and no replicas. A replica would copy every write of its
# primary (the channels' history lists) on the same 2 cores, a cost that a throughput bench would
# fold into the figures without exercising anything it measures (no failover happens here).
# redis_pid[s6cluster-N] and redis_port[s6cluster-N] (N = 1 to 3) hold the nodes, so that cleanup,
# rcli and stop_redis handle each one like any other redis-server. Each node in
# build/bench/redis-cluster/<port>/ (its nodes.conf, its log), its cluster bus on a free port of
# its own (not port + 10000, which may be taken or ephemeral), nothing persisted.
cluster_n=3
start_redis_cluster() {
    local base=$out/redis-cluster i k p bp dir addrs=() used=" " t0=$SECONDS ok n
    rm -rf "${base:?}"
    mkdir -p "$base"
    for i in $(seq "$cluster_n"); do
        k=s6cluster-$i
        # Two free ports (client, bus), none taken twice: nothing listens on them yet.
        p=$(free_port) || { echo "no free port for redis-server" >&2; return 1; }
        while [[ $used == *" $p "* ]]; do p=$(free_port) || return 1; done
        used+="$p "
        bp=$(free_port) || { echo "no free port for redis-server" >&2; return 1; }
        while [[ $used == *" $bp "* ]]; do bp=$(free_port) || return 1; done
        used+="$bp "
        redis_port[$k]=$p
        dir=$base/$p
        mkdir -p "$dir"
        redis-server --bind 127.0.0.1 --port "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-port "$bp" --save '' --appendonly no --protected-mode no \
            --dir "$dir" --logfile "$dir/redis.log" --daemonize no </dev/null >"$dir/redis.stdout" 2>&1 &
        redis_pid[$k]=$!
        addrs+=("127.0.0.1:$p")
    done
    for i in $(seq "$cluster_n"); do
        k=s6cluster-$i
        for _ in $(seq 100); do
            [ "$(rcli "$k" ping 2>/dev/null)" = PONG ] && break
            alive "${redis_pid[$k]}" || break
            sleep 0.1
        done
        [ "$(rcli "$k" ping 2>/dev/null)" = PONG ] ||
            { echo "redis-server ($k, port ${redis_port[$k]}) does not answer:" >&2; tail -5 "$base/${redis_port[$k]}/redis.log" >&2; return 1; }
    done
    if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$base/create.log" 2>&1 ||
        ! grep -q 'All 16384 slots covered' "$base/create.log"; then
        echo "redis-cli --cluster create failed:" >&2; tail -20 "$base/create.log" >&2; return 1
    fi
    # Ready: cluster_state:ok on every node, and every node knows the other two.
    for _ in $(seq 300); do
        ok=0
        for i in $(seq "$cluster_n"); do
            n=$(rcli "s6cluster-$i" cluster info 2>/dev/null | tr -d '\r') || n=
            [[ $n == *cluster_state:ok* && $n == *cluster_known_nodes:$cluster_n* ]] && ok=$((ok + 1))
        done
        [ "$ok" = "$cluster_n" ] && break
        sleep 0.1
    done
    if [ "$ok" != "$cluster_n" ]; then
        echo "the Redis Cluster was not ready within 30 s:" >&2
        for i in $(seq "$cluster_n"); do rcli "s6cluster-$i" cluster nodes >&2 || true; done
        return 1
    fi
    echo "[redis s6cluster] $(redis-server --version | cut -d' ' -f1-3), $cluster_n primaries, no replicas: pids $(redis_pids s6cluster), ports $(for i in $(seq "$cluster_n"); do printf '%s ' "${redis_port[s6cluster-$i]}"; done)(ready in $((SECONDS - t0)) s)" >&2
}

redis_pids() {  # variant: the pids of its redis-server(s), comma-separated
    local i pids=()
    if [ "$1" = s6cluster ]; then
        for i in $(seq "$cluster_n"); do pids+=("${redis_pid[s6cluster-$i]:-}"); done
        (IFS=,; echo "${pids[*]}")
    else
        echo "${redis_pid[$1]:-}"
    fi
}

s6_redis_ports() {  # variant: what its nodes are given, one port or the cluster's two seeds
    if [ "$1" = s6cluster ]; then echo "${redis_port[s6cluster-1]} ${redis_port[s6cluster-2]}"; else echo "${redis_port[$1]}"; fi
}

s6_node() {  # variant server: the name of that server's pair of nodes (<name>-a, <name>-b)
    case $1 in s6tls) echo "$2-tls" ;; s6cluster) echo "$2-cluster" ;; *) echo "$2" ;; esac
}

# Problems worth knowing about in a server's error.log since the last check.
declare -A log_seen
check_log() {
    local s=$1 log="${prefix[$1]}/logs/error.log" n
    n=$(wc -l <"$log")
    tail -n +"$(( ${log_seen[$s]:-0} + 1 ))" "$log" | grep -E '\[(alert|crit|emerg)\]|exited on signal' | head -5 |
        sed "s/^/[$s] error.log: /" >&2 || true
    log_seen[$s]=$n
}

# --- measurements ------------------------------------------------------------------------------
rss_kb() {  # sum of the workers' VmRSS, kB
    local sum=0 pid v
    for pid in $(workers "$1" | tr , ' '); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

pss_kb() {  # sum of the workers' Pss, kB: shared memory counted once, not once per worker
    local sum=0 pid v
    for pid in $(workers "$1" | tr , ' '); do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

cpu_ticks() {  # utime + stime of the processes (comma-separated pids), clock ticks
    local sum=0 pid v
    for pid in $(tr , ' ' <<<"$1"); do
        v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')  # empty if it exited
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

results="$out/results.json"
: >"$results"

record() {  # server scenario rep json -> results.json, tagged
    jq -c --arg server "$1" --arg scenario "$2" --argjson rep "$3" '{server: $server, scenario: $scenario, rep: $rep} + .' \
        <<<"$4" >>"$results"
}

run_idle() {
    local s=$1 before before_pss after after_pss log="$out/$s/idle.out" waited=0
    sleep 1
    before=$(rss_kb "$s") before_pss=$(pss_kb "$s")
    # Held open until we have read the memory figures; SIGTERM ends it (it prints its result).
    timeout 300 "$loadgen" --port "${port[$s]}" --subscribers "$IDLE_SUBS" --idle-only \
        --timeout "$RUN_TIMEOUT" --label "$s/idle" >"$log" 2>"$out/$s/idle.err" &
    loadgen_pid=$!
    until grep -q '^ready$' "$log"; do
        if ! kill -0 "$loadgen_pid" 2>/dev/null || [ $waited -ge 1200 ]; then
            echo "[$s] idle subscribers did not all connect:" >&2; cat "$log" "$out/$s/idle.err" >&2
            kill -TERM "$loadgen_pid" 2>/dev/null || true; wait "$loadgen_pid" || true; loadgen_pid=
            return 1
        fi
        sleep 0.1; waited=$((waited + 1))
    done
    sleep 2  # let both workers finish whatever the subscriptions set off
    after=$(rss_kb "$s") after_pss=$(pss_kb "$s")
    kill -TERM "$loadgen_pid"; wait "$loadgen_pid" || true; loadgen_pid=
    local line
    line=$(grep '^{' "$log" | tail -1)
    line=$(jq -c --argjson b "$before" --argjson a "$after" --argjson bp "$before_pss" --argjson ap "$after_pss" \
        --argjson n "$IDLE_SUBS" \
        '. + {rss_kb_before: $b, rss_kb_after: $a, pss_kb_before: $bp, pss_kb_after: $ap,
              rss_bytes_per_subscriber: (($a - $b) * 1024 / $n | round),
              pss_bytes_per_subscriber: (($ap - $bp) * 1024 / $n | round)}' <<<"$line")
    record "$s" idle 1 "$line"
    echo "[$s] idle: RSS $before kB -> $after kB with $IDLE_SUBS subscribers ($(jq .rss_bytes_per_subscriber <<<"$line") B each)" >&2
    check_log "$s"
}

run_load() {  # server scenario rep
    local s=$1 sc=$2 rep=$3 subs channels events rate conns pids0 pids1 cpu0 cpu1 line backstop
    local fpw=0 ours_line floor0=null floor1=null
    local extra=() sub_node=$1 pub_node=$1 nodes v=${2%%-*} np=$1 sub_port pub_port
    # s6, s6tls and s6cluster run the same parts (same, cross, tput, warmup) on their own pair of nodes.
    case $v in s6 | s6tls | s6cluster) np=$(s6_node "$v" "$s") ;; esac
    local kind=${sc/#s6tls-/s6-}
    case ${kind/#s6cluster-/s6-} in
        s1) subs=$S1_SUBS channels=1 events=$S1_EVENTS rate=$S1_RATE conns=1 ;;
        s2) subs=$S2_SUBS channels=$S2_CHANNELS events=$S2_EVENTS rate=$S2_RATE conns=2 ;;
        s2tls) subs=$S2_SUBS channels=$S2_CHANNELS events=$S2_EVENTS rate=$S2_RATE conns=2 extra=(--tls) ;;
        s3) subs=$S3_SUBS channels=1 events=$S3_EVENTS rate=0 conns=1 ;;
        s4) subs=$S4_SUBS channels=$S4_CHANNELS events=$S4_EVENTS rate=0 conns=2 ;;
        s5) subs=$S5_SUBS channels=1 events=$S5_EVENTS rate=0 conns=1
            extra=(--replay --sub-path '/replay?channels={ch}' --pub-path '/pubr?channel={ch}') ;;
        # s6: published on node A; read on A (the same-node baseline) or on B (across Redis).
        s6-same) subs=$S6_SUBS channels=1 events=$S6_EVENTS rate=$S6_RATE conns=1 sub_node=$np-a pub_node=$np-a ;;
        s6-cross) subs=$S6_SUBS channels=1 events=$S6_EVENTS rate=$S6_RATE conns=1 sub_node=$np-b pub_node=$np-a ;;
        s6-tput) subs=$S6_TPUT_SUBS channels=$S6_TPUT_CHANNELS events=$S6_TPUT_EVENTS rate=0 conns=2
            sub_node=$np-b pub_node=$np-a ;;
        s6-warmup) subs=10 channels=1 events=20 rate=100 conns=1 sub_node=$np-b pub_node=$np-a ;;
    esac
    nodes=("$sub_node")
    [ "$pub_node" = "$sub_node" ] || nodes+=("$pub_node")
    case $sc in
        # Both nodes' workers and redis-server count as the server's CPU, whichever node the
        # streams are on (the other node's share is small, but it is part of the path).
        s6-* | s6tls-* | s6cluster-*) extra=(--settle "$S6_SETTLE") nodes=("$np-a" "$np-b")
            pids0=$(workers "$np-a"),$(workers "$np-b"),$(redis_pids "$v") ;;
        *) pids0=$(workers "$s") ;;
    esac
    if [ "$s" = floor ]; then
        # In s3 and s4 (closed loop) the floor publishes at the rate ours achieved in this
        # repetition (ours runs just before it) and releases frames as many at a time as ours put
        # in one write; without ours' figures, as fast as it goes, writing whatever is due.
        if [ "$rate" = 0 ] && [ "$sc" != s5 ]; then
            ours_line=$(jq -c --arg sc "$sc" --argjson rep "$rep" \
                'select(.server == "ours" and .scenario == $sc and .rep == $rep)' "$results" | tail -1)
            if [ -n "$ours_line" ]; then
                rate=$(jq '.publish_rate // 0' <<<"$ours_line")
                fpw=$(jq '.frames_per_write // 0' <<<"$ours_line")
            fi
        fi
        floor_get "/set?frames_per_write=$fpw" >/dev/null || { echo "[floor] does not answer" >&2; return 1; }
        floor0=$(floor_get /stats) || floor0=null
    fi
    sub_port=${port[$sub_node]} pub_port=${port[$pub_node]}
    if [ "$sc" = s2tls ]; then sub_port=${tls_port[$s]} pub_port=${tls_port[$s]}; fi
    cpu0=$(cpu_ticks "$pids0")
    # The run itself is bounded by its --timeout (connecting, then deliveries after the last
    # publish); `timeout` is only a backstop (SIGTERM makes loadgen report what it has).
    backstop=$(awk -v t="$RUN_TIMEOUT" -v e="$events" -v r="$rate" 'BEGIN { printf "%d", 3 * t + (r > 0 ? e / r : 0) + 30 }')
    # In the background with `wait`, so that a SIGTERM to this script is handled at once.
    timeout "$backstop" "$loadgen" \
        --port "$sub_port" --pub-port "$pub_port" --subscribers "$subs" --channels "$channels" \
        --events "$events" --rate "$rate" --pub-conns "$conns" --timeout "$RUN_TIMEOUT" --cpu-pids "$pids0" \
        --label "$s/$sc/$rep" "${extra[@]}" >"$out/$sub_node/run.out" 2>>"$out/$sub_node/loadgen.err" &
    loadgen_pid=$!
    wait "$loadgen_pid" || true
    loadgen_pid=
    line=$(grep '^{' "$out/$sub_node/run.out" | tail -1) || true
    cpu1=$(cpu_ticks "$pids0")
    case $sc in
        s6-* | s6tls-* | s6cluster-*) pids1=$(workers "$np-a"),$(workers "$np-b"),$(redis_pids "$v") ;;
        *) pids1=$(workers "$s") ;;
    esac
    if [ -z "$line" ]; then
        echo "[$s] $sc rep $rep: no result from loadgen (see $out/$sub_node/loadgen.err)" >&2
        for n in "${nodes[@]}"; do check_log "$n"; done
        return 1
    fi
    # Frames per write: deliveries over the write syscalls that carried them. syscw counts every
    # write() and writev() (nginx writes sockets with writev), not send(); take away the publish
    # answers (one writev each) and ours' eventfd wake-ups (each write() to one is drained by one
    # read(), and nothing else of ours or nginx's calls read(): syscr). The floor answers with one
    # write() and has no wake-ups, so only its answers are taken off. In s5 the window holds no
    # publishes but every stream's head, written with its replay. nchan's inter-worker messages
    # are not accounted for this way: its figure is recorded, not tabled.
    # Over TLS (s2tls) OpenSSL reads and writes the socket with read() and write(): one SSL_write
    # of a small chunk is one write(), so the floor's figure holds, but ours' syscr then counts
    # the publish connections' TLS reads beside the eventfd drains, which cannot be told apart
    # here: ours' (and nchan's) figure is left out, and only the range it lies in is recorded
    # (frames_per_write_range: the wake-ups counted as stream writes, and every read taken off).
    # A TLS handshake in the window (a publish connection's) adds a few writes to any figure.
    line=$(jq -c --arg s "$s" '. + (if (.server_syscw | type) == "number" then
            .delivered as $d
            | (if .mode == "run" then .published_ok + .publish_failed else 0 end) as $answers
            | (if $s == "floor" then 0 else .server_syscr end) as $wakeups
            | (.server_syscw - $wakeups - $answers) as $w
            | if .tls == true and $s != "floor" then
                  {stream_writes: null, frames_per_write: null,
                   frames_per_write_range: [(.server_syscw - $answers), $w]
                       | map(if . > 0 then $d / . else null end)}
              else {stream_writes: $w, frames_per_write: (if $w > 0 then .delivered / $w else null end)} end
        else {} end)' <<<"$line")
    if [ "$s" = floor ]; then
        # The floor's own count of its stream writes, over the whole run: a check on the above.
        floor1=$(floor_get /stats) || floor1=null
        line=$(jq -c --argjson a "$floor0" --argjson b "$floor1" --argjson f "$fpw" --arg r "$rate" \
            '. + {floor_frames_per_write_asked: $f, floor_rate_asked: ($r | tonumber)}
               + (if $a != null and $b != null then {floor_counted: {stream_writes: ($b.stream_writes - $a.stream_writes),
                    frames_written: ($b.frames_written - $a.frames_written)}} else {} end)' <<<"$line")
    fi
    if [ "$s" = ours ] && [[ $sc == s6-* || $sc == s6tls-* || $sc == s6cluster-* ]]; then
        # Our nodes' Redis figures (cumulative): an event dropped from a full outbound queue
        # would show here, and a node's link state other than "connected" too.
        local st_a st_b
        st_a=$(curl -sf "http://127.0.0.1:${port[$np-a]}/stats" | jq -c .redis) || st_a=null
        st_b=$(curl -sf "http://127.0.0.1:${port[$np-b]}/stats" | jq -c .redis) || st_b=null
        line=$(jq -c --argjson a "$st_a" --argjson b "$st_b" \
            '. + {redis_a: $a, redis_b: $b, redis_queue_dropped: (($a.queue_dropped // 0) + ($b.queue_dropped // 0))}' <<<"$line")
    fi
    # Whole-run CPU, connecting and closing 10,000 streams included; loadgen's own server_cpu_s
    # covers only the window from the first publish to the last delivery.
    line=$(jq -c --argjson c "$((cpu1 - cpu0))" --argjson hz "$(getconf CLK_TCK)" --arg p0 "$pids0" --arg p1 "$pids1" \
        '. + {server_cpu_s_whole_run: ($c / $hz),
              server_cpu_us_per_delivery_whole_run: (if .delivered > 0 then ($c / $hz * 1e6 / .delivered * 1000 | round) / 1000 else null end),
              workers_restarted: ($p0 != $p1)}' <<<"$line")
    [[ $sc == *-warmup ]] || record "$s" "$sc" "$rep" "$line"
    jq -r --arg s "$s" '"[\($s)] \(.label): delivered \(.delivered)/\(.expected), lost \(.lost), " +
        "\(.delivered_per_s)/s, latency p50 \(.latency_ms_p50) ms p99 \(.latency_ms_p99) ms, " +
        "publish p50 \(.publish_ms_p50) ms p99 \(.publish_ms_p99) ms" +
        (if .error then ", error: \(.error)" else "" end) + (if .timed_out then " (timed out)" else "" end)' <<<"$line" >&2
    if [[ $sc == *-warmup ]] && [ "$(jq .lost <<<"$line")" != 0 ]; then
        echo "[$s] WARNING: the warm-up lost events between the nodes: is Redis reachable from both?" >&2
    fi
    [ "$pids0" = "$pids1" ] || echo "[$s] WARNING: worker processes changed during the run ($pids0 -> $pids1)" >&2
    for n in "${nodes[@]}"; do check_log "$n"; done
    sleep 1
}

# --- run ---------------------------------------------------------------------------------------
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "note: load average is $load; other work on this machine skews the figures" >&2
fi

# The single-node servers are needed by every scenario but s6, s6tls and s6cluster, which start their own
# nodes.
need_single=0 s6_variants=()
for sc in $scenarios; do
    case $sc in
        s6 | s6tls | s6cluster) s6_variants+=("$sc") ;;
        *) need_single=1 ;;
    esac
done
if [ ${#s6_variants[@]} -gt 0 ]; then
    apt_install redis-server redis-tools curl openssl
fi
if [ "$tls_listen" = 1 ]; then
    apt_install openssl
    make_tls_certs
fi

active=()
for s in "${servers[@]}"; do
    if [ "$s" = ours ]; then
        if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && ! scripts/build.sh >&2; then
            echo "[ours] SKIPPED: scripts/build.sh failed" >&2
            continue
        fi
        if [ ! -f build/ngx_http_sse_module.so ]; then
            echo "[ours] SKIPPED: build/ngx_http_sse_module.so is absent" >&2
            continue
        fi
        # nginx loads a copy of its own: a rebuild meanwhile (scripts/test.sh in another shell)
        # rewrites build/ngx_http_sse_module.so in place, which crashes workers that map it.
        cp build/ngx_http_sse_module.so "$out/ngx_http_sse_module.so.new"
        mv -f "$out/ngx_http_sse_module.so.new" "$out/ngx_http_sse_module.so"
    fi
    if [ $need_single = 0 ] || start_server "$s"; then
        active+=("$s")
    else
        echo "[$s] SKIPPED: nginx with this module does not start" >&2
        stop_server "$s"
    fi
done
# The floor is in s1 to s5 and s2tls only (not in idle or the s6 variants), and is not in active.
floor_up=0
if [ "$with_floor" = 1 ]; then
    for sc in $scenarios; do
        case $sc in s1 | s2 | s2tls | s3 | s4 | s5) floor_up=1 ;; esac
    done
    if [ $floor_up = 1 ] && ! start_floor; then
        echo "[floor] SKIPPED: it does not start" >&2
        floor_up=0
    fi
fi
[ ${#active[@]} -gt 0 ] || [ $floor_up = 1 ] || { echo "no server to benchmark" >&2; exit 1; }

# s6 and s6tls: a redis-server each, and two nodes per server using it (s6: ours-a, ours-b,
# nchan-a, nchan-b; s6tls: ours-tls-a, ours-tls-b, nchan-tls-a, nchan-tls-b; s6cluster: a Redis
# Cluster, ours-cluster-a, ... given two of its nodes as seeds). The nodes of every
# variant named are up together, so that plain and TLS take turns within each repetition: a change
# in the machine's load during the run then touches both alike.
declare -A s6_up  # "variant/server" -> 1 once its two nodes run and have passed the warm-up
s6_start() {  # variant
    local v=$1 s n node state tls=0 started=0 rp
    [ "$v" = s6tls ] && tls=1
    if [ "$v" = s6cluster ]; then
        start_redis_cluster || return 1
    else
        start_redis "$v" || return 1
    fi
    rp=$(s6_redis_ports "$v")
    for s in "${active[@]}"; do
        node=$(s6_node "$v" "$s")
        if ! start_server "$node-a" "$rp" "$tls" || ! start_server "$node-b" "$rp" "$tls"; then
            echo "[$s] $v SKIPPED: its two nodes did not both start" >&2
            stop_server "$node-a"; stop_server "$node-b"
            failures=$((failures + 1))
            continue
        fi
        if [ "$s" = ours ]; then
            for n in "$node-a" "$node-b"; do
                for _ in $(seq 100); do
                    state=$(curl -sf "http://127.0.0.1:${port[$n]}/stats" | jq -r .redis.state) || state=
                    [ "$state" = connected ] && break
                    sleep 0.1
                done
                [ "$state" = connected ] || echo "[$n] WARNING: its Redis link is '$state', not connected" >&2
            done
        fi
        # A small run across the nodes, not recorded: both nodes have their Redis connections
        # up, and an event published on A reaches B.
        run_load "$s" "$v-warmup" 0 || true
        s6_up[$v/$s]=1
        started=$((started + 1))
    done
    [ $started -gt 0 ]
}

s6_stop() {  # variant
    local v=$1 s n c node dir=$out/redis
    [ "$v" = s6tls ] && dir=$out/redis-tls
    for s in "${active[@]}"; do
        node=$(s6_node "$v" "$s")
        stop_server "$node-a"; stop_server "$node-b"
        # check_log only shows alert, crit and emerg; a node's Redis link failing shows lower.
        for n in "$node-a" "$node-b"; do
            [ -f "$out/$n/logs/error.log" ] || continue
            c=$(grep -cE '\[(warn|error)\]' "$out/$n/logs/error.log") || true
            [ "${c:-0}" = 0 ] || echo "[$n] note: $c line(s) at warn or error in its error.log, the first: $(grep -m1 -E '\[(warn|error)\]' "$out/$n/logs/error.log")" >&2
        done
    done
    if [ "$v" = s6cluster ]; then
        s6_stop_cluster
        return 0
    fi
    # What the servers left in Redis and the commands they used (both servers share this Redis).
    if [ -n "${redis_pid[$v]:-}" ]; then
        {
            echo "dbsize: $(rcli "$v" dbsize)"
            echo "keys (a sample):"; rcli "$v" --scan | head -20
            rcli "$v" info commandstats
        } >"$dir/after.txt" 2>&1 || true
    fi
    stop_redis "$v"
}

# The same for the cluster's nodes, each in its build/bench/redis-cluster/<port>/after.txt (the
# keys and commands of the slots it serves), then each stopped by its pid.
s6_stop_cluster() {
    local i k
    for i in $(seq "$cluster_n"); do
        k=s6cluster-$i
        [ -n "${redis_pid[$k]:-}" ] || continue
        {
            echo "dbsize: $(rcli "$k" dbsize)"
            echo "keys (a sample):"; rcli "$k" --scan | head -20
            rcli "$k" cluster info
            rcli "$k" info commandstats
        } >"$out/redis-cluster/${redis_port[$k]}/after.txt" 2>&1 || true
        stop_redis "$k"
    done
}

for sc in $scenarios; do
    case $sc in idle | s1 | s2 | s2tls | s3 | s4 | s5 | s6 | s6tls | s6cluster) ;; *) echo "unknown scenario $sc" >&2; exit 2 ;; esac
done
failures=0
for sc in $scenarios; do
    case $sc in
        idle)
            for s in "${active[@]}"; do run_idle "$s" || failures=$((failures + 1)); done ;;
        s1 | s2 | s2tls | s3 | s4 | s5)
            for rep in $(seq "$BENCH_REPS"); do
                order=("${active[@]}")
                # The servers take turns going first, so that neither always runs on a warmer machine.
                if [ $((rep % 2)) = 0 ] && [ ${#active[@]} = 2 ]; then order=("${active[1]}" "${active[0]}"); fi
                if [ $floor_up = 1 ]; then
                    # The floor right after ours: in s3 and s4 it takes ours' rate and frames per
                    # write of this repetition (last when ours does not run).
                    with=()
                    for s in "${order[@]}"; do
                        with+=("$s")
                        [ "$s" = ours ] && with+=(floor)
                    done
                    [[ " ${with[*]} " == *" floor "* ]] || with+=(floor)
                    order=("${with[@]}")
                fi
                for s in "${order[@]}"; do run_load "$s" "$sc" "$rep" || failures=$((failures + 1)); done
            done ;;
        s6 | s6tls | s6cluster)
            # Every s6 variant named runs here, at the place of the first one in the list.
            [ "${s6_done:-0}" = 1 ] && continue
            s6_done=1
            for v in "${s6_variants[@]}"; do
                if ! s6_start "$v"; then
                    echo "$v SKIPPED: redis-server or the nodes did not start" >&2
                    failures=$((failures + 1))
                fi
            done
            # Server by server, each one's variants next to each other in time.
            pairs=()
            for s in "${active[@]}"; do
                for v in "${s6_variants[@]}"; do [ -n "${s6_up[$v/$s]:-}" ] && pairs+=("$v/$s"); done
            done
            for rep in $(seq "$BENCH_REPS"); do
                order=("${pairs[@]}")
                # Every other repetition in the reverse order, so that no server or variant
                # always runs on a warmer machine.
                if [ $((rep % 2)) = 0 ]; then
                    order=()
                    for ((i = ${#pairs[@]} - 1; i >= 0; i--)); do order+=("${pairs[i]}"); done
                fi
                for pair in "${order[@]}"; do
                    v=${pair%/*} s=${pair#*/}
                    # Same-node and cross-node take turns going first too.
                    parts=(same cross tput)
                    [ $((rep % 2)) = 0 ] && parts=(cross same tput)
                    for part in "${parts[@]}"; do run_load "$s" "$v-$part" "$rep" || failures=$((failures + 1)); done
                done
            done
            for v in "${s6_variants[@]}"; do s6_stop "$v"; done ;;
    esac
done
for s in "${active[@]}"; do stop_server "$s"; done
if [ $floor_up = 1 ]; then stop_server floor; fi

# --- table -------------------------------------------------------------------------------------
# One row per metric: the median over the repetitions (the worst for the correctness counts),
# for each server, and ours / nchan.
metric() {  # server scenario key how(median|max)
    jq -s --arg s "$1" --arg sc "$2" --arg k "$3" --arg how "$4" '
        [.[] | select(.server == $s and .scenario == $sc) | .[$k] | select(type == "number")] | sort |
        if length == 0 then null
        elif $how == "max" then .[-1]
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$results"
}

# s6: the latency crossing nodes adds, per repetition (cross-node minus same-node of the same
# repetition), then the median of those differences.
added() {  # server key [variant: s6 (default), s6tls or s6cluster]
    jq -s --arg s "$1" --arg k "$2" --arg v "${3:-s6}" '
        (map(select(.server == $s and .scenario == "\($v)-same" and (.[$k] | type) == "number"))
            | map({key: (.rep | tostring), value: .[$k]}) | from_entries) as $same
        | [.[] | select(.server == $s and .scenario == "\($v)-cross" and (.[$k] | type) == "number")
            | select($same[.rep | tostring] != null) | .[$k] - $same[.rep | tostring]] | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$results"
}

fmt() {
    awk -v v="$1" 'BEGIN {
        if (v == "null" || v == "") { print "—"; exit }
        a = v < 0 ? -v : v
        if (a == int(a)) printf "%d\n", v
        else if (a >= 100) printf "%.0f\n", v
        else if (a >= 10) printf "%.1f\n", v
        else printf "%.3f\n", v }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "null" || b == "null" || a == "" || b == "" || b + 0 == 0) { print "—"; exit }
        r = a / b
        printf (r < 0.1 ? "%.3f\n" : "%.2f\n"), r }'
}

# In the tables of s1 to s5 (floor_cols=1, set by table_head) the floor has a column, and ours /
# floor stands beside ours / nchan; in s2tls's (floor_cols=2) floor / nchan follows.
floor_cols=0
row() {  # label scenario key how [servers: which of ours, nchan, floor have the figure]; counts (how = max) get no ratio
    local o=null n=null f=null r="—" rf="—" rfn="—" have=${5:-ours nchan floor}
    [[ " $have " == *" ours "* ]] && o=$(metric ours "$2" "$3" "$4")
    [[ " $have " == *" nchan "* ]] && n=$(metric nchan "$2" "$3" "$4")
    [ "$4" = max ] || r=$(ratio "$o" "$n")
    if [ "$floor_cols" = 2 ]; then
        [[ " $have " == *" floor "* ]] && f=$(metric floor "$2" "$3" "$4")
        [ "$4" = max ] || { rf=$(ratio "$o" "$f"); rfn=$(ratio "$f" "$n"); }
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt "$o")" "$(fmt "$n")" "$(fmt "$f")" "$r" "$rf" "$rfn"
    elif [ "$floor_cols" = 1 ]; then
        [[ " $have " == *" floor "* ]] && f=$(metric floor "$2" "$3" "$4")
        [ "$4" = max ] || rf=$(ratio "$o" "$f")
        printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt "$o")" "$(fmt "$n")" "$(fmt "$f")" "$r" "$rf"
    else
        printf '| %s | %s | %s | %s |\n' "$1" "$(fmt "$o")" "$(fmt "$n")" "$r"
    fi
}

row_added() {  # label key [variant]; no ratio unless both differences are positive
    local o n r="—"
    o=$(added ours "$2" "${3:-s6}") n=$(added nchan "$2" "${3:-s6}")
    if awk -v a="$o" -v b="$n" 'BEGIN { exit !(a != "null" && b != "null" && a > 0 && b > 0) }'; then r=$(ratio "$o" "$n"); fi
    printf '| %s | %s | %s | %s |\n' "$1" "$(fmt "$o")" "$(fmt "$n")" "$r"
}

# s6tls beside s6: each server's plain and TLS pairs run one after the other in every repetition,
# so the ratio within a repetition (TLS / plain of the same repetition) is the steadier figure on
# a machine whose load moves; the median of those ratios is given beside the ratio of the medians.
paired() {  # server plain-scenario tls-scenario key
    jq -s --arg s "$1" --arg p "$2" --arg t "$3" --arg k "$4" '
        (map(select(.server == $s and .scenario == $p and (.[$k] | type) == "number"))
            | map({key: (.rep | tostring), value: .[$k]}) | from_entries) as $plain
        | [.[] | select(.server == $s and .scenario == $t and (.[$k] | type) == "number")
            | select(($plain[.rep | tostring] // 0) != 0) | .[$k] / $plain[.rep | tostring]] | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$results"
}

row_tls() {  # label part key [variant]: each server's plain and TLS (or cluster) figures, TLS / plain, and paired
    local s p t q cells=() v=${4:-s6tls}
    for s in ours nchan; do
        p=$(metric "$s" "s6-$2" "$3" median) t=$(metric "$s" "$v-$2" "$3" median) q=$(paired "$s" "s6-$2" "$v-$2" "$3")
        cells+=("$(fmt "$p")" "$(fmt "$t")" "$(ratio "$t" "$p")" "$(ratio "$q" 1)")
    done
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "${cells[@]}"
}

tls_table() {
    printf '\n%s\n\n' "s6 over TLS beside plain s6, in the same run. TLS / plain: the ratio of the medians; paired: the median of each repetition's TLS / plain. Above 1 is slower for latency and CPU, below 1 is slower for rates."
    echo "| metric | ours plain | ours TLS | ours TLS / plain | ours paired | nchan plain | nchan TLS | nchan TLS / plain | nchan paired |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    row_tls "same node: latency p50 (ms)" same latency_ms_p50
    row_tls "same node: latency p99 (ms)" same latency_ms_p99
    row_tls "cross-node: latency p50 (ms)" cross latency_ms_p50
    row_tls "cross-node: latency p99 (ms)" cross latency_ms_p99
    row_tls "cross-node: publish response p50 (ms)" cross publish_ms_p50
    row_tls "cross-node: publish response p99 (ms)" cross publish_ms_p99
    row_tls "throughput: delivered events/s at B" tput delivered_per_s
    row_tls "throughput: publishes/s achieved on A" tput publish_rate
    row_tls "throughput: latency p50 (ms)" tput latency_ms_p50
    row_tls "throughput: latency p99 (ms)" tput latency_ms_p99
    row_tls "throughput: CPU µs per delivery (nodes + redis-server)" tput server_cpu_us_per_delivery
}

# s6cluster beside s6, as s6tls beside it: each server's single-Redis and cluster pairs take turns
# in every repetition.
cluster_table() {
    printf '\n%s\n\n' "s6 through a Redis Cluster (3 primaries) beside s6 through one redis-server, in the same run. cluster / single: the ratio of the medians; paired: the median of each repetition's cluster / single. Above 1 is slower for latency and CPU, below 1 is slower for rates."
    echo "| metric | ours single | ours cluster | ours cluster / single | ours paired | nchan single | nchan cluster | nchan cluster / single | nchan paired |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    row_tls "same node: latency p50 (ms)" same latency_ms_p50 s6cluster
    row_tls "same node: latency p99 (ms)" same latency_ms_p99 s6cluster
    row_tls "cross-node: latency p50 (ms)" cross latency_ms_p50 s6cluster
    row_tls "cross-node: latency p99 (ms)" cross latency_ms_p99 s6cluster
    row_tls "cross-node: publish response p50 (ms)" cross publish_ms_p50 s6cluster
    row_tls "cross-node: publish response p99 (ms)" cross publish_ms_p99 s6cluster
    row_tls "throughput: delivered events/s at B" tput delivered_per_s s6cluster
    row_tls "throughput: publishes/s achieved on A" tput publish_rate s6cluster
    row_tls "throughput: latency p50 (ms)" tput latency_ms_p50 s6cluster
    row_tls "throughput: latency p99 (ms)" tput latency_ms_p99 s6cluster
    row_tls "throughput: CPU µs per delivery (nodes + redis-server(s))" tput server_cpu_us_per_delivery s6cluster
}

# Ours / floor within each repetition (the floor runs right after ours), then the median: steadier
# than the ratio of the medians when the machine's load moves during a run. The same for any two
# of ours, nchan and the floor (s2tls: ours / nchan and floor / nchan).
paired_servers() {  # scenario key server-a server-b: the median of a / b over the repetitions
    jq -s --arg sc "$1" --arg k "$2" --arg a "$3" --arg b "$4" '
        (map(select(.server == $b and .scenario == $sc and (.[$k] | type) == "number"))
            | map({key: (.rep | tostring), value: .[$k]}) | from_entries) as $base
        | [.[] | select(.server == $a and .scenario == $sc and (.[$k] | type) == "number")
            | select(($base[.rep | tostring] // 0) != 0) | .[$k] / $base[.rep | tostring]] | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$results"
}

paired_floor() {  # scenario key
    paired_servers "$1" "$2" ours floor
}

row_paired_floor() {  # label scenario key: only the ours / floor cell
    printf '| %s | — | — | — | — | %s |\n' "$1" "$(ratio "$(paired_floor "$2" "$3")" 1)"
}

row_paired_all() {  # label scenario key: ours / nchan, ours / floor and floor / nchan, each paired by repetition
    printf '| %s | — | — | — | %s | %s | %s |\n' "$1" "$(ratio "$(paired_servers "$2" "$3" ours nchan)" 1)" \
        "$(ratio "$(paired_floor "$2" "$3")" 1)" "$(ratio "$(paired_servers "$2" "$3" floor nchan)" 1)"
}

table_head() {  # title [floor: 1 for a table with the floor's column, 2 with floor / nchan too]
    printf '\n%s\n\n' "$1"
    floor_cols=${2:-0}
    if [ "$floor_cols" = 2 ]; then
        echo "| metric | ours | nchan | floor | ours / nchan | ours / floor | floor / nchan |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
    elif [ "$floor_cols" = 1 ]; then
        echo "| metric | ours | nchan | floor | ours / nchan | ours / floor |"
        echo "|---|---:|---:|---:|---:|---:|"
    else
        echo "| metric | ours | nchan | ours / nchan |"
        echo "|---|---:|---:|---:|"
    fi
}

{
    echo "Medians of $BENCH_REPS run(s); for lost, duplicated and out of order the worst run."
    [ -z "${BENCH_SERVER_CONF:-}" ] || printf '\nBoth servers with, in their server{}: `%s`\n' "$BENCH_SERVER_CONF"
    if [ $floor_up = 1 ]; then
        echo
        echo "floor: a bare writer (bench/floor.cpp, one process, epoll, no nginx) on the same streams with the same bytes (in s2tls, one SSL_write per write); its CPU is its process's, as ours' and nchan's is their workers'. Frames per write: deliveries over the write syscalls that carried them (/proc/<pid>/io), for ours and the floor."
    fi
    for sc in $scenarios; do
        case $sc in
            s1 | s2 | s2tls | s3 | s4)
                case $sc in
                    s1) table_head "s1: $S1_SUBS subscribers, 1 channel, $S1_EVENTS events at $S1_RATE/s" $floor_up ;;
                    s2) table_head "s2: $S2_SUBS subscribers, $S2_CHANNELS channels, $S2_EVENTS events at $S2_RATE/s" $floor_up ;;
                    s2tls) table_head "s2tls: s2 over TLS ($S2_SUBS subscribers, $S2_CHANNELS channels, $S2_EVENTS events at $S2_RATE/s), both servers on listen ssl, the floor on its TLS port (one SSL_write per write), loadgen speaking TLS; the whole run includes the TLS handshakes. floor / nchan: the best ratio to nchan a server writing each delivery with its own SSL_write could reach" $((floor_up * 2)) ;;
                    s3) table_head "s3 (throughput): $S3_SUBS subscribers, 1 channel, $S3_EVENTS events, closed loop (the floor: at ours' publishes/s and frames per write of the same repetition)" $floor_up ;;
                    s4) table_head "s4 (throughput): $S4_SUBS subscribers, $S4_CHANNELS channels, $S4_EVENTS events, closed loop, 2 publishers (the floor: at ours' publishes/s and frames per write of the same repetition)" $floor_up ;;
                esac
                row "delivered events/s" "$sc" delivered_per_s median
                row "latency p50 (ms)" "$sc" latency_ms_p50 median
                row "latency p99 (ms)" "$sc" latency_ms_p99 median
                row "publish response p50 (ms)" "$sc" publish_ms_p50 median
                row "publish response p99 (ms)" "$sc" publish_ms_p99 median
                row "publishes/s achieved" "$sc" publish_rate median
                row "worker CPU µs per delivery (publish window)" "$sc" server_cpu_us_per_delivery median
                row "worker CPU µs per delivery (whole run)" "$sc" server_cpu_us_per_delivery_whole_run median
                if [ "$sc" = s2tls ]; then
                    row "frames per write (over TLS the floor's only: see run_load in bench.sh)" "$sc" frames_per_write median floor
                else
                    row "frames per write" "$sc" frames_per_write median "ours floor"
                fi
                if [ "$floor_cols" = 1 ]; then
                    row_paired_floor "worker CPU µs per delivery (publish window), ours / floor paired by repetition" "$sc" server_cpu_us_per_delivery
                elif [ "$floor_cols" = 2 ]; then
                    row_paired_all "worker CPU µs per delivery (publish window), paired by repetition" "$sc" server_cpu_us_per_delivery
                fi
                if [ "$sc" = s2tls ] && [[ " $scenarios " == *" s2 "* ]]; then
                    # Each server's TLS / plain within a repetition, then the median.
                    if [ "$floor_cols" = 2 ]; then
                        printf '| %s | %s | %s | %s | — | — | — |\n' "worker CPU µs per delivery (publish window), TLS / plain (s2tls / s2) paired by repetition" \
                            "$(ratio "$(paired ours s2 s2tls server_cpu_us_per_delivery)" 1)" \
                            "$(ratio "$(paired nchan s2 s2tls server_cpu_us_per_delivery)" 1)" \
                            "$(ratio "$(paired floor s2 s2tls server_cpu_us_per_delivery)" 1)"
                    else
                        printf '| %s | %s | %s | — |\n' "worker CPU µs per delivery (publish window), TLS / plain (s2tls / s2) paired by repetition" \
                            "$(ratio "$(paired ours s2 s2tls server_cpu_us_per_delivery)" 1)" \
                            "$(ratio "$(paired nchan s2 s2tls server_cpu_us_per_delivery)" 1)"
                    fi
                fi
                row "lost" "$sc" lost max
                row "duplicated" "$sc" duplicated max
                row "out of order" "$sc" out_of_order max
                ;;
            s5)
                table_head "s5 (reconnect storm): $S5_EVENTS events published, then $S5_SUBS subscribers connect and each is sent all $S5_EVENTS from history" $floor_up
                row "replayed events/s" "$sc" delivered_per_s median
                row "seconds until every subscriber had its replay" "$sc" window_s median
                row "worker CPU µs per replayed event" "$sc" server_cpu_us_per_delivery median
                row "frames per write (a stream's head and replay)" "$sc" frames_per_write median "ours floor"
                if [ $floor_up = 1 ]; then
                    row_paired_floor "worker CPU µs per replayed event, ours / floor paired by repetition" "$sc" server_cpu_us_per_delivery
                fi
                row "lost" "$sc" lost max
                row "duplicated" "$sc" duplicated max
                row "out of order" "$sc" out_of_order max
                ;;
            s6 | s6tls | s6cluster)
                if [ "$sc" = s6 ]; then
                    table_head "s6 (cross-node through one Redis): two nodes per server; latency with $S6_SUBS subscribers on 1 channel, $S6_EVENTS events at $S6_RATE/s published on node A; throughput with $S6_TPUT_SUBS subscribers over $S6_TPUT_CHANNELS channels on node B, $S6_TPUT_EVENTS events published on A in a closed loop, 2 publishers"
                elif [ "$sc" = s6cluster ]; then
                    table_head "s6cluster (s6 through a Redis Cluster of $cluster_n primaries, no replicas): the same sizes, each node given two primaries as seeds; CPU per delivery counts all $cluster_n redis-servers"
                else
                    table_head "s6tls (s6 through a TLS-only Redis): the same sizes, the nodes connecting with rediss:// (ours checks the server's certificate; nchan 1.3.6 does not, see BENCHMARKS.md)"
                fi
                row "same node (subscribers on A): latency p50 (ms)" "$sc-same" latency_ms_p50 median
                row "same node (subscribers on A): latency p99 (ms)" "$sc-same" latency_ms_p99 median
                row "cross-node (subscribers on B): latency p50 (ms)" "$sc-cross" latency_ms_p50 median
                row "cross-node (subscribers on B): latency p99 (ms)" "$sc-cross" latency_ms_p99 median
                row_added "added by crossing nodes, p50 (ms)" latency_ms_p50 "$sc"
                row_added "added by crossing nodes, p99 (ms)" latency_ms_p99 "$sc"
                row "cross-node: publish response p50 (ms)" "$sc-cross" publish_ms_p50 median
                row "cross-node: publish response p99 (ms)" "$sc-cross" publish_ms_p99 median
                row "cross-node: publishes/s achieved (of $S6_RATE)" "$sc-cross" publish_rate median
                row "cross-node throughput: delivered events/s at B" "$sc-tput" delivered_per_s median
                row "cross-node throughput: publishes/s achieved on A" "$sc-tput" publish_rate median
                row "cross-node throughput: latency p50 (ms)" "$sc-tput" latency_ms_p50 median
                row "cross-node throughput: latency p99 (ms)" "$sc-tput" latency_ms_p99 median
                local_redis="redis-server"
                [ "$sc" = s6cluster ] && local_redis="the $cluster_n redis-servers"
                row "cross-node throughput: CPU µs per delivery (both nodes' workers + $local_redis)" "$sc-tput" server_cpu_us_per_delivery median
                for part in same cross tput; do
                    row "$part: publishes refused or unanswered" "$sc-$part" publish_failed max
                    row "$part: lost" "$sc-$part" lost max
                    row "$part: duplicated" "$sc-$part" duplicated max
                    row "$part: out of order" "$sc-$part" out_of_order max
                done
                row "ours: events dropped from the Redis outbound queue (both nodes, whole scenario)" "$sc-tput" redis_queue_dropped max
                # With both variants in the run: TLS beside plain, for each server.
                if [ "$sc" = s6tls ] && [[ " $scenarios " == *" s6 "* ]]; then
                    tls_table
                fi
                if [ "$sc" = s6cluster ] && [[ " $scenarios " == *" s6 "* ]]; then
                    cluster_table
                fi
                ;;
            idle)
                table_head "idle: memory with $IDLE_SUBS idle subscribers"
                row "RSS bytes per subscriber" idle rss_bytes_per_subscriber median
                row "PSS bytes per subscriber" idle pss_bytes_per_subscriber median
                row "workers' RSS with 0 subscribers (kB)" idle rss_kb_before median
                row "workers' RSS with $IDLE_SUBS subscribers (kB)" idle rss_kb_after median
                ;;
        esac
    done
} | tee "$out/summary.md"
echo "raw results: $results (one JSON line per run); table: $out/summary.md" >&2
if ! scripts/bench-plot.sh "$results" "$out/cpu_per_delivery.svg" \
    "Worker CPU per delivery, median of $BENCH_REPS run(s), $(date -u +%Y-%m-%d), load $load at the start" >&2; then
    echo "the plot could not be drawn" >&2
fi
[ "$failures" = 0 ] || { echo "$failures run(s) failed" >&2; exit 1; }
