# shellcheck shell=bash
# scripts/lib/redis-cluster.sh: the Redis Cluster of `scripts/cluster.sh start N --redis-cluster P`.
# Sourced by cluster.sh, whose helpers it uses (pick_ports, launch, wait_redis, log, die).
#
# P primaries with one replica each: cluster-enabled redis-server processes (AOF on, node
# timeout 2 s so a failover takes seconds), joined with `redis-cli --cluster create
# --cluster-replicas 1`. The wsgw Function library is loaded on every primary (replicas get
# it through replication). Records redis-c1 .. redis-c<2P> in pids/, logs in
# logs/redis-c<i>.log, data in redis-cluster/c<i>/.

LUA=$ROOT/crates/wsgw/src/broker/redis/wsgw.lua

# cluster_nodes PORT: `CLUSTER NODES` of the node on PORT.
cluster_nodes() {
    redis-cli -h 127.0.0.1 -p "$1" CLUSTER NODES 2>/dev/null
}

# start_redis_cluster P: sets RC_PORTS and RC_PIDS (every process), RC_PRIMARIES and
# RC_REPLICAS (ports, ascending).
start_redis_cluster() {
    local p=$1 i port name addrs=() ok try
    [[ -f $LUA ]] || die "missing $LUA"
    # Ports 10000..21999, so that each bus port (+10000) is below the ephemeral range too.
    pick_ports $((p * 2)) 10000 12000 10000
    RC_PORTS=("${PORTS[@]}")
    RC_PIDS=()
    for i in "${!RC_PORTS[@]}"; do
        port=${RC_PORTS[$i]}
        name=redis-c$((i + 1))
        mkdir -p "$RUN/redis-cluster/c$((i + 1))"
        : >"$LOGS/$name.log"
        # A port picked free can be taken before the bind (by another cluster starting beside
        # this one): then the node exits, and it gets another port, up to 3 tries.
        for try in 1 2 3; do
            log "starting $name on 127.0.0.1:$port"
            launch "$name" "$port" "$REDIS_EXE" "$LOGS/$name.log" \
                redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
                --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
                --save "" --appendonly yes --dir "$RUN/redis-cluster/c$((i + 1))" --daemonize no
            redis_up "$port" && break
            ((try < 3)) || fail_with_log "$name" "$LOGS/$name.log" "redis-server exited"
            log "$name exited (port $port taken?); another port"
            pick_ports 1 10000 12000 10000
            port=${PORTS[0]}
            RC_PORTS[i]=$port
        done
        RC_PIDS+=("$LAUNCHED_PID")
        addrs+=("127.0.0.1:$port")
    done

    log "joining them: $p primaries with one replica each (redis-cli --cluster create)"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$LOGS/redis-cluster-create.log" 2>&1 ||
        fail_with_log redis-cluster "$LOGS/redis-cluster-create.log" "redis-cli --cluster create failed"

    # Every node agrees the cluster is up and sees P primaries and P replicas (gossip takes a
    # moment to spread the replicas' roles).
    for ((i = 0; i < 300; i++)); do
        ok=1
        for port in "${RC_PORTS[@]}"; do
            [[ $(redis-cli -h 127.0.0.1 -p "$port" CLUSTER INFO 2>/dev/null) == *cluster_state:ok* ]] || ok=0
            (($(cluster_nodes "$port" | awk '$3 ~ /master/' | grep -c .) == p)) || ok=0
            (($(cluster_nodes "$port" | awk '$3 ~ /slave/' | grep -c .) == p)) || ok=0
        done
        ((ok)) && break
        sleep 0.1
    done
    ((ok)) || die "the Redis Cluster did not show cluster_state:ok and $p primaries with $p replicas on every node within 30s"

    mapfile -t RC_PRIMARIES < <(cluster_nodes "${RC_PORTS[0]}" |
        awk '$3 ~ /master/ { split($2, a, "[:@]"); print a[2] }' | sort -n)
    mapfile -t RC_REPLICAS < <(cluster_nodes "${RC_PORTS[0]}" |
        awk '$3 ~ /slave/ { split($2, a, "[:@]"); print a[2] }' | sort -n)
    ((${#RC_PRIMARIES[@]} == p && ${#RC_REPLICAS[@]} == p)) ||
        die "expected $p primaries and $p replicas, CLUSTER NODES lists ${#RC_PRIMARIES[@]} and ${#RC_REPLICAS[@]}"

    for port in "${RC_PRIMARIES[@]}"; do
        [[ $(redis-cli -h 127.0.0.1 -p "$port" -x FUNCTION LOAD REPLACE <"$LUA" 2>&1) == wsgw ]] ||
            die "FUNCTION LOAD on the primary 127.0.0.1:$port failed"
    done
    # A replica answers FUNCTION LIST from what replication brought: wait until each has it.
    for port in "${RC_REPLICAS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            [[ $(redis-cli -h 127.0.0.1 -p "$port" FUNCTION LIST LIBRARYNAME wsgw 2>/dev/null) == *wsgw* ]] && break
            sleep 0.1
        done
    done
}

# The pid recorded for PORT among the cluster's processes.
rc_pid_of() {
    local i
    for i in "${!RC_PORTS[@]}"; do
        [[ ${RC_PORTS[$i]} == "$1" ]] && printf '%s' "${RC_PIDS[$i]}" && return 0
    done
    printf 'null'
}

# rc_seeds_csv: the primaries' redis:// URLs, comma-separated (WSGW_REDIS_CLUSTER).
rc_seeds_csv() {
    local port out=''
    for port in "${RC_PRIMARIES[@]}"; do
        out+="${out:+,}redis://127.0.0.1:$port"
    done
    printf '%s' "$out"
}

# rc_json: the "redis_cluster" object of cluster.json (seed URLs, primaries, replicas).
rc_json() {
    local port sep='' seeds='' primaries='' replicas=''
    for port in "${RC_PRIMARIES[@]}"; do
        seeds+="$sep\"redis://127.0.0.1:$port\""
        primaries+="$sep{\"port\": $port, \"pid\": $(rc_pid_of "$port")}"
        sep=', '
    done
    sep=''
    for port in "${RC_REPLICAS[@]}"; do
        replicas+="$sep{\"port\": $port, \"pid\": $(rc_pid_of "$port")}"
        sep=', '
    done
    printf '{"seeds": [%s], "primaries": [%s], "replicas": [%s]}' "$seeds" "$primaries" "$replicas"
}

# write_redis_cluster_state: cluster.json and cluster.env for a Redis-only start.
write_redis_cluster_state() {
    (
        umask 077
        cat >"$RUN/cluster.json" <<EOF
{
  "redis_cluster": $(rc_json),
  "nodes": []
}
EOF
        printf 'WSGW_REDIS_CLUSTER=%q\n' "$(rc_seeds_csv)" >"$RUN/cluster.env"
    )
}
