// Shared k6 wiring for the scripts (kept in step by hand with loadtest/scenarios/*.toml); the
// logic itself is in lib.js, which Node tests (loadtest/k6/test/) run without k6.
// Configuration comes from the environment (k6 run -e NAME=value):
//   WSGW_URL         ws://127.0.0.1:8080/ws   (comma-separated: VUs spread over the nodes)
//   WSGW_API         http://127.0.0.1:8080    (HTTP publishes)
//   WSGW_API_KEY     the gateway's API key
//   WSGW_JWT_SECRET  the gateway's HS256 secret: each VU signs its own token (sub = lt-<VU>)
//                    with k6/crypto, as `wsgw-loadtest --secret` does
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { eventData, makeSigner, vuClaims, vuState } from './lib.js';

export const urls = (__ENV.WSGW_URL || 'ws://127.0.0.1:8080/ws').split(',');
export const api = __ENV.WSGW_API || 'http://127.0.0.1:8080';
export const apiKey = __ENV.WSGW_API_KEY || '';
const secret = __ENV.WSGW_JWT_SECRET || '';
if (!secret) throw new Error('set WSGW_JWT_SECRET (k6 run -e WSGW_JWT_SECRET=...): the gateway HS256 secret');

export const sign = makeSigner({ hmac: crypto.hmac, b64encode: encoding.b64encode });

export const connectTime = new Trend('connect_time', true);
export const unexpectedCloses = new Counter('unexpected_closes');
export const metrics = {
  deliveryLatency: new Trend('delivery_latency', true),
  delivered: new Counter('delivered'),
  missing: new Counter('missing'),
  duplicates: new Counter('duplicates'),
  errors: new Counter('errors'),
};

// A fresh per-iteration receiver (see lib.js vuState).
export function newVuState() {
  return vuState(metrics);
}

// The URL VU `vu` connects to on attempt `attempt` (round-robin over WSGW_URL), with a token
// signed now and the extra query parameters that are set.
export function vuUrl(vu, attempt, extra) {
  const base = urls[(vu + attempt) % urls.length];
  const token = sign(secret, vuClaims(vu, Date.now() / 1000));
  let q = `token=${encodeURIComponent(token)}`;
  for (const [k, v] of Object.entries(extra || {})) {
    if (v !== undefined && v !== null) q += `&${k}=${encodeURIComponent(v)}`;
  }
  return `${base}${base.includes('?') ? '&' : '?'}${q}`;
}

// The publisher side: one broadcast carrying this publisher's sequence number and its send time.
// Every k6 VU has its own copy of this module, so each publisher VU counts from 0; `pub` tells
// the streams apart.
let nextSeq = 0;
export function publishBroadcast(payloadBytes) {
  const data = eventData(`k6-${__VU}`, nextSeq++, Date.now(), payloadBytes);
  const r = http.post(`${api}/api/broadcast`, JSON.stringify({ event: 'lt', data }), {
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
  });
  if (r.status !== 200) metrics.errors.add(1);
}
