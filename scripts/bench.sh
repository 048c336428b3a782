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
# s1 to s5 run BENCH_REPS times (default 3), the two servers taking turns; the table shows medians.
#
#   scripts/bench.sh                   full run (about 5 minutes)
#   BENCH_QUICK=1 scripts/bench.sh     tiny run (a few seconds): checks that everything works
#   BENCH_ONLY=nchan|ours              one server only
#   BENCH_SCENARIOS="s1 idle"          a subset of the scenarios
#   BENCH_REPS=5                       repetitions of s1 and s2
#   BENCH_SKIP_BUILD=1                 use build/ngx_http_sse_module.so as it is
#   S1_EVENTS, S1_RATE, S2_EVENTS, S2_RATE, IDLE_SUBS   override the scenario sizes
#
# Output: a Markdown table on stdout (also build/bench/summary.md), every loadgen result as one
# JSON line in build/bench/results.json, server logs under build/bench/<server>/.
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
    : "${IDLE_SUBS:=10000}"
    : "${RUN_TIMEOUT:=30}"
fi
scenarios=${BENCH_SCENARIOS:-idle s1 s2 s3 s4 s5}
servers=(ours nchan)
case "${BENCH_ONLY:-}" in
    "") ;;
    ours | nchan) servers=("$BENCH_ONLY") ;;
    *) echo "BENCH_ONLY must be ours or nchan" >&2; exit 2 ;;
esac

# --- load generator -------------------------------------------------------------------------
g++ -std=c++17 -O2 -Wall -Wextra -pthread -o "$out/loadgen" bench/loadgen.cpp
loadgen="$out/loadgen"
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
loadgen_pid=
cleanup() {
    [ -n "$loadgen_pid" ] && kill -TERM "$loadgen_pid" 2>/dev/null || true
    for s in "${!master[@]}"; do stop_server "$s"; done
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

write_conf() {  # server dir port
    local s=$1 dir=$2 p=$3 load locations
    if [ "$s" = ours ]; then
        load="load_module $repo/build/ngx_http_sse_module.so;"
        locations="sse_shm_size 256m;
    server {
        listen 127.0.0.1:$p;
        location = /sub { sse_subscribe \$arg_channels; }
        location = /pub { sse_publish \$arg_channel; }
        location = /replay { sse_subscribe \$arg_channels; sse_replay 100; }
        location = /pubr { sse_publish \$arg_channel; sse_history 100; }
    }"
    else
        load="load_module /usr/lib/nginx/modules/ngx_nchan_module.so;"
        locations="server {
        listen 127.0.0.1:$p;
        location = /sub { nchan_subscriber eventsource; nchan_channel_id \$arg_channels; }
        location = /pub { nchan_publisher; nchan_channel_id \$arg_channel; }
        location = /replay {
            nchan_subscriber eventsource; nchan_channel_id \$arg_channels;
            nchan_subscriber_first_message oldest;
        }
        location = /pubr { nchan_publisher; nchan_channel_id \$arg_channel; nchan_message_buffer_length 100; }
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

workers() { ps --ppid "${master[$1]}" -o pid= | tr -d ' ' | paste -sd, -; }

start_server() {  # server; returns non-zero (with a message) if it cannot start
    local s=$1 dir p
    dir="$out/$s"
    rm -rf "$dir"
    mkdir -p "$dir/logs" "$dir/tmp"
    p=$(free_port) || { echo "no free port" >&2; return 1; }
    write_conf "$s" "$dir" "$p"
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
    echo "[$s] nginx master ${master[$s]}, workers $(workers "$s"), port $p, prefix $dir" >&2
}

stop_server() {
    local s=$1 m=${master[$1]:-}
    [ -n "$m" ] || return 0
    kill -QUIT "$m" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$m" 2>/dev/null; then kill -TERM "$m" 2>/dev/null || true; sleep 1; fi
    unset "master[$s]"
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

cpu_ticks() {  # utime + stime of the workers, clock ticks
    local sum=0 pid
    for pid in $(workers "$1" | tr , ' '); do
        sum=$((sum + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
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
    local extra=()
    case $sc in
        s1) subs=$S1_SUBS channels=1 events=$S1_EVENTS rate=$S1_RATE conns=1 ;;
        s2) subs=$S2_SUBS channels=$S2_CHANNELS events=$S2_EVENTS rate=$S2_RATE conns=2 ;;
        s3) subs=$S3_SUBS channels=1 events=$S3_EVENTS rate=0 conns=1 ;;
        s4) subs=$S4_SUBS channels=$S4_CHANNELS events=$S4_EVENTS rate=0 conns=2 ;;
        s5) subs=$S5_SUBS channels=1 events=$S5_EVENTS rate=0 conns=1
            extra=(--replay --sub-path '/replay?channels={ch}' --pub-path '/pubr?channel={ch}') ;;
    esac
    pids0=$(workers "$s")
    cpu0=$(cpu_ticks "$s")
    # The run itself is bounded by its --timeout (connecting, then deliveries after the last
    # publish); `timeout` is only a backstop (SIGTERM makes loadgen report what it has).
    backstop=$(awk -v t="$RUN_TIMEOUT" -v e="$events" -v r="$rate" 'BEGIN { printf "%d", 3 * t + (r > 0 ? e / r : 0) + 30 }')
    # In the background with `wait`, so that a SIGTERM to this script is handled at once.
    timeout "$backstop" "$loadgen" \
        --port "${port[$s]}" --subscribers "$subs" --channels "$channels" --events "$events" --rate "$rate" \
        --pub-conns "$conns" --timeout "$RUN_TIMEOUT" --cpu-pids "$pids0" --label "$s/$sc/$rep" "${extra[@]}" \
        >"$out/$s/run.out" 2>>"$out/$s/loadgen.err" &
    loadgen_pid=$!
    wait "$loadgen_pid" || true
    loadgen_pid=
    line=$(grep '^{' "$out/$s/run.out" | tail -1) || true
    cpu1=$(cpu_ticks "$s")
    pids1=$(workers "$s")
    if [ -z "$line" ]; then
        echo "[$s] $sc rep $rep: no result from loadgen (see $out/$s/loadgen.err)" >&2
        check_log "$s"
        return 1
    fi
    # Whole-run CPU, connecting and closing 10,000 streams included; loadgen's own server_cpu_s
    # covers only the window from the first publish to the last delivery.
    line=$(jq -c --argjson c "$((cpu1 - cpu0))" --argjson hz "$(getconf CLK_TCK)" --arg p0 "$pids0" --arg p1 "$pids1" \
        '. + {server_cpu_s_whole_run: ($c / $hz),
              server_cpu_us_per_delivery_whole_run: (if .delivered > 0 then ($c / $hz * 1e6 / .delivered * 1000 | round) / 1000 else null end),
              workers_restarted: ($p0 != $p1)}' <<<"$line")
    record "$s" "$sc" "$rep" "$line"
    jq -r --arg s "$s" '"[\($s)] \(.label): delivered \(.delivered)/\(.expected), lost \(.lost), " +
        "\(.delivered_per_s)/s, latency p50 \(.latency_ms_p50) ms p99 \(.latency_ms_p99) ms, " +
        "publish p50 \(.publish_ms_p50) ms p99 \(.publish_ms_p99) ms" +
        (if .error then ", error: \(.error)" else "" end) + (if .timed_out then " (timed out)" else "" end)' <<<"$line" >&2
    [ "$pids0" = "$pids1" ] || echo "[$s] WARNING: worker processes changed during the run ($pids0 -> $pids1)" >&2
    check_log "$s"
    sleep 1
}

# --- run ---------------------------------------------------------------------------------------
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    echo "note: load average is $load; other work on this machine skews the figures" >&2
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
    fi
    if start_server "$s"; then
        active+=("$s")
    else
        echo "[$s] SKIPPED: nginx with this module does not start" >&2
        stop_server "$s"
    fi
done
[ ${#active[@]} -gt 0 ] || { echo "no server to benchmark" >&2; exit 1; }

failures=0
for sc in $scenarios; do
    case $sc in
        idle)
            for s in "${active[@]}"; do run_idle "$s" || failures=$((failures + 1)); done ;;
        s1 | s2 | s3 | s4 | s5)
            for rep in $(seq "$BENCH_REPS"); do
                order=("${active[@]}")
                # The servers take turns going first, so that neither always runs on a warmer machine.
                if [ $((rep % 2)) = 0 ] && [ ${#active[@]} = 2 ]; then order=("${active[1]}" "${active[0]}"); fi
                for s in "${order[@]}"; do run_load "$s" "$sc" "$rep" || failures=$((failures + 1)); done
            done ;;
        *) echo "unknown scenario $sc" >&2; exit 2 ;;
    esac
done
for s in "${active[@]}"; do stop_server "$s"; done

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

row() {  # label scenario key how
    local o n
    o=$(metric ours "$2" "$3" "$4") n=$(metric nchan "$2" "$3" "$4")
    printf '| %s | %s | %s | %s |\n' "$1" "$(fmt "$o")" "$(fmt "$n")" "$(ratio "$o" "$n")"
}

table_head() {
    printf '\n%s\n\n' "$1"
    echo "| metric | ours | nchan | ours / nchan |"
    echo "|---|---:|---:|---:|"
}

{
    echo "Medians of $BENCH_REPS run(s); for lost, duplicated and out of order the worst run."
    for sc in $scenarios; do
        case $sc in
            s1 | s2 | s3 | s4)
                case $sc in
                    s1) table_head "s1: $S1_SUBS subscribers, 1 channel, $S1_EVENTS events at $S1_RATE/s" ;;
                    s2) table_head "s2: $S2_SUBS subscribers, $S2_CHANNELS channels, $S2_EVENTS events at $S2_RATE/s" ;;
                    s3) table_head "s3 (throughput): $S3_SUBS subscribers, 1 channel, $S3_EVENTS events, closed loop" ;;
                    s4) table_head "s4 (throughput): $S4_SUBS subscribers, $S4_CHANNELS channels, $S4_EVENTS events, closed loop, 2 publishers" ;;
                esac
                row "delivered events/s" "$sc" delivered_per_s median
                row "latency p50 (ms)" "$sc" latency_ms_p50 median
                row "latency p99 (ms)" "$sc" latency_ms_p99 median
                row "publish response p50 (ms)" "$sc" publish_ms_p50 median
                row "publish response p99 (ms)" "$sc" publish_ms_p99 median
                row "publishes/s achieved" "$sc" publish_rate median
                row "worker CPU µs per delivery (publish window)" "$sc" server_cpu_us_per_delivery median
                row "worker CPU µs per delivery (whole run)" "$sc" server_cpu_us_per_delivery_whole_run median
                row "lost" "$sc" lost max
                row "duplicated" "$sc" duplicated max
                row "out of order" "$sc" out_of_order max
                ;;
            s5)
                table_head "s5 (reconnect storm): $S5_EVENTS events published, then $S5_SUBS subscribers connect and each is sent all $S5_EVENTS from history"
                row "replayed events/s" "$sc" delivered_per_s median
                row "seconds until every subscriber had its replay" "$sc" window_s median
                row "worker CPU µs per replayed event" "$sc" server_cpu_us_per_delivery median
                row "lost" "$sc" lost max
                row "duplicated" "$sc" duplicated max
                row "out of order" "$sc" out_of_order max
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
[ "$failures" = 0 ] || { echo "$failures run(s) failed" >&2; exit 1; }
