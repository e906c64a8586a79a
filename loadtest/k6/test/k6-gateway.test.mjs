// The k6 scripts' tokens and publishes against a real gateway: the token smoke.js connects with
// is accepted (HTTP 101 and a welcome), the same token signed with another secret is refused,
// and the broadcasts of two publisher VUs (both counting from seq 0) are accepted; the frames the
// gateway sends for them, replayed into smoke.js, count no duplicate, nothing missing, and pass
// every check. The gateway is $WSGW_BIN, else <repo>/target/debug/wsgw (built if absent).
import { register } from 'node:module';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

register('./k6-hooks.mjs', import.meta.url);

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../../..');
const SECRET = randomBytes(24).toString('hex');
const KEY = randomBytes(16).toString('hex');
const T = { timeout: 60000 };

// k6/crypto's hmac and k6/encoding's b64encode, as the scripts call them (see k6-scripts.test.mjs).
globalThis.__k6 = {
  hmac(algorithm, secret, data, outputEncoding) {
    assert.equal(outputEncoding, 'binary');
    const mac = createHmac(algorithm, secret).update(data).digest();
    return mac.buffer.slice(mac.byteOffset, mac.byteOffset + mac.length);
  },
  b64encode(input, encoding) {
    assert.equal(encoding, 'rawurl');
    return (typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input)).toString('base64url');
  },
};

function gatewayBinary() {
  if (process.env.WSGW_BIN) return process.env.WSGW_BIN;
  const bin = path.join(REPO, 'target/debug/wsgw');
  if (!existsSync(bin)) {
    const r = spawnSync('cargo', ['build', '-p', 'wsgw'], { cwd: REPO, stdio: 'inherit' });
    assert.equal(r.status, 0, 'cargo build -p wsgw failed');
  }
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(cond, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let gw;
before(async () => {
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WSGW_')));
  Object.assign(env, { WSGW_LISTEN: `127.0.0.1:${port}`, WSGW_JWT_SECRET: SECRET, WSGW_API_KEY: KEY, WSGW_LOG: 'warn' });
  const child = spawn(gatewayBinary(), [], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  const orphanGuard = () => {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  process.on('exit', orphanGuard);
  let gone = false;
  const exited = new Promise((resolve) =>
    child.on('exit', () => {
      gone = true;
      process.off('exit', orphanGuard);
      resolve();
    }),
  );
  const base = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (gone) throw new Error('the gateway exited during start-up');
      try {
        return (await fetch(`${base}/health`)).ok;
      } catch {
        return false;
      }
    },
    'GET /health',
    30000,
  );
  gw = { child, exited, port, base };
});

after(async () => {
  if (!gw || gw.child.exitCode !== null || gw.child.signalCode !== null) return;
  process.kill(gw.child.pid, 'SIGTERM');
  const timer = setTimeout(() => process.kill(gw.child.pid, 'SIGKILL'), 10000);
  await gw.exited;
  clearTimeout(timer);
});

// A WebSocket upgrade by hand (Node 20 has no WebSocket client): resolves {status} for a refused
// upgrade, or {status: 101, next(pred)} that waits for a text frame matching pred.
function upgrade(url) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname,
      port: u.port,
      path: `${u.pathname}${u.search}`,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
      },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    req.on('upgrade', (res, socket, head) => {
      let buf = head;
      const frames = [];
      const parse = () => {
        for (;;) {
          if (buf.length < 2) return;
          let len = buf[1] & 0x7f;
          let at = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            at = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            at = 10;
          }
          if (buf.length < at + len) return;
          if ((buf[0] & 0x0f) === 1) frames.push(buf.subarray(at, at + len).toString('utf8'));
          buf = buf.subarray(at + len);
        }
      };
      socket.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        parse();
      });
      parse();
      resolve({
        status: res.statusCode,
        frames,
        async next(pred, what) {
          return waitFor(() => frames.find((f) => pred(JSON.parse(f))), what);
        },
        close: () => socket.destroy(),
      });
    });
    req.end();
  });
}

test('a token smoke.js signs is accepted by the gateway; one signed with another secret is not', T, async () => {
  globalThis.__ENV = {
    WSGW_URL: `ws://127.0.0.1:${gw.port}/ws`,
    WSGW_API: gw.base,
    WSGW_API_KEY: KEY,
    WSGW_JWT_SECRET: SECRET,
  };
  const { vuUrl } = await import('../common.js?gateway=1');
  globalThis.__VU = 5;
  const url = vuUrl(5, 0);
  const ok = await upgrade(url);
  assert.equal(ok.status, 101);
  const welcome = JSON.parse(await ok.next((f) => f.type === 'welcome', 'the welcome'));
  assert.equal(welcome.user_id, 'lt-5');
  ok.close();

  // The same claims with another secret: the signature is what the gateway checks.
  const token = new URL(url).searchParams.get('token');
  const [h, p] = token.split('.');
  const forged = `${h}.${p}.${createHmac('sha256', `${SECRET}-other`).update(`${h}.${p}`).digest('base64url')}`;
  const bad = await upgrade(`ws://127.0.0.1:${gw.port}/ws?token=${forged}`);
  // docs/protocol.md: a bad signature is `error` `unauthorized`, then close 4001.
  assert.equal(bad.status, 101);
  const refused = JSON.parse(await bad.next((f) => f.type === 'error', 'the error'));
  assert.equal(refused.code, 'unauthorized');
  assert.ok(!bad.frames.some((f) => JSON.parse(f).type === 'welcome'), 'no welcome');
  bad.close();
});

test('two publisher VUs counting from seq 0: the gateway frames count no duplicate', T, async () => {
  const env = {
    WSGW_URL: `ws://127.0.0.1:${gw.port}/ws`,
    WSGW_API: gw.base,
    WSGW_API_KEY: KEY,
    WSGW_JWT_SECRET: SECRET,
  };
  globalThis.__ENV = env;
  const { vuUrl } = await import('../common.js?gateway=2');
  const listener = await upgrade(vuUrl(1, 0));
  assert.equal(listener.status, 101);
  await listener.next((f) => f.type === 'welcome', 'the welcome');

  // Two publisher VUs (own module instances, so both count from 0); k6's http.post is
  // synchronous, so the stand-in records the request and the test sends it for real.
  const posts = [];
  globalThis.__k6 = {
    ...globalThis.__k6,
    httpPost(url, body, params) {
      posts.push({ url, body, params });
      return { status: 200 };
    },
  };
  const a = await import('../smoke.js?gateway=3');
  const b = await import('../smoke.js?gateway=4');
  for (let round = 0; round < 2; round++) {
    globalThis.__VU = 11;
    a.publish();
    globalThis.__VU = 12;
    b.publish();
  }
  assert.equal(posts.length, 4);
  for (const p of posts) {
    const r = await fetch(p.url, { method: 'POST', headers: p.params.headers, body: p.body });
    assert.equal(r.status, 200, await r.text());
  }
  const frames = await waitFor(() => {
    const events = listener.frames.filter((f) => JSON.parse(f).type === 'event');
    return events.length >= 4 && events;
  }, 'the four events');
  listener.close();
  const seqs = frames.map((f) => JSON.parse(f).data.seq);
  assert.deepEqual(seqs.sort(), [0, 0, 1, 1], 'two events carry seq 0, two seq 1');
  assert.equal(new Set(frames.map((f) => JSON.parse(f).event_id)).size, 4, 'four event ids');

  // Those real frames, through smoke.js's socket handling (k6-scripts.test.mjs's stand-ins).
  const checks = [];
  const totals = {};
  globalThis.__k6 = {
    ...globalThis.__k6,
    check(value, sets) {
      for (const [name, fn] of Object.entries(sets)) checks.push([name, fn(value)]);
      return true;
    },
    metric(name, v) {
      totals[name] = (totals[name] ?? 0) + v;
    },
    wsConnect(url, params, cb) {
      const handlers = {};
      cb({
        on: (ev, fn) => (handlers[ev] = fn),
        send() {},
        close: () => handlers.close?.(1000),
        setTimeout: (fn) => (handlers.timeout = fn),
      });
      handlers.message(JSON.stringify({ type: 'welcome', connection_id: 'c' }));
      for (const f of frames) handlers.message(f);
      handlers.timeout();
      return { status: 101 };
    },
  };
  const vu = await import('../smoke.js?gateway=5');
  vu.socket();
  assert.equal(totals.delivered, 4);
  assert.equal(totals.duplicates ?? 0, 0, 'same seq from two publishers is not a duplicate');
  assert.equal(totals.missing ?? 0, 0);
  assert.deepEqual(checks, [
    ['handshake 101', true],
    ['every VU got a welcome', true],
    ['no event missing', true],
  ]);
});
