#!/usr/bin/env bash
# scripts/check-compose.sh: validate docker-compose.yml without a Docker engine.
#
# 1. Installs Debian's docker-compose (v1) with apt when it is missing.
# 2. `docker-compose -f docker-compose.yml config -q` (schema and interpolation), with and
#    without the monitoring profile, with stand-in secrets; and that it FAILS without
#    WSGW_JWT_SECRET or WSGW_API_KEY (no `change-me` fallback).
# 3. Asserts the structure of the resolved `docker-compose config` output with the system
#    python3 and PyYAML (which Debian's docker-compose depends on).
#    The same for docker-compose.sentinel.yml layered on it (primary, replica, 3 Sentinels).
# 4. Checks deploy/grafana/dashboard.json: JSON, unique panel ids, no overlapping panels, the
#    provisioned datasource, memory and CPU panels.
# 5. Asserts that deploy/nginx/nginx.conf and nginx.conf.template keep /metrics off the
#    public port and let /api/ through only to allowed addresses (`deny all`).
# 6. If nginx is installed, `nginx -t` on deploy/nginx/nginx.conf, with the compose
#    hostnames and paths mapped to local ones (skipped otherwise).
# 7. The image's build context: every path the Dockerfile's build stage COPYs is let through by
#    both .dockerignore files, and `cargo metadata --locked` resolves the workspace from those
#    paths alone (every member, path dependency and [patch], as `cargo build --locked` in the
#    image needs them), and every file an `include_str!`/`include_bytes!` names is among them.
# Prints each check; exits non-zero on the first failing step.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
COMPOSE_YML=docker-compose.yml
PY=/usr/bin/python3

say() { printf 'check-compose: %s\n' "$*"; }
die() {
    printf 'check-compose: FAIL: %s\n' "$*" >&2
    exit 1
}

if ! command -v docker-compose >/dev/null 2>&1; then
    say "installing docker-compose (apt)"
    [[ $(id -u) == 0 ]] || die "docker-compose is missing; install it (apt-get install docker-compose)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >&2
fi
[[ -x $PY ]] || die "$PY not found (it comes with Debian's docker-compose)"
"$PY" -c 'import yaml' 2>/dev/null || die "PyYAML missing for $PY (apt-get install python3-yaml)"

# Unset so the check does not depend on the caller's environment (and never prints a real
# secret). The file has no default for the two secrets: compose must refuse to run without them.
unset WSGW_JWT_SECRET WSGW_API_KEY WSGW_LOG GRAFANA_ADMIN_PASSWORD COMPOSE_PROFILES COMPOSE_FILE

say "$(docker-compose version --short 2>/dev/null || docker-compose version | head -n1)"
# Stand-ins, never real secrets.
stand_ins=(WSGW_JWT_SECRET=check-compose-jwt-secret-0123456789abcdef WSGW_API_KEY=check-compose-api-key)
for missing in WSGW_JWT_SECRET WSGW_API_KEY; do
    given=()
    for kv in "${stand_ins[@]}"; do [[ $kv == "$missing="* ]] || given+=("$kv"); done
    if out=$(env "${given[@]}" docker-compose -f "$COMPOSE_YML" config -q 2>&1); then
        die "docker-compose config accepted $COMPOSE_YML without $missing (a fallback secret?)"
    fi
    grep -q "$missing" <<<"$out" || die "without $missing, docker-compose failed without naming it: $out"
    say "ok: docker-compose config refuses to run without $missing"
done
export "${stand_ins[@]}"

docker-compose -f "$COMPOSE_YML" config -q || die "docker-compose config -q rejected $COMPOSE_YML"
say "ok: docker-compose -f $COMPOSE_YML config -q"
docker-compose -f "$COMPOSE_YML" --profile monitoring config -q ||
    die "docker-compose --profile monitoring config -q rejected $COMPOSE_YML"
say "ok: docker-compose -f $COMPOSE_YML --profile monitoring config -q"

resolved=$(mktemp)
trap 'rm -f "$resolved"' EXIT
docker-compose -f "$COMPOSE_YML" config >"$resolved" 2>/dev/null || die "docker-compose config failed"

"$PY" - "$resolved" <<'PYEOF'
import re
import sys

import yaml

with open(sys.argv[1]) as f:
    cfg = yaml.safe_load(f)

failures = []


def check(ok, what):
    print(f"check-compose: {'ok' if ok else 'FAIL'}: {what}")
    if not ok:
        failures.append(what)


def duration_s(v):
    """Compose durations: '15s', '1m30s', '500ms', or a number of seconds."""
    if v is None:
        return 0.0
    if isinstance(v, (int, float)):
        return float(v)
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", str(v)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total


def depends(svc):
    d = svc.get("depends_on") or {}
    return d if isinstance(d, dict) else {name: {} for name in d}


def env(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) if "=" in item else (item, None) for item in e)
    return e


def hc_test(svc):
    t = (svc.get("healthcheck") or {}).get("test")
    return " ".join(t) if isinstance(t, list) else (t or "")


services = cfg.get("services") or {}
version = str(cfg.get("version", ""))
check(version.startswith("2."), f"file format 2.x, so Compose v1 keeps depends_on conditions (got {version!r})")

for name in ("redis", "gw1", "gw2", "gw3", "nginx"):
    check(name in services, f"service {name} exists")
if failures:
    sys.exit(1)

# redis
redis = services["redis"]
check("redis-cli" in hc_test(redis) and "ping" in hc_test(redis), "redis has a healthcheck running redis-cli ping")
cmd = redis.get("command") or []
cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
check(re.search(r"--appendonly\s+yes", cmd) is not None, "redis runs with --appendonly yes")
check(any(":/data" in str(v) for v in redis.get("volumes") or []), "redis keeps /data on a volume")

# gateways
node_ids = set()
for name in ("gw1", "gw2", "gw3"):
    gw = services[name]
    check("/ready" in hc_test(gw), f"{name} has a healthcheck on /ready")
    dep = depends(gw).get("redis")
    check(dep is not None, f"{name} depends_on redis")
    check((dep or {}).get("condition") == "service_healthy", f"{name} waits for redis to be healthy")
    e = env(gw)
    check(str(e.get("WSGW_REDIS_URL", "")).startswith("redis://redis:"), f"{name} WSGW_REDIS_URL points at the redis service")
    check(bool(e.get("WSGW_JWT_SECRET")) and bool(e.get("WSGW_API_KEY")), f"{name} has WSGW_JWT_SECRET and WSGW_API_KEY")
    check(bool(e.get("WSGW_TRUSTED_PROXIES")), f"{name} sets WSGW_TRUSTED_PROXIES")
    node_ids.add(e.get("WSGW_NODE_ID"))
    drain_s = int(e.get("WSGW_DRAIN_MS", 5000)) / 1000
    grace = duration_s(gw.get("stop_grace_period", "10s"))
    check(grace > drain_s, f"{name} stop_grace_period {grace:g}s is above the drain ({drain_s:g}s)")
    check(gw.get("stop_signal", "SIGTERM") == "SIGTERM", f"{name} stops with SIGTERM")
    build = gw.get("build") or {}
    check(str(build.get("dockerfile", "")).endswith("deploy/docker/Dockerfile"), f"{name} builds deploy/docker/Dockerfile")
check(len(node_ids) == 3 and None not in node_ids, f"gateways have distinct WSGW_NODE_IDs ({sorted(map(str, node_ids))})")

# nginx
nginx = services["nginx"]
published = set()
for p in nginx.get("ports") or []:
    if isinstance(p, dict):
        published.add(str(p.get("published")))
    else:
        published.add(str(p).split("/")[0].split(":")[-2] if ":" in str(p) else str(p))
check("443" in published, f"nginx publishes 443 (published: {sorted(published)})")
vols = [str(v) for v in nginx.get("volumes") or []]
check(any("deploy/nginx/nginx.conf:/etc/nginx/nginx.conf" in v for v in vols), "nginx mounts deploy/nginx/nginx.conf")
check(any(v.endswith("/etc/nginx/certs:ro") or ":/etc/nginx/certs" in v for v in vols), "nginx mounts the certificate volume")
for name in ("gw1", "gw2", "gw3"):
    check(depends(nginx).get(name, {}).get("condition") == "service_healthy", f"nginx waits for {name} to be healthy")

# monitoring profile
for name in ("prometheus", "grafana"):
    svc = services.get(name)
    check(svc is not None and "monitoring" in (svc.get("profiles") or []), f"{name} exists in the monitoring profile")

if failures:
    print(f"check-compose: {len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
PYEOF
say "ok: structure of the resolved compose file"

# The Sentinel overlay: a primary, a replica, three Sentinels, and gateways that find the
# primary through them.
SENTINEL_YML=docker-compose.sentinel.yml
docker-compose -f "$COMPOSE_YML" -f "$SENTINEL_YML" config -q ||
    die "docker-compose config -q rejected $COMPOSE_YML + $SENTINEL_YML"
say "ok: docker-compose -f $COMPOSE_YML -f $SENTINEL_YML config -q"
docker-compose -f "$COMPOSE_YML" -f "$SENTINEL_YML" config >"$resolved" 2>/dev/null || die "sentinel config failed"
"$PY" - "$resolved" <<'PYEOF'
import sys

import yaml

with open(sys.argv[1]) as f:
    services = yaml.safe_load(f).get("services") or {}
failures = 0


def check(ok, what):
    global failures
    print(f"check-compose: {'ok' if ok else 'FAIL'}: sentinel: {what}")
    failures += not ok


def cmd(svc):
    c = svc.get("command") or []
    return " ".join(c) if isinstance(c, list) else str(c)


def env(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(item.split("=", 1) if "=" in item else (item, None) for item in e)
    return e


replica = services.get("redis-replica") or {}
check("--replicaof redis 6379" in cmd(replica), "redis-replica replicates the redis service")
check("--appendonly yes" in cmd(replica) and "--appendonly yes" in cmd(services["redis"]), "AOF on the primary and the replica")
sentinels = [n for n in ("sentinel1", "sentinel2", "sentinel3") if n in services]
check(len(sentinels) == 3, f"three Sentinels ({sentinels})")
for n in sentinels:
    c = cmd(services[n])
    check("--sentinel" in c and "sentinel monitor wsgw redis 6379 2" in c, f"{n} runs redis-server --sentinel monitoring wsgw with quorum 2")
    check("resolve-hostnames yes" in c, f"{n} resolves the service names it hands out")
for n in ("gw1", "gw2", "gw3"):
    e = env(services[n])
    check(e.get("WSGW_REDIS_SENTINELS") == "sentinel1:26379,sentinel2:26379,sentinel3:26379", f"{n} finds Redis through the three Sentinels")
    check(e.get("WSGW_REDIS_SENTINEL_MASTER") == "wsgw", f"{n} names the monitored master")
    check(not e.get("WSGW_REDIS_URL"), f"{n} has no WSGW_REDIS_URL (blank)")
    deps = services[n].get("depends_on") or {}
    check(all(s in deps for s in sentinels), f"{n} waits for the Sentinels")
sys.exit(1 if failures else 0)
PYEOF
say "ok: structure of the Sentinel overlay"

# The Grafana dashboard the monitoring profile mounts: valid JSON, unique panel ids, no two
# panels on the same grid cells, every query on the provisioned datasource, memory and CPU shown.
# (That every metric it queries exists is checked against a real node by
# crates/wsgw/tests/metrics_names.rs.)
"$PY" - deploy/grafana/dashboard.json deploy/grafana/provisioning/datasources/prometheus.yml <<'PYEOF'
import json
import sys

import yaml

failures = 0


def check(ok, what):
    global failures
    print(f"check-compose: {'ok' if ok else 'FAIL'}: dashboard: {what}")
    failures += not ok


with open(sys.argv[1]) as f:
    dash = json.load(f)
with open(sys.argv[2]) as f:
    uids = {d.get("uid") for d in yaml.safe_load(f).get("datasources") or []}
panels = dash.get("panels") or []
ids = [p.get("id") for p in panels]
check(len(ids) == len(set(ids)) and None not in ids, f"{len(ids)} panels with unique ids")
cells = {}
for p in panels:
    g = p.get("gridPos") or {}
    for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
        for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
            cells.setdefault((x, y), []).append(p.get("id"))
overlaps = sorted({tuple(v) for v in cells.values() if len(v) > 1})
check(not overlaps and all(x < 24 for x, _ in cells), f"panels fit the 24-column grid without overlapping {overlaps}")
targets = [(p, t) for p in panels for t in p.get("targets") or []]
check(all(t.get("expr") for _, t in targets), "every query has an expression")
bad_ds = sorted({(t.get("datasource") or p.get("datasource") or {}).get("uid") for p, t in targets} - uids, key=str)
check(not bad_ds, f"every query uses a provisioned datasource {sorted(uids)} (others: {bad_ds})")
exprs = " ".join(t.get("expr", "") for _, t in targets)
check("process_resident_memory_bytes" in exprs, "a panel shows memory (process_resident_memory_bytes)")
check("rate(process_cpu_seconds_total" in exprs, "a panel shows CPU (rate(process_cpu_seconds_total))")
sys.exit(1 if failures else 0)
PYEOF
say "ok: the Grafana dashboard"

# The nginx configs (compose and cluster.sh): /metrics is not proxied, /api/ ends in `deny all`.
"$PY" - deploy/nginx/nginx.conf deploy/nginx/nginx.conf.template <<'PYEOF'
import re
import sys


def block(text, head):
    """The body of the first `head { ... }` block (braces balanced), comments removed."""
    text = re.sub(r"#[^\n]*", "", text)
    m = re.search(re.escape(head) + r"\s*\{", text)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth and i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end() : i - 1]


failures = 0
for path in sys.argv[1:]:
    text = open(path).read()
    metrics = block(text, "location = /metrics")
    api = block(text, "location /api/")
    checks = [
        (metrics is not None and re.search(r"\breturn\s+404\s*;", metrics), "location = /metrics returns 404"),
        (api is not None and re.search(r"\bdeny\s+all\s*;", api), "location /api/ ends in deny all"),
        (api is not None and "proxy_pass" in api, "location /api/ proxies to the gateways for allowed addresses"),
        (not re.search(r"location\s+(\^~\s+|~\*?\s+)?/(api|metrics)", re.sub(r"#[^\n]*", "", text).replace("location = /metrics", "").replace("location /api/", "")),
         "no other location matches /api or /metrics"),
    ]
    for ok, what in checks:
        print(f"check-compose: {'ok' if ok else 'FAIL'}: {path}: {what}")
        failures += not ok
sys.exit(1 if failures else 0)
PYEOF
say "ok: nginx keeps /metrics and /api/ private"

# The nginx config the compose file mounts: nginx -t with gwN:8080 -> 127.0.0.1 and
# container paths -> a temporary prefix (nginx -t never connects upstream).
if command -v nginx >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    trap 'rm -f "$resolved"; rm -rf "$tmp"' EXIT
    mkdir -p "$tmp"/{conf,logs,certs,temp}
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/certs/key.pem" -out "$tmp/certs/cert.pem" \
        -days 1 -subj "/CN=localhost" >/dev/null 2>&1 || die "openssl could not make a test certificate"
    sed -e 's/server gw\([0-9]\):8080/server 127.0.0.\1:8080/' \
        -e "s#/etc/nginx/certs/#$tmp/certs/#" \
        -e "s#/var/run/nginx.pid#$tmp/logs/nginx.pid#" \
        -e "s#/var/log/nginx/#$tmp/logs/#" \
        -e 's/^user nginx;//' \
        -e "s#^http {#http {\n    client_body_temp_path $tmp/temp/client_body;\n    proxy_temp_path $tmp/temp/proxy;\n    fastcgi_temp_path $tmp/temp/fastcgi;\n    uwsgi_temp_path $tmp/temp/uwsgi;\n    scgi_temp_path $tmp/temp/scgi;#" \
        deploy/nginx/nginx.conf >"$tmp/conf/nginx.conf"
    if ! out=$(nginx -t -p "$tmp" -c conf/nginx.conf -e logs/error.log 2>&1); then
        printf '%s\n' "$out" >&2
        die "nginx -t rejected deploy/nginx/nginx.conf"
    fi
    say "ok: nginx -t accepts deploy/nginx/nginx.conf ($(nginx -v 2>&1 | sed 's/.*: //'))"
else
    say "skipped: nginx -t of deploy/nginx/nginx.conf (nginx not installed)"
fi

# The image's build context (no Docker engine here): the build stage's COPY sources, each let
# through by both ignore files, copied from the tracked files alone; then the workspace must
# resolve from them. (vendor/, added for the redis patch, was once missing from both.)
ctx=$(mktemp -d)
trap 'rm -f "$resolved"; rm -rf "${tmp:-}" "$ctx"' EXIT
sources=$(awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/{for(i=2;i<NF;i++) print $i}' deploy/docker/Dockerfile)
[[ -n $sources ]] || die "no COPY in deploy/docker/Dockerfile's build stage"
for src in $sources; do
    for ignore in .dockerignore deploy/docker/Dockerfile.dockerignore; do
        grep -qxE "!${src%/}/?" "$ignore" || die "$ignore keeps $src (COPYed by deploy/docker/Dockerfile) out of the build context"
    done
    [[ -n $(git ls-files -- "$src") ]] || die "deploy/docker/Dockerfile COPYs $src, which has no tracked file"
done
# shellcheck disable=SC2086 # one argument per source
git ls-files -z -- $sources | tar --null -T - -cf - | tar -xf - -C "$ctx"
if ! out=$(cd "$ctx" && cargo metadata --locked --format-version 1 2>&1 >/dev/null); then
    printf '%s\n' "$out" >&2
    die "the workspace does not resolve from the image's build context ($(echo $sources))"
fi
# Files the build reads at compile time (`include_str!`, `include_bytes!`) must be in it too:
# those of the code `cargo build` compiles (not tests/, benches/ or examples/, which the image
# does not build).
if ! out=$("$PY" - "$ctx" <<'PYEOF'
import os, re, sys
ctx = sys.argv[1]
missing = []
for root, dirs, files in os.walk(ctx):
    dirs[:] = [d for d in dirs if d not in ("tests", "benches", "examples")]
    for f in files:
        if f.endswith(".rs"):
            path = os.path.join(root, f)
            text = open(path, encoding="utf-8", errors="replace").read()
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                if not os.path.isfile(os.path.join(root, m.group(1))):
                    missing.append(f"{os.path.relpath(path, ctx)}: {m.group(1)}")
print("\n".join(missing))
sys.exit(1 if missing else 0)
PYEOF
); then
    printf '%s\n' "$out" >&2
    die "files included at compile time are missing from the image's build context"
fi
say "ok: the image's build context ($(echo $sources)) holds the whole workspace and every file it includes"

say "all checks passed"
