// Compression cost and gain (docs/loadtest.md, "Compression"): starts one redis-server, then
// one server after the other against it: wsgw (the given build) with WSGW_COMPRESSION=off and
// =on, and the uWebSockets.js peer of scripts/bench-uws.sh (loadtest/peers/uws) the same two
// ways (uWS.SHARED_COMPRESSOR). For each it opens SOCKETS sockets (node's `ws`,
// perMessageDeflate off / on), broadcasts EVENTS events of a realistic ~2 KB JSON payload
// through POST /api/broadcast (both servers run `FCALL wsgw_publish`), waits until every socket
// has every event, and prints the bytes read on the sockets (TCP payload, frame headers
// included) and the server's CPU (utime+stime from /proc/<pid>/stat) for the broadcasts.
// Usage: node loadtest/bench/compression.mjs <wsgw binary> [sockets=500] [events=200]
// COMPRESSION_SERVERS="wsgw uws" (default) picks the servers and their order; COMPRESSION_JSON
// names a file for the results as JSON (scripts/bench-uws.sh reads it). Needs
// clients/js/node_modules (`npm ci` there), and for uws loadtest/peers/uws/node_modules; use a
// release build of wsgw.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
const require = createRequire(new URL('../../clients/js/', import.meta.url));
const WebSocket = require('ws');

const [bin, sockets = 500, events = 200] = [process.argv[2], +(process.argv[3] ?? 500), +(process.argv[4] ?? 200)];
if (!bin) throw new Error('usage: node compression.mjs <wsgw binary> [sockets] [events]');
const SERVERS = (process.env.COMPRESSION_SERVERS ?? 'wsgw uws').split(/\s+/).filter(Boolean);
for (const s of SERVERS) if (!['wsgw', 'uws'].includes(s)) throw new Error(`COMPRESSION_SERVERS: unknown server ${s}`);
const PEER = new URL('../peers/uws/server.js', import.meta.url).pathname;
const SECRET = crypto.randomBytes(24).toString('hex');
const KEY = crypto.randomBytes(16).toString('hex');
const TICK_MS = 10; // USER_HZ is 100 on Linux

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const token = (sub) => {
  const h = b64({ alg: 'HS256', typ: 'JWT' });
  const p = b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 });
  return `${h}.${p}.${crypto.createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url')}`;
};

/** A deterministic PRNG, so both modes broadcast the very same events. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 2 ** 32; };
}
const WORDS = ['shipped', 'pending', 'warehouse', 'priority', 'express', 'returned', 'invoice', 'customer', 'standard', 'paid'];
/** An order-update event of about 2 KB: ids, prices, timestamps, names, like real traffic. */
function event(i) {
  const r = rng(i + 1);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const items = Array.from({ length: 17 }, (_, k) => ({
    sku: `SKU-${Math.floor(r() * 1e6)}`,
    name: `${pick(WORDS)} ${pick(WORDS)} item ${k}`,
    qty: 1 + Math.floor(r() * 9),
    price_cents: Math.floor(r() * 100000),
    status: pick(WORDS),
  }));
  return {
    order_id: `ord_${crypto.createHash('sha1').update(String(i)).digest('hex').slice(0, 16)}`,
    customer: { id: Math.floor(r() * 1e9), email: `user${Math.floor(r() * 1e5)}@example.org`, tier: pick(WORDS) },
    updated_at: new Date(1_700_000_000_000 + i * 1000).toISOString(),
    shipping: { carrier: pick(WORDS), tracking: crypto.randomBytes(8).toString('hex'), eta_days: Math.floor(r() * 10) },
    items,
  };
}

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

async function until(cond, what, ms) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const cpuMs = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (+f[11] + +f[12]) * TICK_MS; // fields 14 and 15: utime, stime
};

async function run(server, compression, redisUrl) {
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WSGW_')));
  Object.assign(env, {
    WSGW_LISTEN: `127.0.0.1:${port}`, WSGW_JWT_SECRET: SECRET, WSGW_API_KEY: KEY, WSGW_LOG: 'warn',
    WSGW_REDIS_URL: redisUrl, WSGW_COMPRESSION: compression ? 'on' : 'off',
  });
  const gw = server === 'wsgw'
    ? spawn(bin, [], { env, stdio: ['ignore', 'inherit', 'inherit'] })
    : spawn(process.execPath, [PEER], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  const base = `http://127.0.0.1:${port}`;
  try {
    await until(async () => { try { return (await fetch(`${base}/health`)).ok; } catch { return false; } }, 'the gateway', 30000);
    const socks = await Promise.all(Array.from({ length: sockets }, (_, i) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token(`u${i}`)}`, { perMessageDeflate: compression });
      const s = { ws, tcp: null, got: 0 };
      ws.on('upgrade', (res) => { s.tcp = res.socket; });
      ws.on('message', (m) => {
        const f = JSON.parse(m);
        if (f.type === 'welcome') resolve(s);
        else if (f.type === 'event' && f.event === 'order') s.got++;
      });
      ws.on('error', reject);
    })));
    const negotiated = socks.filter((s) => s.ws.extensions.includes('permessage-deflate')).length;
    const read0 = socks.reduce((n, s) => n + s.tcp.bytesRead, 0);
    const cpu0 = cpuMs(gw.pid);
    const t0 = Date.now();
    let payloadBytes = 0;
    for (let i = 0; i < events; i++) {
      const data = event(i);
      payloadBytes += Buffer.byteLength(JSON.stringify(data));
      const res = await fetch(`${base}/api/broadcast`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ event: 'order', data }),
      });
      if (!res.ok) throw new Error(`broadcast: ${res.status} ${await res.text()}`);
    }
    await until(() => socks.every((s) => s.got === events), 'every event on every socket', 120000);
    const wallMs = Date.now() - t0;
    const cpu = cpuMs(gw.pid) - cpu0;
    const read = socks.reduce((n, s) => n + s.tcp.bytesRead, 0) - read0;
    socks.forEach((s) => s.ws.terminate());
    return { server, compression: compression ? 'on' : 'off', sockets, events, negotiated, avg_event_data_bytes: Math.round(payloadBytes / events),
      bytes_read: read, bytes_per_frame: Math.round(read / (sockets * events)), gateway_cpu_ms: cpu, wall_ms: wallMs };
  } finally {
    // Gone before the next server starts (and before redis-server is stopped).
    const exited = new Promise((r) => (gw.exitCode !== null || gw.signalCode !== null ? r() : gw.once('exit', r)));
    gw.kill('SIGTERM');
    await exited;
  }
}

// One redis-server for every run, on a free port, killed at the end.
const redisPort = await freePort();
const redis = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(redisPort), '--save', '', '--appendonly', 'no'],
  { stdio: ['ignore', 'ignore', 'inherit'] });
const results = [];
try {
  await until(() => new Promise((resolve) => {
    const c = net.connect(redisPort, '127.0.0.1', () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  }), 'redis-server', 10000);
  for (const server of SERVERS) {
    for (const mode of [false, true]) results.push(await run(server, mode, `redis://127.0.0.1:${redisPort}`));
  }
} finally {
  redis.kill('SIGTERM');
}
console.table(results);
if (process.env.COMPRESSION_JSON) writeFileSync(process.env.COMPRESSION_JSON, JSON.stringify(results, null, 2));
for (const server of SERVERS) {
  const [off, on] = results.filter((r) => r.server === server);
  console.log(`${server}: bytes on the wire ${(on.bytes_read / off.bytes_read * 100).toFixed(1)}% of uncompressed; server CPU ${on.gateway_cpu_ms} ms on, ${off.gateway_cpu_ms} ms off`);
}
if (SERVERS.length === 2) {
  const pick = (server, c) => results.find((r) => r.server === server && r.compression === c);
  for (const c of ['off', 'on']) {
    const w = pick('wsgw', c), u = pick('uws', c);
    console.log(`compression ${c}: wsgw / uWS CPU ${(w.gateway_cpu_ms / u.gateway_cpu_ms).toFixed(2)} (${w.gateway_cpu_ms} / ${u.gateway_cpu_ms} ms), bytes ${(w.bytes_read / u.bytes_read).toFixed(2)}`);
  }
}
