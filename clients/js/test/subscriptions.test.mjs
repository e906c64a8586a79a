// Subscription objects (their own event/join/leave/error handlers, presence(), history(),
// unsubscribe()) and takeover (close 4010: start a fresh session), against a real gateway; the
// presence frames (join, leave, presence) also against a scripted stand-in server.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { Subscription, WsgwError } from '../wsgw.js';
import { T, holdsFor, makeClient, newUser, publishApi, startGateway, stopGateway, tokenFor, waitFor } from './support.mjs';

/** Records what a Subscription's handlers receive. */
function record(sub) {
  const got = { event: [], join: [], leave: [], error: [], subscribed: [], unsubscribed: [] };
  for (const name of Object.keys(got)) sub.on(name, (v) => got[name].push(v));
  return got;
}

describe('Subscription objects against a gateway', () => {
  let gw;
  const clients = [];
  const track = (c) => { clients.push(c.client); return c; };
  before(async () => { gw = await startGateway(); });
  after(async () => {
    for (const c of clients) c.close();
    await stopGateway(gw);
  });

  test('each subscription gets its channel\'s events; unsubscribe() leaves only with the last one', T, async () => {
    const user = newUser('subs');
    const { client, log } = track(makeClient(gw, { token: tokenFor(user) }));
    await client.connect();
    const a = client.subscribe('room:a');
    assert.ok(a instanceof Subscription);
    const pattern = client.subscribe('room:*');
    const again = client.subscribe('room:a');
    const [ga, gp, gagain] = [record(a), record(pattern), record(again)];
    const sf = await a;
    assert.deepEqual([sf.type, sf.channel], ['subscribed', 'room:a'], 'awaiting it gives the subscribed frame');
    await pattern;
    await again;
    await waitFor(() => ga.subscribed.length === 1, 'the subscribed event');

    const e1 = await publishApi(gw, 'room:a', 'msg', { n: 1 });
    const e2 = await publishApi(gw, 'room:b', 'msg', { n: 2 });
    await waitFor(() => gp.event.length === 2 && ga.event.length === 1 && gagain.event.length === 1, 'the events');
    assert.deepEqual(ga.event.map((e) => [e.event_id, e.data]), [[e1, { n: 1 }]]);
    assert.deepEqual(gp.event.map((e) => e.event_id), [e1, e2], 'a pattern subscription matches both');

    // Two subscriptions follow room:a: leaving with one keeps the channel for the other.
    assert.equal(await a.unsubscribe(), null, 'nothing sent while another subscription follows room:a');
    assert.equal(a.active, false);
    const e3 = await publishApi(gw, 'room:a', 'msg', { n: 3 });
    await waitFor(() => gagain.event.length === 2, 'the event on the remaining subscription');
    assert.equal(ga.event.length, 1, 'no event after unsubscribe()');
    const unsub = await again.unsubscribe();
    assert.deepEqual([unsub.type, unsub.channel], ['unsubscribed', 'room:a'], 'the last one leaves the channel');
    await pattern.unsubscribe();
    const e4 = await publishApi(gw, 'room:a', 'msg', { n: 4 });
    const marker = await publishApi(gw, `user:${user}`, 'marker', null);
    await waitFor(() => log.events.some((f) => f.event_id === marker), 'the marker');
    assert.ok(!log.events.some((f) => f.event_id === e4), 'the socket left room:a');
    assert.deepEqual(gagain.event.map((e) => e.event_id), [e1, e3]);
  });

  test('history() on a subscription reads its channel; a refusal reaches its error handler and rejects', T, async () => {
    const user = newUser('subhist');
    const channel = `chat:${user}`;
    const ids = [];
    for (let i = 0; i < 4; i++) ids.push(await publishApi(gw, channel, 'msg', { i }));
    const { client } = track(makeClient(gw, { token: tokenFor(user) }));
    await client.connect();
    const sub = client.subscribe(channel, { history: 2 });
    const got = record(sub);
    await sub;
    await waitFor(() => got.event.length === 2, 'the history catch-up as events');
    assert.deepEqual(got.event.map((e) => e.event_id), ids.slice(2));
    const page = await sub.history({ since: ids[0], limit: 2 });
    assert.deepEqual([page.type, page.channel, page.recovered], ['history', channel, true]);
    assert.deepEqual(page.events.map((e) => e.event_id), ids.slice(1, 3));
    assert.deepEqual((await sub.history({ limit: 1 })).events.map((e) => e.event_id), [ids[3]]);
    await assert.rejects(sub.history({ limit: -1 }), (e) => e instanceof WsgwError && e.code === 'bad_request');
    assert.deepEqual(got.error.map((e) => e.code), ['bad_request'], 'the error handler is told too');

    // A refused subscribe: rejects, goes to the error handler, and the subscription ends.
    const secret = client.subscribe('secret:1');
    const gs = record(secret);
    await assert.rejects(secret, (e) => e.code === 'forbidden');
    assert.deepEqual(gs.error.map((e) => [e.code, e.frame?.type]), [['forbidden', 'error']]);
    assert.equal(secret.active, false);
    await assert.rejects(secret.history(), (e) => e.code === 'forbidden');
    assert.equal(gs.error.length, 2);
    // A refusal nobody awaits is not an unhandled rejection (the test runner would fail on one).
    const ignored = client.subscribe('secret:2');
    const gi = record(ignored);
    await waitFor(() => gi.error.length === 1, 'the ignored refusal reaches the handler');
  });
});

describe('takeover (close 4010)', () => {
  let gw;
  before(async () => { gw = await startGateway(); });
  after(async () => { await stopGateway(gw); });

  test('a duplicated tab resuming the same connection id: the first client starts a fresh session, both stay', T, async () => {
    const user = newUser('dup');
    const first = makeClient(gw, { token: tokenFor(user) });
    const second = makeClient(gw, { token: tokenFor(user) });
    try {
      const w1 = await first.client.connect();
      const s1 = first.client.subscribe('room:tab');
      const g1 = record(s1);
      await s1;
      // "Duplicate tab" copies sessionStorage: the second tab resumes the first one's id.
      const dup = makeClient(gw, { token: tokenFor(user), connectionId: w1.connection_id });
      second.client = dup.client; second.log = dup.log;
      const w2 = await second.client.connect();
      assert.equal(w2.connection_id, w1.connection_id, 'the newer socket has the id');
      const s2 = second.client.subscribe('room:tab');
      const g2 = record(s2);
      await s2;

      await waitFor(() => first.log.welcomes.length === 2, 'the first client\'s fresh session');
      assert.deepEqual(first.log.closes.map((c) => [c.code, c.willReconnect]), [[4010, true]]);
      const w3 = first.log.welcomes[1];
      assert.equal(w3.resumed, false);
      assert.notEqual(w3.connection_id, w1.connection_id, 'a new connection id, not the taken one');
      assert.equal(first.client.connectionId, w3.connection_id);
      await waitFor(() => g1.subscribed.length === 2, 'room:tab subscribed again on the fresh session');

      const ev = await publishApi(gw, 'room:tab', 'msg', { text: 'both' });
      await waitFor(() => g1.event.some((e) => e.event_id === ev) && g2.event.some((e) => e.event_id === ev),
        'the event in both tabs');
      await holdsFor(() => first.client.state === 'open' && second.client.state === 'open'
        && first.log.closes.length === 1 && second.log.closes.length === 0, 'both stay connected', 1000);
    } finally {
      first.client.close();
      second.client.close();
    }
  });
});

test('join, leave and presence() reach the subscriptions of their channel (stand-in server)', T, async () => {
  // The gateway's presence frames, as docs/protocol.md describes them, from a scripted server.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const clients = [{ user_id: 'bob', connection_id: 'b1', node: 'gw-1' }];
  const sent = [];
  wss.on('connection', (sock) => {
    const send = (f) => sock.send(JSON.stringify(f));
    send({
      type: 'welcome', connection_id: '0'.repeat(32), user_id: 'u', node: 'stand-in', resumed: false,
      recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 }, session_ttl_ms: 120000,
    });
    sock.on('message', (raw) => {
      const f = JSON.parse(raw);
      sent.push(f);
      if (f.type === 'subscribe') {
        send({ type: 'subscribed', channel: f.channel, request_id: f.request_id, recovered: true, replayed: 0 });
      } else if (f.type === 'presence' && f.channel === 'chat:1') {
        send({ type: 'presence', channel: f.channel, request_id: f.request_id, clients });
      } else if (f.type === 'presence') {
        send({ type: 'error', code: 'forbidden', message: 'not allowed', request_id: f.request_id });
      } else if (f.type === 'publish' && f.event === 'go') {
        send({ type: 'join', channel: 'chat:1', user_id: 'carol', connection_id: 'c1' });
        send({ type: 'join', channel: 'chat:2', user_id: 'dave', connection_id: 'd1' });
        send({ type: 'leave', channel: 'chat:1', user_id: 'bob', connection_id: 'b1' });
        send({ type: 'error', code: 'forbidden', message: 'no longer allowed', channel: 'chat:1' });
      }
    });
  });
  const { client, log } = makeClient({ ws: `ws://127.0.0.1:${wss.address().port}/ws` }, { token: 't' });
  try {
    await client.connect();
    const chat1 = client.subscribe('chat:1');
    const all = client.subscribe('chat:*');
    const [g1, gall] = [record(chat1), record(all)];
    await chat1;
    await all;
    const p = await chat1.presence();
    assert.deepEqual(p, { type: 'presence', channel: 'chat:1', request_id: sent.find((f) => f.type === 'presence').request_id, clients });
    assert.deepEqual((await client.presence('chat:1')).clients, clients, 'the client-level call');
    assert.deepEqual(sent.filter((f) => f.type === 'presence').map((f) => Object.keys(f).sort()),
      [['channel', 'request_id', 'type'], ['channel', 'request_id', 'type']], 'the presence frame as documented');
    await assert.rejects(all.presence(), (e) => e.code === 'forbidden');
    assert.deepEqual(gall.error.map((e) => e.code), ['forbidden'], 'the refusal reaches that subscription only');
    assert.equal(g1.error.length, 0);

    client.publish('chat:1', 'go', null).catch(() => {});
    await waitFor(() => g1.leave.length === 1 && gall.join.length === 2 && g1.error.length === 1, 'the frames');
    assert.deepEqual(g1.join, [{ type: 'join', channel: 'chat:1', user_id: 'carol', connection_id: 'c1' }]);
    assert.deepEqual(g1.leave, [{ type: 'leave', channel: 'chat:1', user_id: 'bob', connection_id: 'b1' }]);
    assert.deepEqual(gall.join.map((j) => j.channel), ['chat:1', 'chat:2'], 'a pattern subscription gets both');
    assert.deepEqual(g1.error.map((e) => [e.code, e.message]), [['forbidden', 'no longer allowed']],
      'an error frame naming the channel reaches its subscription');
    assert.equal(log.events.length, 0, 'join and leave are not events');
  } finally {
    client.close();
    await new Promise((r) => wss.close(r));
  }
});

test('a subscribe again refused after a reconnect ends the subscription and reaches its error handler', T, async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  let n = 0;
  wss.on('connection', (sock) => {
    const k = ++n;
    const send = (f) => sock.send(JSON.stringify(f));
    send({
      type: 'welcome', connection_id: String(k).repeat(32), user_id: 'u', node: 'stand-in', resumed: false,
      recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 }, session_ttl_ms: 120000,
    });
    sock.on('message', (raw) => {
      const f = JSON.parse(raw);
      if (f.type !== 'subscribe') return;
      if (k === 1) {
        send({ type: 'subscribed', channel: f.channel, request_id: f.request_id, recovered: true, replayed: 0 });
        sock.terminate();
      } else {
        send({ type: 'error', code: 'forbidden', message: 'no longer allowed', request_id: f.request_id });
      }
    });
  });
  const { client, log } = makeClient({ ws: `ws://127.0.0.1:${wss.address().port}/ws` }, { token: 't' });
  try {
    await client.connect();
    const sub = client.subscribe('chat:1');
    const got = record(sub);
    const activeWhenTold = [];
    sub.on('error', () => activeWhenTold.push(sub.active));
    await sub;
    await waitFor(() => got.error.length === 1, 'the refusal after the reconnect');
    assert.deepEqual(got.error.map((e) => e.code), ['forbidden']);
    assert.deepEqual(activeWhenTold, [false], 'the subscription has ended when its handler is told');
    assert.equal(got.subscribed.length, 1);
    assert.ok(log.errors.some((e) => e.code === 'forbidden'), 'the client-level error event as before');
  } finally {
    client.close();
    await new Promise((r) => wss.close(r));
  }
});

describe('channel presence against a gateway (WSGW_PRESENCE_CHANNELS)', () => {
  let gw;
  before(async () => { gw = await startGateway({ WSGW_PRESENCE_CHANNELS: 'room:*' }); });
  after(async () => { await stopGateway(gw); });

  test('join, presence() and leave from the real server reach the subscription', T, async () => {
    const [ann, bob] = [newUser('ann'), newUser('bob')];
    const a = makeClient(gw, { token: tokenFor(ann) });
    const b = makeClient(gw, { token: tokenFor(bob) });
    try {
      await a.client.connect();
      const sub = a.client.subscribe('room:p');
      const got = record(sub);
      await sub;
      await waitFor(() => got.join.some((j) => j.user_id === ann), 'its own join');
      const wb = await b.client.connect();
      await b.client.subscribe('room:p');
      await waitFor(() => got.join.some((j) => j.user_id === bob), 'bob\'s join');
      const j = got.join.find((x) => x.user_id === bob);
      assert.deepEqual([j.type, j.channel, j.connection_id], ['join', 'room:p', wb.connection_id]);
      const p = await sub.presence();
      assert.deepEqual(p.clients.map((c) => c.user_id).sort(), [ann, bob].sort());
      assert.ok(p.clients.every((c) => typeof c.node === 'string' && c.node.length > 0), 'each entry names its node');
      await assert.rejects(a.client.presence('chat:1'), (e) => e.code === 'bad_request', 'an untracked channel');
      b.client.close();
      await waitFor(() => got.leave.some((l) => l.user_id === bob && l.connection_id === wb.connection_id), 'bob\'s leave');
      assert.deepEqual((await sub.presence()).clients.map((c) => c.user_id), [ann]);
    } finally {
      a.client.close();
      b.client.close();
    }
  });
});
