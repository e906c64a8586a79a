#!/usr/bin/env bash
# The project's one test command: formatting, lints, every Rust test against real sockets and
# real redis-server processes, the browser client's tests against a real gateway, the compose
# file's validation, and the browser end-to-end test (Chromium -> nginx TLS -> 2 nodes -> Redis).
# A fresh Debian machine with the Rust toolchain goes from `git clone` to green with this: it
# installs what it needs with apt-get / npm / pip when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Without incremental compilation's caches, which a run from a clean clone never reuses: the
# build steps took 242 s against 317 s (clippy, doc and the test build, from a clean clone on
# 2 cores, 2026-12-04). Your own `cargo test` (incremental) then rebuilds the workspace's crates
# once; CARGO_INCREMENTAL=1 scripts/test.sh shares its build instead. Linking is not where the
# build's time goes: the test build from scratch took 213 s with the default linker and 213 s
# with mold (`RUSTFLAGS="-C link-arg=-fuse-ld=mold"`, 2026-12-05).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Each step's heading says how long the run has taken so far (seconds).
log() { printf '\n== [%ss] %s\n' "$SECONDS" "$*"; }

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
APT_UPDATED=""

# Installs Debian packages that are missing (extra apt flags may precede the names).
apt_install() {
    local flags=() missing=()
    for arg in "$@"; do
        if [[ $arg == -* ]]; then flags+=("$arg"); continue; fi
        dpkg -s "$arg" >/dev/null 2>&1 || missing+=("$arg")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    if [[ -z $APT_UPDATED ]]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${flags[@]}" "${missing[@]}" >/dev/null
}

apt_install redis-server nginx openssl curl jq
# libfaketime: tests that run a node or a redis-server with its wall clock shifted
# (crates/wsgw/tests/common/clock.rs).
apt_install faketime
apt_install --no-install-recommends chromium
# The Go snippet of docs/backends.md (Redis Cluster) runs in GOPATH mode on Debian's redigo and
# redisc (crates/wsgw/tests/redis_cluster.rs): no Go module proxy needed.
apt_install --no-install-recommends golang-go golang-github-gomodule-redigo-dev golang-github-mna-redisc-dev
# The Python backend examples (docs/backends.md, examples/worker.py) are run by the tests
# when redis-py is importable.
if command -v python3 >/dev/null && ! python3 -c 'import redis' 2>/dev/null; then
    log "installing redis-py for the Python examples"
    python3 -m pip install -q redis >/dev/null 2>&1 || echo "note: could not install redis-py; Python examples will be skipped"
fi

log "rust-version check"
scripts/check-msrv.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo doc -D warnings (no broken intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

log "node-redis for the Node snippets of docs/backends.md (crates/wsgw/tests/node)"
(cd crates/wsgw/tests/node && npm ci --silent --no-audit --no-fund)

log "cargo test (two lanes at once: the torture tests, then both lanes share every other test binary; scripts/lib/test-lanes.sh)"
scripts/lib/test-lanes.sh

log "k6 scripts syntax"
for f in loadtest/k6/*.js; do node --input-type=module --check <"$f" || { echo "syntax error in $f" >&2; exit 1; }; done

log "k6 scripts under node --test (k6 modules stubbed; tokens and publishes against a real gateway)"
WSGW_BIN="$PWD/target/debug/wsgw" node --test loadtest/k6/test/k6-scripts.test.mjs loadtest/k6/test/k6-gateway.test.mjs

log "browser client tests (node --test, against a real gateway)"
(cd clients/js && npm ci --silent --no-audit --no-fund && WSGW_BIN="$PWD/../../target/debug/wsgw" node --test test/)

log "docker-compose.yml validation"
scripts/check-compose.sh

log "browser end-to-end (Chromium -> nginx TLS -> 2 nodes -> Redis)"
(cd scripts/e2e && npm ci --silent --no-audit --no-fund && WSGW_BIN="$PWD/../../target/debug/wsgw" node --test)

log "all green"
