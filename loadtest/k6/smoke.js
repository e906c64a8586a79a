// k6 mirror of loadtest/scenarios/smoke.toml: 100 VUs hold a socket; broadcasts at 5/s over HTTP.
//   k6 run -e WSGW_URL=ws://127.0.0.1:8080/ws -e WSGW_API_KEY=... -e WSGW_JWT_SECRET=... loadtest/k6/smoke.js
import ws from 'k6/ws';
import { check } from 'k6';
import { connectTime, newVuState, publishBroadcast, unexpectedCloses, vuUrl } from './common.js';
import { runChecks } from './lib.js';

const HOLD_MS = 5000;

export const options = {
  scenarios: {
    sockets: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '1s', target: 100 },
        { duration: '4s', target: 100 },
      ],
      gracefulRampDown: '2s',
      exec: 'socket',
    },
    publisher: {
      executor: 'constant-arrival-rate',
      rate: 5,
      timeUnit: '1s',
      duration: '3s',
      startTime: '1500ms',
      preAllocatedVUs: 2,
      exec: 'publish',
    },
  },
  thresholds: {
    connect_time: ['p(99)<500'],
    delivery_latency: ['p(99)<200'],
    errors: ['count==0'],
    missing: ['count==0'],
    duplicates: ['count==0'],
    unexpected_closes: ['count==0'],
    checks: ['rate==1'],
  },
};

export function publish() {
  publishBroadcast(100);
}

export function socket() {
  const vu = newVuState();
  const t0 = Date.now();
  let closing = false;
  const res = ws.connect(vuUrl(__VU, 0), null, (socket) => {
    socket.on('message', (raw) => {
      const m = vu.onFrame(socket, raw);
      if (m.type === 'welcome') connectTime.add(Date.now() - t0);
    });
    socket.on('close', () => {
      if (!closing) unexpectedCloses.add(1);
    });
    socket.setTimeout(() => {
      closing = true;
      socket.close();
    }, HOLD_MS);
  });
  vu.status = res ? res.status : null;
  vu.settle();
  // smoke.toml's checks, plus the handshake.
  runChecks(check, vu, ['handshake', 'welcome', 'no_missing']);
}
