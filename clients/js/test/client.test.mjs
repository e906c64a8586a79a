// End-to-end tests of the wsgw JS client against a real gateway process (memory broker).
// The binary: $WSGW_BIN, else <repo>/target/debug/wsgw (built with `cargo build -p wsgw` if absent).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { compareEventIds, parseEventId } from '../wsgw.js';
import {
  BACKOFF, SECRET, T, api, holdsFor, jwt, makeClient, newUser, publishApi, startGateway, stopGateway, tokenFor,
  waitFor,
} from './support.mjs';

test('event ids compare numerically on (ms, seq), not as strings', T, () => {
  assert.ok(compareEventIds('9-5', '10-0') < 0);
  assert.ok(compareEventIds('1732240000123-10', '1732240000123-9') > 0);
  assert.equal(compareEventIds('5', '5-0'), 0);
  assert.deepEqual(parseEventId('12-3'), [12, 3]);
  assert.equal(parseEventId('nope'), null);
});

describe('against one gateway (heartbeat 100/400 ms)', () => {
  let gw;
  const clients = [];
  const track = (c) => { clients.push(c.client); return c; };

  before(async () => {
    gw = await startGateway({
      WSGW_HEARTBEAT_INTERVAL_MS: '100',
      WSGW_HEARTBEAT_TIMEOUT_MS: '400',
      WSGW_JWT_LEEWAY_S: '0',
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await stopGateway(gw);
  });

  test('connects and gets a welcome', T, async () => {
    const sub = newUser('welcome');
    const { client, log } = track(makeClient(gw, { token: tokenFor(sub) }));
    const welcome = await client.connect();
    assert.equal(welcome.type, 'welcome');
    assert.equal(welcome.user_id, sub);
    assert.match(welcome.connection_id, /^[0-9a-f]{32}$/);
    assert.deepEqual(welcome.heartbeat, { interval_ms: 100, timeout_ms: 400 });
    assert.equal(welcome.resumed, false);
    assert.equal(client.state, 'open');
    assert.equal(client.connectionId, welcome.connection_id);
    assert.equal(client.node, welcome.node);
    assert.deepEqual(log.states, ['connecting', 'open']);
    assert.deepEqual(await client.connect(), welcome, 'connect() when open resolves with the welcome');
  });

  test('receives events published with the HTTP API on user:<sub> and on a subscribed topic', T, async () => {
    const sub = newUser('events');
    const { client } = track(makeClient(gw, { token: tokenFor(sub) }));
    await client.connect();
    const subscribed = await client.subscribe('room:1');
    assert.equal(subscribed.type, 'subscribed');
    assert.equal(subscribed.channel, 'room:1');
    const onUser = [], onRoom = [], onPattern = [], byName = [];
    client.on(`user:${sub}`, (f) => onUser.push(f));
    client.on('room:1', (f) => onRoom.push(f));
    client.on('room:*', (f) => onPattern.push(f));
    client.on('event:hello', (f) => byName.push(f));

    const a = await publishApi(gw, `user:${sub}`, 'hello', { n: 1 });
    const b = await publishApi(gw, 'room:1', 'update', { n: 2 });
    await waitFor(() => onUser.length >= 1 && onRoom.length >= 1, 'both events');
    assert.deepEqual([onUser.length, onRoom.length], [1, 1]);
    assert.deepEqual([onUser[0].event_id, onUser[0].event, onUser[0].data], [a, 'hello', { n: 1 }]);
    assert.deepEqual([onRoom[0].event_id, onRoom[0].channel, onRoom[0].data], [b, 'room:1', { n: 2 }]);
    assert.deepEqual(onPattern.map((f) => f.event_id), [b], 'a pattern handler matches the channel');
    assert.deepEqual(byName.map((f) => f.event_id), [a], 'event:<name> handler');
    assert.equal(client.lastEventId, b);

    await client.unsubscribe('room:1');
    const c = await publishApi(gw, 'room:1', 'update', { n: 3 });
    const d = await publishApi(gw, `user:${sub}`, 'hello', { n: 4 });
    await waitFor(() => onUser.length >= 2, 'the next user event');
    assert.deepEqual(onUser.map((f) => f.event_id), [a, d]);
    assert.ok(!onRoom.some((f) => f.event_id === c), 'no event after unsubscribe');
    assert.equal(client.lastEventId, d);
  });

  test('publish returns an event_id and the publisher receives its own event', T, async () => {
    const sub = newUser('publish');
    const { client, log } = track(makeClient(gw, { token: tokenFor(sub) }));
    await client.connect();
    await client.subscribe('chat:1');
    const id = await client.publish('chat:1', 'msg', { text: 'hi' });
    assert.match(id, /^\d+-\d+$/);
    await waitFor(() => log.events.some((f) => f.event_id === id), 'the echoed event');
    const quiet = await client.publish('chat:1', 'msg', { text: 'quiet' }, { echo: false });
    assert.ok(compareEventIds(quiet, id) > 0);
    await assert.rejects(client.publish('room:1', 'msg', {}), (e) => e.code === 'forbidden');
    await assert.rejects(client.subscribe('secret:1'), (e) => e.code === 'forbidden');
    const marker = await publishApi(gw, `user:${sub}`, 'marker', null);
    await waitFor(() => log.events.some((f) => f.event_id === marker), 'the marker event');
    assert.ok(!log.events.some((f) => f.event_id === quiet), 'echo:false is not delivered back');
  });

  test('history() reads a channel without subscribing, pages forward and leaves the cursor alone', T, async () => {
    const sub = newUser('history');
    const channel = `chat:${sub}`;
    const { client, log } = track(makeClient(gw, { token: tokenFor(sub) }));
    await client.connect();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await publishApi(gw, channel, 'msg', { i }));
    // Its own publish without echo is excluded for this socket, in reads too.
    const quiet = await client.publish(channel, 'msg', { i: 'quiet' }, { echo: false });
    const cursor = client.lastEventId;

    const newest = await client.history(channel, { limit: 2 });
    assert.equal(newest.type, 'history');
    assert.equal(newest.channel, channel);
    assert.equal(newest.recovered, true);
    assert.deepEqual(newest.events.map((e) => e.event_id), ids.slice(3));
    assert.deepEqual([newest.events[1].type, newest.events[1].event, newest.events[1].data], ['event', 'msg', { i: 4 }]);
    const all = await client.history(channel);
    assert.deepEqual(all.events.map((e) => e.event_id), ids, 'no limit: all of them, without the quiet one');

    const pages = [];
    let since = ids[0];
    for (;;) {
      const page = await client.history(channel, { since, limit: 2 });
      assert.equal(page.recovered, true);
      if (page.events.length === 0) break;
      pages.push(page.events.map((e) => e.event_id));
      since = page.events.at(-1).event_id;
    }
    assert.deepEqual(pages, [ids.slice(1, 3), ids.slice(3, 5)]);
    assert.ok(!pages.flat().includes(quiet));

    await assert.rejects(client.history('secret:1'), (e) => e.code === 'forbidden');
    await assert.rejects(client.history('chat:*'), (e) => e.code === 'bad_request');

    // A read: no event handler ran, the cursor did not move, and the channel is not subscribed
    // (a later event of it does not come; a marker on the user channel bounds the wait).
    assert.equal(client.lastEventId, cursor);
    await publishApi(gw, channel, 'msg', { i: 'later' });
    const marker = await publishApi(gw, `user:${sub}`, 'marker', null);
    await waitFor(() => log.events.some((f) => f.event_id === marker), 'the marker event');
    assert.deepEqual(log.events.map((f) => f.event_id), [marker]);
  });

  test('a bad token closes with 4001 and the client does not reconnect', T, async () => {
    const { client, log } = track(makeClient(gw, { token: jwt({ sub: 'x', exp: 9999999999 }, 'wrong-secret') }));
    await assert.rejects(client.connect(), (e) => e.code === 4001);
    assert.equal(client.state, 'closed');
    assert.deepEqual(log.closes.map((c) => [c.code, c.willReconnect]), [[4001, false]]);
    assert.equal(log.errors[0]?.code, 'unauthorized');
    await holdsFor(() => client.state === 'closed' && !log.states.includes('reconnecting'), 'stays closed', 300);
  });

  test('a kick closes with 4004 and the client does not reconnect', T, async () => {
    const sub = newUser('kick');
    const { client, log } = track(makeClient(gw, { token: tokenFor(sub) }));
    await client.connect();
    const res = await api(gw, 'POST', `/api/users/${sub}/disconnect`);
    assert.equal(res.disconnected, 1);
    await waitFor(() => client.state === 'closed', 'state closed');
    assert.deepEqual(log.closes.map((c) => [c.code, c.willReconnect]), [[4004, false]]);
    await holdsFor(() => client.state === 'closed' && log.welcomes.length === 1, 'stays closed', 300);
    await assert.rejects(client.publish('chat:1', 'x', null), (e) => e.code === 'closed');
  });

  test('after a dropped socket it resumes and gets exactly the missed events, in order', T, async () => {
    const sub = newUser('resume');
    let gate = null;
    const { client, log } = track(makeClient(gw, {
      getToken: async () => { await gate?.promise; return tokenFor(sub); },
    }));
    const first = await client.connect();
    await client.subscribe('room:9');
    const before = await publishApi(gw, `user:${sub}`, 'before', 0);
    await waitFor(() => client.lastEventId === before, 'the first event');

    let release;
    gate = { promise: new Promise((r) => { release = r; }) };
    const mark = log.events.length;
    client._socket.close(); // a network drop, as far as the client knows
    await waitFor(() => client.state === 'reconnecting', 'state reconnecting');
    await waitFor(async () => (await api(gw, 'GET', `/api/presence/users/${sub}`)).connections.length === 0,
      'the gateway to notice the drop');
    const missed = [];
    for (let i = 1; i <= 3; i++) missed.push(await publishApi(gw, `user:${sub}`, 'missed', i));
    release();

    await waitFor(() => log.welcomes.length >= 2 && client.state === 'open', 'the second welcome');
    assert.equal(log.welcomes.length, 2);
    const w = log.welcomes[1];
    assert.equal(w.connection_id, first.connection_id);
    assert.equal(w.resumed, true);
    assert.deepEqual(w.channels, ['room:9']);
    assert.equal(w.replayed, 3);
    assert.equal(log.closes.at(-1).willReconnect, true);

    const live = await publishApi(gw, 'room:9', 'live', 4);
    await waitFor(() => log.events.some((f) => f.event_id === live), 'a live event on the resumed topic');
    assert.deepEqual(log.events.slice(mark).map((f) => f.event_id), [...missed, live]);
    assert.deepEqual(log.events.slice(mark, mark + 3).map((f) => f.data), [1, 2, 3]);
    assert.equal(client.lastEventId, live);
  });

  test('answers server pings: stays open well past the 400 ms heartbeat timeout', T, async () => {
    const sub = newUser('ping');
    let pings = 0, pongs = 0;
    class CountingWebSocket extends WebSocket {
      constructor(...args) {
        super(...args);
        this.addEventListener('message', (e) => { if (JSON.parse(e.data).type === 'ping') pings++; });
      }
      send(data, ...rest) {
        if (JSON.parse(data).type === 'pong') pongs++;
        super.send(data, ...rest);
      }
    }
    const { client, log } = track(makeClient(gw, { token: tokenFor(sub), WebSocket: CountingWebSocket }));
    const started = Date.now();
    const welcome = await client.connect();
    await waitFor(() => pings >= 12 && Date.now() - started > 1000, '12 server pings');
    assert.ok(pongs >= pings - 1, `pongs ${pongs} for pings ${pings}`);
    assert.equal(client.state, 'open');
    assert.deepEqual(log.closes, []);
    assert.equal(client.connectionId, welcome.connection_id);
  });

  test('request() rejects with code unavailable on a single-node gateway', T, async () => {
    const sub = newUser('request');
    const { client } = track(makeClient(gw, { token: tokenFor(sub) }));
    await client.connect();
    const chunks = [];
    await assert.rejects(client.request('search', { q: 'x' }, { onChunk: (c) => chunks.push(c) }),
      (e) => e.code === 'unavailable');
    assert.deepEqual(chunks, []);
    assert.equal(client.state, 'open');
  });

  test('an expired token (4003) is replaced through onTokenExpired and the client reconnects', T, async () => {
    const sub = newUser('expiry');
    let refreshed = 0;
    const short = jwt({ sub, exp: Math.floor(Date.now() / 1000) + 2, channels: ['room:*'] });
    const { client, log } = track(makeClient(gw, {
      token: short,
      onTokenExpired: async () => { refreshed++; return tokenFor(sub); },
    }));
    await client.connect();
    await client.subscribe('room:exp');
    await waitFor(() => refreshed >= 1 && client.state === 'open' && log.welcomes.length >= 2,
      'the reconnect with the new token', 10000);
    assert.equal(log.welcomes.length, 2);
    assert.equal(refreshed, 1);
    assert.deepEqual(log.closes.map((c) => [c.code, c.willReconnect]), [[4003, true]]);
    assert.equal(log.welcomes[1].resumed, true, 'the session is resumed with the new token');
    assert.deepEqual(log.welcomes[1].channels, ['room:exp']);
    const id = await publishApi(gw, 'room:exp', 'after', null);
    await waitFor(() => log.events.some((f) => f.event_id === id), 'an event on the topic kept across the reconnect');
  });
});

describe('across a gateway restart', () => {
  let gw;
  let client;
  after(async () => {
    client?.close();
    await stopGateway(gw);
  });

  test('a draining gateway (1012) is left and the client reconnects to its successor', T, async () => {
    gw = await startGateway({ WSGW_DRAIN_MS: '100' });
    const sub = newUser('restart');
    const made = makeClient(gw, { token: tokenFor(sub) });
    client = made.client;
    const { log } = made;
    const first = await client.connect();
    await client.subscribe('room:restart');
    const before = await publishApi(gw, 'room:restart', 'before', 0);
    await waitFor(() => client.lastEventId === before, 'the first event');

    process.kill(gw.child.pid, 'SIGTERM');
    // >= 1: the reconnects that the draining node refuses (1012 again) may follow at once.
    await waitFor(() => log.closes.length >= 1, 'the drain close');
    assert.deepEqual([log.closes[0].code, log.closes[0].willReconnect], [1012, true]);
    await gw.exited;
    gw = await startGateway({ WSGW_DRAIN_MS: '100' }, gw.port);

    await waitFor(() => client.state === 'open' && log.welcomes.length >= 2, 'the welcome of the new gateway', 15000);
    assert.notEqual(client.node, first.node);
    // The new process knows nothing of the old session, so the client subscribes again itself.
    assert.equal(log.welcomes.at(-1).resumed, false);
    // subscribe is idempotent: its answer also means the automatic re-subscribe was processed.
    await client.subscribe('room:restart');
    const mark = log.events.length;
    const a = await publishApi(gw, `user:${sub}`, 'after', 1);
    const b = await publishApi(gw, 'room:restart', 'after', 2);
    await waitFor(() => log.events.length >= mark + 2, 'both events from the new gateway');
    assert.deepEqual(log.events.slice(mark).map((f) => f.event_id), [a, b]);
    assert.equal(client.lastEventId, b);
  });
});

describe('the token', () => {
  let gw;
  before(async () => { gw = await startGateway({ WSGW_DRAIN_MS: '100' }); });
  after(async () => { await stopGateway(gw); });

  /** A TCP proxy in front of the gateway that records each upgrade request's head. */
  async function recordingProxy(target) {
    const heads = [];
    const conns = new Set();
    const srv = net.createServer((down) => {
      const up = net.connect(target.port, '127.0.0.1');
      conns.add(down).add(up);
      let head = '';
      const onData = (chunk) => {
        head += chunk.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end >= 0) { heads.push(head.slice(0, end)); down.off('data', onData); }
      };
      down.on('data', onData);
      down.pipe(up).pipe(down);
      const drop = () => { down.destroy(); up.destroy(); };
      down.on('error', drop); up.on('error', drop); down.on('close', drop); up.on('close', drop);
    });
    await new Promise((r) => srv.listen(0, '127.0.0.1', r));
    const close = () => new Promise((r) => { for (const c of conns) c.destroy(); srv.close(r); });
    return { heads, ws: `ws://127.0.0.1:${srv.address().port}/ws`, close };
  }

  test('travels in Sec-WebSocket-Protocol as bearer.<jwt>, never in the URL; the gateway answers wsgw.v1', T, async () => {
    const proxy = await recordingProxy(gw);
    const sub = newUser('subprotocol');
    const token = tokenFor(sub);
    const { client } = makeClient({ ws: proxy.ws }, { token, connectionId: 'abc', lastEventId: '1-0' });
    try {
      const welcome = await client.connect();
      assert.equal(welcome.user_id, sub, 'the gateway took the token from the subprotocol');
      assert.equal(client._socket.protocol, 'wsgw.v1');
      assert.equal(proxy.heads.length, 1);
      const [requestLine, ...headers] = proxy.heads[0].split('\r\n');
      const target = requestLine.split(' ')[1];
      const query = new URL(target, 'ws://x').searchParams;
      assert.equal(query.get('token'), null, `no token parameter in ${target}`);
      assert.ok(!requestLine.includes(token.split('.')[1]), 'no part of the token in the URL');
      assert.equal(query.get('connection_id'), 'abc');
      assert.equal(query.get('last_event_id'), '1-0');
      const protocols = headers.filter((h) => /^sec-websocket-protocol:/i.test(h))
        .flatMap((h) => h.slice(h.indexOf(':') + 1).split(',').map((x) => x.trim()));
      assert.deepEqual(protocols, ['wsgw.v1', `bearer.${token}`]);
    } finally {
      client.close();
      await proxy.close();
    }
  });

  test('a drain (1012) reconnects with the kept token: getToken is not asked again while it is fresh', T, async () => {
    const sub = newUser('fresh');
    let calls = 0;
    const { client, log } = makeClient(gw, { getToken: async () => { calls++; return tokenFor(sub); } });
    try {
      const first = await client.connect();
      assert.equal(calls, 1);
      process.kill(gw.child.pid, 'SIGTERM');
      await waitFor(() => log.closes.length >= 1, 'the drain close');
      assert.deepEqual([log.closes[0].code, log.closes[0].willReconnect], [1012, true]);
      await gw.exited;
      gw = await startGateway({ WSGW_DRAIN_MS: '100' }, gw.port);
      await waitFor(() => client.state === 'open' && log.welcomes.length >= 2, 'the welcome of the new gateway', 15000);
      assert.notEqual(client.node, first.node);
      assert.equal(calls, 1, 'getToken was called once in all');
      // A dropped socket, likewise.
      client._socket.terminate();
      await waitFor(() => log.welcomes.length >= 3 && client.state === 'open', 'the reconnect after the drop');
      assert.equal(calls, 1);
    } finally {
      client.close();
    }
  });

  test('a token expiring within a minute is replaced through getToken before a reconnect', T, async () => {
    const sub = newUser('nearexp');
    const issued = [];
    const { client, log } = makeClient(gw, {
      getToken: async () => {
        const t = tokenFor(sub, { exp: Math.floor(Date.now() / 1000) + 30 });
        issued.push(t);
        return t;
      },
    });
    try {
      await client.connect();
      assert.equal(issued.length, 1);
      client._socket.terminate();
      await waitFor(() => log.welcomes.length >= 2 && client.state === 'open', 'the reconnect');
      assert.equal(issued.length, 2, 'getToken was asked again: the kept token expires in 30 s');
      assert.equal(log.welcomes[1].resumed, true);
    } finally {
      client.close();
    }
  });

  test('a kept token refused (4001, rotated key) is replaced once through getToken', T, async () => {
    const sub = newUser('rotated');
    let secret = SECRET;
    let calls = 0;
    const { client, log } = makeClient(gw, {
      getToken: async () => { calls++; return jwt({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }, secret); },
    });
    const other = randomBytes(24).toString('hex');
    try {
      await client.connect();
      assert.equal(calls, 1);
      process.kill(gw.child.pid, 'SIGTERM');
      await gw.exited;
      secret = other;
      gw = await startGateway({ WSGW_DRAIN_MS: '100', WSGW_JWT_SECRET: other }, gw.port);
      await waitFor(() => log.welcomes.length >= 2 && client.state === 'open', 'the welcome with the new token', 15000);
      assert.equal(calls, 2, 'one more token, after the refusal');
      const codes = log.closes.map((c) => [c.code, c.willReconnect]);
      assert.deepEqual(codes.filter(([c]) => c === 4001), [[4001, true]]);
    } finally {
      client.close();
      // The gateways after this one sign with SECRET again.
      await stopGateway(gw);
      gw = await startGateway({ WSGW_DRAIN_MS: '100' }, gw.port);
    }
  });

  test('a token just fetched and refused (4001) is final', T, async () => {
    let calls = 0;
    const { client, log } = makeClient(gw, {
      getToken: async () => { calls++; return jwt({ sub: 'x', exp: 9999999999 }, 'wrong-secret'); },
    });
    await assert.rejects(client.connect(), (e) => e.code === 4001);
    assert.equal(calls, 1);
    assert.deepEqual(log.closes.map((c) => [c.code, c.willReconnect]), [[4001, false]]);
    await holdsFor(() => client.state === 'closed' && calls === 1, 'stays closed', 300);
  });
});

/** A socket whose messages stop reaching the client once `cut` is set (what a network drop
 * does to frames still in flight). */
class CuttableWebSocket extends WebSocket {
  cut = false;
  get onmessage() { return super.onmessage; }
  set onmessage(handler) { super.onmessage = handler && ((e) => { if (!this.cut) handler(e); }); }
}

describe('a subscribe catch-up cut by a dropped socket', () => {
  let resuming;
  let expiring;
  before(async () => {
    [resuming, expiring] = await Promise.all([startGateway(), startGateway({ WSGW_SESSION_TTL_MS: '0' })]);
  });
  after(async () => {
    await Promise.all([stopGateway(resuming), stopGateway(expiring)]);
  });

  /**
   * `room:<sub>` has 40 events older than the client's cursor; a subscribe from before them is
   * cut after 10 catch-up events, and more events come while the client is away. After the
   * reconnect the handlers have had every event of the room once, in order, and no other event
   * twice. `resumes`: whether the gateway keeps sessions (else the topic is subscribed again).
   */
  async function cutCatchUp(gw, resumes) {
    const sub = newUser('cut');
    const room = `room:${sub}`;
    const user = `user:${sub}`;
    let gate = null;
    const { client, log } = makeClient(gw, {
      WebSocket: CuttableWebSocket,
      getToken: async () => { await gate?.promise; return tokenFor(sub); },
    });
    try {
      const start = await publishApi(gw, room, 'old', 0);
      const older = [];
      for (let n = 1; n <= 40; n++) older.push(await publishApi(gw, room, 'old', n));
      const first = await client.connect();
      const u1 = await publishApi(gw, user, 'mine', 1);
      await waitFor(() => client.lastEventId === u1, 'the cursor past the room events');

      let release;
      gate = { promise: new Promise((r) => { release = r; }) };
      let seen = 0;
      let cursorAtCut = null;
      client.on(room, () => {
        if (++seen !== 10) return;
        cursorAtCut = client.lastEventId;
        const sock = client._socket;
        sock.cut = true; // the other 30 catch-up events are lost with the socket
        sock.terminate();
      });
      const subscribed = await client.subscribe(room, { lastEventId: start });
      assert.equal(subscribed.replayed, 40);
      await waitFor(() => client.state === 'reconnecting', 'the drop');
      assert.equal(seen, 10, 'the drop cut the catch-up after 10 events');
      assert.equal(cursorAtCut, older[9], 'mid catch-up, a resume starts from the catch-up');
      await waitFor(async () => (await api(gw, 'GET', `/api/presence/users/${sub}`)).connections.length === 0,
        'the gateway to notice the drop');
      const u2 = await publishApi(gw, user, 'mine', 2);
      const live = await publishApi(gw, room, 'new', 41);
      release();

      await waitFor(() => log.welcomes.length >= 2 && client.state === 'open', 'the second welcome');
      const w = log.welcomes[1];
      assert.equal(w.resumed, resumes);
      assert.equal(w.recovered, true);
      if (resumes) {
        assert.equal(w.connection_id, first.connection_id);
        assert.deepEqual(w.channels, [room]);
      }
      const ids = () => log.events.map((f) => f.event_id);
      await waitFor(() => ids().includes(live) && ids().includes(u2), 'the events published meanwhile');
      // Anything still pending (a late repeat) arrives before this marker.
      const marker = await publishApi(gw, user, 'marker', null);
      await waitFor(() => ids().includes(marker), 'the marker');
      const on = (ch) => log.events.filter((f) => f.channel === ch).map((f) => f.event_id);
      assert.deepEqual(on(room), [...older, live], 'every room event once, in order');
      assert.deepEqual(on(user), [u1, u2, marker], 'no repeats on the user channel');
      assert.equal(log.events.length, 44);
      assert.equal(client.lastEventId, marker);
    } finally {
      client.close();
    }
  }

  test('the resumed session completes it without repeats', T, () => cutCatchUp(resuming, true));
  test('the subscribe again (session expired) completes it without repeats', T, () => cutCatchUp(expiring, false));
});

test('a gap frame is emitted as the gap event and the socket stays open', T, async () => {
  // Only a cluster repairing a Redis outage sends `gap`: a stand-in server sends one.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const gap = { type: 'gap', channels: ['room:1', 'room:*'], recovered: false };
  wss.on('connection', (sock) => {
    sock.send(JSON.stringify({
      type: 'welcome', connection_id: '0'.repeat(32), user_id: 'u', node: 'stand-in', resumed: false,
      recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 }, session_ttl_ms: 120000,
    }));
    sock.send(JSON.stringify(gap));
    sock.send(JSON.stringify({ type: 'event', event_id: '5-0', channel: 'room:1', event: 'e', data: 1, ts: 5 }));
  });
  const { client, log } = makeClient({ ws: `ws://127.0.0.1:${wss.address().port}/ws` }, { token: 't' });
  const gaps = [];
  client.on('gap', (g) => gaps.push(g));
  try {
    await client.connect();
    await waitFor(() => gaps.length === 1 && log.events.length === 1, 'the gap and the event after it');
    assert.deepEqual(gaps[0], gap);
    assert.equal(log.events[0].event_id, '5-0');
    assert.equal(client.state, 'open');
  } finally {
    client.close();
    await new Promise((r) => wss.close(r));
  }
});

test('the cursor rule, step by step against a scripted stand-in server', T, async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const urls = [];
  const subscribes = [];
  const ev = (channel, id) => JSON.stringify({ type: 'event', event_id: id, channel, event: 'e', data: id, ts: 1 });
  const welcome = (n) => JSON.stringify({
    type: 'welcome', connection_id: String(n).repeat(32), user_id: 'u', node: 'stand-in', resumed: false,
    recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 }, session_ttl_ms: 120000,
  });
  wss.on('connection', (sock, req) => {
    const n = urls.push(new URL(req.url, 'ws://x').searchParams);
    sock.send(welcome(n));
    if (n === 1) sock.send(ev('user:u', '100-0'));
    // The second welcome's replay, from 20-0: an event the client has already.
    if (n === 2) sock.send(ev('user:u', '100-0'));
    sock.on('message', (raw) => {
      const f = JSON.parse(raw);
      if (f.type !== 'subscribe') return;
      subscribes.push({ n, channel: f.channel, last_event_id: f.last_event_id, history: f.history });
      const subscribed = (replayed) => sock.send(JSON.stringify({
        type: 'subscribed', channel: f.channel, request_id: f.request_id, recovered: true, replayed,
      }));
      if (n === 1) {
        // A catch-up of 3 from 10-0, cut after its first event.
        subscribed(3);
        sock.send(ev('room:1', '20-0'));
        sock.terminate();
      } else if (f.channel === 'room:1') {
        subscribed(2);
        sock.send(ev('room:1', '20-0')); // at or below the catch-up position: a repeat
        sock.send(ev('room:1', '30-0'));
      } else if (f.channel === 'news') {
        // Older than the old cursor, but new to the application.
        subscribed(2);
        sock.send(ev('news', '5-0'));
        sock.send(ev('news', '6-0'));
        sock.send(ev('user:u', '101-0'));
      }
    });
  });
  const { client, log } = makeClient({ ws: `ws://127.0.0.1:${wss.address().port}/ws` }, { token: 't' });
  try {
    await client.connect();
    await waitFor(() => client.lastEventId === '100-0', 'the first event');
    await client.subscribe('room:1', { lastEventId: '10-0' });
    await waitFor(() => log.welcomes.length === 2, 'the reconnect');
    assert.equal(urls[1].get('last_event_id'), '20-0', 'the resume starts from the cut catch-up');
    assert.equal(urls[1].get('connection_id'), '1'.repeat(32));
    await client.subscribe('news', { history: 2 });
    await waitFor(() => log.events.some((f) => f.event_id === '101-0'), 'the live event');
    assert.deepEqual(subscribes, [
      { n: 1, channel: 'room:1', last_event_id: '10-0', history: undefined },
      { n: 2, channel: 'room:1', last_event_id: '20-0', history: undefined },
      { n: 2, channel: 'news', last_event_id: undefined, history: 2 },
    ]);
    assert.deepEqual(log.events.map((f) => `${f.channel} ${f.event_id}`),
      ['user:u 100-0', 'room:1 20-0', 'room:1 30-0', 'news 5-0', 'news 6-0', 'user:u 101-0']);
    assert.equal(client.lastEventId, '101-0');
  } finally {
    client.close();
    await new Promise((r) => wss.close(r));
  }
});
