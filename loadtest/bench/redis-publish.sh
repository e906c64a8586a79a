#!/usr/bin/env bash
# loadtest/bench/redis-publish.sh: durable publish throughput of Redis itself, and Redis CPU per
# publish, with `FCALL wsgw_publish` on 16 channels (one per id-shard) at once.
#
#   loadtest/bench/redis-publish.sh single PORT     a single primary (keys ws:seq ws:history:<ch>)
#   loadtest/bench/redis-publish.sh cluster PORT    a Redis Cluster, any node's port (keys
#                                                   ws:{s}seq ws:{s}history:<ch>, each benchmark
#                                                   sent straight to the primary holding shard s)
#
# The Function must be loaded (a gateway loads it; `scripts/cluster.sh start 0 --redis-cluster 3`
# loads it on every primary). N publishes per channel (default 20000), C connections per channel
# (default 4), one redis-benchmark process per channel. MAXLEN (default: unset, the history
# size the gateway recorded, else 1000) is passed as the publishes' history maxlen; MAXLEN=0
# publishes live-only events (no stream entry). Prints publishes per second over the whole run,
# and the CPU each redis-server used (utime + stime from /proc) per publish.
set -euo pipefail
MODE=${1:-}; PORT=${2:-}
if ! [[ $MODE == single || $MODE == cluster ]] || ! [[ $PORT =~ ^[0-9]+$ ]]; then
    echo "usage: $0 single|cluster PORT" >&2
    exit 2
fi
N=${N:-20000}
C=${C:-4}
MAXLEN=${MAXLEN:-}
[[ -z $MAXLEN || $MAXLEN =~ ^[0-9]+$ ]] || { echo "MAXLEN must be a non-negative integer" >&2; exit 2; }
EXTRA=()
[[ -n $MAXLEN ]] && EXTRA=(86400000 "$MAXLEN")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# One channel per id-shard: room:<i> with the smallest i in that shard.
declare -a CH
mapfile -t CH < <(python3 -c '
import zlib
found = {}
i = 0
while len(found) < 16:
    found.setdefault(zlib.crc32(f"room:{i}".encode()) % 16, f"room:{i}")
    i += 1
print("\n".join(found[s] for s in range(16)))')

if [[ $MODE == single ]]; then
    PORTS=("$PORT")
else
    mapfile -t PORTS < <(redis-cli -p "$PORT" CLUSTER NODES | awk '{split($2, a, "[:@]"); print a[2]}' | sort -n)
fi
declare -A PID C0
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for p in "${PORTS[@]}"; do
    PID[$p]=$(ss -Htlnp "sport = :$p" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    C0[$p]=$(cpu "${PID[$p]}")
done

# The primary holding a key's slot.
owner() {
    local slot
    slot=$(redis-cli -p "$PORT" CLUSTER KEYSLOT "$1")
    redis-cli -p "$PORT" CLUSTER NODES | awk -v s="$slot" '$3 ~ /master/ {
        for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (n == 1) r[2] = r[1];
            if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }'
}

t0=$(date +%s.%N)
pids=()
for s in $(seq 0 15); do
    ch=${CH[$s]}
    if [[ $MODE == single ]]; then
        k1=ws:seq k2=ws:history:$ch target=$PORT
    else
        k1="ws:{$s}seq" k2="ws:{$s}history:$ch"
        target=$(owner "$k1")
    fi
    redis-benchmark -p "$target" -c "$C" -n "$N" -q FCALL wsgw_publish 2 "$k1" "$k2" "$ch" e '{"n":1}' "${EXTRA[@]}" \
        >"$OUT/$s.out" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(date +%s.%N)

total=$((16 * N))
python3 - "$MODE" "$total" "$t0" "$t1" <<PY
import sys
mode, total, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"{mode}: {total} publishes in {t1 - t0:.2f} s = {total / (t1 - t0):,.0f} per second")
PY
sum=0
for p in "${PORTS[@]}"; do
    d=$(($(cpu "${PID[$p]}") - ${C0[$p]}))
    sum=$((sum + d))
    role=$(redis-cli -p "$p" ROLE | head -1)
    printf '  redis-server :%s (%s): %d.%02d CPU-s, %.1f µs per publish\n' "$p" "$role" $((d / 100)) $((d % 100)) \
        "$(echo "$d * 10000 / $total" | bc -l)"
done
printf '  all redis-server processes: %d.%02d CPU-s, %.1f µs per publish\n' $((sum / 100)) $((sum % 100)) \
    "$(echo "$sum * 10000 / $total" | bc -l)"
