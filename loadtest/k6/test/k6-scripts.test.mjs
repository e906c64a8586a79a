// Runs the k6 scripts (loadtest/k6/*.js) under Node with stand-ins for the k6 modules
// (k6-hooks.mjs): the tokens they sign verify as HS256 against Node's own HMAC, a duplicate is
// an `event_id` seen twice (not a sequence number that two publishers both use), and every check
// can fail when fed a bad frame. k6 itself is not installable here.
//   node --test loadtest/k6/test/
import { register } from 'node:module';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import test from 'node:test';
import assert from 'node:assert/strict';

register('./k6-hooks.mjs', import.meta.url);

const SECRET = 'k6-test-secret-at-least-32-bytes-long';
globalThis.__ENV = {
  WSGW_URL: 'ws://n1/ws,ws://n2/ws,ws://n3/ws',
  WSGW_API: 'http://api.test',
  WSGW_API_KEY: 'test-key',
  WSGW_JWT_SECRET: SECRET,
};
globalThis.__VU = 1;

// A clock the stand-ins move forward (sleep, socket timeouts), so a 40 s script runs at once.
const realNow = Date.now;
let offset = 0;
Date.now = () => realNow() + offset;

// What k6 does, as far as the scripts use it.
const k6 = {
  reset() {
    this.checks = [];
    this.metrics = new Map();
    this.posts = [];
    this.plan = [];
    this.urls = [];
    this.sent = [];
  },
  check(value, sets) {
    let ok = true;
    for (const [name, fn] of Object.entries(sets)) {
      const pass = fn(value) === true;
      this.checks.push({ name, pass });
      ok = ok && pass;
    }
    return ok;
  },
  sleep(seconds) {
    offset += seconds * 1000;
  },
  metric(name, value) {
    if (!this.metrics.has(name)) this.metrics.set(name, []);
    this.metrics.get(name).push(value);
  },
  // k6/crypto hmac: 'binary' gives an ArrayBuffer, 'hex' and 'base64' strings.
  hmac(algorithm, secret, data, outputEncoding) {
    const mac = createHmac(algorithm, secret).update(data).digest();
    if (outputEncoding === 'binary') return mac.buffer.slice(mac.byteOffset, mac.byteOffset + mac.length);
    if (outputEncoding === 'hex' || outputEncoding === 'base64') return mac.toString(outputEncoding);
    throw new Error(`k6/crypto: unknown output encoding ${outputEncoding}`);
  },
  // k6/encoding b64encode: strings are encoded as UTF-8; std, rawstd, url, rawurl.
  b64encode(input, encoding = 'std') {
    if (typeof input !== 'string' && !(input instanceof ArrayBuffer)) {
      throw new Error('k6/encoding: b64encode takes a string or an ArrayBuffer');
    }
    const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input);
    const std = bytes.toString('base64');
    switch (encoding) {
      case 'std':
        return std;
      case 'rawstd':
        return std.replace(/=+$/, '');
      case 'url':
        return std.replace(/\+/g, '-').replace(/\//g, '_');
      case 'rawurl':
        return bytes.toString('base64url');
      default:
        throw new Error(`k6/encoding: unknown encoding ${encoding}`);
    }
  },
  httpPost(url, body, params) {
    this.posts.push({ url, body: JSON.parse(body), params });
    return { status: 200 };
  },
  // k6/ws connect: blocks until the socket closes. Each call takes the next entry of `plan`:
  // {status?, frames, drop?}; no entry left = the dial fails (k6 throws).
  wsConnect(url, params, cb) {
    this.urls.push(url);
    const p = this.plan.shift();
    if (!p) throw new Error('dial tcp: connection refused');
    if ((p.status ?? 101) !== 101) return { status: p.status, url };
    const handlers = {};
    const timers = [];
    let closed = false;
    const sent = this.sent;
    const socket = {
      on(ev, fn) {
        handlers[ev] = fn;
      },
      send(m) {
        sent.push(m);
      },
      close() {
        if (closed) return;
        closed = true;
        handlers.close?.(1000);
      },
      setTimeout(fn, ms) {
        timers.push([fn, ms]);
      },
      setInterval() {},
      ping() {},
    };
    cb(socket);
    handlers.open?.();
    for (const f of p.frames ?? []) {
      if (closed) break;
      handlers.message?.(typeof f === 'string' ? f : JSON.stringify(f));
    }
    if (p.drop) {
      if (!closed) {
        closed = true;
        handlers.close?.(1006);
      }
    } else {
      timers.sort((a, b) => a[1] - b[1]);
      for (const [fn, ms] of timers) {
        if (closed) break;
        offset += ms;
        fn();
      }
    }
    return { status: 101, url };
  },
  total(name) {
    return (this.metrics.get(name) ?? []).reduce((a, b) => a + b, 0);
  },
  failed() {
    return this.checks.filter((c) => !c.pass).map((c) => c.name);
  },
  passed() {
    return this.checks.filter((c) => c.pass).map((c) => c.name);
  },
};
globalThis.__k6 = k6;
k6.reset();

// Every import gets its own module instances (a k6 VU has its own runtime).
let instance = 0;
async function load(script) {
  instance += 1;
  return import(new URL(`../${script}?vu=${instance}`, import.meta.url).href);
}

// HS256 verification with Node's HMAC, independent of the code under test.
function verifyHs256(token, secret) {
  const parts = token.split('.');
  assert.equal(parts.length, 3, 'a JWT has three parts');
  for (const part of parts) assert.match(part, /^[A-Za-z0-9_-]+$/, 'base64url without padding');
  const [h, p, s] = parts;
  const want = createHmac('sha256', secret).update(`${h}.${p}`).digest();
  const got = Buffer.from(s, 'base64url');
  if (got.length !== want.length || !timingSafeEqual(got, want)) return null;
  return { header: JSON.parse(Buffer.from(h, 'base64url')), claims: JSON.parse(Buffer.from(p, 'base64url')) };
}

function tokenOf(url) {
  return new URL(url).searchParams.get('token');
}

const welcome = (id = 'c-1') => ({ type: 'welcome', connection_id: id, node: 'n1', recovered: true });
const event = (eventId, data, channel = 'broadcast') => ({
  type: 'event',
  event_id: eventId,
  channel,
  event: 'lt',
  data: { sent_us: Date.now() * 1000, ...data },
  ts: Date.now(),
});

// The [[checks]] names of a scenario file.
function tomlChecks(name) {
  const text = readFileSync(new URL(`../../scenarios/${name}.toml`, import.meta.url), 'utf8');
  return [...text.matchAll(/\[\[checks\]\]\s*\nname\s*=\s*"([^"]+)"/g)].map((m) => m[1]);
}

test('lib.js signs the RFC 7519 / jwt.io HS256 example byte for byte', async () => {
  const { makeSigner } = await import('../lib.js');
  // jwt.io's default token: the same header and claims in the same order, the same secret.
  const sign = makeSigner({ hmac: k6.hmac, b64encode: k6.b64encode });
  assert.equal(
    sign('your-256-bit-secret', { sub: '1234567890', name: 'John Doe', iat: 1516239022 }),
    'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
  );
  // The same token when hmac's 'binary' output is an array of byte values (k6 before v0.31).
  const asArray = (...args) => [...new Uint8Array(k6.hmac(...args))];
  const signOld = makeSigner({ hmac: asArray, b64encode: k6.b64encode });
  assert.equal(
    signOld('your-256-bit-secret', { sub: '1234567890', name: 'John Doe', iat: 1516239022 }).split('.')[2],
    'SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
  );
});

test('the token a script connects with verifies as HS256 with WSGW_JWT_SECRET', async () => {
  k6.reset();
  const smoke = await load('smoke.js');
  globalThis.__VU = 42;
  k6.plan = [{ frames: [welcome()] }];
  // The stand-in clock moves 5 s (smoke.js's hold) while the socket runs: iat is from before.
  const before = Math.floor(Date.now() / 1000);
  smoke.socket();
  assert.equal(k6.urls.length, 1);
  assert.ok(k6.urls[0].startsWith('ws://n1/ws?token='), k6.urls[0]); // (42 + 0) % 3 = 0
  const token = tokenOf(k6.urls[0]);
  const v = verifyHs256(token, SECRET);
  assert.ok(v, 'the signature verifies with the secret');
  assert.deepEqual(v.header, { alg: 'HS256', typ: 'JWT' });
  assert.equal(v.claims.sub, 'lt-42');
  const now = Math.floor(Date.now() / 1000);
  assert.ok(v.claims.iat >= before && v.claims.iat <= before + 2, `iat ${v.claims.iat} is when it connected (${before})`);
  assert.ok(v.claims.exp > now, 'exp is in the future');
  assert.equal(verifyHs256(token, `${SECRET}x`), null, 'and does not verify with another secret');
  globalThis.__VU = 1;
});

test('two publishers with the same per-VU seq are not duplicates; an event_id seen twice is one', async () => {
  k6.reset();
  // Two publisher VUs, each with its own module instance and so its own counter from 0.
  const pubA = await load('broadcast-storm.js');
  const pubB = await load('broadcast-storm.js');
  globalThis.__VU = 7;
  pubA.publish();
  globalThis.__VU = 8;
  pubB.publish();
  globalThis.__VU = 7;
  pubA.publish();
  globalThis.__VU = 8;
  pubB.publish();
  assert.equal(k6.posts.length, 4);
  for (const p of k6.posts) {
    assert.equal(p.url, 'http://api.test/api/broadcast');
    assert.equal(p.params.headers.Authorization, 'Bearer test-key');
  }
  const datas = k6.posts.map((p) => p.body.data);
  assert.deepEqual(
    datas.map((d) => [d.pub, d.seq]),
    [
      ['k6-7', 0],
      ['k6-8', 0],
      ['k6-7', 1],
      ['k6-8', 1],
    ],
    'both publishers send seq 0 and 1',
  );
  assert.equal(datas[0].pad.length, 200);

  // The gateway gives each publish its own event_id; the third is delivered twice.
  const frames = datas.map((d, i) => event(`1732240000${i}-0`, d));
  const socketVu = await load('broadcast-storm.js');
  globalThis.__VU = 1;
  k6.plan = [{ frames: [welcome(), ...frames, frames[2]] }];
  socketVu.socket();
  assert.equal(k6.total('delivered'), 5);
  assert.equal(k6.total('duplicates'), 1, 'the event_id seen twice is one duplicate');
  assert.equal(k6.total('missing'), 0);
  assert.equal(k6.total('errors'), 0);
  assert.deepEqual(k6.failed(), []);
  assert.equal((k6.metrics.get('delivery_latency') ?? []).length, 4, 'latency of each distinct event');
});

test('lib.js vuState: same seq from two publishers, a redelivery, and a real gap', async () => {
  const { vuState } = await import('../lib.js');
  const counted = {};
  const m = (name) => ({ add: (v) => (counted[name] = (counted[name] ?? 0) + v) });
  const metrics = {
    delivered: m('delivered'),
    duplicates: m('duplicates'),
    missing: m('missing'),
    errors: m('errors'),
    deliveryLatency: m('latency'),
  };
  const s = vuState(metrics);
  const sock = { send() {} };
  s.onFrame(sock, JSON.stringify(event('5-0', { pub: 'a', seq: 0 })));
  s.onFrame(sock, JSON.stringify(event('6-0', { pub: 'b', seq: 0 })));
  s.onFrame(sock, JSON.stringify(event('6-0', { pub: 'b', seq: 0 })));
  s.onFrame(sock, JSON.stringify(event('9-0', { pub: 'a', seq: 2 })));
  s.onFrame(sock, JSON.stringify(event('10-0', { pub: 'b', seq: 1 })));
  assert.equal(s.settle(), 1, 'seq 1 of publisher a is missing');
  assert.deepEqual([counted.delivered, counted.duplicates, counted.missing], [5, 1, 1]);
  assert.equal(s.lastEventId, '10-0', 'the highest id, compared as numbers');
});

test('smoke.js: every check passes on a good run and each one fails on a bad frame', async () => {
  const good = [welcome(), event('1-0', { pub: 'k6-9', seq: 0 }), event('2-0', { pub: 'k6-9', seq: 1 })];
  const smoke = await load('smoke.js');
  assert.deepEqual(smoke.options.thresholds.checks, ['rate==1'], 'a failed check fails the run');

  k6.reset();
  k6.plan = [{ frames: [{ type: 'ping' }, ...good] }];
  smoke.socket();
  assert.deepEqual(k6.failed(), []);
  assert.deepEqual(k6.passed(), ['handshake 101', ...tomlChecks('smoke')]);
  assert.deepEqual(k6.sent, ['{"type":"pong"}']);

  k6.reset();
  k6.plan = [{ status: 426 }];
  smoke.socket();
  assert.ok(k6.failed().includes('handshake 101'), JSON.stringify(k6.checks));

  k6.reset();
  k6.plan = [{ frames: [{ type: 'error', code: 'unauthorized', message: 'bad token' }] }];
  smoke.socket();
  assert.deepEqual(k6.failed(), ['every VU got a welcome']);
  assert.equal(k6.total('errors'), 1);

  k6.reset();
  k6.plan = [{ frames: [welcome(), good[1], event('3-0', { pub: 'k6-9', seq: 2 }), 'not json'] }];
  smoke.socket();
  assert.deepEqual(k6.failed(), ['no event missing']);
  assert.equal(k6.total('missing'), 1);
  assert.equal(k6.total('errors'), 1, 'a frame that is not JSON is an error');
});

test('broadcast-storm.js: its check passes on a good run and fails on a gap', async () => {
  const storm = await load('broadcast-storm.js');
  assert.deepEqual(storm.options.thresholds.checks, ['rate==1']);
  k6.reset();
  k6.plan = [{ frames: [welcome(), event('1-0', { pub: 'k6-3', seq: 4 }), event('2-0', { pub: 'k6-3', seq: 5 })] }];
  storm.socket();
  assert.deepEqual(k6.failed(), []);
  assert.deepEqual(k6.passed(), tomlChecks('broadcast-storm'));

  k6.reset();
  k6.plan = [{ frames: [welcome(), event('1-0', { pub: 'k6-3', seq: 4 }), event('2-0', { pub: 'k6-3', seq: 7 })] }];
  storm.socket();
  assert.deepEqual(k6.failed(), ['no event missing']);
  assert.equal(k6.total('missing'), 2);
});

test('reconnect-storm.js: resumes with connection_id and last_event_id; each check can fail', async () => {
  // A good run: the node drops the socket, the VU resumes on the next node and misses nothing.
  k6.reset();
  let storm = await load('reconnect-storm.js');
  assert.deepEqual(storm.options.thresholds.checks, ['rate==1']);
  globalThis.__VU = 3;
  k6.plan = [
    { frames: [welcome('c-3'), event('10-0', { pub: 'k6-1', seq: 0 }), event('11-0', { pub: 'k6-1', seq: 1 })], drop: true },
    { frames: [welcome('c-3'), event('12-0', { pub: 'k6-1', seq: 2 })] },
  ];
  storm.socket();
  assert.deepEqual(k6.failed(), []);
  assert.deepEqual(k6.passed(), tomlChecks('reconnect-storm'));
  assert.equal(k6.urls.length, 2);
  const again = new URL(k6.urls[1]);
  assert.equal(again.host, 'n2', 'the next node');
  assert.equal(again.searchParams.get('connection_id'), 'c-3');
  assert.equal(again.searchParams.get('last_event_id'), '11-0');
  assert.ok(verifyHs256(again.searchParams.get('token'), SECRET), 'a fresh valid token');
  assert.equal(k6.total('reconnects'), 1);

  // No welcome, dropped, and every later dial fails until the end.
  k6.reset();
  storm = await load('reconnect-storm.js');
  k6.plan = [{ frames: [{ type: 'error', code: 'unavailable', message: 'x' }], drop: true }];
  storm.socket();
  assert.deepEqual(k6.failed(), ['every VU got a welcome', 'every dropped VU came back']);
  assert.ok(k6.urls.length > 2, 'it kept trying');

  // Resumed, but an event of the gap was not replayed.
  k6.reset();
  storm = await load('reconnect-storm.js');
  k6.plan = [
    { frames: [welcome('c-3'), event('10-0', { pub: 'k6-1', seq: 0 })], drop: true },
    { frames: [welcome('c-3'), event('12-0', { pub: 'k6-1', seq: 2 })] },
  ];
  storm.socket();
  assert.deepEqual(k6.failed(), ['no event missing']);
  globalThis.__VU = 1;
});
