#!/usr/bin/env bash
# scripts/cluster.sh: a local wsgw cluster in one command, no docker.
#
#   scripts/cluster.sh start [N]   Redis + N gateway nodes (default 2) + nginx with TLS
#   scripts/cluster.sh start N --redis-cluster P
#                                  N gateway nodes (0: none, and no nginx) on a Redis Cluster of
#                                  P primaries (3 to 16), one replica each, the wsgw Function on
#                                  every primary (see scripts/lib/redis-cluster.sh). Prints the
#                                  usual URLs (N > 0), then the primaries' redis:// seed URLs;
#                                  cluster.json records them under "redis_cluster".
#   scripts/cluster.sh stop        stop exactly what `start` started (by recorded PIDs)
#   scripts/cluster.sh status      each recorded process with its pid and alive/dead
#
# `start` prints one URL per line on stdout and nothing else (progress goes to stderr):
#   wss://127.0.0.1:<nginx port>/ws
#   http://127.0.0.1:<node 1 port>
#   ...
# so a script can do `mapfile -t urls < <(scripts/cluster.sh start 3)`.
#
# Everything lives under .wsgw-run/ in the repository (override with WSGW_RUN_DIR):
#   env            generated JWT secret and API key (made once, reused; mode 600)
#   cluster.json   ports, pids, urls, secret and API key of the running cluster (for tests)
#   cluster.env    the same as KEY=value lines (shell-quoted)
#   pids/*.pid     "<pid> <executable>" per process; stop/status check both, so a reused
#                  PID is never signalled
#   logs/          redis.log, gw-<i>.log
#   redis/         Redis data (AOF on, so events survive a Redis restart)
#   nginx/         nginx prefix: conf/, certs/ (self-signed), logs/ (access.log, error.log), temp/
#
# Environment:
#   WSGW_BIN                gateway binary to run (default: cargo build --release -p wsgw)
#   WSGW_JWT_SECRET         used when set, else the generated one from .wsgw-run/env
#   WSGW_API_KEY            used when set, else the generated one from .wsgw-run/env
#   WSGW_TRUSTED_PROXIES    default 127.0.0.1 (the local nginx)
#   WSGW_DRAIN_MS           passed to the nodes; `stop` waits this long plus 10 s per node
#   WSGW_CLUSTER_SENTINEL=1 also a replica and three Sentinels (quorum 2, master name `wsgw`);
#                           the nodes find the primary through WSGW_REDIS_SENTINELS (the
#                           topology of docker-compose.sentinel.yml). cluster.json lists the
#                           Sentinel ports; try `redis-cli -p <port> SENTINEL FAILOVER wsgw`.
#   WSGW_NGINX_WORKERS      nginx worker processes (default 1). Each proxied socket holds two
#                           of a worker's connections (at most half the open-files limit, 16384):
#                           give more workers for more than ~8,000 sockets through nginx
#   other WSGW_* variables  passed to every node unchanged (WSGW_LOG, WSGW_DEV, ...)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${WSGW_RUN_DIR:-$ROOT/.wsgw-run}
PIDS=$RUN/pids
LOGS=$RUN/logs
NGINX_PREFIX=$RUN/nginx
TEMPLATE=$ROOT/deploy/nginx/nginx.conf.template
MAX_NODES=32
# shellcheck source=scripts/lib/redis-cluster.sh
source "$ROOT/scripts/lib/redis-cluster.sh"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() {
    printf 'usage: %s start [N] | start N --redis-cluster P | stop | status\n' "$0" >&2
    exit 2
}

# --- process records -------------------------------------------------------------------

# The executable of a live (non-zombie) process, without the " (deleted)" suffix Linux adds
# when the binary was replaced (e.g. rebuilt by cargo) after the process started.
proc_exe() {
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    printf '%s\n' "${exe% (deleted)}"
}

# alive PID EXE: the process exists and still runs the executable we started.
alive() {
    local exe
    exe=$(proc_exe "$1") || return 1
    [[ $exe == "$2" ]]
}

# record NAME PID EXE PORT
record() {
    printf '%s %s %s\n' "$2" "$3" "$4" >"$PIDS/$1.pid"
}

# read_record NAME -> sets REC_PID REC_EXE REC_PORT; fails if there is no record.
read_record() {
    local f=$PIDS/$1.pid
    [[ -f $f ]] || return 1
    read -r REC_PID REC_EXE REC_PORT <"$f" || true
    [[ ${REC_PID:-} =~ ^[0-9]+$ ]] || return 1
}

# Record names in start order: redis-c1..redis-cN (a Redis Cluster), redis, redis-replica,
# sentinel-1..3, gw-1..gw-N (numeric order), nginx.
record_names() {
    local f names=() nodes=()
    for ((f = 1; f <= 2 * MAX_NODES; f++)); do
        [[ -f $PIDS/redis-c$f.pid ]] && names+=("redis-c$f")
    done
    [[ -f $PIDS/redis.pid ]] && names+=(redis)
    [[ -f $PIDS/redis-replica.pid ]] && names+=(redis-replica)
    for f in 1 2 3; do [[ -f $PIDS/sentinel-$f.pid ]] && names+=("sentinel-$f"); done
    for f in "$PIDS"/gw-*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        nodes+=("${f%.pid}")
    done
    if ((${#nodes[@]})); then
        mapfile -t nodes < <(printf '%s\n' "${nodes[@]}" | sort -t- -k2,2n)
        names+=("${nodes[@]}")
    fi
    [[ -f $PIDS/nginx.pid ]] && names+=(nginx)
    if ((${#names[@]})); then printf '%s\n' "${names[@]}"; fi
}

# wait_gone PID EXE SECONDS: poll until the process is gone; fails on timeout.
wait_gone() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        alive "$1" "$2" || return 0
        sleep 0.1
    done
    ! alive "$1" "$2"
}

# --- stop / status ---------------------------------------------------------------------

do_stop() {
    local names name drain_s nginx_pid='' nginx_exe='' node_pids=() node_exes=() i child
    mapfile -t names < <(record_names)
    if ((${#names[@]} == 0)); then
        log "nothing recorded in $RUN/pids: nothing to stop"
        return 0
    fi

    # 1. nginx: graceful quit (stops accepting; open sockets close when the nodes drain).
    if read_record nginx && alive "$REC_PID" "$REC_EXE"; then
        nginx_pid=$REC_PID nginx_exe=$REC_EXE
        log "nginx (pid $nginx_pid): SIGQUIT"
        kill -QUIT "$nginx_pid" 2>/dev/null || true
    fi

    # 2. nodes: SIGTERM all at once (each drains, closing its sockets with 1012), then wait.
    for name in "${names[@]}"; do
        [[ $name == gw-* ]] || continue
        if read_record "$name" && alive "$REC_PID" "$REC_EXE"; then
            log "$name (pid $REC_PID): SIGTERM"
            kill -TERM "$REC_PID" 2>/dev/null || true
            node_pids+=("$REC_PID")
            node_exes+=("$REC_EXE")
        fi
    done
    drain_s=$(((${WSGW_DRAIN_MS:-5000} + 999) / 1000 + 10))
    for i in "${!node_pids[@]}"; do
        if ! wait_gone "${node_pids[$i]}" "${node_exes[$i]}" "$drain_s"; then
            log "pid ${node_pids[$i]} still running after ${drain_s}s: SIGKILL"
            kill -KILL "${node_pids[$i]}" 2>/dev/null || true
            wait_gone "${node_pids[$i]}" "${node_exes[$i]}" 5 || log "pid ${node_pids[$i]} will not die"
        fi
    done

    # 3. wait for nginx (worker_shutdown_timeout is 10 s).
    if [[ -n $nginx_pid ]] && ! wait_gone "$nginx_pid" "$nginx_exe" 15; then
        log "nginx (pid $nginx_pid) still running after 15s: SIGKILL to it and its workers"
        for child in $(pgrep -P "$nginx_pid" 2>/dev/null || true); do
            kill -KILL "$child" 2>/dev/null || true
        done
        kill -KILL "$nginx_pid" 2>/dev/null || true
        wait_gone "$nginx_pid" "$nginx_exe" 5 || log "nginx (pid $nginx_pid) will not die"
    fi

    # 4. Redis last (Sentinels first, so they do not fail over a primary being stopped), so
    #    the nodes could still delete their presence keys while draining.
    local redis_names=(sentinel-1 sentinel-2 sentinel-3 redis-replica redis)
    for name in "${names[@]}"; do [[ $name == redis-c* ]] && redis_names+=("$name"); done
    for name in "${redis_names[@]}"; do
        if read_record "$name" && alive "$REC_PID" "$REC_EXE"; then
            log "$name (pid $REC_PID): SIGTERM"
            kill -TERM "$REC_PID" 2>/dev/null || true
            if ! wait_gone "$REC_PID" "$REC_EXE" 15; then
                log "$name (pid $REC_PID) still running after 15s: SIGKILL"
                kill -KILL "$REC_PID" 2>/dev/null || true
                wait_gone "$REC_PID" "$REC_EXE" 5 || log "$name (pid $REC_PID) will not die"
            fi
        fi
    done

    local left=0
    for name in "${names[@]}"; do
        if read_record "$name" && alive "$REC_PID" "$REC_EXE"; then
            log "$name (pid $REC_PID) is still alive; keeping its record"
            left=1
        else
            rm -f "$PIDS/$name.pid"
        fi
    done
    ((left == 0)) || return 1
    rm -f "$RUN/cluster.json" "$RUN/cluster.env"
    log "stopped"
}

do_status() {
    local names name state rc=0
    mapfile -t names < <(record_names)
    if ((${#names[@]} == 0)); then
        echo "no cluster recorded in $RUN"
        return 3
    fi
    for name in "${names[@]}"; do
        if ! read_record "$name"; then
            printf '%-8s pid %-8s %s\n' "$name" '?' 'bad record'
            rc=1
            continue
        fi
        if alive "$REC_PID" "$REC_EXE"; then state=alive; else
            state=dead
            rc=1
        fi
        printf '%-8s pid %-8s port %-6s %s\n' "$name" "$REC_PID" "${REC_PORT:-?}" "$state"
    done
    return "$rc"
}

# Is any recorded process still running?
any_alive() {
    local names name
    mapfile -t names < <(record_names)
    for name in "${names[@]}"; do
        if read_record "$name" && alive "$REC_PID" "$REC_EXE"; then return 0; fi
    done
    return 1
}

# --- start helpers ---------------------------------------------------------------------

ensure_tools() {
    local missing=() pair
    for pair in nginx:nginx redis-server:redis-server redis-cli:redis-tools openssl:openssl \
        curl:curl ss:iproute2 setsid:util-linux pgrep:procps; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    ((${#missing[@]})) || return 0
    log "installing missing packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

gateway_binary() {
    if [[ -n ${WSGW_BIN:-} ]]; then
        [[ -x $WSGW_BIN ]] || die "WSGW_BIN=$WSGW_BIN is not an executable file"
        BIN=$(readlink -f "$WSGW_BIN")
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found; set WSGW_BIN to a wsgw binary"
    log "building the gateway (cargo build --release -p wsgw)"
    (cd "$ROOT" && cargo build --release -p wsgw) >&2
    BIN=$(readlink -f "$ROOT/target/release/wsgw")
}

# Value of KEY in the generated-secrets file.
env_file_get() {
    sed -n "s/^$1=//p" "$RUN/env" | tail -n1
}

load_secrets() {
    if [[ ! -s $RUN/env ]]; then
        log "generating a JWT secret and an API key into $RUN/env"
        (
            umask 077
            printf 'WSGW_JWT_SECRET=%s\nWSGW_API_KEY=%s\n' \
                "$(openssl rand -hex 32)" "$(openssl rand -hex 24)" >"$RUN/env"
        )
    fi
    JWT_SECRET=${WSGW_JWT_SECRET:-$(env_file_get WSGW_JWT_SECRET)}
    API_KEY=${WSGW_API_KEY:-$(env_file_get WSGW_API_KEY)}
    [[ -n $JWT_SECRET && -n $API_KEY ]] || die "$RUN/env lacks WSGW_JWT_SECRET or WSGW_API_KEY; delete it to regenerate"
}

# pick_ports COUNT [FROM SPAN PLUS] -> PORTS: free loopback TCP ports in FROM..FROM+SPAN-1
# (default 20000..31999, below the ephemeral range, so outgoing connections do not take them
# between now and the bind). With PLUS, port + PLUS must be free too (a Redis Cluster node's
# bus port). Ports in use by any socket, listening or not, are skipped, and so is every port
# picked before in this run, bus ports included (`RESERVED`): a node's bus port can fall in
# another pick's range, and nothing listens on a picked port until it is launched.
RESERVED=()
pick_ports() {
    local from=${2:-20000} span=${3:-12000} plus=${4:-} used port tries=0 bus
    used=$(ss -Htan | awk '{n = split($4, a, ":"); print a[n]}' | sort -u)
    PORTS=()
    while ((${#PORTS[@]} < $1)); do
        ((tries++ < 2000)) || die "could not find $1 free ports"
        port=$((from + RANDOM % span))
        bus=${plus:+$((port + plus))}
        grep -qx "$port" <<<"$used" && continue
        if [[ -n $bus ]] && grep -qx "$bus" <<<"$used"; then continue; fi
        reserved "$port" && continue
        if [[ -n $bus ]] && reserved "$bus"; then continue; fi
        PORTS+=("$port")
        RESERVED+=("$port" $bus)
    done
}

# reserved PORT: whether PORT was picked before in this run (or is a picked node's bus port).
reserved() {
    local p
    for p in "${RESERVED[@]}"; do [[ $p == "$1" ]] && return 0; done
    return 1
}

# launch NAME PORT EXE LOGFILE CMD...: start CMD in its own session, detached from our
# stdout/stderr (so `$(cluster.sh start)` returns), and record its PID.
launch() {
    local name=$1 port=$2 exe=$3 logfile=$4 pid
    shift 4
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    pid=$!
    record "$name" "$pid" "$exe" "$port"
    LAUNCHED_PID=$pid
    # The PID runs a shell, then setsid (and env) before it becomes EXE: wait for the exec
    # so that alive() means what it says. setsid does not fork here (a background job of a
    # non-interactive shell is never a process group leader), so the PID stays the same.
    local i
    for ((i = 0; i < 50; i++)); do
        alive "$pid" "$exe" && return 0
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# fail_with_log NAME LOGFILE MESSAGE
fail_with_log() {
    log "$3; last lines of $2:"
    tail -n 20 "$2" >&2 || true
    die "$1 did not start"
}

# wait_redis PORT [NAME]: until the redis-server (or Sentinel) just launched answers PING.
wait_redis() {
    local name=${2:-redis}
    redis_up "$1" || fail_with_log "$name" "$LOGS/$name.log" "redis-server exited"
}

# redis_up PORT: waits until the redis-server (or Sentinel) just launched ($LAUNCHED_PID)
# answers PING on PORT; fails when it exited first (e.g. another process took the port between
# pick_ports and its bind). A PONG from some other process on that port does not count: it
# would join a cluster or a test to a stranger's Redis.
redis_up() {
    local i
    for ((i = 0; i < 300; i++)); do
        alive "$LAUNCHED_PID" "$REDIS_EXE" || return 1
        if [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]] &&
            redis-cli -h 127.0.0.1 -p "$1" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$LAUNCHED_PID"; then
            return 0
        fi
        sleep 0.1
    done
    die "redis on port $1 did not answer PING within 30s"
}

# start_sentinels: a replica of the primary and three Sentinels (quorum 2) watching it as
# `wsgw`; sets REDIS_ENV to what the nodes need to find the primary through them.
start_sentinels() {
    local i port sentinels=''
    log "starting redis-replica on 127.0.0.1:$REPLICA_PORT"
    mkdir -p "$RUN/redis-replica"
    : >"$LOGS/redis-replica.log"
    launch redis-replica "$REPLICA_PORT" "$REDIS_EXE" "$LOGS/redis-replica.log" \
        redis-server --bind 127.0.0.1 --port "$REPLICA_PORT" --save "" --appendonly yes \
        --dir "$RUN/redis-replica" --daemonize no --replicaof 127.0.0.1 "$REDIS_PORT"
    wait_redis "$REPLICA_PORT" redis-replica
    for i in 1 2 3; do
        port=${SENTINEL_PORTS[$((i - 1))]}
        # Sentinel rewrites its config file: a fresh one per start.
        printf 'port %s\nbind 127.0.0.1\nsentinel monitor wsgw 127.0.0.1 %s 2\nsentinel down-after-milliseconds wsgw 2000\nsentinel failover-timeout wsgw 20000\n' \
            "$port" "$REDIS_PORT" >"$RUN/sentinel-$i.conf"
        log "starting sentinel-$i on 127.0.0.1:$port"
        : >"$LOGS/sentinel-$i.log"
        launch "sentinel-$i" "$port" "$REDIS_EXE" "$LOGS/sentinel-$i.log" \
            redis-server "$RUN/sentinel-$i.conf" --sentinel --daemonize no
        wait_redis "$port" "sentinel-$i"
        sentinels+="${sentinels:+,}127.0.0.1:$port"
    done
    REDIS_ENV=(WSGW_REDIS_SENTINELS="$sentinels" WSGW_REDIS_SENTINEL_MASTER=wsgw)
}

# wait_http NAME PID EXE URL LOGFILE: until URL answers 2xx (bounded: 60 s).
wait_http() {
    local i
    for ((i = 0; i < 300; i++)); do
        alive "$2" "$3" || fail_with_log "$1" "$5" "$1 (pid $2) exited"
        curl -fsk --noproxy '*' --max-time 2 -o /dev/null "$4" 2>/dev/null && return 0
        sleep 0.2
    done
    fail_with_log "$1" "$5" "$4 did not answer 2xx within 60s"
}

make_cert() {
    local dir=$NGINX_PREFIX/certs
    mkdir -p "$dir"
    if [[ -s $dir/cert.pem && -s $dir/key.pem ]] &&
        openssl x509 -checkend 3600 -noout -in "$dir/cert.pem" >/dev/null 2>&1; then
        return 0
    fi
    log "making a self-signed certificate in $dir"
    (
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" \
            -days 2 -subj "/CN=localhost" \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1
    ) || die "openssl could not make a certificate"
    chmod 644 "$dir/cert.pem"
}

render_nginx_conf() {
    local port=$1 servers='' p tpl nofile conns
    shift
    for p in "$@"; do
        servers+="        server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"$'\n'
    done
    servers=${servers%$'\n'}
    nofile=$(ulimit -Hn)
    [[ $nofile =~ ^[0-9]+$ ]] || nofile=1048576
    conns=$((nofile / 2 < 16384 ? nofile / 2 : 16384))
    tpl=$(<"$TEMPLATE")
    tpl=${tpl//@NOFILE@/$nofile}
    tpl=${tpl//@WORKER_CONNECTIONS@/$conns}
    local workers=${WSGW_NGINX_WORKERS:-1} reuseport=''
    [[ $workers =~ ^[1-9][0-9]*$ ]] || die "WSGW_NGINX_WORKERS=$workers is not a positive number"
    ((workers > 1)) && reuseport=' reuseport'
    tpl=${tpl//@WORKERS@/$workers}
    tpl=${tpl//@REUSEPORT@/$reuseport}
    tpl=${tpl//@PREFIX@/$NGINX_PREFIX}
    tpl=${tpl//@LISTEN_PORT@/$port}
    tpl=${tpl//@UPSTREAM_SERVERS@/$servers}
    if [[ $tpl =~ @[A-Z_]+@ ]]; then
        die "$TEMPLATE has a placeholder cluster.sh does not know: ${BASH_REMATCH[0]}"
    fi
    printf '%s\n' "$tpl" >"$NGINX_PREFIX/conf/nginx.conf"
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

write_state() {
    local i sep='' nodes_json='' envs='' redis_json=null rc=null
    if [[ -n ${REDIS_PID:-} ]]; then
        redis_json="{\"port\": $REDIS_PORT, \"pid\": $REDIS_PID, \"url\": \"redis://127.0.0.1:$REDIS_PORT\"}"
    else
        rc=$(rc_json)
    fi
    for i in "${!NODE_PORTS[@]}"; do
        nodes_json+="$sep{\"id\": \"gw-$((i + 1))\", \"port\": ${NODE_PORTS[$i]}, \"pid\": ${NODE_PIDS[$i]}, \"url\": \"http://127.0.0.1:${NODE_PORTS[$i]}\"}"
        sep=', '
        envs+=$(printf 'NODE_%d_PORT=%s\nNODE_%d_PID=%s\nNODE_%d_URL=%q\n' \
            $((i + 1)) "${NODE_PORTS[$i]}" $((i + 1)) "${NODE_PIDS[$i]}" $((i + 1)) "http://127.0.0.1:${NODE_PORTS[$i]}")
        envs+=$'\n'
    done
    (
        umask 077
        cat >"$RUN/cluster.json" <<EOF
{
  "url": "wss://127.0.0.1:$NGINX_PORT/ws",
  "nginx": {"port": $NGINX_PORT, "pid": $NGINX_PID, "url": "https://127.0.0.1:$NGINX_PORT", "ws_url": "wss://127.0.0.1:$NGINX_PORT/ws", "cert": $(json_str "$NGINX_PREFIX/certs/cert.pem"), "access_log": $(json_str "$NGINX_PREFIX/logs/access.log")},
  "redis": $redis_json,
  "redis_cluster": $rc,
  "sentinels": [$(IFS=,; printf '%s' "${SENTINEL_PORTS[*]}")],
  "nodes": [$nodes_json],
  "jwt_secret": $(json_str "$JWT_SECRET"),
  "api_key": $(json_str "$API_KEY")
}
EOF
        {
            printf 'WSGW_CLUSTER_URL=%q\n' "wss://127.0.0.1:$NGINX_PORT/ws"
            printf 'NGINX_PORT=%s\nNGINX_PID=%s\nNGINX_URL=%q\n' "$NGINX_PORT" "$NGINX_PID" "https://127.0.0.1:$NGINX_PORT"
            printf 'NGINX_CERT=%q\nNGINX_ACCESS_LOG=%q\n' "$NGINX_PREFIX/certs/cert.pem" "$NGINX_PREFIX/logs/access.log"
            if [[ -n ${REDIS_PID:-} ]]; then
                printf 'REDIS_PORT=%s\nREDIS_PID=%s\nREDIS_URL=%q\n' "$REDIS_PORT" "$REDIS_PID" "redis://127.0.0.1:$REDIS_PORT"
            else
                printf 'WSGW_REDIS_CLUSTER=%q\n' "$(rc_seeds_csv)"
            fi
            printf 'NODES=%s\n' "${#NODE_PORTS[@]}"
            printf '%s' "$envs"
            printf 'WSGW_JWT_SECRET=%q\nWSGW_API_KEY=%q\n' "$JWT_SECRET" "$API_KEY"
        } >"$RUN/cluster.env"
    )
}

# On any failure during start, stop what was already started.
STARTED=0
on_start_exit() {
    local rc=$?
    if ((STARTED == 0)); then
        log "start failed; stopping what was started"
        do_stop || true
    fi
    exit "$rc"
}

do_start() {
    local n=${1:-2} redis_cluster=${2:-} i name port
    REDIS_PID=
    if [[ -n $redis_cluster ]]; then
        if ! [[ $redis_cluster =~ ^[0-9]+$ ]] || ((redis_cluster < 3 || redis_cluster > 16)); then
            die "--redis-cluster takes the number of primaries, 3 to 16, got '$redis_cluster'"
        fi
        if [[ $n == 0 ]]; then
            start_redis_cluster_only "$redis_cluster"
            return
        fi
        [[ ${WSGW_CLUSTER_SENTINEL:-} == 1 ]] && die "WSGW_CLUSTER_SENTINEL=1 and --redis-cluster do not go together"
    fi
    if ! [[ $n =~ ^[1-9][0-9]?$ ]] || ((n > MAX_NODES)); then
        die "N must be a number from 1 to $MAX_NODES, got '$n'"
    fi
    [[ -f $TEMPLATE ]] || die "missing $TEMPLATE"

    mkdir -p "$PIDS" "$LOGS" "$RUN/redis"
    if any_alive; then
        log "a cluster from $RUN is still running:"
        do_status >&2 || true
        die "run 'scripts/cluster.sh stop' first"
    fi
    rm -f "$PIDS"/*.pid "$RUN/cluster.json" "$RUN/cluster.env"

    ensure_tools
    gateway_binary
    load_secrets
    REDIS_EXE=$(readlink -f "$(command -v redis-server)")
    NGINX_EXE=$(readlink -f "$(command -v nginx)")

    trap on_start_exit EXIT
    trap 'exit 130' INT TERM

    local extra=0
    [[ ${WSGW_CLUSTER_SENTINEL:-} == 1 ]] && extra=4
    pick_ports $((n + 2 + extra))
    REDIS_PORT=${PORTS[0]}
    NGINX_PORT=${PORTS[1]}
    NODE_PORTS=("${PORTS[@]:2:n}")
    NODE_PIDS=()
    SENTINEL_PORTS=()
    if ((extra)); then
        REPLICA_PORT=${PORTS[$((n + 2))]}
        SENTINEL_PORTS=("${PORTS[@]:$((n + 3)):3}")
    fi

    if [[ -n $redis_cluster ]]; then
        rm -rf "$RUN/redis-cluster"
        start_redis_cluster "$redis_cluster"
        REDIS_ENV=(WSGW_REDIS_CLUSTER="$(rc_seeds_csv)")
    else
        # Redis: AOF on (every write fsync'd each second), RDB snapshots off.
        log "starting redis on 127.0.0.1:$REDIS_PORT"
        : >"$LOGS/redis.log"
        launch redis "$REDIS_PORT" "$REDIS_EXE" "$LOGS/redis.log" \
            redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly yes \
            --dir "$RUN/redis" --daemonize no
        REDIS_PID=$LAUNCHED_PID
        wait_redis "$REDIS_PORT"
        REDIS_ENV=(WSGW_REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
        if ((extra)); then start_sentinels; fi
    fi

    for i in "${!NODE_PORTS[@]}"; do
        name=gw-$((i + 1))
        port=${NODE_PORTS[$i]}
        log "starting $name on 127.0.0.1:$port"
        : >"$LOGS/$name.log"
        launch "$name" "$port" "$BIN" "$LOGS/$name.log" \
            env WSGW_LISTEN="127.0.0.1:$port" WSGW_NODE_ID="$name" \
            "${REDIS_ENV[@]}" \
            WSGW_JWT_SECRET="$JWT_SECRET" WSGW_API_KEY="$API_KEY" \
            WSGW_TRUSTED_PROXIES="${WSGW_TRUSTED_PROXIES:-127.0.0.1}" \
            "$BIN"
        NODE_PIDS+=("$LAUNCHED_PID")
    done
    for i in "${!NODE_PORTS[@]}"; do
        wait_http "gw-$((i + 1))" "${NODE_PIDS[$i]}" "$BIN" \
            "http://127.0.0.1:${NODE_PORTS[$i]}/ready" "$LOGS/gw-$((i + 1)).log"
    done

    mkdir -p "$NGINX_PREFIX"/{conf,logs} \
        "$NGINX_PREFIX"/temp/{client_body,proxy,fastcgi,uwsgi,scgi}
    make_cert
    render_nginx_conf "$NGINX_PORT" "${NODE_PORTS[@]}"
    nginx -t -q -p "$NGINX_PREFIX" -c conf/nginx.conf -e logs/error.log >&2 ||
        die "nginx rejected $NGINX_PREFIX/conf/nginx.conf"
    log "starting nginx on https://127.0.0.1:$NGINX_PORT"
    launch nginx "$NGINX_PORT" "$NGINX_EXE" "$NGINX_PREFIX/logs/stderr.log" \
        nginx -p "$NGINX_PREFIX" -c conf/nginx.conf -e logs/error.log
    NGINX_PID=$LAUNCHED_PID
    wait_http nginx "$NGINX_PID" "$NGINX_EXE" "https://127.0.0.1:$NGINX_PORT/health" \
        "$NGINX_PREFIX/logs/error.log"

    write_state
    STARTED=1
    trap - EXIT INT TERM
    log "cluster up: $n node(s); details in $RUN/cluster.json; stop with scripts/cluster.sh stop"

    printf 'wss://127.0.0.1:%s/ws\n' "$NGINX_PORT"
    for port in "${NODE_PORTS[@]}"; do
        printf 'http://127.0.0.1:%s\n' "$port"
    done
    if [[ -n $redis_cluster ]]; then
        for port in "${RC_PRIMARIES[@]}"; do
            printf 'redis://127.0.0.1:%s\n' "$port"
        done
    fi
}

# start_redis_cluster_only P: `start 0 --redis-cluster P`.
start_redis_cluster_only() {
    mkdir -p "$PIDS" "$LOGS"
    if any_alive; then
        log "a cluster from $RUN is still running:"
        do_status >&2 || true
        die "run 'scripts/cluster.sh stop' first"
    fi
    rm -f "$PIDS"/*.pid "$RUN/cluster.json" "$RUN/cluster.env"
    rm -rf "$RUN/redis-cluster"
    ensure_tools
    REDIS_EXE=$(readlink -f "$(command -v redis-server)")
    trap on_start_exit EXIT
    trap 'exit 130' INT TERM
    start_redis_cluster "$1"
    write_redis_cluster_state
    STARTED=1
    trap - EXIT INT TERM
    log "Redis Cluster up: $1 primaries, $1 replicas; details in $RUN/cluster.json; stop with scripts/cluster.sh stop"
    local port
    for port in "${RC_PRIMARIES[@]}"; do
        printf 'redis://127.0.0.1:%s\n' "$port"
    done
}

case ${1:-} in
start)
    if (($# == 4)) && [[ $3 == --redis-cluster ]]; then
        do_start "$2" "$4"
    else
        (($# <= 2)) || usage
        do_start "${2:-2}"
    fi
    ;;
stop)
    (($# == 1)) || usage
    do_stop
    ;;
status)
    (($# == 1)) || usage
    do_status
    ;;
*) usage ;;
esac
