#!/usr/bin/env bash
# scripts/bench-uws.sh: wsgw and the uWebSockets.js peer (loadtest/peers/uws) measured one after
# the other on this machine, against one redis-server this script starts, with the same
# wsgw-loadtest commands; prints a markdown table (figure | uWS | wsgw | ratio wsgw/uWS).
#
# For each server, in turn (uWS first, then wsgw):
#   1. `wsgw-loadtest idle` with BENCH_SOCKETS sockets: RSS per idle socket. Then, unless
#      BENCH_IDLE_CPU_S is 0, the same sockets held that long: the server's CPU per minute of
#      holding them (`gateway.held_cpu_s` over `held_s`: heartbeats, the server's own sweeps and
#      presence writes, their connects and closes apart). Both servers ping every 30 s, so
#      the default 60 s window holds two rounds of pings and pongs.
#   2. `wsgw-loadtest broadcast` with BENCH_SOCKETS sockets, BENCH_MESSAGES broadcasts at each
#      of BENCH_RATES per second, published with `FCALL wsgw_publish` into the Redis both servers
#      read (`--redis-url`, the backend path): deliveries, p99 latency and the server's CPU
#      (--server-pid, from /proc). Through the servers' own POST /api/broadcast the publisher
#      waits for each answer, and a server busy fanning out answers late: uWS's achieved only
#      14.5-18.5 of 50/s that way (docs/loadtest.md), so the rows compared different rates.
#   3. `wsgw-loadtest run loadtest/scenarios/targeted-bench.toml` with BENCH_SOCKETS sockets, each
#      on its own `user:<sub>` channel, and a backend publishing to random ones with
#      `FCALL wsgw_publish` at BENCH_TARGETED_RATE per second for 20 s: the targeted row,
#      BENCH_TARGETED_RUNS times in a row. A targeted figure is the median of those runs (the
#      table lists each run too): at 2,000 small publishes a second the server's CPU is mostly
#      wake-ups, and one run's figure moved by 30% from run to run on this machine.
#   4. Once per round, after both: `loadtest/bench/compression.mjs` (its own redis-server, node
#      `ws` clients): BENCH_COMPRESSION_SOCKETS sockets, BENCH_COMPRESSION_EVENTS broadcasts of
#      a ~2 KB JSON event through POST /api/broadcast, each server with WSGW_COMPRESSION off and
#      on (the peer's `on` is uWS.SHARED_COMPRESSOR): the server's CPU for the broadcasts and
#      the bytes per frame on the wire (docs/loadtest.md §9).
#   5. Unless BENCH_TUNED is empty, wsgw again, as a third server `wsgw-tuned` started with the
#      settings BENCH_TUNED adds: the idle command (for the net figure) and the broadcasts at
#      BENCH_TUNED_RATES only. The table adds their rows against uWS's at the same rates. The
#      default, `WSGW_RUNTIME=per_core WSGW_WRITE_DELAY_MS=30`, is a node set for many
#      broadcasts a second (docs/loadtest.md §14); every other row is wsgw with its defaults.
# "CPU-s per 1M deliveries" is the server's CPU over the whole broadcast command (its sockets'
# connects and closes included, as the load tool measures it) per million deliveries; the "net"
# row first subtracts the CPU of the idle command (the same sockets connected, held and closed,
# no broadcasts), so it is closer to the fan-out cost alone. The targeted "only while every socket
# was open" row counts the server's CPU from the load tool's first once-a-second sample with every
# socket open to its last (`gateway.held_cpu_s`): no connect or close is in it, and the deliveries
# are (the scenario publishes from 1 s after its last connect to 1 s before its first close).
# "publish rate achieved" is the load tool's publisher's own rate while it published (it keeps one
# publish in flight per channel, so a slow answer on the one broadcast channel lowers it below the
# rate asked for).
#
# Environment (small defaults: one run takes about 10 minutes on 2 cores):
#   BENCH_SOCKETS   sockets per command (default 5000)
#   BENCH_RATES     broadcast rates per second, space-separated (default "10 20 50")
#   BENCH_MESSAGES  broadcasts per rate (default 100; with 20 the sockets' connect CPU
#                   outweighs the deliveries' and the CPU rows swing by 50% run to run)
#   BENCH_HOLD_S    idle hold in seconds (default 3)
#   BENCH_IDLE_CPU_S  hold in seconds of the idle-CPU command (default 60; 0 skips it)
#   BENCH_PAYLOAD   payload padding bytes per broadcast (default 100, the load tool's default)
#   BENCH_PUBLISH_VIA  `fcall` (default) or `http`: how the broadcasts are published (above)
#   BENCH_WORKERS   the broadcast command's --workers (default 1: the sockets in a worker
#                   process of their own, apart from the publisher, which in the same process
#                   fell behind at 50/s: 33.8/s with uWS, 48.4/s with wsgw; 0 for that)
#   BENCH_TARGETED_RATE  targeted publishes per second (default 2000; 0 skips the targeted row)
#   BENCH_TARGETED_RUNS  targeted runs per server, whose median is the figure (default 3)
#   BENCH_COMPRESSION_EVENTS   broadcasts of the compression step (default 200; 0 skips it)
#   BENCH_COMPRESSION_SOCKETS  its sockets (default 500; node `ws` clients inflate on 2 cores)
#   BENCH_TUNED     settings (`WSGW_NAME=value`, space-separated) of the `wsgw-tuned` server of
#                   step 5 (default "WSGW_RUNTIME=per_core WSGW_WRITE_DELAY_MS=30"; "" skips it)
#   BENCH_TUNED_RATES  its broadcast rates, each one of BENCH_RATES (default: the last of them)
#   BENCH_ROUNDS    how many times every server runs it all (default 1). With more, the
#                   servers alternate order round by round, each round's files are in
#                   BENCH_OUT/rN, a figure is the median over the rounds, and a second table
#                   lists each round's ratios (the same servers' ratio moved by 30% between
#                   runs an hour apart on this machine; docs/loadtest.md)
#   BENCH_OUT       directory for logs and JSON summaries (default: a new mktemp -d)
#   BENCH_SERVERS   which servers to run, in order (default "uws wsgw"; "wsgw" alone for
#                   comparing two wsgw builds, alternating: its column is the same, uWS's n/a)
#   WSGW_BIN, LOADTEST_BIN  binaries (default target/release/{wsgw,wsgw-loadtest}; built with
#                   `cargo build --release -p wsgw -p wsgw-loadtest` when missing)
#   NODE            node executable (default: node on PATH)
#   BENCH_CLIENT_SCHED  `normal` (default) or `batch`: the scheduling policy of the load tool's
#                   processes (`batch`: `chrt --batch 0`). Sharing the 2 cores with the server, a
#                   client at the normal policy is woken on the server's core by the frames the
#                   server sends it (a socket's wake-up is a "sync" one) and often preempts the
#                   server there; at `batch` its wake-ups preempt nothing (the kernel's rule for
#                   SCHED_BATCH). A client on another machine never preempts the server; a
#                   local nginx in front of it does. It moved wsgw's targeted CPU by 9% and
#                   uWS's not at all (docs/loadtest.md, section 17), so the default stays the
#                   setting every earlier run used. The compression step's node clients always
#                   run at the normal policy (the servers are that script's children).
#   BENCH_UWS_PIN   `off` (default) or `on`: pin uWS's event-loop thread (Node's main thread) to
#                   the first CPU this script may use (`taskset -p`) once it is ready. wsgw pins
#                   its runtime threads itself (WSGW_CPU_AFFINITY=auto, its default); uWS as
#                   shipped does not pin, and the default compares the two as shipped. `on`
#                   gives uWS the same advantage by hand (docs/loadtest.md, section 18).
#
# Everything binds 127.0.0.1. Every process this script starts is stopped by its PID on exit.
# Exit status: 0 when every command ran (a figure may still show missing deliveries), 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEER=$ROOT/loadtest/peers/uws
SOCKETS=${BENCH_SOCKETS:-5000}
RATES=${BENCH_RATES:-10 20 50}
MESSAGES=${BENCH_MESSAGES:-100}
HOLD_S=${BENCH_HOLD_S:-3}
IDLE_CPU_S=${BENCH_IDLE_CPU_S:-60}
PAYLOAD=${BENCH_PAYLOAD:-100}
TARGETED_RATE=${BENCH_TARGETED_RATE:-2000}
TARGETED_RUNS=${BENCH_TARGETED_RUNS:-3}
CMP_EVENTS=${BENCH_COMPRESSION_EVENTS:-200}
CMP_SOCKETS=${BENCH_COMPRESSION_SOCKETS:-500}
ROUNDS=${BENCH_ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench-uws: BENCH_ROUNDS: '$ROUNDS' (a count, 1 or more)" >&2; exit 2; }
[[ $TARGETED_RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-uws: BENCH_TARGETED_RUNS: '$TARGETED_RUNS' (a count, 1 or more)" >&2; exit 2; }
NODE=${NODE:-node}
CLIENT_SCHED=${BENCH_CLIENT_SCHED:-normal}
case $CLIENT_SCHED in
batch) CLIENT=(chrt --batch 0) ;;
normal) CLIENT=() ;;
*) echo "bench-uws: BENCH_CLIENT_SCHED: '$CLIENT_SCHED' (normal, batch)" >&2; exit 2 ;;
esac
UWS_PIN=${BENCH_UWS_PIN:-off}
[[ $UWS_PIN == on || $UWS_PIN == off ]] || { echo "bench-uws: BENCH_UWS_PIN: '$UWS_PIN' (on, off)" >&2; exit 2; }
SERVERS=${BENCH_SERVERS:-uws wsgw}
PUBLISH_VIA=${BENCH_PUBLISH_VIA:-fcall}
[[ $PUBLISH_VIA == fcall || $PUBLISH_VIA == http ]] || { echo "bench-uws: BENCH_PUBLISH_VIA: '$PUBLISH_VIA' (fcall, http)" >&2; exit 2; }
for s in $SERVERS; do
    [[ $s == uws || $s == wsgw ]] || { echo "bench-uws: BENCH_SERVERS: unknown server '$s' (uws, wsgw)" >&2; exit 2; }
done
TUNED=${BENCH_TUNED-WSGW_RUNTIME=per_core WSGW_WRITE_DELAY_MS=30}
TUNED_RATES=${BENCH_TUNED_RATES:-${RATES##* }}
for t in $TUNED; do
    [[ $t =~ ^WSGW_[A-Z0-9_]+=[^[:space:]]*$ ]] || { echo "bench-uws: BENCH_TUNED: '$t' is not WSGW_NAME=value" >&2; exit 2; }
done
for r in $TUNED_RATES; do
    [[ " $RATES " == *" $r "* ]] || { echo "bench-uws: BENCH_TUNED_RATES: $r is not one of BENCH_RATES ($RATES)" >&2; exit 2; }
done
# The tuned wsgw runs right after the default one.
[[ -z $TUNED || " $SERVERS " != *" wsgw "* ]] || SERVERS=$(sed 's/\bwsgw\b/wsgw wsgw-tuned/' <<<"$SERVERS")
SECRET=bench-uws-secret-at-least-32-bytes-long
API_KEY=bench-uws-api-key

log() { printf 'bench-uws: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for v in SOCKETS MESSAGES HOLD_S PAYLOAD; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v=${!v} is not a positive whole number"
done
[[ $IDLE_CPU_S =~ ^[0-9]+$ ]] || die "BENCH_IDLE_CPU_S=$IDLE_CPU_S is not a whole number"
[[ $TARGETED_RATE =~ ^[0-9]+$ ]] || die "BENCH_TARGETED_RATE=$TARGETED_RATE is not a whole number"
[[ $CMP_EVENTS =~ ^[0-9]+$ ]] || die "BENCH_COMPRESSION_EVENTS=$CMP_EVENTS is not a whole number"
[[ $CMP_SOCKETS =~ ^[1-9][0-9]*$ ]] || die "BENCH_COMPRESSION_SOCKETS=$CMP_SOCKETS is not a positive whole number"
for r in $RATES; do
    [[ $r =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_RATES: $r is not a rate"
done

ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= SOCKETS * 2 + 200)) ||
    log "warning: open-files limit $(ulimit -n) is low for $SOCKETS sockets (server and client on one machine)"

OUT=${BENCH_OUT:-$(mktemp -d /tmp/bench-uws.XXXXXX)}
mkdir -p "$OUT"

# ---- processes: started in the background, recorded, stopped by PID on exit ----
PIDS=()
cleanup() {
    local p i
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: TERM, wait up to 10 s, KILL; forget it.
stop() {
    local p=$1 i
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    local keep=() q
    for q in "${PIDS[@]}"; do [[ $q == "$p" ]] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

# free_port: a TCP port no socket uses (and that this script has not handed out), below the
# kernel's ephemeral range (ip_local_port_range). Picked from 20000-49999 among listeners only,
# a server's port once was the local port of one of the load tool's own 5,000 connections, and
# the server could not bind.
TAKEN=" "
free_port() {
    local used port i low
    low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    ((low > 20500)) || low=32768
    used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % (low - 20000)))
        grep -qx "$port" <<<"$used" && continue
        [[ $TAKEN == *" $port "* ]] && continue
        TAKEN+="$port "
        echo "$port"
        return 0
    done
    die "no free port found"
}

# wait_ready PID URL LOG: until URL answers 2xx (60 s at most).
wait_ready() {
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || {
            tail -n 20 "$3" >&2
            die "pid $1 exited (log: $3)"
        }
        curl -fs --noproxy '*' --max-time 2 -o /dev/null "$2" 2>/dev/null && return 0
        sleep 0.2
    done
    tail -n 20 "$3" >&2
    die "$2 did not answer within 60 s"
}

# ---- binaries ----
WSGW_BIN=${WSGW_BIN:-$ROOT/target/release/wsgw}
LOADTEST_BIN=${LOADTEST_BIN:-$ROOT/target/release/wsgw-loadtest}
if [[ ! -x $WSGW_BIN || ! -x $LOADTEST_BIN ]]; then
    log "building release binaries (cargo build --release -p wsgw -p wsgw-loadtest)"
    (cd "$ROOT" && cargo build --release -p wsgw -p wsgw-loadtest) >&2
fi
[[ -x $WSGW_BIN ]] || die "$WSGW_BIN is not an executable"
[[ -x $LOADTEST_BIN ]] || die "$LOADTEST_BIN is not an executable"
command -v redis-server >/dev/null || die "redis-server not found"
[[ " $SERVERS " != *" uws "* ]] || command -v "$NODE" >/dev/null || die "node not found"
((CMP_EVENTS == 0)) || command -v "$NODE" >/dev/null || die "node not found (the compression step; BENCH_COMPRESSION_EVENTS=0 skips it)"
[[ $UWS_PIN == off ]] || command -v taskset >/dev/null || die "taskset not found (BENCH_UWS_PIN=on)"
((${#CLIENT[@]} == 0)) || chrt --batch 0 true || die "chrt --batch 0 failed (util-linux; BENCH_CLIENT_SCHED=normal runs without it)"
if ((CMP_EVENTS > 0)) && [[ ! -d $ROOT/clients/js/node_modules/ws ]]; then
    log "installing the JS client's npm packages for the compression step (npm ci in clients/js)"
    (cd "$ROOT/clients/js" && npm ci --no-audit --no-fund) >&2
fi
if [[ " $SERVERS " == *" uws "* ]] && [[ ! -d $PEER/node_modules/@trufflesuite/uws-js-unofficial || ! -d $PEER/node_modules/redis ]]; then
    log "installing the peer's npm packages (npm ci in $PEER)"
    (cd "$PEER" && npm ci --no-audit --no-fund) >&2
fi

# ---- redis ----
REDIS_PORT=$(free_port)
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
VIA=()
[[ $PUBLISH_VIA == http ]] || VIA=(--redis-url "$REDIS_URL")
VIA+=(--workers "${BENCH_WORKERS:-1}")
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for ((i = 0; i < 100; i++)); do
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited (log: $OUT/redis.log)"
    sleep 0.1
done
log "redis on $REDIS_URL (pid $REDIS_PID); logs and summaries in $OUT"

# json FILE EXPR: a value from a load tool JSON summary (jq expression), "" when null.
json() { [[ -s $1 ]] || return 0; jq -r "$2 // empty" "$1"; }

# run_server NAME: start it, run the commands, stop it; figures go to $RDIR/NAME.*.json.
run_server() {
    local name=$1 port pid url api
    port=$(free_port)
    url=ws://127.0.0.1:$port/ws
    api=http://127.0.0.1:$port
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" flushall >/dev/null
    case $name in
    uws)
        env WSGW_LISTEN="127.0.0.1:$port" WSGW_JWT_SECRET="$SECRET" WSGW_API_KEY="$API_KEY" \
            WSGW_REDIS_URL="$REDIS_URL" WSGW_NODE_ID=uws-1 \
            "$NODE" "$PEER/server.js" </dev/null >"$RDIR/uws.log" 2>&1 &
        ;;
    wsgw | wsgw-tuned)
        local settings=()
        [[ $name == wsgw ]] || read -r -a settings <<<"$TUNED"
        env WSGW_LISTEN="127.0.0.1:$port" WSGW_JWT_SECRET="$SECRET" WSGW_API_KEY="$API_KEY" \
            WSGW_REDIS_URL="$REDIS_URL" WSGW_NODE_ID=gw-1 WSGW_LOG=warn "${settings[@]}" \
            "$WSGW_BIN" </dev/null >"$RDIR/$name.log" 2>&1 &
        ;;
    esac
    # The tuned server runs the idle command (its net figure) and its own rates only.
    local rates=$RATES idle_cpu_s=$IDLE_CPU_S targeted_rate=$TARGETED_RATE
    [[ $name != wsgw-tuned ]] || { rates=$TUNED_RATES idle_cpu_s=0 targeted_rate=0; }
    pid=$!
    PIDS+=("$pid")
    wait_ready "$pid" "$api/ready" "$RDIR/$name.log"
    if [[ $name == uws && $UWS_PIN == on ]]; then
        local cpu
        cpu=$(taskset -p -c $$ | sed 's/.*: *//' | grep -o '^[0-9]*')
        taskset -p -c "$cpu" "$pid" >/dev/null || die "cannot pin uWS (pid $pid) to CPU $cpu"
        log "uws: event-loop thread pinned to CPU $cpu (BENCH_UWS_PIN=on)"
    fi
    log "$name on 127.0.0.1:$port (pid $pid): idle, $SOCKETS sockets"
    # `|| true`: a crossed threshold (exit 99) still leaves a summary to report.
    timeout 300 "${CLIENT[@]}" "$LOADTEST_BIN" idle --url "$url" --secret "$SECRET" --connections "$SOCKETS" \
        --server-pid "$pid" --hold-s "$HOLD_S" --json "$RDIR/$name.idle.json" \
        >"$RDIR/$name.idle.txt" 2>"$RDIR/$name.idle.err" || log "$name idle exited with $?"
    sleep 1
    if ((idle_cpu_s > 0)); then
        log "$name: $SOCKETS idle sockets held ${IDLE_CPU_S} s (CPU while held)"
        timeout $((IDLE_CPU_S + 240)) "${CLIENT[@]}" "$LOADTEST_BIN" idle --url "$url" --secret "$SECRET" --connections "$SOCKETS" \
            --server-pid "$pid" --hold-s "$IDLE_CPU_S" --json "$RDIR/$name.held.json" \
            >"$RDIR/$name.held.txt" 2>"$RDIR/$name.held.err" || log "$name idle (held) exited with $?"
        sleep 1
    fi
    local r
    for r in $rates; do
        log "$name: broadcast, $SOCKETS sockets, $MESSAGES messages at $r/s"
        timeout 300 "${CLIENT[@]}" "$LOADTEST_BIN" broadcast --url "$url" --api "$api" --api-key "$API_KEY" \
            --secret "$SECRET" --connections "$SOCKETS" --messages "$MESSAGES" --rate "$r" \
            --payload-bytes "$PAYLOAD" --server-pid "$pid" --timeout-s 10 "${VIA[@]}" \
            --json "$RDIR/$name.bc$r.json" \
            >"$RDIR/$name.bc$r.txt" 2>"$RDIR/$name.bc$r.err" || log "$name broadcast $r/s exited with $?"
        sleep 1
    done
    local k
    for ((k = 1; targeted_rate > 0 && k <= TARGETED_RUNS; k++)); do
        log "$name: targeted ($k of $TARGETED_RUNS), $SOCKETS sockets, FCALL to user channels at $TARGETED_RATE/s"
        timeout 300 "${CLIENT[@]}" "$LOADTEST_BIN" run "$ROOT/loadtest/scenarios/targeted-bench.toml" --url "$url" \
            --secret "$SECRET" --redis-url "$REDIS_URL" --server-pid "$pid" --vus "$SOCKETS" \
            --rate "$TARGETED_RATE" --json "$RDIR/$name.tg$k.json" \
            >"$RDIR/$name.tg$k.txt" 2>"$RDIR/$name.tg$k.err" || log "$name targeted $k exited with $?"
        sleep 1
    done
    kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) died during the run (log: $RDIR/$name.log)"
    if [[ $name == wsgw ]]; then
        # How much of the run went out in bursts (hub/burst.rs): the node was behind then.
        curl -fsS "$api/metrics" 2>/dev/null | sed -n 's/^wsgw_burst_frames_total \([0-9.e+]*\)$/\1/p' \
            >"$RDIR/wsgw.bursts" || true
    fi
    stop "$pid"
}

# One round runs every server once; with BENCH_ROUNDS > 1 each round has a directory of its
# own and every other round runs the servers in the opposite order, so a machine that drifts
# during the run weighs on both.
RDIR=$OUT
for ((round = 1; round <= ROUNDS; round++)); do
    order=$SERVERS
    if ((ROUNDS > 1)); then
        RDIR=$OUT/r$round
        mkdir -p "$RDIR"
        ((round % 2)) || order=$(tr ' ' '\n' <<<"$SERVERS" | grep . | tac | paste -sd ' ')
        log "round $round of $ROUNDS: $order"
    fi
    for s in $order; do
        run_server "$s"
    done
    if ((CMP_EVENTS > 0)); then
        cmp_order=$(tr ' ' '\n' <<<"$order" | grep -vx 'wsgw-tuned' | paste -sd ' ')
        log "compression: $CMP_SOCKETS sockets, $CMP_EVENTS broadcasts of ~2 KB, off and on: $cmp_order"
        COMPRESSION_SERVERS="$cmp_order" COMPRESSION_JSON="$RDIR/compression.json" timeout 900 \
            "$NODE" "$ROOT/loadtest/bench/compression.mjs" "$WSGW_BIN" "$CMP_SOCKETS" "$CMP_EVENTS" \
            >"$RDIR/compression.txt" 2>&1 || log "compression step exited with $? (log: $RDIR/compression.txt)"
    fi
done

# ---- the table ----
# median: the median of the numbers on stdin ("n/a" lines skipped), or "n/a".
median() {
    { grep -v '^n/a$' || true; } | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# fig1 NAME FIELD: one figure for a server in the round whose files are in $RDIR, or "n/a". FIELD cpu:tg, net:tg and p99:tg are medians
# over the targeted runs (cpu:tgK ... for run K); del:tg and ach:tg list every run.
fig1() {
    local name=$1 what=$2 f v="" k
    case $what in
    cpu:tg | net:tg | held:tg | p99:tg)
        for ((k = 1; k <= TARGETED_RUNS; k++)); do fig1 "$name" "$what$k"; done | median
        return
        ;;
    del:tg | ach:tg | each:tg)
        for ((k = 1; k <= TARGETED_RUNS; k++)); do
            case $what in
            each:*) echo "$(fig1 "$name" "net:tg$k") ($(fig1 "$name" "p99:tg$k") ms)" ;;
            *) fig1 "$name" "${what%%:*}:tg$k" ;;
            esac
        done | paste -sd ';' | sed 's/;/; /g'
        return
        ;;
    rss) v=$(json "$RDIR/$name.idle.json" .gateway.rss_per_socket_kib) ;;
    cmp_cpu:* | cmp_bytes:*)
        local field=gateway_cpu_ms
        [[ $what == cmp_bytes:* ]] && field=bytes_per_frame
        v=$(json "$RDIR/compression.json" ".[] | select(.server == \"$name\" and .compression == \"${what#*:}\") | .$field")
        ;;
    connect) [[ ! -s $RDIR/$name.idle.txt ]] || v=$(sed -n 's/^ *connect_time .* p(99)=\([0-9.]*\)ms.*/\1/p' "$RDIR/$name.idle.txt") ;;
    idle_cpu) v=$(json "$RDIR/$name.idle.json" .gateway.cpu_s | awk '{ printf "%.2f", $1 }') ;;
    held_cpu)
        local held_s held_cpu
        held_s=$(json "$RDIR/$name.held.json" .gateway.held_s)
        held_cpu=$(json "$RDIR/$name.held.json" .gateway.held_cpu_s)
        [[ -z $held_s || -z $held_cpu ]] || v=$(awk -v c="$held_cpu" -v s="$held_s" 'BEGIN { if (s > 0) printf "%.3f", c * 60 / s }')
        ;;
    cpu:* | net:* | held:* | p99:* | del:* | ach:*)
        f=$RDIR/$name.bc${what#*:}.json
        [[ ${what#*:} == tg* ]] && f=$RDIR/$name.${what#*:}.json
        [[ -s $f ]] || {
            echo n/a
            return
        }
        local cpu delivered idle
        cpu=$(json "$f" .gateway.cpu_s)
        delivered=$(json "$f" .figures.delivered)
        case ${what%%:*} in
        cpu) v=$(awk -v c="$cpu" -v d="$delivered" 'BEGIN { if (d > 0) printf "%.2f", c * 1e6 / d }') ;;
        held)
            local held
            held=$(json "$f" .gateway.held_cpu_s)
            v=$(awk -v c="$held" -v d="$delivered" 'BEGIN { if (d > 0 && c != "") printf "%.2f", c * 1e6 / d }')
            ;;
        net)
            idle=$(json "$RDIR/$name.idle.json" .gateway.cpu_s)
            v=$(awk -v c="$cpu" -v i="$idle" -v d="$delivered" 'BEGIN { if (d > 0 && i != "") printf "%.2f", (c - i) * 1e6 / d }')
            ;;
        p99)
            if [[ ${what#*:} == tg* ]]; then
                v=$(sed -n 's/^ *delivery_latency .* p(99)=\([0-9.]*\)ms.*/\1/p' "$RDIR/$name.${what#*:}.txt")
            else
                v=$(sed -n 's/^delivery latency ms:.* p99 \([0-9.]*\).*/\1/p' "$RDIR/$name.bc${what#*:}.txt")
            fi
            ;;
        ach) v=$(json "$f" .figures.publisher_rate_per_s | awk '{ printf "%.1f", $1 }') ;;
        del)
            local missing
            missing=$(json "$f" .figures.missing)
            v="$delivered of $((delivered + missing))"
            ;;
        esac
        ;;
    esac
    [[ -n $v ]] && echo "$v" || echo n/a
}

# fig NAME FIELD: the figure over every round: the median of the rounds' figures, or, for the
# fields that list (deliveries, achieved rates, each targeted run), each round's, joined by " / ".
fig() {
    local name=$1 what=$2 k
    if ((ROUNDS == 1)); then
        RDIR=$OUT fig1 "$name" "$what"
        return
    fi
    case $what in
    del:* | ach:* | each:*)
        for ((k = 1; k <= ROUNDS; k++)); do RDIR=$OUT/r$k fig1 "$name" "$what"; done | paste -sd '/' | sed 's|/| / |g'
        ;;
    *) for ((k = 1; k <= ROUNDS; k++)); do RDIR=$OUT/r$k fig1 "$name" "$what"; done | median ;;
    esac
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b != "n/a" && a != "n/a") printf "%.2f", b / a; else print "n/a" }'
}

row() {
    local label=$1 u=$2 w=$3 fmt=${4:-}
    printf '| %s | %s | %s | %s |\n' "$label" "$u$fmt" "$w$fmt" "$(ratio "$u" "$w")"
}

rss_u=$(fig uws rss)
rss_w=$(fig wsgw rss)
{
    echo
    echo "The load tool ran at the \`$CLIENT_SCHED\` scheduling policy (BENCH_CLIENT_SCHED); uWS's event-loop thread pinned: $UWS_PIN (BENCH_UWS_PIN); wsgw with its default WSGW_CPU_AFFINITY=auto."
    echo
    echo "| figure | uWS | wsgw | ratio (wsgw/uWS) |"
    echo "| --- | --- | --- | --- |"
    printf '| RSS per idle socket, %s sockets | %s KiB | %s KiB | %s |\n' "$SOCKETS" \
        "$(awk -v v="$rss_u" 'BEGIN { printf (v == "n/a" ? "n/a" : "%.2f"), v }')" \
        "$(awk -v v="$rss_w" 'BEGIN { printf (v == "n/a" ? "n/a" : "%.2f"), v }')" \
        "$(ratio "$rss_u" "$rss_w")"
    row "connect p99 (TCP + upgrade + welcome) in the idle command (ms)" "$(fig uws connect)" "$(fig wsgw connect)"
    ((IDLE_CPU_S == 0)) || row "CPU-s per minute holding $SOCKETS idle sockets (pings every 30 s)" "$(fig uws held_cpu)" "$(fig wsgw held_cpu)"
    for r in $RATES; do
        row "CPU-s per 1M broadcast deliveries, $r/s (whole command)" "$(fig uws "cpu:$r")" "$(fig wsgw "cpu:$r")"
        row "same, net of the idle command's CPU, $r/s" "$(fig uws "net:$r")" "$(fig wsgw "net:$r")"
        row "delivery p99, $r/s (ms)" "$(fig uws "p99:$r")" "$(fig wsgw "p99:$r")"
        printf '| deliveries, %s/s | %s | %s | |\n' "$r" "$(fig uws "del:$r")" "$(fig wsgw "del:$r")"
        printf '| publish rate achieved, %s/s | %s | %s | |\n' "$r" "$(fig uws "ach:$r")" "$(fig wsgw "ach:$r")"
    done
    if [[ " $SERVERS " == *" wsgw-tuned "* ]]; then
        for r in $TUNED_RATES; do
            row "net CPU per 1M broadcast deliveries, $r/s, wsgw with $TUNED" "$(fig uws "net:$r")" "$(fig wsgw-tuned "net:$r")"
            row "delivery p99, $r/s (ms), wsgw with $TUNED" "$(fig uws "p99:$r")" "$(fig wsgw-tuned "p99:$r")"
            printf '| deliveries, %s/s, wsgw with %s | %s | %s | |\n' "$r" "$TUNED" "$(fig uws "del:$r")" "$(fig wsgw-tuned "del:$r")"
        done
    fi
    if ((TARGETED_RATE > 0)); then
        row "CPU-s per 1M targeted deliveries, $TARGETED_RATE/s (whole command, median of $TARGETED_RUNS)" "$(fig uws cpu:tg)" "$(fig wsgw cpu:tg)"
        row "same, net of the idle command's CPU, $TARGETED_RATE/s (median)" "$(fig uws net:tg)" "$(fig wsgw net:tg)"
        row "same, only while every socket was open, $TARGETED_RATE/s (median)" "$(fig uws held:tg)" "$(fig wsgw held:tg)"
        row "targeted delivery p99, $TARGETED_RATE/s (ms, median)" "$(fig uws p99:tg)" "$(fig wsgw p99:tg)"
        printf '| targeted runs: net CPU (p99) each | %s | %s | |\n' "$(fig uws each:tg)" "$(fig wsgw each:tg)"
        printf '| targeted deliveries, %s/s | %s | %s | |\n' "$TARGETED_RATE" "$(fig uws del:tg)" "$(fig wsgw del:tg)"
        printf '| targeted publish rate achieved, %s/s | %s | %s | |\n' "$TARGETED_RATE" "$(fig uws ach:tg)" "$(fig wsgw ach:tg)"
    fi
    if ((CMP_EVENTS > 0)); then
        for c in off on; do
            row "CPU-ms for $CMP_SOCKETS sockets × $CMP_EVENTS broadcasts of ~2 KB, compression $c" "$(fig uws "cmp_cpu:$c")" "$(fig wsgw "cmp_cpu:$c")"
            row "bytes per frame on the wire, compression $c" "$(fig uws "cmp_bytes:$c")" "$(fig wsgw "cmp_bytes:$c")"
        done
    fi
    echo
    echo "$SOCKETS sockets, $MESSAGES broadcasts per rate (published with $PUBLISH_VIA), ${PAYLOAD}-byte padding; idle CPU (connect, hold ${HOLD_S} s, close): uWS $(fig uws idle_cpu) s, wsgw $(fig wsgw idle_cpu) s."
    echo "wsgw: $WSGW_BIN (built $(date -u -r "$WSGW_BIN" '+%F %H:%M UTC')); repository HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); frames fanned out in bursts over the run: $(grep . "$RDIR/wsgw.bursts" 2>/dev/null || echo n/a)."
    [[ " $SERVERS " != *" uws "* ]] || echo "uWS: $(sed -n 's/.*(native \(.*\)).*/\1/p' "$RDIR/uws.log" | head -n 1) from @trufflesuite/uws-js-unofficial $(jq -r .version "$PEER/node_modules/@trufflesuite/uws-js-unofficial/package.json") on Node $("$NODE" --version)."
    echo "Raw output: $OUT"
    if ((ROUNDS > 1)); then
        echo
        echo "Figures above are medians over $ROUNDS rounds (round 1 ran: $SERVERS; every other round the reverse). Ratio wsgw/uWS in each round:"
        echo
        printf '| figure |'
        for ((k = 1; k <= ROUNDS; k++)); do printf ' round %s |' "$k"; done
        printf '\n| --- |'
        for ((k = 1; k <= ROUNDS; k++)); do printf ' --- |'; done
        echo
        tuned_figs=""
        [[ " $SERVERS " != *" wsgw-tuned "* ]] || tuned_figs=$(for r in $TUNED_RATES; do echo "tuned-net:$r tuned-p99:$r"; done)
        for f in rss held_cpu $(for r in $RATES; do echo "net:$r"; done) $tuned_figs net:tg held:tg p99:tg cmp_cpu:off cmp_cpu:on; do
            w=wsgw
            case $f in
            tuned-*) w=wsgw-tuned f=${f#tuned-} label="${f%%:*} ${f#*:}/s, wsgw with $TUNED" ;;
            rss) label="RSS per idle socket" ;;
            held_cpu) ((IDLE_CPU_S > 0)) || continue; label="CPU-s per minute holding idle sockets" ;;
            net:tg) ((TARGETED_RATE > 0)) || continue; label="net CPU per 1M targeted deliveries (median of the round's runs)" ;;
            held:tg) ((TARGETED_RATE > 0)) || continue; label="CPU per 1M targeted deliveries while every socket was open (median)" ;;
            p99:tg) ((TARGETED_RATE > 0)) || continue; label="targeted p99 (median of the round's runs)" ;;
            cmp_cpu:*) ((CMP_EVENTS > 0)) || continue; label="CPU for the compression step's broadcasts, compression ${f#cmp_cpu:}" ;;
            *) label="net CPU per 1M broadcast deliveries, ${f#net:}/s" ;;
            esac
            printf '| %s |' "$label"
            for ((k = 1; k <= ROUNDS; k++)); do
                printf ' %s |' "$(ratio "$(RDIR=$OUT/r$k fig1 uws "$f")" "$(RDIR=$OUT/r$k fig1 "$w" "$f")")"
            done
            echo
        done
    fi
}
