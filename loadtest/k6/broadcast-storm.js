// k6 mirror of loadtest/scenarios/broadcast-storm.toml: 2,000 VUs, broadcasts at 100/s over HTTP.
import ws from 'k6/ws';
import { check } from 'k6';
import { connectTime, newVuState, publishBroadcast, unexpectedCloses, vuUrl } from './common.js';
import { runChecks } from './lib.js';

const HOLD_MS = 25000;

export const options = {
  scenarios: {
    sockets: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '5s', target: 2000 },
        { duration: '20s', target: 2000 },
      ],
      gracefulRampDown: '5s',
      exec: 'socket',
    },
    publisher: {
      executor: 'constant-arrival-rate',
      rate: 100,
      timeUnit: '1s',
      duration: '19s',
      startTime: '6s',
      preAllocatedVUs: 20,
      maxVUs: 50,
      exec: 'publish',
    },
  },
  thresholds: {
    delivery_latency: ['p(99)<1000'],
    errors: ['count==0'],
    missing: ['count==0'],
    duplicates: ['count==0'],
    delivered: ['rate>10000'],
    checks: ['rate==1'],
  },
};

export function publish() {
  publishBroadcast(200);
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
  // broadcast-storm.toml's check.
  runChecks(check, vu, ['no_missing']);
}
