#!/usr/bin/env bash
# The project's one test command: formatting, lints, then every test against real sockets
# (and, where a test needs it, a real redis-server started on a free port by the test).
# A fresh Debian machine with the Rust toolchain goes from `git clone` to green with this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

apt_install() {
    # Installs Debian packages that are missing; we run as root on CI.
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

command -v redis-server >/dev/null || apt_install redis-server
# The Python backend examples (docs/backends.md, examples/worker.py) are run by the tests
# when redis-py is importable.
if command -v python3 >/dev/null && ! python3 -c 'import redis' 2>/dev/null; then
    log "installing redis-py for the Python examples"
    python3 -m pip install -q redis >/dev/null 2>&1 || echo "note: could not install redis-py; Python examples will be skipped"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
cargo test --workspace -- --test-threads="${WSGW_TEST_THREADS:-4}"

log "all green"
