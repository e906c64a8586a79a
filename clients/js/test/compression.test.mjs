// permessage-deflate (WSGW_COMPRESSION) against a real gateway, with node's `ws` as the client:
// what is negotiated, that events arrive intact, that large ones really travel compressed (bytes
// read on the TCP socket), that client messages may be compressed, and the inflated-size bound.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { T, api, newUser, startGateway, stopGateway, tokenFor, waitFor } from './support.mjs';

/** A raw `ws` socket recording its messages and the bytes read on its TCP socket. */
async function open(gw, perMessageDeflate, user = newUser('z')) {
  const ws = new WebSocket(`${gw.ws}?token=${tokenFor(user)}`, ['wsgw.v1'], { perMessageDeflate });
  const rec = { ws, frames: [], closed: null, tcp: null, answer: null };
  ws.on('upgrade', (res) => {
    rec.tcp = res.socket;
    rec.answer = res.headers['sec-websocket-extensions'] ?? '';
  });
  ws.on('message', (data) => rec.frames.push(JSON.parse(data.toString())));
  ws.on('close', (code) => { rec.closed = code; });
  await waitFor(() => rec.frames.some((f) => f.type === 'welcome'), 'welcome');
  return rec;
}

const closeAll = (socks) => socks.forEach((s) => s.ws.terminate());

/** A realistic JSON object of about `n` bytes (compressible like real events are). */
function payload(n, seed = 0) {
  const items = [];
  for (let i = 0; JSON.stringify(items).length < n; i++) {
    items.push({ id: seed * 1000 + i, sku: `SKU-${(i * 7919 + seed) % 10007}`, qty: i % 5, status: i % 3 ? 'shipped' : 'pending' });
  }
  return { order: seed, items };
}

/** The gateway's wsgw_sent_bytes_total. */
async function sentBytes(gw) {
  const text = await (await fetch(`${gw.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('wsgw_sent_bytes_total '));
  assert.ok(line, 'wsgw_sent_bytes_total in /metrics');
  return Number(line.split(' ')[1]);
}

const events = (rec, name) => rec.frames.filter((f) => f.type === 'event' && f.event === name);

describe('permessage-deflate on (WSGW_COMPRESSION=on)', () => {
  let gw;
  const socks = [];
  before(async () => { gw = await startGateway({ WSGW_COMPRESSION: 'on' }); });
  after(async () => { closeAll(socks); await stopGateway(gw); });

  test('negotiated without context takeover; events arrive intact, large ones compressed', T, async () => {
    const a = await open(gw, true);
    const b = await open(gw, { serverMaxWindowBits: 10 });
    socks.push(a, b);
    assert.equal(a.ws.extensions, 'permessage-deflate');
    assert.equal(a.answer, 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
    assert.equal(b.ws.extensions, 'permessage-deflate');
    assert.match(b.answer, /; server_max_window_bits=10$/);

    // One large event: compare the bytes read on each TCP socket with its payload, and with
    // what the gateway counts as sent (wsgw_sent_bytes_total counts bytes as on the wire).
    const big = payload(20000, 1);
    const before = [a.tcp.bytesRead, b.tcp.bytesRead];
    const sentBefore = await sentBytes(gw);
    await api(gw, 'POST', '/api/broadcast', { event: 'big', data: big });
    for (const s of [a, b]) await waitFor(() => events(s, 'big').length === 1, 'the big event');
    const plainLen = Buffer.byteLength(JSON.stringify(big));
    let readTotal = 0;
    for (const [i, s] of [a, b].entries()) {
      assert.deepEqual(events(s, 'big')[0].data, big);
      const read = s.tcp.bytesRead - before[i];
      readTotal += read;
      assert.ok(read < plainLen / 3, `read ${read} bytes for a ${plainLen}-byte payload`);
    }
    // Within a heartbeat ping or two of what the sockets read (the windows differ slightly);
    // counted before compression it would be twice plainLen.
    const counted = await sentBytes(gw) - sentBefore;
    assert.ok(Math.abs(counted - readTotal) <= 256, `counted ${counted} bytes sent, the sockets read ${readTotal}`);

    // Many events of every size around the threshold, in order and intact on both sockets.
    const sent = [];
    for (let i = 0; i < 60; i++) {
      const data = i % 3 === 0 ? { i, s: 'x'.repeat(i * 13) } : payload(100 + i * 90, i);
      sent.push(data);
      await api(gw, 'POST', '/api/broadcast', { event: 'mix', data });
    }
    for (const s of [a, b]) {
      await waitFor(() => events(s, 'mix').length === sent.length, 'all mixed events');
      assert.deepEqual(events(s, 'mix').map((f) => f.data), sent);
    }
  });

  test('client messages may be compressed; their inflated size is bounded', T, async () => {
    const user = newUser('pub');
    const sender = await open(gw, { threshold: 0 }, user);
    const reader = await open(gw, true);
    socks.push(sender, reader);
    reader.ws.send(JSON.stringify({ type: 'subscribe', channel: 'chat:z', request_id: 1 }));
    await waitFor(() => reader.frames.some((f) => f.type === 'subscribed'), 'subscribed');
    const data = payload(8000, 7);
    sender.ws.send(JSON.stringify({ type: 'publish', channel: 'chat:z', event: 'msg', data, request_id: 2 }));
    await waitFor(() => events(reader, 'msg').length === 1, 'the published event');
    assert.deepEqual(events(reader, 'msg')[0].data, data);

    // 1 MB of one character compresses to about a kilobyte; inflated it is over the 64 KiB limit.
    const bomb = await open(gw, { threshold: 0 });
    socks.push(bomb);
    bomb.ws.send(JSON.stringify({ type: 'publish', channel: 'chat:z', event: 'bomb', data: 'a'.repeat(1 << 20) }));
    await waitFor(() => bomb.closed !== null, 'the close');
    assert.equal(bomb.closed, 1009);
    assert.ok(bomb.frames.some((f) => f.type === 'error' && f.code === 'too_large'));
    assert.equal(events(reader, 'bomb').length, 0);
  });

  test('a client without the extension gets plain frames', T, async () => {
    const plain = await open(gw, false);
    socks.push(plain);
    assert.equal(plain.ws.extensions, '');
    const big = payload(5000, 3);
    await api(gw, 'POST', '/api/broadcast', { event: 'plain-big', data: big });
    await waitFor(() => events(plain, 'plain-big').length === 1, 'the event');
    assert.deepEqual(events(plain, 'plain-big')[0].data, big);
  });
});

describe('permessage-deflate off (the default)', () => {
  let gw;
  const socks = [];
  before(async () => { gw = await startGateway(); });
  after(async () => { closeAll(socks); await stopGateway(gw); });

  test('nothing is negotiated and large events go plain', T, async () => {
    const s = await open(gw, true);
    socks.push(s);
    assert.equal(s.ws.extensions, '');
    assert.equal(s.answer, '');
    const big = payload(20000, 2);
    const before = s.tcp.bytesRead;
    await api(gw, 'POST', '/api/broadcast', { event: 'big', data: big });
    await waitFor(() => events(s, 'big').length === 1, 'the big event');
    assert.deepEqual(events(s, 'big')[0].data, big);
    assert.ok(s.tcp.bytesRead - before > Buffer.byteLength(JSON.stringify(big)));
  });
});
