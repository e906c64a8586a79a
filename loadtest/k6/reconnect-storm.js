// k6 mirror of loadtest/scenarios/reconnect-storm.toml: 3,000 VUs over the nodes of
// `scripts/cluster.sh start 3` (WSGW_URL = the node URLs, comma-separated). Kill one node by
// hand (kill -KILL <pid from .wsgw-run/cluster.json>) about 20 s in: k6 cannot kill processes.
// Each VU reconnects to the next node with connection_id and last_event_id, and must miss nothing.
import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { connectTime, newVuState, publishBroadcast, unexpectedCloses, vuUrl } from './common.js';
import { runChecks } from './lib.js';

const reconnects = new Counter('reconnects');
const reconnectTime = new Trend('reconnect_time', true);
const END = Date.now() + 40000;

export const options = {
  scenarios: {
    sockets: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '10s', target: 3000 },
        { duration: '30s', target: 3000 },
      ],
      gracefulRampDown: '10s',
      exec: 'socket',
    },
    publisher: {
      executor: 'constant-arrival-rate',
      rate: 10,
      timeUnit: '1s',
      duration: '29s',
      startTime: '11s',
      preAllocatedVUs: 4,
      exec: 'publish',
    },
  },
  thresholds: {
    missing: ['count==0'],
    duplicates: ['count==0'],
    reconnect_time: ['max<15000'],
    errors: ['count==0'],
    checks: ['rate==1'],
  },
};

export function publish() {
  publishBroadcast(100);
}

export function socket() {
  const vu = newVuState();
  let attempt = 0;
  let welcomes = 0;
  while (Date.now() < END) {
    const t0 = Date.now();
    let closing = false;
    const url = vuUrl(__VU, attempt, { connection_id: vu.connectionId, last_event_id: vu.lastEventId });
    try {
      ws.connect(url, null, (socket) => {
        socket.on('message', (raw) => {
          const m = vu.onFrame(socket, raw);
          if (m.type === 'welcome') {
            welcomes += 1;
            if (vu.downSince !== null) {
              reconnects.add(1);
              reconnectTime.add(Date.now() - vu.downSince);
              vu.downSince = null;
            } else if (welcomes === 1) {
              connectTime.add(Date.now() - t0);
            }
            attempt = 0;
          }
        });
        socket.on('close', () => {
          if (!closing) unexpectedCloses.add(1);
        });
        socket.setTimeout(() => {
          closing = true;
          socket.close();
        }, Math.max(0, END - Date.now()));
      });
    } catch (_) {
      // The node is gone (connection refused): back off and try the next one.
    }
    if (Date.now() >= END) break;
    if (vu.downSince === null) vu.downSince = Date.now();
    attempt += 1;
    // Capped exponential backoff with jitter.
    sleep((Math.min(5000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2)) / 1000);
  }
  vu.settle();
  // reconnect-storm.toml's checks.
  runChecks(check, vu, ['welcome', 'all_reconnected', 'no_missing']);
}
