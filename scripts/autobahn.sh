#!/usr/bin/env bash
# scripts/autobahn.sh: WebSocket conformance of wsgw's framing (wsgw::ws), checked by the
# Autobahn|Testsuite fuzzing client (`wstest -m fuzzingclient`) against the `ws_echo` example.
#
#   scripts/autobahn.sh            install wstest if needed, run cases 1-7, 9, 10, print the table
#
# Steps:
#   1. scripts/autobahn/install.sh installs Autobahn|Testsuite and its Python 2.7 into
#      $WSGW_AUTOBAHN_DIR (once; later runs reuse it).
#   2. `cargo build --release -p wsgw --example ws_echo`, then runs
#      `target/release/examples/ws_echo 127.0.0.1:PORT` on a free port and waits (with a
#      deadline) until that very process listens.
#   3. `wstest -m fuzzingclient -s SPEC` against ws://127.0.0.1:PORT, the whole run under
#      `timeout`. Spec, report and logs go to .wsgw-run/autobahn/ (report/index.html to browse).
#   4. Prints the count of each result and every case that is not OK, NON-STRICT or
#      INFORMATIONAL; exits 1 if there is one (or the run failed), 0 otherwise.
# The echo server is stopped by its PID when the script exits, however it exits.
#
# Environment:
#   WSGW_AUTOBAHN_DIR          install dir (default ~/.cache/wsgw-autobahn)
#   WSGW_AUTOBAHN_CASES        comma list of case patterns (default 1.*,...,7.*,9.*,10.*),
#                              e.g. WSGW_AUTOBAHN_CASES='1.*,2.*' for a quick run
#   WSGW_AUTOBAHN_COMPRESSION  1: also cases 12.* and 13.* (permessage-deflate); then
#                              UNIMPLEMENTED there is a failure too
#   WSGW_AUTOBAHN_TIMEOUT      seconds for the whole fuzzing run (default 900)
#   WSGW_AUTOBAHN_ECHO_CMD     run this command instead of building ws_echo; the listen address
#                              is appended as its last argument (for testing this script)
#   WSGW_RUN_DIR               run dir (default .wsgw-run in the repository)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AB_DIR=${WSGW_AUTOBAHN_DIR:-$HOME/.cache/wsgw-autobahn}
CASES=${WSGW_AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*}
COMPRESSION=${WSGW_AUTOBAHN_COMPRESSION:-0}
RUN_TIMEOUT=${WSGW_AUTOBAHN_TIMEOUT:-900}
RUN_DIR=${WSGW_RUN_DIR:-$REPO/.wsgw-run}/autobahn
AB=(python3 "$REPO/scripts/autobahn/ab.py")
log() { printf 'autobahn: %s\n' "$*" >&2; }

command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }

# 1. Autobahn|Testsuite (no-op when already installed).
"$REPO/scripts/autobahn/install.sh" "$AB_DIR"

# 2. The echo server.
if [[ -n ${WSGW_AUTOBAHN_ECHO_CMD:-} ]]; then
  echo_cmd=$WSGW_AUTOBAHN_ECHO_CMD
else
  log "cargo build --release -p wsgw --example ws_echo"
  (cd "$REPO" && cargo build --release -q -p wsgw --example ws_echo) || { log "FAIL: the ws_echo build failed"; exit 1; }
  echo_cmd="'${CARGO_TARGET_DIR:-$REPO/target}/release/examples/ws_echo'"
fi

mkdir -p "$RUN_DIR"
rm -rf "$RUN_DIR/report"
echo_pid=""
wstest_pid=""
stop_echo() {
  if [[ -n $wstest_pid ]]; then   # interrupted mid-run: `timeout` passes the TERM to wstest
    kill "$wstest_pid" 2>/dev/null || true
    wait "$wstest_pid" 2>/dev/null || true
  fi
  [[ -n $echo_pid ]] || return 0
  # The server leads its own process group (setsid below): the group's id is its PID, so this
  # also ends anything it started, and nothing else.
  if kill -0 -- "-$echo_pid" 2>/dev/null; then
    kill -- "-$echo_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 -- "-$echo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$echo_pid" 2>/dev/null || true
  fi
  wait "$echo_pid" 2>/dev/null || true
  echo_pid=""
}
trap stop_echo EXIT   # the echo server (and wstest) by PID, however the script ends
trap 'exit 130' INT TERM

started=0
for _ in 1 2 3; do   # a port free when picked may be taken before the server binds it
  port=$("${AB[@]}" free-port)
  # `exec` so that $echo_pid is the server itself, the process that must own the port; setsid
  # (which execs too: a background job is no group leader) gives it its own process group.
  setsid bash -c "exec $echo_cmd 127.0.0.1:$port" >"$RUN_DIR/echo.log" 2>&1 &
  echo_pid=$!
  wrc=0
  "${AB[@]}" wait-listen "$echo_pid" "$port" 30 || wrc=$?
  if ((wrc == 0)); then started=1; break; fi
  stop_echo
  ((wrc == 2)) || break
done
((started)) || { log "FAIL: the echo server did not come up; its log ($RUN_DIR/echo.log):"; tail -20 "$RUN_DIR/echo.log" >&2; exit 1; }
log "echo server pid $echo_pid on 127.0.0.1:$port"

# 3. The fuzzing client.
"${AB[@]}" spec "$RUN_DIR/fuzzingclient.json" "ws://127.0.0.1:$port" "$RUN_DIR/report" "$CASES" "$COMPRESSION"
log "wstest -m fuzzingclient, cases $(python3 -c 'import json,sys;print(",".join(json.load(open(sys.argv[1]))["cases"]))' "$RUN_DIR/fuzzingclient.json"), at most ${RUN_TIMEOUT} s (log: $RUN_DIR/wstest.log)"
t0=$(date +%s)
cd "$RUN_DIR"
# In the background so that a signal to this script is handled now, not after the run.
timeout --kill-after=10 "$RUN_TIMEOUT" "$AB_DIR/wstest" -m fuzzingclient -s fuzzingclient.json \
  >"$RUN_DIR/wstest.log" 2>&1 &
wstest_pid=$!
rc=0
wait "$wstest_pid" || rc=$?
wstest_pid=""
log "wstest finished in $(($(date +%s) - t0)) s with status $rc"
if ((rc == 124 || rc == 137)); then log "FAIL: the fuzzing run hit the ${RUN_TIMEOUT} s timeout"; fi
if ! kill -0 "$echo_pid" 2>/dev/null; then log "FAIL: the echo server died during the run"; rc=1; fi
if ((rc != 0)); then tail -20 "$RUN_DIR/wstest.log" >&2; fi

# 4. The verdict.
verdict=0
"${AB[@]}" report "$RUN_DIR/report/index.json" "$CASES" "$COMPRESSION" || verdict=1
[[ -f $RUN_DIR/report/index.html ]] && log "report: $RUN_DIR/report/index.html"
if ((rc != 0 || verdict != 0)); then exit 1; fi
