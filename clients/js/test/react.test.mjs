// The React hook, imported through the package's `exports` (wsgw-client/react), rendering a
// component with react-test-renderer against a real gateway; its presence members against a
// stand-in server sending the gateway's presence frames.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import React from 'react';
import TestRenderer from 'react-test-renderer';
import { WebSocketServer } from 'ws';
import { useChannel } from 'wsgw-client/react';
import { T, makeClient, newUser, publishApi, startGateway, stopGateway, tokenFor, waitFor } from './support.mjs';

const h = React.createElement;
const { act, create } = TestRenderer;

let gw;
before(async () => { gw = await startGateway(); });
after(async () => { await stopGateway(gw); });

/** A chat room: its status and one line per event. */
function Room({ client, channel, history }) {
  const { events, status, error } = useChannel(client, channel, { history, max: 3 });
  return h('div', null,
    h('p', { id: 'status' }, error ? `${status}: ${error.code}` : status),
    h('ul', null, events.map((e) => h('li', { key: e.event_id }, e.data.text))));
}

const lines = (r) => r.root.findAllByType('li').map((li) => li.children.join(''));
const status = (r) => r.root.findByProps({ id: 'status' }).children.join('');

test('useChannel renders the history catch-up, then live events, keeping the newest `max`', T, async () => {
  const user = newUser('react');
  const channel = `chat:${user}`;
  await publishApi(gw, channel, 'msg', { text: 'before 1' });
  await publishApi(gw, channel, 'msg', { text: 'before 2' });
  const { client } = makeClient(gw, { token: tokenFor(user) });
  let r;
  try {
    await client.connect();
    await act(async () => { r = create(h(Room, { client, channel, history: 1 })); });
    await waitFor(() => status(r) === 'subscribed' && lines(r).length === 1, 'the subscribe and its history');
    assert.deepEqual(lines(r), ['before 2']);

    for (const text of ['live 1', 'live 2', 'live 3']) await publishApi(gw, channel, 'msg', { text });
    await waitFor(() => lines(r).at(-1) === 'live 3', 'the live events rendered');
    assert.deepEqual(lines(r), ['live 1', 'live 2', 'live 3'], 'at most max=3, the newest');

    // Unmounting leaves the channel: a later event reaches no one.
    const seen = [];
    client.on(channel, (e) => seen.push(e.data.text));
    await act(async () => { r.unmount(); });
    // A round trip on the same socket: the gateway has handled the unsubscribe sent before it.
    await client.history(channel, { limit: 1 });
    await publishApi(gw, channel, 'msg', { text: 'after' });
    const marker = await publishApi(gw, `user:${user}`, 'marker', null);
    let gotMarker = false;
    client.on(`user:${user}`, (e) => { if (e.event_id === marker) gotMarker = true; });
    await waitFor(() => gotMarker || client.lastEventId === marker, 'the marker');
    assert.deepEqual(seen, [], 'the socket left the channel on unmount');
  } finally {
    client.close();
  }
});

test('useChannel shows a refused subscribe', T, async () => {
  const { client } = makeClient(gw, { token: tokenFor(newUser('react-refused')) });
  let r;
  try {
    await client.connect();
    await act(async () => { r = create(h(Room, { client, channel: 'secret:1' })); });
    await waitFor(() => status(r) === 'refused: forbidden', 'the refusal rendered');
    assert.deepEqual(lines(r), []);
    await act(async () => { r.unmount(); });
  } finally {
    client.close();
  }
});

test('useChannel with presence renders the members: the presence list, then join and leave (stand-in server)', T, async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  let push;
  wss.on('connection', (sock) => {
    const send = (f) => sock.send(JSON.stringify(f));
    push = send;
    send({
      type: 'welcome', connection_id: '0'.repeat(32), user_id: 'u', node: 'stand-in', resumed: false,
      recovered: true, replayed: 0, heartbeat: { interval_ms: 30000, timeout_ms: 60000 }, session_ttl_ms: 120000,
    });
    sock.on('message', (raw) => {
      const f = JSON.parse(raw);
      if (f.type === 'subscribe') {
        send({ type: 'subscribed', channel: f.channel, request_id: f.request_id, recovered: true, replayed: 0 });
      } else if (f.type === 'presence') {
        send({ type: 'presence', channel: f.channel, request_id: f.request_id, clients: [
          { user_id: 'u', connection_id: '0'.repeat(32), node: 'gw-1' },
          { user_id: 'bob', connection_id: 'b1', node: 'gw-2' },
        ] });
      }
    });
  });
  function Who({ client }) {
    const { members } = useChannel(client, 'chat:1', { presence: true });
    return h('ul', null, members.map((m) => h('li', { key: m.connection_id }, m.user_id)));
  }
  const { client } = makeClient({ ws: `ws://127.0.0.1:${wss.address().port}/ws` }, { token: 't' });
  let r;
  try {
    await client.connect();
    await act(async () => { r = create(h(Who, { client })); });
    await waitFor(() => lines(r).length === 2, 'the presence list rendered');
    assert.deepEqual(lines(r), ['u', 'bob']);
    push({ type: 'join', channel: 'chat:1', user_id: 'carol', connection_id: 'c1' });
    push({ type: 'join', channel: 'chat:2', user_id: 'dave', connection_id: 'd1' });
    push({ type: 'leave', channel: 'chat:1', user_id: 'bob', connection_id: 'b1' });
    await waitFor(() => lines(r).join() === 'u,carol', 'join and leave rendered');
    await act(async () => { r.unmount(); });
  } finally {
    client.close();
    await new Promise((res) => wss.close(res));
  }
});
