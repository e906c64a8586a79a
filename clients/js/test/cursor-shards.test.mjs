// The JS client's cursor with Redis Cluster ids (`<shard>~<ms>-<seq>`): one position per id-shard,
// every rule of the cursor (docs/protocol.md, "The cursor a client keeps") applied per shard.
// No gateway: the client runs on an in-process stand-in WebSocket, so each test scripts the
// frames exactly and reads what the client sends back (resume URL, subscribes) and delivers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { WsgwClient, compareEventIds, shardOf } from '../wsgw.js';
import { T, waitFor } from './support.mjs';

// Channels and their shards, from zlib.crc32(name) % 16 (checked by the first test).
const SHARD = { a: 3, 'room:106': 3, b: 9, 'room:10': 9, 'user:42': 6, 'room:0': 6, 'room:1': 0, 'room:102': 10, 'room:103': 12 };

/** A stand-in WebSocket: records the URL and the frames sent; the test pushes frames and drops it. */
function standIn() {
  const sockets = [];
  class Socket {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 1;
      this.sent = [];
      this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close() { this.readyState = 3; }
    push(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
    /** A network drop. */
    drop() { this.readyState = 3; this.onclose?.({ code: 1006, reason: '' }); }
    welcome(channels) {
      this.push({
        type: 'welcome', connection_id: `c${sockets.length}`.padEnd(32, '0'), user_id: 'u', node: 'stand-in',
        resumed: Boolean(channels), recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 },
        session_ttl_ms: 120000, ...(channels ? { channels } : {}),
      });
    }
    event(channel, id) { this.push({ type: 'event', event_id: id, channel, event: 'e', data: null, ts: 1 }); }
    /** Answers the last subscribe sent for `channel`. */
    subscribed(channel, replayed) {
      const f = this.subscribes().filter((s) => s.channel === channel).at(-1);
      assert.ok(f, `a subscribe of ${channel}`);
      this.push({ type: 'subscribed', channel, request_id: f.request_id, recovered: true, replayed });
    }
    subscribes() { return this.sent.filter((f) => f.type === 'subscribe'); }
    resumeFrom() { return this.url.searchParams.get('last_event_id'); }
  }
  return { Socket, sockets };
}

/** A connected client on a stand-in socket, and the events it delivered (`channel id`). */
async function connected(opts = {}) {
  const { Socket, sockets } = standIn();
  const client = new WsgwClient('ws://127.0.0.1:1/ws', {
    token: 't', WebSocket: Socket, backoff: { initialMs: 0, maxMs: 0, jitter: 0 }, ...opts,
  });
  const delivered = [];
  client.on('*', (f) => delivered.push(`${f.channel} ${f.event_id}`));
  const welcomed = client.connect();
  sockets[0].welcome();
  await welcomed;
  return { client, sockets, delivered };
}

/** Drops the current socket; resolves with the next one, not yet welcomed. */
async function drop(sockets) {
  const n = sockets.length;
  sockets[n - 1].drop();
  await waitFor(() => sockets.length > n, 'the reconnect');
  return sockets[n];
}

/** Lets the client's promise callbacks run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

test('shardOf is the CRC-32 (IEEE, as zlib) of the UTF-8 name modulo 16', T, () => {
  for (const [channel, shard] of Object.entries(SHARD)) assert.equal(shardOf(channel), shard, channel);
  assert.equal(1684999558 % 16, 6); // zlib.crc32('user:42')
  assert.equal(shardOf('orders:42'), 5);
  assert.equal(shardOf('room/x'), 0);
  assert.equal(shardOf(''), 0);
  if (typeof zlib.crc32 === 'function') {
    for (const channel of ['user:42', 'chat:ünïcödé', 'emoji:😀', 'x'.repeat(300), 'a b\tc', 'ch:\u0000']) {
      assert.equal(shardOf(channel), zlib.crc32(Buffer.from(channel, 'utf8')) % 16, channel);
    }
  }
});

test('ids compare within their shard only; ids of different shards are not ordered', T, () => {
  assert.ok(compareEventIds('6~9-5', '6~10-0') < 0);
  assert.ok(compareEventIds('12~1732240000123-10', '12~1732240000123-9') > 0);
  assert.equal(compareEventIds('6~5-0', '6~5-0'), 0);
  assert.throws(() => compareEventIds('6~1-0', '7~2-0'), RangeError);
  assert.throws(() => compareEventIds('6~1-0', '2-0'), RangeError);
  // Single-primary ids as before.
  assert.ok(compareEventIds('9-5', '10-0') < 0);
  assert.ok(compareEventIds('nope', '1-0') < 0);
});

test('interleaved events of 3 shards: the cursor holds the highest of each, in shard order', T, async () => {
  const { client, sockets, delivered } = await connected();
  const s = sockets[0];
  s.event('room:103', '12~500-0');
  s.event('b', '9~700-3');
  s.event('a', '3~900-0');
  s.event('room:10', '9~700-10'); // 700-10 > 700-3: numeric, not as strings
  s.event('user:42', '6~100-0'); // not a shard seen yet: no effect on the others
  s.event('room:103', '12~600-0');
  assert.equal(client.lastEventId, '3~900-0,6~100-0,9~700-10,12~600-0');
  // Shard 12 sorts after shard 9 (ascending numbers, not strings).
  s.event('room:102', '10~1-0');
  assert.equal(client.lastEventId, '3~900-0,6~100-0,9~700-10,10~1-0,12~600-0');
  assert.equal(delivered.length, 7, 'every event is new to the application');
  const next = await drop(sockets);
  assert.equal(next.resumeFrom(), '3~900-0,6~100-0,9~700-10,10~1-0,12~600-0');
  client.close();
});

test('an event with a lower id in another shard never lowers anything', T, async () => {
  const { client, sockets, delivered } = await connected();
  const s = sockets[0];
  s.event('user:42', '6~2000-0');
  s.event('a', '3~5-0'); // far below 6~2000-0, but in shard 3: shard 6 stays where it is
  assert.equal(client.lastEventId, '3~5-0,6~2000-0');
  s.event('room:1', '0~1-0');
  assert.equal(client.lastEventId, '0~1-0,3~5-0,6~2000-0');
  s.event('a', '3~4-0'); // lower in its own shard: does not lower shard 3 either
  assert.equal(client.lastEventId, '0~1-0,3~5-0,6~2000-0');
  assert.deepEqual(delivered, ['user:42 6~2000-0', 'a 3~5-0', 'room:1 0~1-0', 'a 3~4-0']);
  client.close();
});

test('a catch-up cut short in shard 3 lowers shard 3 only; the filter after the resume is per shard', T, async () => {
  const { client, sockets, delivered } = await connected();
  let s = sockets[0];
  s.event('room:106', '3~900-0');
  s.event('user:42', '6~300-0');
  s.event('b', '9~500-0');
  client.subscribe('a', { lastEventId: '3~100-0' });
  assert.equal(s.subscribes().at(-1).last_event_id, '3~100-0');
  s.subscribed('a', 3);
  await settle();
  s.event('a', '3~150-0'); // the catch-up's first of 3
  s.event('b', '9~501-0'); // live, meanwhile
  assert.equal(client.lastEventId, '3~150-0,6~300-0,9~501-0', 'shard 3 waits for its catch-up; the others do not');

  s = await drop(sockets);
  assert.equal(s.resumeFrom(), '3~150-0,6~300-0,9~501-0');
  s.welcome(['a', 'b', 'room:106', 'user:42']);
  await settle();
  delivered.length = 0;
  s.event('a', '3~150-0'); // repeat of the catch-up: dropped
  s.event('a', '3~200-0'); // the rest of the catch-up: delivered
  s.event('user:42', '6~301-0'); // shard 6 above its own old position: delivered, shard 3's filter goes on
  s.event('room:106', '3~900-0'); // shard 3's repeat: still dropped
  s.event('a', '3~250-0'); // rest of the catch-up
  s.event('room:106', '3~901-0'); // above shard 3's old position: ends its filter
  s.event('b', '9~502-0');
  assert.deepEqual(delivered, ['a 3~200-0', 'user:42 6~301-0', 'a 3~250-0', 'room:106 3~901-0', 'b 9~502-0']);
  assert.equal(client.lastEventId, '3~901-0,6~301-0,9~502-0');
  client.close();
});

test('a topic the resume did not restore is subscribed again from its own shard\'s position', T, async () => {
  const { client, sockets } = await connected();
  let s = sockets[0];
  for (const [channel, opts] of [['a', { lastEventId: '3~100-0' }], ['user:42', {}], ['room:1', { history: 5 }]]) {
    client.subscribe(channel, opts);
    s.subscribed(channel, channel === 'a' ? 2 : 0);
  }
  await settle();
  s.event('a', '3~150-0'); // catch-up 1 of 2
  s.event('room:106', '3~900-0');
  s.event('user:42', '6~300-0');
  s.event('b', '9~500-0');
  s = await drop(sockets);
  s.welcome(); // a new session: nothing restored
  await settle();
  const again = Object.fromEntries(s.subscribes().map((f) => [f.channel, { last: f.last_event_id, history: f.history }]));
  assert.deepEqual(again, {
    a: { last: '3~150-0', history: undefined }, // where its cut catch-up stopped
    'user:42': { last: '6~300-0', history: undefined }, // its shard's highest
    'room:1': { last: undefined, history: 5 }, // shard 0 has no position: its own options
  });
  client.close();
});

test('an initial joined cursor is split per shard, and sent back in shard order', T, async () => {
  const { client, sockets, delivered } = await connected({ lastEventId: '9~5-0,3~7-1' });
  assert.equal(sockets[0].resumeFrom(), '3~7-1,9~5-0');
  assert.equal(client.lastEventId, '3~7-1,9~5-0');
  const s = sockets[0];
  s.event('a', '3~7-0'); // lower than shard 3's position: does not lower it
  s.event('user:42', '6~1-0');
  assert.equal(client.lastEventId, '3~7-1,6~1-0,9~5-0');
  // A subscribe given a joined cursor sends, and catches up from, the part naming its channel's shard.
  client.subscribe('b', { lastEventId: client.lastEventId });
  assert.equal(s.subscribes().at(-1).last_event_id, '9~5-0', 'the gateway takes one id in a subscribe');
  s.subscribed('b', 2);
  await settle();
  s.event('b', '9~5-1');
  s.event('room:10', '9~80-0');
  assert.equal(client.lastEventId, '3~7-1,6~1-0,9~5-1');
  const next = await drop(sockets);
  assert.equal(next.resumeFrom(), '3~7-1,6~1-0,9~5-1');
  assert.equal(delivered.length, 4);
  client.close();
});

test('a history catch-up sent before any id was seen is kept in its channel\'s shard', T, async () => {
  const { client, sockets } = await connected();
  const s = sockets[0];
  client.subscribe('user:42', { history: 3 });
  s.subscribed('user:42', 3);
  await settle();
  s.event('user:42', '6~10-0'); // the preview's first of 3: the first id, so ids name shards
  s.event('room:0', '6~50-0'); // shard 6 too, live
  s.event('a', '3~40-0');
  assert.equal(client.lastEventId, '3~40-0,6~10-0');
  const next = await drop(sockets);
  assert.equal(next.resumeFrom(), '3~40-0,6~10-0', 'the rest of the preview comes again');
  client.close();
});

test('a subscribe\'s cluster id before any event names the shard its catch-up resumes in', T, async () => {
  const { client, sockets } = await connected();
  client.subscribe('a', { lastEventId: '3~100-0' });
  sockets[0].subscribed('a', 2);
  await settle();
  const next = await drop(sockets); // before the catch-up's first event
  assert.equal(next.resumeFrom(), '3~100-0');
  client.close();
});

test('single-primary ids keep the one plain cursor; a first cluster id starts it afresh', T, async () => {
  const { client, sockets } = await connected({ lastEventId: '100-0' });
  const s = sockets[0];
  assert.equal(s.resumeFrom(), '100-0');
  s.event('user:42', '101-0');
  s.event('a', '99-0');
  assert.equal(client.lastEventId, '101-0');
  // The deployment moved to a Redis Cluster: a plain id is no position in any shard.
  s.event('user:42', '6~1-0');
  assert.equal(client.lastEventId, '6~1-0');
  client.close();
});
