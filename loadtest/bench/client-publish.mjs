// Client-frame CPU (docs/loadtest.md §1, "The read buffer"): SOCKETS sockets each publish FRAMES
// frames of SIZE bytes of data, one at a time (the next after the ack), so each frame is read on
// its own. Usage: node client-publish.mjs <ws url> <HS256 secret> <sockets> <frames> <size>
// (needs clients/js/node_modules: `npm ci` there). Prints the acks and errors received.
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
const require = createRequire(new URL('../../clients/js/', import.meta.url));
const WebSocket = require('ws');
const [url, secret, sockets, frames, size] = [process.argv[2], process.argv[3], +process.argv[4], +process.argv[5], +process.argv[6]];
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const token = (sub) => {
  const h = b64({ alg: 'HS256', typ: 'JWT' });
  const p = b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, publish: ['bench:*'] });
  return `${h}.${p}.${crypto.createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url')}`;
};
const data = 'x'.repeat(size);
let acks = 0, errors = 0;
await Promise.all(Array.from({ length: sockets }, (_, i) => new Promise((done) => {
  const ws = new WebSocket(`${url}?token=${token('u' + i)}`);
  let sent = 0;
  const next = () => {
    if (sent === frames) { ws.close(); return; }
    sent++;
    ws.send(JSON.stringify({ type: 'publish', channel: `bench:${i}`, event: 'e', data, request_id: sent }));
  };
  ws.on('message', (m) => {
    const f = JSON.parse(m);
    if (f.type === 'welcome') next();
    else if (f.type === 'ack') { acks++; next(); }
    else if (f.type === 'error') { errors++; next(); }
  });
  ws.on('close', done);
  ws.on('error', done);
})));
console.log(`acks ${acks} errors ${errors}`);
