// The production path, end to end: headless Chromium loads the browser client from the
// gateway through nginx (TLS, self-signed), connects over wss://, receives events a backend
// publishes straight into Redis, loses its node (SIGKILL), reconnects through nginx to the
// other node and gets what was published while it was away: in order, once.
//
// Needs what scripts/test.sh installs: nginx, redis-server, chromium, and `npm ci` here.
// Starts its own cluster with scripts/cluster.sh and always stops it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLUSTER = join(ROOT, 'scripts', 'cluster.sh');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let cluster;
let context;
let profile;

function b64url(x) {
  return Buffer.from(x).toString('base64url');
}

function sign(secret, claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** Durable publish the way a backend does it: FCALL on the cluster's Redis. */
function publish(channel, event, data) {
  return execFileSync('redis-cli', ['-p', String(cluster.redis.port), 'FCALL', 'wsgw_publish', '2', 'ws:seq',
    `ws:history:${channel}`, channel, event, JSON.stringify(data)]).toString().trim();
}

before(async () => {
  // Use the debug build the Rust tests just made unless told otherwise: a release build here
  // would double the suite's time.
  const bin = process.env.WSGW_BIN ?? join(ROOT, 'target', 'debug', 'wsgw');
  const started = spawnSync(CLUSTER, ['start', '2'], {
    env: { ...process.env, WSGW_BIN: bin },
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 180_000,
  });
  assert.equal(started.status, 0, 'scripts/cluster.sh start 2 failed');
  const urls = started.stdout.toString().trim().split('\n');
  assert.match(urls[0], /^wss:\/\/127\.0\.0\.1:\d+\/ws$/, 'the nginx wss:// address comes first');
  assert.equal(urls.length, 3, 'then one http:// address per node');
  cluster = JSON.parse(readFileSync(join(ROOT, '.wsgw-run', 'cluster.json'), 'utf8'));
  profile = mkdtempSync(join(tmpdir(), 'wsgw-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    ignoreHTTPSErrors: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await context?.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  spawnSync(CLUSTER, ['stop'], { stdio: 'inherit', timeout: 60_000 });
});

test('a browser behind nginx survives the loss of its node without missing or repeating an event', async () => {
  const page = context.pages()[0] ?? await context.newPage();
  const origin = cluster.nginx.url;
  const health = await page.goto(`${origin}/health`);
  assert.equal(health.status(), 200);

  const token = sign(cluster.jwt_secret, { sub: 'browser', exp: Math.floor(Date.now() / 1000) + 3600 });
  const welcome = await page.evaluate(async ({ wsUrl, token }) => {
    const { WsgwClient } = await import('/wsgw.js');
    window.events = [];
    window.welcomes = [];
    window.trail = [];
    const client = new WsgwClient(wsUrl, { token, backoff: { initialMs: 100, maxMs: 1000 } });
    client.on('*', (e) => window.events.push(e));
    client.on('welcome', (w) => window.welcomes.push(w));
    // What happened, for the failure message.
    client.on('state', (st) => window.trail.push(`state ${st}`));
    client.on('close', (c) => window.trail.push(`close ${c.code} ${c.reason ?? ''} reconnect=${c.willReconnect}`));
    client.on('error', (e) => window.trail.push(`error ${e.code ?? ''} ${e.message ?? ''}`));
    window.client = client;
    return await client.connect();
  }, { wsUrl: cluster.nginx.ws_url, token });
  assert.equal(welcome.user_id, 'browser');

  const first = publish('user:browser', 'note', { n: 1 });
  await page.waitForFunction(() => window.events.length === 1, null, { timeout: 10_000 });

  // The node the browser is on dies without a goodbye.
  const doomed = cluster.nodes.find((n) => n.id === welcome.node);
  assert.ok(doomed, `welcome names a node of the cluster: ${welcome.node}`);
  process.kill(doomed.pid, 'SIGKILL');

  // A backend keeps publishing meanwhile, on the user's channel and to everyone.
  const missed = [
    publish('broadcast', 'news', { n: 2 }),
    publish('user:browser', 'note', { n: 3 }),
    publish('broadcast', 'news', { n: 4 }),
  ];
  await page
    .waitForFunction(() => window.welcomes.length === 2 && window.events.length >= 4, null, { timeout: 20_000 })
    .catch(async (e) => {
      const seen = await page.evaluate(() => ({ trail: window.trail, events: window.events.length, welcomes: window.welcomes }));
      throw new Error(`${e.message}\nbrowser saw: ${JSON.stringify(seen, null, 1)}`);
    });
  const again = await page.evaluate(() => window.welcomes[1]);
  assert.notEqual(again.node, welcome.node, 'nginx sent the browser to the surviving node');
  assert.equal(again.recovered, true);

  const live = publish('broadcast', 'news', { n: 5 });
  await page.waitForFunction(() => window.events.length >= 5, null, { timeout: 10_000 });
  const events = await page.evaluate(() => window.events.map((e) => ({ id: e.event_id, n: e.data.n })));
  assert.deepEqual(events.map((e) => e.id), [first, ...missed, live], 'every event once, in order');
  assert.deepEqual(events.map((e) => e.n), [1, 2, 3, 4, 5]);

  // nginx did not write the token into its access log.
  const accessLog = readFileSync(cluster.nginx.access_log, 'utf8');
  assert.ok(accessLog.includes('/ws'), 'the socket went through nginx');
  assert.ok(!accessLog.includes('token='), 'no token in the access log');
});
