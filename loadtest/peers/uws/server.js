// server.js: a minimal uWebSockets.js peer of wsgw, the yardstick of scripts/bench-uws.sh.
//
// It owns only what the load tool (wsgw-loadtest `idle` and `broadcast`) needs from a gateway,
// spoken the way wsgw speaks it (docs/protocol.md):
//   - GET /ws: HS256 JWT from `Authorization: Bearer`, `?token=` or
//     `Sec-WebSocket-Protocol: wsgw.v1, bearer.<jwt>`; a bad token is accepted, answered with an
//     `error` frame (`unauthorized` / `token_expired`) and closed with 4001 / 4003, as wsgw does.
//   - a `welcome` frame with wsgw's fields; every socket is subscribed to `broadcast`,
//     `user:<sub>` and `connection:<id>`.
//   - a server `ping` frame every WSGW_HEARTBEAT_INTERVAL_MS (one frame for all sockets, through
//     uWS's own topic fan-out), client `pong`; silence closes the socket (uWS idleTimeout).
//   - `ping` -> `pong`, `subscribe` (exact channel names the token's `channels` allow) ->
//     `subscribed`, `unsubscribe` -> `unsubscribed`; anything else -> `error` `bad_request`.
//   - delivery: PSUBSCRIBE <prefix>* on Redis; each frame `FCALL wsgw_publish` publishes is
//     forwarded byte for byte with `app.publish(channel, bytes)` (uWS's C++ fan-out).
//   - POST /api/broadcast and /api/publish with the API key: `FCALL wsgw_publish`, answers
//     `{"event_id":"..."}`; GET /health and /ready.
// Not here (on purpose, see docs/loadtest.md "Side by side with uWebSockets.js"): history,
// replay, resume, dedup, patterns, exclude lists, presence, requests, rate limits, hooks.
//
// Environment (the same names as wsgw where they mean the same):
//   WSGW_LISTEN (127.0.0.1:18090), WSGW_JWT_SECRET, WSGW_API_KEY, WSGW_REDIS_URL,
//   WSGW_REDIS_PREFIX (ws:), WSGW_NODE_ID (uws-<pid>), WSGW_HEARTBEAT_INTERVAL_MS (30000),
//   WSGW_HEARTBEAT_TIMEOUT_MS (60000), WSGW_MAX_MESSAGE_BYTES (65536),
//   WSGW_COMPRESSION (off; `on`: permessage-deflate with uWS.SHARED_COMPRESSOR, uWS's only
//   compressor without a context per socket), WSGW_COMPRESSION_MIN_BYTES (512: smaller frames
//   are sent uncompressed, as wsgw does),
//   PEER_LUA (the wsgw Redis Functions file to load; default: the repository's copy).
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { createClient } = require("redis");

// The native binary, loaded directly: the package's own entry point falls back to a pure-JS
// implementation (`ws`) when the binary does not load, which would measure something else.
function loadNative() {
  const pkg = path.dirname(require.resolve("@trufflesuite/uws-js-unofficial/package.json"));
  const file = path.join(
    pkg,
    "binaries",
    `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`
  );
  if (!fs.existsSync(file)) {
    const have = fs.readdirSync(path.join(pkg, "binaries")).join(", ");
    throw new Error(
      `uWS native binary ${file} is missing for Node ${process.version} (ABI ${process.versions.modules}); ` +
        `the package ships: ${have}. Use a Node version it has a binary for; no fallback is used.`
    );
  }
  const uws = require(file);
  if (typeof uws.App !== "function" || typeof uws.us_listen_socket_close !== "function") {
    throw new Error(`${file} did not load as uWebSockets.js`);
  }
  return { uws, file };
}

function need(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} must be set`);
  }
  return v;
}

function intEnv(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === "") return dflt;
  if (!/^\d+$/.test(v)) throw new Error(`${name}=${v}: expected a whole number`);
  return Number(v);
}

const { uws, file: NATIVE } = loadNative();
const LISTEN = process.env.WSGW_LISTEN || "127.0.0.1:18090";
const SECRET = Buffer.from(need("WSGW_JWT_SECRET"));
const API_KEY = need("WSGW_API_KEY");
const REDIS_URL = need("WSGW_REDIS_URL");
const PREFIX = process.env.WSGW_REDIS_PREFIX || "ws:";
const NODE_ID = process.env.WSGW_NODE_ID || `uws-${process.pid}`;
const HB_INTERVAL = intEnv("WSGW_HEARTBEAT_INTERVAL_MS", 30000);
const HB_TIMEOUT = intEnv("WSGW_HEARTBEAT_TIMEOUT_MS", 60000);
const MAX_MESSAGE = intEnv("WSGW_MAX_MESSAGE_BYTES", 65536);
const COMPRESSION = (process.env.WSGW_COMPRESSION || "off").toLowerCase();
if (!["on", "off"].includes(COMPRESSION)) throw new Error(`WSGW_COMPRESSION=${COMPRESSION}: expected on or off`);
const COMPRESS_MIN = intEnv("WSGW_COMPRESSION_MIN_BYTES", 512);
const LUA = process.env.PEER_LUA || path.join(__dirname, "../../../crates/wsgw/src/broker/redis/wsgw.lua");
const HB_TOPIC = "\u0000hb"; // not a valid channel name, so no publish can reach it
const CHANNEL_RE = /^[A-Za-z0-9_.:@=/-]{1,256}$/;

// ---- JWT (HS256 only, as the load tool signs) ----

function b64urlJson(s) {
  return JSON.parse(Buffer.from(s, "base64url").toString("utf8"));
}

// Returns {sub, channels} or throws {code, message}.
function verify(token) {
  const fail = (code, message) => {
    throw { code, message };
  };
  if (!token) fail("unauthorized", "missing token");
  const parts = token.split(".");
  if (parts.length !== 3) fail("unauthorized", "invalid token: malformed");
  let header, claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    fail("unauthorized", "invalid token: malformed");
  }
  if (!header || header.alg !== "HS256") fail("unauthorized", "invalid token: wrong algorithm");
  const mac = crypto.createHmac("sha256", SECRET).update(`${parts[0]}.${parts[1]}`).digest();
  const sig = Buffer.from(parts[2], "base64url");
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) {
    fail("unauthorized", "invalid token: bad signature");
  }
  if (typeof claims.exp !== "number") fail("unauthorized", "invalid token: no exp");
  if (claims.exp + 60 < Date.now() / 1000) fail("token_expired", "token expired");
  if (typeof claims.sub !== "string" || claims.sub === "" || claims.sub.length > 256) {
    fail("unauthorized", "invalid token: bad sub");
  }
  const channels = Array.isArray(claims.channels) ? claims.channels.filter((c) => typeof c === "string") : [];
  return { sub: claims.sub, channels };
}

// `*` matches any run of characters (crates/wsgw-protocol glob_match).
function globMatch(pattern, text) {
  let pi = 0,
    ti = 0,
    sp = -1,
    st = 0;
  while (ti < text.length) {
    if (pi < pattern.length && pattern[pi] === "*") {
      sp = pi++;
      st = ti;
    } else if (pi < pattern.length && pattern[pi] === text[ti]) {
      pi++;
      ti++;
    } else if (sp >= 0) {
      pi = sp + 1;
      ti = ++st;
    } else {
      return false;
    }
  }
  while (pi < pattern.length && pattern[pi] === "*") pi++;
  return pi === pattern.length;
}

function tokenOf(req) {
  const auth = req.getHeader("authorization");
  if (auth.startsWith("Bearer ")) return { token: auth.slice(7), protocol: "" };
  const proto = req.getHeader("sec-websocket-protocol");
  if (proto) {
    const offered = proto.split(",").map((s) => s.trim());
    const bearer = offered.find((p) => p.startsWith("bearer."));
    if (bearer) return { token: bearer.slice(7), protocol: offered.includes("wsgw.v1") ? "wsgw.v1" : "" };
  }
  const q = new URLSearchParams(req.getQuery() || "");
  return { token: q.get("token") || "", protocol: "" };
}

// ---- frames ----

const json = (o) => JSON.stringify(o);
function errorFrame(code, message, requestId) {
  const f = { type: "error", code, message };
  if (requestId !== undefined) f.request_id = requestId;
  return json(f);
}

// ---- the app ----

const app = uws.App();
let sockets = 0;

app.ws("/ws", {
  compression: COMPRESSION === "on" ? uws.SHARED_COMPRESSOR : uws.DISABLED,
  maxPayloadLength: MAX_MESSAGE,
  // uWS counts silence in seconds, a multiple of 4, at least 8.
  idleTimeout: Math.max(8, Math.ceil(HB_TIMEOUT / 4000) * 4),
  maxBackpressure: 1024 * 1024,
  sendPingsAutomatically: false,
  upgrade: (res, req, context) => {
    const key = req.getHeader("sec-websocket-key");
    const ext = req.getHeader("sec-websocket-extensions");
    const { token, protocol } = tokenOf(req);
    let data;
    try {
      const c = verify(token);
      data = { sub: c.sub, grants: c.channels, id: crypto.randomBytes(16).toString("hex"), err: null };
    } catch (e) {
      data = { err: e && e.code ? e : { code: "unauthorized", message: String(e) } };
    }
    res.upgrade(data, key, protocol, ext, context);
  },
  open: (ws) => {
    const d = ws.getUserData();
    if (d.err) {
      ws.cork(() => {
        ws.send(errorFrame(d.err.code, d.err.message), false);
        ws.end(d.err.code === "token_expired" ? 4003 : 4001, d.err.code);
      });
      return;
    }
    sockets++;
    ws.subscribe("broadcast");
    ws.subscribe(`user:${d.sub}`);
    ws.subscribe(`connection:${d.id}`);
    ws.subscribe(HB_TOPIC);
    ws.send(
      json({
        type: "welcome",
        connection_id: d.id,
        user_id: d.sub,
        node: NODE_ID,
        resumed: false,
        recovered: true,
        replayed: 0,
        heartbeat: { interval_ms: HB_INTERVAL, timeout_ms: HB_TIMEOUT },
        session_ttl_ms: 0,
      }),
      false
    );
  },
  message: (ws, message, isBinary) => {
    const d = ws.getUserData();
    let f;
    try {
      f = JSON.parse(Buffer.from(message).toString("utf8"));
    } catch {
      ws.send(errorFrame("bad_request", "not a JSON frame"), false);
      return;
    }
    if (isBinary || !f || typeof f !== "object") {
      ws.send(errorFrame("bad_request", "expected a JSON object in a text frame"), false);
      return;
    }
    const rid = f.request_id;
    switch (f.type) {
      case "pong":
        return; // any received data resets uWS's idle timer
      case "ping":
        ws.send(json(f.ts === undefined ? { type: "pong" } : { type: "pong", ts: f.ts }), false);
        return;
      case "subscribe":
      case "unsubscribe": {
        const ch = f.channel;
        if (typeof ch !== "string" || !CHANNEL_RE.test(ch)) {
          ws.send(errorFrame("bad_request", "invalid channel name (the uWS peer takes no patterns)", rid), false);
          return;
        }
        const auto = ch === "broadcast" || ch === `user:${d.sub}` || ch === `connection:${d.id}`;
        if (f.type === "unsubscribe") {
          if (auto) {
            ws.send(errorFrame("bad_request", `${ch} is automatic`, rid), false);
            return;
          }
          ws.unsubscribe(ch);
          const u = { type: "unsubscribed", channel: ch };
          if (rid !== undefined) u.request_id = rid;
          ws.send(json(u), false);
          return;
        }
        if (!auto && !d.grants.some((g) => globMatch(g, ch))) {
          ws.send(errorFrame("forbidden", `token does not allow subscribing to ${ch}`, rid), false);
          return;
        }
        ws.subscribe(ch);
        const s = { type: "subscribed", channel: ch, recovered: true, replayed: 0 };
        if (rid !== undefined) s.request_id = rid;
        ws.send(json(s), false);
        return;
      }
      default:
        ws.send(errorFrame("bad_request", `the uWS peer does not handle ${String(f.type)}`, rid), false);
    }
  },
  close: (ws) => {
    if (!ws.getUserData().err) sockets--;
  },
});

// ---- HTTP API ----

let redis; // commands
let ready = false;

function reply(res, status, body) {
  if (res.aborted) return;
  res.cork(() => {
    res.writeStatus(status).writeHeader("content-type", "application/json").end(json(body));
  });
}

function readBody(res, limit, cb) {
  const chunks = [];
  let size = 0;
  res.aborted = false;
  res.onAborted(() => {
    res.aborted = true;
  });
  res.onData((ab, last) => {
    if (size < 0) return;
    size += ab.byteLength;
    if (size > limit) {
      size = -1;
      reply(res, "413 Payload Too Large", { error: "too_large" });
      return;
    }
    chunks.push(Buffer.from(ab.slice(0))); // uWS reuses the ArrayBuffer
    if (last) cb(Buffer.concat(chunks));
  });
}

function publishRoute(broadcast) {
  return (res, req) => {
    const authorized = req.getHeader("authorization") === `Bearer ${API_KEY}`;
    readBody(res, 1024 * 1024, async (body) => {
      if (!authorized) return reply(res, "401 Unauthorized", { error: "unauthorized" });
      let b;
      try {
        b = JSON.parse(body.toString("utf8"));
      } catch {
        return reply(res, "400 Bad Request", { error: "body is not JSON" });
      }
      const channel = broadcast ? "broadcast" : b && b.channel;
      if (typeof channel !== "string" || !b || typeof b.event !== "string" || b.data === undefined) {
        return reply(res, "400 Bad Request", { error: "expected {channel, event, data}" });
      }
      try {
        const id = await redis.sendCommand([
          "FCALL",
          "wsgw_publish",
          "2",
          `${PREFIX}seq`,
          `${PREFIX}history:${channel}`,
          channel,
          b.event,
          json(b.data),
        ]);
        reply(res, "200 OK", { event_id: String(id) });
      } catch (e) {
        const msg = String((e && e.message) || e);
        if (msg.includes("wsgw_publish:")) reply(res, "400 Bad Request", { error: msg });
        else reply(res, "503 Service Unavailable", { error: msg });
      }
    });
  };
}

app.post("/api/broadcast", publishRoute(true));
app.post("/api/publish", publishRoute(false));
app.get("/health", (res) => res.end("ok"));
app.get("/ready", (res) => {
  if (ready) res.end("ready");
  else res.writeStatus("503 Service Unavailable").end("not ready");
});
app.any("/*", (res) => res.writeStatus("404 Not Found").end("not found"));

// ---- Redis delivery ----

// A pub/sub message: `#x:<ids>\n` (exclude list, not honoured here) then the frame; only
// `event` frames naming the channel they travel on are forwarded, as wsgw's parse_frame.
function deliver(message, rawChannel) {
  const channel = rawChannel.toString("utf8").slice(PREFIX.length);
  let body = message;
  if (body[0] === 0x23 && body[1] === 0x78 && body[2] === 0x3a) {
    const nl = body.indexOf(0x0a);
    if (nl < 0) return;
    body = body.subarray(nl + 1);
  }
  // Cheap check instead of a full parse: wsgw_publish writes `{"type":"event",...`.
  if (body.length < 16 || body.toString("latin1", 0, 15) !== '{"type":"event"') return;
  // `compress` asks uWS to deflate the frame for each socket that negotiated it.
  app.publish(channel, body, false, COMPRESSION === "on" && body.length >= COMPRESS_MIN);
}

async function main() {
  redis = createClient({ url: REDIS_URL });
  redis.on("error", (e) => console.error(`redis: ${e.message}`));
  await redis.connect();
  await redis.sendCommand(["FUNCTION", "LOAD", "REPLACE", fs.readFileSync(LUA, "utf8")]);
  const sub = redis.duplicate();
  sub.on("error", (e) => console.error(`redis pub/sub: ${e.message}`));
  await sub.connect();
  await sub.pSubscribe(`${PREFIX}*`, deliver, true);

  setInterval(() => {
    app.publish(HB_TOPIC, json({ type: "ping", ts: Date.now() }), false, false);
  }, HB_INTERVAL).unref();

  const i = LISTEN.lastIndexOf(":");
  const host = LISTEN.slice(0, i);
  const port = Number(LISTEN.slice(i + 1));
  app.listen(host, port, (token) => {
    if (!token) {
      console.error(`cannot listen on ${LISTEN}`);
      process.exit(1);
    }
    ready = true;
    console.error(`uWS peer ${NODE_ID} on ${host}:${uws.us_socket_local_port(token)} (native ${path.basename(NATIVE)})`);
  });
}

process.on("SIGTERM", () => {
  console.error(`uWS peer stopping with ${sockets} sockets`);
  process.exit(0);
});

main().catch((e) => {
  console.error(`uWS peer failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
