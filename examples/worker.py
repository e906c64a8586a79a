#!/usr/bin/env python3
"""A wsgw backend worker: answers client `request` frames.

Reads requests from the `<prefix>inbound` stream with a consumer group (so several workers
share the load and each request goes to one of them), answers with `response` frames
published on `<prefix>connection:<connection_id>`, acknowledges with XACK, and takes over
requests a crashed worker left unacknowledged with XAUTOCLAIM.

    pip install redis
    WSGW_REDIS_URL=redis://127.0.0.1:6379 python3 examples/worker.py

Actions handled here: `echo` (answers with the request's data) and `stream` (three partial
answers with "more": true, then a final one): replace `handle` with your own logic.
"""
import json
import os
import signal
import socket
import time

import redis

PREFIX = os.environ.get("WSGW_REDIS_PREFIX", "ws:")
STREAM = PREFIX + "inbound"
GROUP = os.environ.get("WSGW_WORKER_GROUP", "workers")
CONSUMER = os.environ.get("WSGW_WORKER_NAME", f"{socket.gethostname()}-{os.getpid()}")
# A request unacknowledged this long is presumed abandoned by a crashed worker.
CLAIM_IDLE_MS = int(os.environ.get("WSGW_WORKER_CLAIM_IDLE_MS", "30000"))
# Stop after this many seconds (0: run until SIGTERM/SIGINT).
RUN_FOR_S = float(os.environ.get("WSGW_WORKER_RUN_FOR_S", "0"))

running = True


def stop(*_):
    global running
    running = False


def respond(r, fields, data, more=False, ok=True, error=None):
    frame = {"type": "response", "request_id": json.loads(fields["request_id"]), "ok": ok, "more": more}
    if data is not None:
        frame["data"] = data
    if error is not None:
        frame["error"] = error
    r.publish(PREFIX + "connection:" + fields["connection_id"], json.dumps(frame))


def handle(r, fields):
    action = fields["action"]
    data = json.loads(fields["data"])
    # fields["claims"] holds the user's token claims (sub, channels, publish, actions, exp)
    # for authorisation decisions.
    if action == "echo":
        respond(r, fields, data)
    elif action == "stream":
        for i in range(3):
            respond(r, fields, {"chunk": i}, more=True)
        respond(r, fields, {"done": True})
    else:
        respond(r, fields, None, ok=False, error=f"unknown action {action}")


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    r = redis.Redis.from_url(os.environ.get("WSGW_REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)
    try:
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    started = time.monotonic()
    while running and (RUN_FOR_S == 0 or time.monotonic() - started < RUN_FOR_S):
        # First what crashed workers left behind, then new requests.
        _, claimed, _ = r.xautoclaim(STREAM, GROUP, CONSUMER, CLAIM_IDLE_MS, "0-0", count=10)
        batch = list(claimed)
        for _, entries in r.xreadgroup(GROUP, CONSUMER, {STREAM: ">"}, count=10, block=200) or []:
            batch.extend(entries)
        for entry_id, fields in batch:
            if fields:
                handle(r, fields)
            r.xack(STREAM, GROUP, entry_id)


if __name__ == "__main__":
    main()
