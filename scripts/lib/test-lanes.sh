#!/usr/bin/env bash
# Runs the workspace's Rust tests (what `cargo test --workspace` runs) in two lanes at once, to
# keep scripts/test.sh under 10 minutes on 2 cores. The `wsgw` crate's integration tests are one
# binary (crates/wsgw/tests/suite.rs), one module per file of crates/wsgw/tests; each module's
# tests run as a group of their own (`suite --exact <its tests>`), so below a "binary" is one
# such group or one other test binary:
# - the torture lane starts with the exactness torture tests (crates/wsgw/tests/torture*.rs),
#   one binary after the other. They are the longest and load the machine most.
# - the main lane takes the other test binaries from a shared queue, one after the other. The
#   torture lane takes from the same queue once its own binaries are done, so both lanes end
#   within about one binary of each other. The main lane then runs the doc tests.
# Most test binaries wait on Redis failovers, timeouts and deadlines, so the lanes overlap well.
# Each binary runs from its package's directory, as under `cargo test`, with
# --test-threads=$WSGW_TEST_THREADS (4). Its output is printed when it ends; the script fails
# when any binary fails, and names them. A binary still running after
# $WSGW_TEST_BINARY_TIMEOUT_S seconds (600; the longest takes about 70) is stopped with its
# process group (the redis-server and wsgw processes it started) and the Redis Clusters it
# started with scripts/cluster.sh (their own sessions), and counts as failed: a hang is named,
# with its output, instead of using up CI's time. Builds first (`cargo test --no-run`).
set -euo pipefail
cd "$(dirname "$0")/../.."

threads=${WSGW_TEST_THREADS:-4}
limit=${WSGW_TEST_BINARY_TIMEOUT_S:-600}
[[ $limit =~ ^[1-9][0-9]*$ ]] || { echo "test-lanes: WSGW_TEST_BINARY_TIMEOUT_S=$limit is not a positive whole number" >&2; exit 2; }
out=$(mktemp -d "${TMPDIR:-/tmp}/wsgw-test-lanes.XXXXXX")
# Each lane's running binary is in a process group of its own (`timeout` makes one), which a
# Ctrl-C at the terminal does not reach: when this script is stopped, stop the torture lane
# (so it starts nothing more), then those groups and the Redis Clusters their binaries started.
torture_pid=""
stop_running() {
    local f pid lane
    [[ -z $torture_pid ]] || kill -TERM "$torture_pid" 2>/dev/null || true
    for f in "$out"/running.*; do
        [[ -s $f ]] || continue
        pid=$(<"$f")
        lane=${f##*.}
        kill -TERM -- "-$pid" 2>/dev/null || true
        [[ ! -s $out/pid.$lane ]] || stop_clusters "$(<"$out/pid.$lane")"
    done
}
trap 'stop_running; rm -rf "$out"' EXIT
trap 'exit 130' INT TERM

cargo test --workspace --no-run
# One line per test binary: name, package directory, executable (tab-separated).
cargo test --workspace --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | [.target.name + " (" + .target.kind[0] + ")", (.manifest_path | sub("/Cargo.toml$"; "")), .executable]
           | @tsv' >"$out/binaries"
[[ -s $out/binaries ]] || { echo "test-lanes: cargo listed no test binaries" >&2; exit 1; }

# What the lanes run, one line each: name, directory, executable and, for a module of the
# `suite` binary, the exact names of its tests (space-separated; tab-separated fields).
while IFS=$'\t' read -r name dir exe; do
    if [[ $name != "suite (test)" ]]; then
        printf '%s\t%s\t%s\t\n' "$name" "$dir" "$exe"
        continue
    fi
    (cd "$dir" && "$exe" --list --format terse) | sed -n 's/: test$//p' |
        awk -v dir="$dir" -v exe="$exe" '
            { split($0, p, "::"); m = p[1]; if (!(m in names)) order[n++] = m; names[m] = names[m] " " $0 }
            END { for (i = 0; i < n; i++) printf "%s (suite)\t%s\t%s\t%s\n", order[i], dir, exe, substr(names[order[i]], 2) }'
done <"$out/binaries" >"$out/units"
grep -q ' (suite)'$'\t' "$out/units" || { echo "test-lanes: the suite binary listed no tests" >&2; exit 1; }

# The torture lane's own units (the torture modules); the rest make the shared queue.
is_torture() { [[ $1 =~ ^torture(_cluster)?\ \(suite\)$ ]]; }
while IFS=$'\t' read -r name dir exe tests; do
    if is_torture "$name"; then
        printf '%s\t%s\t%s\t%s\n' "$name" "$dir" "$exe" "$tests" >>"$out/torture"
    else
        printf '%s\t%s\t%s\t%s\n' "$name" "$dir" "$exe" "$tests" >>"$out/queue"
    fi
done <"$out/units"
[[ -s $out/torture ]] || { echo "test-lanes: no torture tests found in the suite" >&2; exit 1; }
touch "$out/queue"
echo 0 >"$out/taken"

# Prints the shared queue's next line, or nothing when it is empty (under a lock: each line is
# taken by exactly one lane).
take() {
    local n
    n=$(flock "$out/lock" bash -c 'n=$(<"$1"); echo $((n + 1)) >"$1"; echo "$n"' _ "$out/taken")
    sed -n "$((n + 1))p" "$out/queue"
}

# stop_clusters PID: stops the Redis Clusters a test binary of that pid started with
# scripts/cluster.sh (crates/wsgw/tests/common/redis_cluster.rs names their run directories
# wsgw-redis-cluster-<pid>-<n>); its Drop would have, had the binary ended by itself.
stop_clusters() {
    local d
    for d in "${TMPDIR:-/tmp}/wsgw-redis-cluster-$1-"*; do
        [[ -d $d ]] || continue
        WSGW_RUN_DIR=$d scripts/cluster.sh stop >/dev/null 2>&1 || true
        rm -rf "$d"
    done
}

# run_one LANE NAME DIR EXE [TESTS]: runs one binary, or with TESTS only those tests of it
# (`--exact`). Prints its result when it ends (its whole output if it failed) and records a
# failure in $out/failed.
run_one() {
    local lane=$1 name=$2 dir=$3 exe=$4 tests=${5:-} log start rc=0 only=()
    log="$out/log.${name//[^a-zA-Z0-9_]/_}"
    [[ -z $tests ]] || read -r -a only <<<"--exact $tests"
    start=$SECONDS
    # `timeout` runs the binary in a new process group and, past the limit, signals all of it:
    # the binary and the processes it spawned. The group's id (timeout's pid) is noted while it
    # runs, for stop_running; the binary's own pid names its Redis Clusters' run directories.
    (cd "$dir" && exec timeout --kill-after=10 "$limit" \
        bash -c 'echo $$ >"$0"; exec "$@"' "$out/pid.$lane" "$exe" "${only[@]}" --test-threads="$threads") >"$log" 2>&1 &
    echo "$!" >"$out/running.$lane"
    wait "$!" || rc=$?
    : >"$out/running.$lane"
    # 124: stopped at the limit; 137: killed (past the limit and 10 s of TERM, or by the kernel).
    if ((rc == 124 || rc == 137)); then
        ((rc == 137)) || echo "test-lanes: $name still ran after ${limit}s; stopped" >>"$log"
        ((rc == 124)) || echo "test-lanes: $name was killed (SIGKILL)" >>"$log"
        stop_clusters "$(<"$out/pid.$lane")"
    fi
    if ((rc == 0)); then
        printf '\n--- [%s lane] %s: ok in %ss\n%s\n' "$lane" "$name" "$((SECONDS - start))" \
            "$(grep -E '^test result:' "$log")"
    else
        printf '\n--- [%s lane] %s: FAILED (exit %s) in %ss\n%s\n' "$lane" "$name" "$rc" \
            "$((SECONDS - start))" "$(cat "$log")"
        echo "$name" >>"$out/failed"
    fi
}

# run_queue LANE: runs binaries from the shared queue until it is empty.
run_queue() {
    local line name dir exe tests
    while line=$(take) && [[ -n $line ]]; do
        IFS=$'\t' read -r name dir exe tests <<<"$line"
        run_one "$1" "$name" "$dir" "$exe" "$tests"
    done
}

(
    while IFS=$'\t' read -r name dir exe tests; do
        run_one torture "$name" "$dir" "$exe" "$tests"
    done <"$out/torture"
    run_queue torture
) &
torture_pid=$!
run_queue main
doc_rc=0
cargo test --workspace --doc -- --test-threads="$threads" || doc_rc=$?
((doc_rc == 0)) || echo "doc tests" >>"$out/failed"
wait "$torture_pid" || echo "torture lane (exit $?)" >>"$out/failed"
torture_pid="" # waited for: its pid may be another process's from now on

if [[ -s $out/failed ]]; then
    echo "test-lanes: FAILED: $(paste -sd, "$out/failed")" >&2
    exit 1
fi
echo "test-lanes: every test binary passed ($(wc -l <"$out/binaries") binaries, as $(wc -l <"$out/units") groups, and the doc tests)"
