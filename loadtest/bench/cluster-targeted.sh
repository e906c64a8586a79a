#!/usr/bin/env bash
# loadtest/bench/cluster-targeted.sh: targeted publishes through a gateway node, on one Redis
# primary and on a Redis Cluster of P primaries (with replicas), one after the other, same load.
#
#   loadtest/bench/cluster-targeted.sh [P]        P primaries for the cluster run (default 3)
#
# Each run starts `scripts/cluster.sh start 1` (then `start 1 --redis-cluster P`) in a run
# directory of its own, runs loadtest/scenarios/targeted-bench.toml over HTTP (`--publish-via
# http`: every publish is a POST /api/publish on the node, so the node's Redis client routes it
# to the shard's primary) with VUS sockets (default 5000) and RATE publishes per second (default
# 2000), reads every redis-server's CPU (utime + stime from /proc) before and after, and stops
# the cluster. Prints one line per run: delivered, p99, the gateway's CPU-s and all Redis
# processes' CPU-s, and Redis CPU per publish. Needs release binaries (cargo build --release -p
# wsgw -p wsgw-loadtest). Every run is bounded: the scenario lasts 32 s.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
P=${1:-3}
VUS=${VUS:-5000}
RATE=${RATE:-2000}
BIN=$ROOT/target/release/wsgw
LT=$ROOT/target/release/wsgw-loadtest
[[ -x $BIN && -x $LT ]] || { echo "build first: cargo build --release -p wsgw -p wsgw-loadtest" >&2; exit 2; }

# Sum of utime + stime (clock ticks) of the given pids.
ticks() {
    local sum=0 pid f
    for pid in "$@"; do
        read -ra f <"/proc/$pid/stat"
        sum=$((sum + f[13] + f[14]))
    done
    printf '%s' "$sum"
}

run() {
    local label=$1
    shift
    local dir
    dir=$(mktemp -d)
    WSGW_BIN=$BIN WSGW_RUN_DIR=$dir "$ROOT/scripts/cluster.sh" start 1 "$@" >/dev/null
    local json=$dir/cluster.json
    local node_url node_pid secret key redis_pids
    node_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["url"])' "$json")
    node_pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["pid"])' "$json")
    secret=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwt_secret"])' "$json")
    key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$json")
    mapfile -t redis_pids < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
if s.get("redis"):
    print(s["redis"]["pid"])
else:
    for n in s["redis_cluster"]["primaries"] + s["redis_cluster"]["replicas"]:
        print(n["pid"])' "$json")
    local before after out
    before=$(ticks "${redis_pids[@]}")
    out=$("$LT" run "$ROOT/loadtest/scenarios/targeted-bench.toml" --publish-via http \
        --url "ws://${node_url#http://}/ws" --api-url "$node_url" --api-key "$key" --secret "$secret" \
        --server-pid "$node_pid" --vus "$VUS" --rate "$RATE" --quiet --json "$dir/summary.json" 2>&1) || true
    after=$(ticks "${redis_pids[@]}")
    WSGW_RUN_DIR=$dir "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
    printf '%s\n' "$out" >"$dir/out.txt"
    python3 - "$dir/out.txt" "$label" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
label, before, after, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def num(name):
    m = re.search(rf"{name} \.+: ([0-9.]+)", text)
    return float(m.group(1)) if m else float("nan")
p99 = re.search(r"delivery_latency .*?p\(99\)=([0-9.]+\w+)", text)
redis_s = (after - before) / hz
published, gw = num("published"), num("gateway_cpu")
result = re.search(r"result: (\w+)", text)
print(f"{label}: {result.group(1) if result else '?'}; published {published:.0f}, delivered {num('delivered'):.0f}, "
      f"missing {num('missing'):.0f}, duplicates {num('duplicates'):.0f}; delivery p99 {p99.group(1) if p99 else '?'}; "
      f"gateway CPU-s {gw:.2f}; Redis CPU-s (all processes) {redis_s:.2f}, "
      f"{1e6 * redis_s / max(published, 1):.1f} us per publish")
PY
    rm -rf "$dir"
}

run "1 primary"
run "$P primaries" --redis-cluster "$P"
