#!/usr/bin/env bash
# scripts/autobahn/install.sh DIR: installs Autobahn|Testsuite (`wstest`) into DIR, once.
#
# Autobahn|Testsuite runs only on Python 2.7, which current Debian (bookworm, trixie) no longer
# ships. This script takes Python 2.7 from Debian 11 (bullseye) without touching the machine's
# apt state or dpkg database:
#   1. a private apt state under DIR/apt (own sources list, lists and cache) pointed at bullseye
#      and bullseye-security, signed by the keys in debian-archive-keyring;
#   2. `apt-get download` of the python2.7 .debs and the two libraries they need that newer
#      Debian dropped (libssl1.1, libffi7), unpacked with `dpkg -x` into DIR/py27;
#   3. pip 20.3.4 (the last pip for Python 2.7, fetched with the system python3's pip), then the
#      pinned Python packages below into DIR/py27;
#   4. DIR/wstest, a wrapper that sets LD_LIBRARY_PATH and runs the installed `wstest`.
# DIR/.installed holds the pin list of a finished install: when it matches, nothing is done.
# A half-finished install (no or another .installed) is wiped and redone.
#
# The only system packages it installs (with apt-get, when missing) are gcc and libc6-dev
# (Twisted, wsaccel and ujson have C extensions without Python 2.7 wheels) and python3-pip.
#
# Environment:
#   WSGW_AUTOBAHN_DEBIAN_MIRROR  bullseye mirror (default: the machine's own Debian mirror,
#                                else http://deb.debian.org/debian); if it has no bullseye,
#                                http://archive.debian.org/debian is tried.
set -euo pipefail

ROOT=${1:?usage: scripts/autobahn/install.sh DIR}
log() { printf 'autobahn-install: %s\n' "$*" >&2; }

# Pins. Changing any of these makes the next run reinstall (they are written to .installed).
PY_DEBS=(python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib libpython2.7
         python2.7-dev libpython2.7-dev libssl1.1 libffi7)
PIP_PIN=pip==20.3.4
BOOT_PINS=("setuptools==44.1.1" "wheel==0.37.1")
PY_PINS=(autobahntestsuite==25.10.1 "autobahn[accelerate,twisted]==0.10.9" txaio==2.1.0
         Twisted==19.10.0 incremental==16.10.1 zope.interface==4.6.0 pyOpenSSL==19.1.0
         cryptography==3.3.2 service_identity==18.1.0 jinja2==2.11.3 markupsafe==1.1.1
         Werkzeug==1.0.1 klein==17.10.0 unittest2==1.1.0 six==1.16.0)
STAMP="bullseye ${PY_DEBS[*]} $PIP_PIN ${BOOT_PINS[*]} ${PY_PINS[*]}"

if [[ -x "$ROOT/wstest" && -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP" ]]; then
  exit 0
fi

mkdir -p "$ROOT"
exec 9>"$ROOT.lock"
flock 9   # a second run waits for the first instead of installing over it
if [[ -x "$ROOT/wstest" && -f "$ROOT/.installed" && "$(cat "$ROOT/.installed")" == "$STAMP" ]]; then
  exit 0
fi
log "installing Autobahn|Testsuite into $ROOT (about a minute, once)"
rm -rf "${ROOT:?}"/{apt,debs,py27,wheels,wstest,.installed}
mkdir -p "$ROOT"/apt/lists/partial "$ROOT"/apt/cache/archives/partial "$ROOT"/debs "$ROOT"/py27 "$ROOT"/wheels

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
[[ -f /usr/include/stdio.h ]] || need_apt+=(libc6-dev)   # only recommended by gcc
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v python3 >/dev/null || need_apt+=(python3)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

arch=$(dpkg --print-architecture)
triplet=$(gcc -dumpmachine)   # x86_64-linux-gnu on amd64: Debian's multiarch directory name

# The machine's own Debian mirror (deb822 .sources or one-line sources.list), not the security one.
own_mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v '^[[:space:]]*#' \
  | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | head -1 || true)
mirrors=("${WSGW_AUTOBAHN_DEBIAN_MIRROR:-${own_mirror:-http://deb.debian.org/debian}}" http://archive.debian.org/debian)
# bullseye's keys are in debian-archive-keyring; a later keyring moves them to the removed-keys file.
keyrings=()
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-removed-keys.gpg; do
  [[ -f $k ]] && keyrings+=("$k")
done
((${#keyrings[@]})) || { log "no /usr/share/keyrings/debian-archive-keyring.gpg (apt-get install debian-archive-keyring)"; exit 1; }

fetched=""
for m in "${mirrors[@]}"; do
 for keyring in "${keyrings[@]}"; do
  m=${m%/}
  sec=${m%/debian}/debian-security
  printf 'deb [arch=%s signed-by=%s] %s bullseye main\ndeb [arch=%s signed-by=%s] %s bullseye-security main\n' \
    "$arch" "$keyring" "$m" "$arch" "$keyring" "$sec" > "$ROOT"/apt/sources.list
  APT=(apt-get -q -o Dir::Etc::SourceList="$ROOT"/apt/sources.list -o Dir::Etc::SourceParts=/dev/null
       -o Dir::State::Lists="$ROOT"/apt/lists -o Dir::Cache="$ROOT"/apt/cache
       -o APT::Sandbox::User=root -o Acquire::Check-Valid-Until=false)
  log "bullseye .debs from $m (keys: $keyring)"
  if "${APT[@]}" update -qq >"$ROOT"/apt/update.log 2>&1 \
     && ! grep -qE '^(E:|W: Failed)' "$ROOT"/apt/update.log \
     && (cd "$ROOT"/debs && "${APT[@]}" download -qq "${PY_DEBS[@]}") >"$ROOT"/apt/download.log 2>&1; then
    fetched=$m
    break 2
  fi
  log "failed: $(grep -hE '^(E|W):' "$ROOT"/apt/update.log "$ROOT"/apt/download.log 2>/dev/null | head -3)"
  rm -f "$ROOT"/debs/*.deb
  # Another keyring helps only when this one lacks the key; a mirror without bullseye does not.
  grep -qE 'NO_PUBKEY|GPG error|not signed' "$ROOT"/apt/update.log || continue 2
 done
done
[[ -n $fetched ]] || { log "could not download Python 2.7 from any bullseye mirror"; exit 1; }
for d in "$ROOT"/debs/*.deb; do dpkg -x "$d" "$ROOT"/py27; done

PY="$ROOT"/py27/usr/bin/python2.7
export LD_LIBRARY_PATH="$ROOT/py27/usr/lib/$triplet"
# GCC 14 (trixie) turns these old-C warnings into errors; the Python 2.7-era extensions have them.
export CFLAGS="-I$ROOT/py27/usr/include/python2.7 -I$ROOT/py27/usr/include -Wno-error=incompatible-pointer-types \
  -Wno-error=implicit-function-declaration -Wno-error=int-conversion"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1
# pip 20.3.4 carries a CA bundle from 2020; the system's is current (ca-certificates).
if [[ -z ${PIP_CERT:-} && -f /etc/ssl/certs/ca-certificates.crt ]]; then
  export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
"$PY" -c 'import ssl, ctypes, zlib, hashlib; print("python " + __import__("sys").version.split()[0] + ", " + ssl.OPENSSL_VERSION)' >&2

log "pip: $PIP_PIN, then ${#PY_PINS[@]} pinned packages (C extensions are compiled with gcc)"
python3 -m pip download -q --no-deps "$PIP_PIN" -d "$ROOT"/wheels
pipwhl=$(ls "$ROOT"/wheels/pip-*.whl)
# pip runs straight from its wheel (a zip on sys.path) to install itself into the new Python.
pip27() { # quiet unless it fails; then the end of its log
  "$PY" "$@" --no-warn-script-location >"$ROOT"/pip.log 2>&1 \
    || { grep -v DEPRECATION "$ROOT"/pip.log | tail -30 >&2; log "pip failed (log: $ROOT/pip.log)"; exit 1; }
}
pip27 "$pipwhl/pip" install -q "$PIP_PIN" "${BOOT_PINS[@]}"
pip27 -m pip install -q "${PY_PINS[@]}"
[[ -x "$ROOT"/py27/usr/local/bin/wstest ]] || { log "pip did not install wstest"; exit 1; }

cat > "$ROOT"/wstest <<EOF
#!/bin/sh
# Autobahn|Testsuite on the Python 2.7 unpacked by scripts/autobahn/install.sh.
LD_LIBRARY_PATH='$ROOT/py27/usr/lib/$triplet' PYTHONNOUSERSITE=1 exec '$PY' '$ROOT/py27/usr/local/bin/wstest' "\$@"
EOF
chmod +x "$ROOT"/wstest
"$ROOT"/wstest --autobahnversion >&2
rm -rf "$ROOT"/apt/cache "$ROOT"/debs
printf '%s' "$STAMP" > "$ROOT"/.installed
log "done"
