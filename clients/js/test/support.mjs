// Shared by the JS client's tests: a real gateway process (memory broker) and clients of it.
// The binary: $WSGW_BIN, else <repo>/target/debug/wsgw (built with `cargo build -p wsgw` if absent).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { WsgwClient } from '../wsgw.js';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../../..');
export const SECRET = randomBytes(24).toString('hex');
export const KEY = randomBytes(16).toString('hex');
/** Every test has a deadline, so a broken client fails rather than hangs. */
export const T = { timeout: 30000 };
export const BACKOFF = { initialMs: 50, maxMs: 500, factor: 2, jitter: 0.5 };

export function gatewayBinary() {
  if (process.env.WSGW_BIN) return process.env.WSGW_BIN;
  const bin = path.join(REPO, 'target/debug/wsgw');
  if (!existsSync(bin)) {
    const r = spawnSync('cargo', ['build', '-p', 'wsgw'], { cwd: REPO, stdio: 'inherit' });
    assert.equal(r.status, 0, 'cargo build -p wsgw failed');
  }
  return bin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `cond` (sync or async) until it is truthy; fails after `timeoutMs`. */
export async function waitFor(cond, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Checks that `cond` holds during the whole of `ms` (for "nothing else happens" assertions). */
export async function holdsFor(cond, what, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    assert.ok(cond(), what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Starts a gateway with a clean WSGW_* environment; resolves once GET /health answers. */
export async function startGateway(extra = {}, port) {
  port ??= await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WSGW_')));
  Object.assign(env, {
    WSGW_LISTEN: `127.0.0.1:${port}`,
    WSGW_JWT_SECRET: SECRET,
    WSGW_API_KEY: KEY,
    WSGW_LOG: 'warn',
    ...extra,
  });
  const child = spawn(gatewayBinary(), [], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  // If this process dies before the `after` hook runs, do not leave the gateway behind.
  const orphanGuard = () => { try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ } };
  process.on('exit', orphanGuard);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    process.off('exit', orphanGuard);
    resolve({ code, signal });
  }));
  let gone = false;
  exited.then(() => { gone = true; });
  const base = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (gone) throw new Error('the gateway exited during start-up');
    try { return (await fetch(`${base}/health`)).ok; } catch { return false; }
  }, 'GET /health', 30000);
  return { child, exited, port, base, ws: `ws://127.0.0.1:${port}/ws` };
}

export async function stopGateway(gw) {
  if (!gw || gw.child.exitCode !== null || gw.child.signalCode !== null) return;
  process.kill(gw.child.pid, 'SIGTERM');
  const timer = setTimeout(() => process.kill(gw.child.pid, 'SIGKILL'), 10000);
  await gw.exited;
  clearTimeout(timer);
}

export function jwt(claims, secret = SECRET) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

export function tokenFor(sub, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return jwt({ sub, exp: now + 3600, channels: ['room:*', 'chat:*'], publish: ['chat:*'], ...extra });
}

export async function api(gw, method, route, body) {
  const res = await fetch(gw.base + route, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.equal(res.status, 200, `${method} ${route}: ${JSON.stringify(json)}`);
  return json;
}

export const publishApi = async (gw, channel, event, data) =>
  (await api(gw, 'POST', '/api/publish', { channel, event, data })).event_id;

let userSeq = 0;
export const newUser = (what) => `${what}-${process.pid}-${++userSeq}`;

/** A client with fast backoff, recording its states, closes, errors and events. */
export function makeClient(gw, opts = {}) {
  const client = new WsgwClient(gw.ws, { WebSocket, backoff: BACKOFF, ...opts });
  const log = { states: [], closes: [], errors: [], events: [], welcomes: [] };
  client.on('state', (s) => log.states.push(s));
  client.on('close', (c) => log.closes.push(c));
  client.on('error', (e) => log.errors.push(e));
  client.on('welcome', (w) => log.welcomes.push(w));
  client.on('*', (f) => log.events.push(f));
  return { client, log };
}

