#!/usr/bin/env bash
# Checks the workspace's `rust-version` (Cargo.toml, [workspace.package]):
# - every member inherits it;
# - it is at least every dependency's own `rust-version` (so the lock file does not break it);
# - the toolchain running this is at least that version (scripts/test.sh builds with it next).
# `cargo +<msrv>` is not available here; clippy's `incompatible_msrv` lint (run with -D warnings
# by scripts/test.sh) catches uses of std newer than the stated version.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 >/tmp/wsgw-metadata.$$.json
trap 'rm -f /tmp/wsgw-metadata.$$.json' EXIT
python3 - /tmp/wsgw-metadata.$$.json <<'PY'
import json, subprocess, sys

m = json.load(open(sys.argv[1]))
members = set(m["workspace_members"])

def v(s):
    return tuple(int(x) for x in s.split("-")[0].split("."))

def show(t):
    return ".".join(map(str, t))

ours = {p["rust_version"] for p in m["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit("every workspace member must inherit one rust-version, found %s" % sorted(map(str, ours)))
msrv = ours.pop()
need, who = max((v(p["rust_version"]), p["name"]) for p in m["packages"]
                if p["id"] not in members and p.get("rust_version"))
if v(msrv) < need:
    sys.exit("rust-version %s is below %s's %s" % (msrv, who, show(need)))
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
if v(rustc) < v(msrv):
    sys.exit("rustc %s is older than the stated rust-version %s" % (rustc, msrv))
print("rust-version %s covers every dependency (highest: %s %s); toolchain %s" % (msrv, who, show(need), rustc))
PY
