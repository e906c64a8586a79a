#!/usr/bin/env python3
"""Helpers for scripts/autobahn.sh: free ports, waiting for the echo server, the spec, the verdict.

  ab.py free-port                          print a free loopback TCP port
  ab.py wait-listen PID PORT SECONDS       wait until PID itself listens on 127.0.0.1:PORT
                                           (exit 2: another process has the port)
  ab.py spec OUT URL OUTDIR CASES COMPR    write the fuzzingclient spec (CASES: comma list)
  ab.py report INDEX CASES COMPR           print the result table; exit 1 on any failed case
"""
import fnmatch
import json
import os
import socket
import sys
import time

PASS = ("OK", "NON-STRICT", "INFORMATIONAL")
AGENT = "wsgw"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def listen_inodes(port):
    """Inodes of the sockets in LISTEN state on PORT (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except FileNotFoundError:
            pass
    return inodes


def owns(pid, inodes):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def wait_listen(pid, port, seconds):
    """Exit 0 once PID (not some other process) listens on PORT and accepts a connection."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            sys.exit(f"echo server (pid {pid}) exited before listening on port {port}")
        inodes = listen_inodes(port)
        if inodes and owns(pid, inodes):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                pass
        elif inodes:
            print(f"port {port} is taken by another process, not the echo server (pid {pid})", file=sys.stderr)
            sys.exit(2)
        time.sleep(0.05)
    sys.exit(f"echo server (pid {pid}) did not listen on port {port} within {seconds} s")


def case_list(cases, compression):
    pats = [c.strip() for c in cases.split(",") if c.strip()]
    if compression == "1":
        pats += [p for p in ("12.*", "13.*") if p not in pats]
    return pats


def spec(out, url, outdir, cases, compression):
    doc = {
        "outdir": outdir,
        "servers": [{"agent": AGENT, "url": url}],
        "cases": case_list(cases, compression),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)


def case_key(cid):
    return tuple(int(p) for p in cid.split("."))


def report(index, cases, compression):
    pats = case_list(cases, compression)
    try:
        with open(index) as f:
            results = json.load(f).get(AGENT, {})
    except (OSError, ValueError) as e:
        sys.exit(f"FAIL: no readable report at {index}: {e}")
    if not results:
        sys.exit(f"FAIL: the report at {index} has no cases for agent {AGENT}")

    counts = {}
    bad = []
    for cid in sorted(results, key=case_key):
        r = results[cid]
        b, bc = r.get("behavior", "?"), r.get("behaviorClose", "?")
        for col, v in (("behavior", b), ("behaviorClose", bc)):
            counts.setdefault(v, {"behavior": 0, "behaviorClose": 0})[col] += 1
        # Compression cases answer UNIMPLEMENTED when the server does not negotiate
        # permessage-deflate: not a failure while compression is off.
        ok = PASS + (("UNIMPLEMENTED",) if compression != "1" and cid.split(".")[0] in ("12", "13") else ())
        if b not in ok or bc not in ok:
            bad.append((cid, b, bc, r.get("remoteCloseCode"), r.get("reportfile", "")))

    order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE", "UNCLEAN"]
    rows = sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
    print(f"Autobahn|Testsuite fuzzingclient: {len(results)} cases ({', '.join(pats)})")
    print(f"  {'result':<16}{'behavior':>10}{'behaviorClose':>15}")
    for k in rows:
        print(f"  {k:<16}{counts[k]['behavior']:>10}{counts[k]['behaviorClose']:>15}")

    missing = [p for p in pats if not any(fnmatch.fnmatchcase(c, p) for c in results)]
    for p in missing:
        print(f"FAIL: requested cases {p} are not in the report")
    if bad:
        outdir = os.path.dirname(index)
        print(f"FAIL: {len(bad)} case(s) not OK / NON-STRICT / INFORMATIONAL:")
        print(f"  {'case':<10}{'behavior':<16}{'behaviorClose':<16}{'close code':<12}details")
        for cid, b, bc, code, rf in bad:
            html = os.path.join(outdir, rf.replace(".json", ".html")) if rf else ""
            print(f"  {cid:<10}{b:<16}{bc:<16}{str(code):<12}{html}")
    if bad or missing:
        sys.exit(1)
    lenient = compression != "1" and any(c.split(".")[0] in ("12", "13") for c in results)
    note = " (UNIMPLEMENTED allowed in 12.*/13.*: compression is off)" if lenient else ""
    print(f"PASS: every case is OK, NON-STRICT or INFORMATIONAL{note}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-port":
        free_port()
    elif cmd == "wait-listen":
        wait_listen(int(args[0]), int(args[1]), float(args[2]))
    elif cmd == "spec":
        spec(*args)
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(__doc__)
