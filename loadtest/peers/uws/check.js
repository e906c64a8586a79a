// check.js: asserts that a running uWS peer (server.js) speaks the subset the load tool needs.
//
//   PEER_URL=ws://127.0.0.1:18090/ws PEER_API=http://127.0.0.1:18090 \
//   WSGW_JWT_SECRET=... WSGW_API_KEY=... node check.js
//
// Checks: the three ways to send the token (Authorization, Sec-WebSocket-Protocol with
// `wsgw.v1` echoed, ?token=), the welcome's fields, a bad token's `error` frame and close 4001,
// an expired token's 4003, ping -> pong, subscribe -> subscribed (and forbidden outside the
// token's channels), and a POST /api/broadcast and /api/publish delivered byte for byte as
// wsgw_publish wrote it. Exits 1 on the first failure; every wait has a 5 s deadline.
"use strict";

const crypto = require("node:crypto");
const assert = require("node:assert/strict");
const WebSocket = require("ws"); // the client side only (a dependency of the uWS package)

const URL_WS = process.env.PEER_URL;
const API = process.env.PEER_API;
const SECRET = process.env.WSGW_JWT_SECRET;
const KEY = process.env.WSGW_API_KEY;

function sign(claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${head}.${crypto.createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

const exp = () => Math.floor(Date.now() / 1000) + 3600;

// A socket with a frame queue: next() waits for the next text frame (5 s deadline).
function open(url, opts, protocols) {
  const ws = new WebSocket(url, protocols, opts);
  const frames = [];
  const waiters = [];
  let closed = null;
  ws.on("message", (data) => {
    const s = data.toString("utf8");
    if (waiters.length) waiters.shift()(s);
    else frames.push(s);
  });
  ws.on("close", (code) => {
    closed = code;
    while (waiters.length) waiters.shift()(null);
  });
  ws.on("error", () => {});
  return {
    ws,
    next() {
      if (frames.length) return Promise.resolve(frames.shift());
      if (closed !== null) return Promise.resolve(null);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("no frame within 5 s")), 5000);
        waiters.push((s) => {
          clearTimeout(t);
          resolve(s);
        });
      });
    },
    closeCode() {
      if (closed !== null) return Promise.resolve(closed);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("not closed within 5 s")), 5000);
        ws.on("close", (code) => {
          clearTimeout(t);
          resolve(code);
        });
      });
    },
  };
}

async function welcomed(c, sub) {
  const w = JSON.parse(await c.next());
  assert.equal(w.type, "welcome");
  assert.equal(w.user_id, sub);
  assert.match(w.connection_id, /^[0-9a-f]{32}$/);
  for (const k of ["node", "resumed", "recovered", "replayed", "heartbeat", "session_ttl_ms"]) {
    assert.ok(k in w, `welcome lacks ${k}`);
  }
  assert.ok(w.heartbeat.interval_ms > 0 && w.heartbeat.timeout_ms > w.heartbeat.interval_ms);
  return w;
}

async function post(path, body) {
  const r = await fetch(`${API}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

async function main() {
  // Authorization header (what crates/wsgw-client sends).
  const a = open(URL_WS, { headers: { authorization: `Bearer ${sign({ sub: "a", exp: exp(), channels: ["room:*"] })}` } });
  const wa = await welcomed(a, "a");
  // Sec-WebSocket-Protocol: wsgw.v1 is echoed.
  const b = open(URL_WS, {}, ["wsgw.v1", `bearer.${sign({ sub: "b", exp: exp() })}`]);
  await welcomed(b, "b");
  assert.equal(b.ws.protocol, "wsgw.v1");
  // ?token=
  const c = open(`${URL_WS}?token=${sign({ sub: "c", exp: exp() })}`, {});
  await welcomed(c, "c");

  // Bad signature: error frame, 4001. Expired: 4003.
  const bad = open(URL_WS, { headers: { authorization: `Bearer ${sign({ sub: "x", exp: exp() })}x` } });
  assert.equal(JSON.parse(await bad.next()).code, "unauthorized");
  assert.equal(await bad.closeCode(), 4001);
  const old = open(URL_WS, { headers: { authorization: `Bearer ${sign({ sub: "x", exp: 1000 })}` } });
  assert.equal(JSON.parse(await old.next()).code, "token_expired");
  assert.equal(await old.closeCode(), 4003);

  // ping -> pong; subscribe within and outside the grants.
  a.ws.send(JSON.stringify({ type: "ping", ts: 7 }));
  assert.deepEqual(JSON.parse(await a.next()), { type: "pong", ts: 7 });
  a.ws.send(JSON.stringify({ type: "subscribe", channel: "room:1", request_id: "r1" }));
  assert.deepEqual(JSON.parse(await a.next()), {
    type: "subscribed",
    channel: "room:1",
    recovered: true,
    replayed: 0,
    request_id: "r1",
  });
  a.ws.send(JSON.stringify({ type: "subscribe", channel: "secret:1", request_id: 2 }));
  const f = JSON.parse(await a.next());
  assert.equal(f.code, "forbidden");
  assert.equal(f.request_id, 2);

  // Broadcast reaches all three, byte for byte the same; publish reaches only room:1's socket.
  const r = await post("/api/broadcast", { event: "hello", data: { n: 1 } });
  assert.equal(r.status, 200);
  const frames = await Promise.all([a.next(), b.next(), c.next()]);
  assert.equal(frames[1], frames[0]);
  assert.equal(frames[2], frames[0]);
  const ev = JSON.parse(frames[0]);
  assert.equal(ev.type, "event");
  assert.equal(ev.channel, "broadcast");
  assert.equal(ev.event_id, r.body.event_id);
  assert.deepEqual(ev.data, { n: 1 });
  const p = await post("/api/publish", { channel: "room:1", event: "e", data: [1] });
  assert.equal(p.status, 200);
  const pe = JSON.parse(await a.next());
  assert.equal(pe.channel, "room:1");
  assert.equal(pe.event_id, p.body.event_id);
  // A user channel: only that user.
  const u = await post("/api/publish", { channel: "user:b", event: "e", data: {} });
  assert.equal(JSON.parse(await b.next()).event_id, u.body.event_id);
  // A wrong API key: 401.
  const w = await fetch(`${API}/api/broadcast`, { method: "POST", headers: { authorization: "Bearer no" }, body: "{}" });
  assert.equal(w.status, 401);

  for (const s of [a, b, c]) s.ws.close(1000);
  console.log(`uWS peer check: ok (${wa.node})`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`uWS peer check FAILED: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  }
);
