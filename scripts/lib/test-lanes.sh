#!/usr/bin/env bash
# Runs the workspace's Rust tests (what `cargo test --workspace` runs) in two lanes at once, to
# keep scripts/test.sh under 10 minutes on 2 cores:
# - the torture lane: the exactness torture tests (crates/wsgw/tests/torture*.rs), one binary
#   after the other. They are the longest and load the machine most.
# - the main lane: every other test binary, one after the other, then the doc tests.
# Most of the main lane waits on Redis failovers, timeouts and deadlines, so the lanes overlap
# well. Each binary runs from its package's directory, as under `cargo test`, with
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

# The torture lane's binaries (by executable name; the rest make the main lane).
is_torture() { [[ $(basename "$1") =~ ^torture(_cluster)?-[0-9a-f]+$ ]]; }

# run_lane LANE: runs that lane's binaries one after the other. Prints each one's result when it
# ends (its whole output if it failed) and records failures in $out/failed.
run_lane() {
    local lane=$1 name dir exe log start rc
    while IFS=$'\t' read -r name dir exe; do
        if is_torture "$exe"; then [[ $lane == torture ]] || continue; else [[ $lane == main ]] || continue; fi
        log="$out/$(basename "$exe").log"
        start=$SECONDS
        rc=0
        (cd "$dir" && "$exe" --test-threads="$threads") >"$log" 2>&1 || rc=$?
        if ((rc == 0)); then
            printf '\n--- [%s lane] %s: ok in %ss\n%s\n' "$lane" "$name" "$((SECONDS - start))" \
                "$(grep -E '^test result:' "$log")"
        else
            printf '\n--- [%s lane] %s: FAILED (exit %s) in %ss\n%s\n' "$lane" "$name" "$rc" \
                "$((SECONDS - start))" "$(cat "$log")"
            echo "$name" >>"$out/failed"
        fi
    done <"$out/binaries"
}

run_lane torture &
torture_pid=$!
run_lane main
doc_rc=0
cargo test --workspace --doc -- --test-threads="$threads" || doc_rc=$?
((doc_rc == 0)) || echo "doc tests" >>"$out/failed"
wait "$torture_pid"

if [[ -s $out/failed ]]; then
    echo "test-lanes: FAILED: $(paste -sd, "$out/failed")" >&2
    exit 1
fi
echo "test-lanes: every test binary passed ($(wc -l <"$out/binaries") binaries and the doc tests)"
