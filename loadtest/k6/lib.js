// The k6 scripts' pure logic: token signing, per-VU frame handling with duplicate and gap
// accounting, and the end-of-iteration checks. It imports nothing: the k6 pieces it needs
// (k6/crypto's hmac, k6/encoding's b64encode, the k6/metrics counters) are passed in by
// common.js, so `node --test loadtest/k6/test/` can run it with stand-ins.

// ---- Tokens ------------------------------------------------------------------------------------

const JWT_HEADER = '{"alg":"HS256","typ":"JWT"}';

// Returns sign(secret, claims) -> an HS256 JWT, as the gateway's WSGW_JWT_SECRET verifies it.
//   hmac:      k6/crypto's hmac(algorithm, secret, data, outputEncoding)
//   b64encode: k6/encoding's b64encode(input, encoding); 'rawurl' = base64url without padding
export function makeSigner({ hmac, b64encode }) {
  return function sign(secret, claims) {
    const input = `${b64encode(JWT_HEADER, 'rawurl')}.${b64encode(JSON.stringify(claims), 'rawurl')}`;
    let mac = hmac('sha256', secret, input, 'binary');
    // k6 gives an ArrayBuffer; releases before v0.31 gave an array of byte values.
    if (!(mac instanceof ArrayBuffer)) mac = new Uint8Array(mac).buffer;
    return `${input}.${b64encode(mac, 'rawurl')}`;
  };
}

// The claims the Rust tool gives VU n (loadtest/src/engine/worker.rs, fields in name order):
// sub = lt-<n>, no channel grants (the broadcast scenarios subscribe to nothing), an hour to live.
export function vuClaims(vu, nowSeconds, ttlSeconds = 3600) {
  const iat = Math.floor(nowSeconds);
  return { channels: [], exp: iat + ttlSeconds, iat, publish: [], sub: `lt-${vu}` };
}

// ---- Publishing --------------------------------------------------------------------------------

// The data of one published event. `pub` names the publisher (a k6 VU has its own module
// instance, so each publisher VU counts `seq` from 0); gaps are counted per (channel, pub).
export function eventData(pub, seq, nowMs, payloadBytes) {
  return { pub, seq, sent_us: nowMs * 1000, pad: 'x'.repeat(payloadBytes) };
}

// ---- Receiving ---------------------------------------------------------------------------------

// Orders event ids (`<ms>-<seq>`, docs/protocol.md section 7) numerically.
export function compareEventIds(a, b) {
  const [am, as = '0'] = String(a).split('-');
  const [bm, bs = '0'] = String(b).split('-');
  return Number(am) - Number(bm) || Number(as) - Number(bs);
}

// One VU's view of what it received, across all the sockets of one iteration (reconnects
// included). `metrics` holds the k6 metrics: delivered, duplicates, missing, errors (Counters)
// and deliveryLatency (Trend); `now` returns milliseconds.
//
// Duplicates are decided by `event_id`, which the gateway gives every durable event: the same id
// twice is one event delivered twice. Gaps are counted per publisher stream (channel + `pub`),
// from the first `seq` seen to the highest, as the Rust tool does per channel.
export function vuState(metrics, now = () => Date.now()) {
  const ids = new Set();
  const streams = new Map();
  const state = {
    status: null, // the handshake's HTTP status, set by the script
    welcomed: false,
    connectionId: null,
    lastEventId: null,
    downSince: null, // set by the reconnecting script while the VU has no socket
    delivered: 0,
    duplicates: 0,
    errors: 0,
    missing: 0,

    // Handles one text frame; returns the parsed frame ({} for one that is not JSON).
    onFrame(socket, raw) {
      let f;
      try {
        f = JSON.parse(raw);
      } catch (_) {
        state.error();
        return {};
      }
      if (f === null || typeof f !== 'object') {
        state.error();
        return {};
      }
      switch (f.type) {
        case 'ping':
          socket.send('{"type":"pong"}');
          break;
        case 'welcome':
          state.welcomed = true;
          state.connectionId = f.connection_id;
          break;
        case 'event':
          state.see(f);
          break;
        case 'error':
        case 'gap': // the gateway cannot vouch for these channels: an error, as in the Rust tool
          state.error();
          break;
        default:
          break;
      }
      return f;
    },

    error() {
      state.errors += 1;
      metrics.errors.add(1);
    },

    see(f) {
      state.delivered += 1;
      metrics.delivered.add(1);
      if (typeof f.event_id === 'string' && f.event_id.length > 0) {
        if (ids.has(f.event_id)) {
          state.duplicates += 1;
          metrics.duplicates.add(1);
          return;
        }
        ids.add(f.event_id);
        if (state.lastEventId === null || compareEventIds(f.event_id, state.lastEventId) > 0) {
          state.lastEventId = f.event_id;
        }
      }
      const d = f.data;
      if (!d || typeof d !== 'object') return;
      if (typeof d.sent_us === 'number') metrics.deliveryLatency.add(now() - d.sent_us / 1000);
      if (typeof d.seq !== 'number') return;
      const key = `${f.channel}\u0000${d.pub === undefined ? '' : d.pub}`;
      let s = streams.get(key);
      if (!s) {
        s = { set: new Set(), min: d.seq, max: d.seq };
        streams.set(key, s);
      }
      s.set.add(d.seq);
      s.min = Math.min(s.min, d.seq);
      s.max = Math.max(s.max, d.seq);
    },

    // Counts the gaps once, at the end of the iteration; returns them.
    settle() {
      let gaps = 0;
      for (const s of streams.values()) gaps += s.max - s.min + 1 - s.set.size;
      state.missing = gaps;
      if (gaps > 0) metrics.missing.add(gaps);
      return gaps;
    },
  };
  return state;
}

// ---- Checks ------------------------------------------------------------------------------------

// The scenarios' [[checks]] (loadtest/scenarios/*.toml), as k6 check functions of a vuState.
export const CHECKS = {
  handshake: ['handshake 101', (s) => s.status === 101],
  welcome: ['every VU got a welcome', (s) => s.welcomed === true],
  no_missing: ['no event missing', (s) => s.missing === 0],
  no_duplicates: ['no event twice', (s) => s.duplicates === 0],
  all_reconnected: ['every dropped VU came back', (s) => s.downSince === null],
};

// Runs the named checks on a settled vuState with k6's `check`; returns its result.
export function runChecks(check, state, names) {
  const sets = {};
  for (const n of names) {
    const [label, fn] = CHECKS[n];
    sets[label] = fn;
  }
  return check(state, sets);
}
