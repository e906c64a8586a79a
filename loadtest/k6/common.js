// Shared helpers for the k6 scripts (kept in step by hand with loadtest/scenarios/*.toml).
// Configuration comes from the environment (k6 run -e NAME=value):
//   WSGW_URL      ws://127.0.0.1:8080/ws   (comma-separated: VUs spread over the nodes)
//   WSGW_API      http://127.0.0.1:8080    (HTTP publishes)
//   WSGW_API_KEY  the gateway's API key
//   WSGW_TOKENS   comma-separated pre-signed JWTs (k6 has no HS256 signer built in); VU n uses
//                 token n % count. Sign them with e.g. `wsgw-loadtest` or any JWT tool, sub = lt-<n>.
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';

export const urls = (__ENV.WSGW_URL || 'ws://127.0.0.1:8080/ws').split(',');
export const api = __ENV.WSGW_API || 'http://127.0.0.1:8080';
export const apiKey = __ENV.WSGW_API_KEY || '';
const tokens = (__ENV.WSGW_TOKENS || '').split(',').filter((t) => t.length > 0);

export const connectTime = new Trend('connect_time', true);
export const deliveryLatency = new Trend('delivery_latency', true);
export const delivered = new Counter('delivered');
export const missing = new Counter('missing');
export const duplicates = new Counter('duplicates');
export const unexpectedCloses = new Counter('unexpected_closes');
export const errors = new Counter('errors');

export function vuUrl(vu, attempt, extra) {
  const base = urls[(vu + attempt) % urls.length];
  const token = tokens.length ? tokens[vu % tokens.length] : '';
  let q = `token=${encodeURIComponent(token)}`;
  for (const [k, v] of Object.entries(extra || {})) {
    if (v !== undefined && v !== null) q += `&${k}=${encodeURIComponent(v)}`;
  }
  return `${base}${base.includes('?') ? '&' : '?'}${q}`;
}

// Per-channel sequence accounting, as the Rust tool does: the first number seen is the baseline.
export function seqTracker() {
  const seen = new Map();
  return {
    see(channel, seq) {
      let s = seen.get(channel);
      if (!s) {
        s = { set: new Set(), min: seq, max: seq };
        seen.set(channel, s);
      }
      if (s.set.has(seq)) {
        duplicates.add(1);
        return;
      }
      s.set.add(seq);
      s.min = Math.min(s.min, seq);
      s.max = Math.max(s.max, seq);
    },
    settle() {
      for (const s of seen.values()) {
        const gaps = s.max - s.min + 1 - s.set.size;
        if (gaps > 0) missing.add(gaps);
      }
    },
  };
}

// The publisher side: one broadcast with a per-channel sequence number and its send time.
let nextSeq = 0;
export function publishBroadcast(payloadBytes) {
  const data = { seq: nextSeq++, sent_us: Date.now() * 1000, pad: 'x'.repeat(payloadBytes) };
  const r = http.post(`${api}/api/broadcast`, JSON.stringify({ event: 'lt', data }), {
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
  });
  if (r.status !== 200) errors.add(1);
}

// Handles one text frame; returns the parsed frame.
export function onFrame(socket, raw, tracker) {
  const m = JSON.parse(raw);
  if (m.type === 'ping') {
    socket.send('{"type":"pong"}');
  } else if (m.type === 'event') {
    delivered.add(1);
    if (m.data && typeof m.data.sent_us === 'number') {
      deliveryLatency.add(Date.now() - m.data.sent_us / 1000);
    }
    if (m.data && typeof m.data.seq === 'number') tracker.see(m.channel, m.data.seq);
  } else if (m.type === 'error') {
    errors.add(1);
  }
  return m;
}
