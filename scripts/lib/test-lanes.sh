#!/usr/bin/env bash
# Runs the workspace's Rust tests (what `cargo test --workspace` runs) in two lanes at once, to
# keep scripts/test.sh under 10 minutes on 2 cores:
# - the torture lane starts with the exactness torture tests (crates/wsgw/tests/torture*.rs),
#   one binary after the other. They are the longest and load the machine most.
# - the main lane takes the other test binaries from a shared queue, one after the other. The
#   torture lane takes from the same queue once its own binaries are done, so both lanes end
#   within about one binary of each other. The main lane then runs the doc tests.
# Most test binaries wait on Redis failovers, timeouts and deadlines, so the lanes overlap well.
# Each binary runs from its package's directory, as under `cargo test`, with
# --test-threads=$WSGW_TEST_THREADS (4). Its output is printed when it ends; the script fails
# when any binary fails, and names them. Builds first (`cargo test --no-run`).
set -euo pipefail
cd "$(dirname "$0")/../.."

threads=${WSGW_TEST_THREADS:-4}
out=$(mktemp -d "${TMPDIR:-/tmp}/wsgw-test-lanes.XXXXXX")
trap 'rm -rf "$out"' EXIT

cargo test --workspace --no-run
# One line per test binary: name, package directory, executable (tab-separated).
cargo test --workspace --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
           | [.target.name + " (" + .target.kind[0] + ")", (.manifest_path | sub("/Cargo.toml$"; "")), .executable]
           | @tsv' >"$out/binaries"
[[ -s $out/binaries ]] || { echo "test-lanes: cargo listed no test binaries" >&2; exit 1; }

# The torture lane's own binaries (by executable name); the rest make the shared queue.
is_torture() { [[ $(basename "$1") =~ ^torture(_cluster)?-[0-9a-f]+$ ]]; }
while IFS=$'\t' read -r name dir exe; do
    if is_torture "$exe"; then
        printf '%s\t%s\t%s\n' "$name" "$dir" "$exe" >>"$out/torture"
    else
        printf '%s\t%s\t%s\n' "$name" "$dir" "$exe" >>"$out/queue"
    fi
done <"$out/binaries"
touch "$out/torture" "$out/queue"
echo 0 >"$out/taken"

# Prints the shared queue's next line, or nothing when it is empty (under a lock: each line is
# taken by exactly one lane).
take() {
    local n
    n=$(flock "$out/lock" bash -c 'n=$(<"$1"); echo $((n + 1)) >"$1"; echo "$n"' _ "$out/taken")
    sed -n "$((n + 1))p" "$out/queue"
}

# run_one LANE NAME DIR EXE: runs one binary. Prints its result when it ends (its whole output
# if it failed) and records a failure in $out/failed.
run_one() {
    local lane=$1 name=$2 dir=$3 exe=$4 log start rc=0
    log="$out/$(basename "$exe").log"
    start=$SECONDS
    (cd "$dir" && "$exe" --test-threads="$threads") >"$log" 2>&1 || rc=$?
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
    local line name dir exe
    while line=$(take) && [[ -n $line ]]; do
        IFS=$'\t' read -r name dir exe <<<"$line"
        run_one "$1" "$name" "$dir" "$exe"
    done
}

(
    while IFS=$'\t' read -r name dir exe; do
        run_one torture "$name" "$dir" "$exe"
    done <"$out/torture"
    run_queue torture
) &
torture_pid=$!
run_queue main
doc_rc=0
cargo test --workspace --doc -- --test-threads="$threads" || doc_rc=$?
((doc_rc == 0)) || echo "doc tests" >>"$out/failed"
wait "$torture_pid"

if [[ -s $out/failed ]]; then
    echo "test-lanes: FAILED: $(paste -sd, "$out/failed")" >&2
    exit 1
fi
echo "test-lanes: every test binary passed ($(wc -l <"$out/binaries") binaries and the doc tests)"
