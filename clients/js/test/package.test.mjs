// The package as users get it: `npm pack`, installed into a scratch project, imported by name
// (ES module and TypeScript types); and wsgw.d.ts is exactly what tsc emits from wsgw.js.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const T = { timeout: 120000 };
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const TSC = path.join(PKG, 'node_modules/.bin/tsc');
const manifest = JSON.parse(readFileSync(path.join(PKG, 'package.json'), 'utf8'));

let tmp;
before(() => { tmp = mkdtempSync(path.join(os.tmpdir(), 'wsgw-pkg-')); });
after(() => { if (tmp) rmSync(tmp, { recursive: true, force: true }); });

const run = (cmd, args, cwd) =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

test('wsgw.d.ts and react.d.ts are what `npm run build:types` generates from the sources (regenerate them after a change)', T, () => {
  const out = path.join(tmp, 'types');
  run(NPM, ['run', '--silent', 'build:types', '--', '--outDir', out], PKG);
  for (const f of ['wsgw.d.ts', 'react.d.ts']) {
    assert.equal(readFileSync(path.join(PKG, f), 'utf8'), readFileSync(path.join(out, f), 'utf8'),
      `clients/js/${f} differs from the generated one: run \`npm run build:types\` in clients/js`);
  }
});

test('the packed tarball installs into a scratch project and imports by name, with its types', T, () => {
  assert.equal(manifest.version, '0.1.0');
  assert.deepEqual(manifest.exports, {
    '.': { types: './wsgw.d.ts', default: './wsgw.js' },
    './react': { types: './react.d.ts', default: './react.js' },
  });
  assert.equal(manifest.types, './wsgw.d.ts');
  // React is for the hook only: an optional peer, never installed with the client.
  assert.deepEqual(manifest.peerDependenciesMeta, { react: { optional: true } });
  assert.equal(manifest.dependencies, undefined);

  const packDir = path.join(tmp, 'pack');
  run('mkdir', ['-p', packDir], tmp);
  const [packed] = JSON.parse(run(NPM, ['pack', '--json', '--pack-destination', packDir], PKG));
  // npm adds a README or LICENSE by itself; nothing else may come along (tests, node_modules, …).
  const shipped = packed.files.map((f) => f.path).filter((p) => !/^(README|LICENSE)/i.test(p)).sort();
  assert.deepEqual(shipped, ['package.json', 'react.d.ts', 'react.js', 'wsgw.d.ts', 'wsgw.js'],
    'the tarball holds only what a user needs');
  const tarball = path.join(packDir, packed.filename);

  const app = path.join(tmp, 'app');
  run('mkdir', ['-p', app], tmp);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  // A local tarball without dependencies: no registry needed.
  run(NPM, ['install', '--offline', '--no-audit', '--no-fund', '--silent', tarball], app);

  writeFileSync(path.join(app, 'check.mjs'), `
    import WsgwDefault, { WsgwClient, WsgwError, Subscription, parseEventId, compareEventIds } from '${manifest.name}';
    if (typeof WsgwClient !== 'function' || WsgwDefault !== WsgwClient) throw new Error('no WsgwClient');
    if (typeof Subscription !== 'function') throw new Error('no Subscription');
    // The hook's entry point resolves through exports (importing it needs react, not installed here).
    if (!import.meta.resolve('${manifest.name}/react').endsWith('/node_modules/${manifest.name}/react.js')) {
      throw new Error('wsgw-client/react does not resolve to react.js');
    }
    if (!(new WsgwError('x', 'y') instanceof Error)) throw new Error('no WsgwError');
    if (parseEventId('5-1')[1] !== 1 || compareEventIds('9-5', '10-0') >= 0) throw new Error('helpers');
    console.log(['history', 'subscribe', 'publish', 'request', 'refresh', 'on', 'off']
      .filter((m) => typeof WsgwClient.prototype[m] === 'function').join(','));
  `);
  assert.equal(run('node', ['check.mjs'], app).trim(), 'history,subscribe,publish,request,refresh,on,off');

  // A TypeScript user of the installed package: the types resolve through `exports` and are real.
  writeFileSync(path.join(app, 'check.ts'), `
    import { WsgwClient, Subscription, type EventFrame, type GapFrame, type HistoryFrame, type PresenceFrame,
      type PresenceChangeFrame, type SubscribedFrame, type WelcomeFrame } from '${manifest.name}';
    import { useChannel, type ChannelState } from '${manifest.name}/react';
    declare const WS: new (url: string, protocols?: string | string[]) => any;
    const client = new WsgwClient('ws://127.0.0.1:1/ws', { getToken: async () => 't', WebSocket: WS });
    const off: () => void = client.on('gap', (g: GapFrame) => { const c: string[] = g.channels; void c; });
    client.on<{ n: number }>('room:1', (e: EventFrame<{ n: number }>) => { const n: number = e.data.n; void n; });
    // @ts-expect-error a state is a string, not a number
    client.on('state', (s: number) => s);
    async function use(): Promise<void> {
      const w: WelcomeFrame = await client.connect();
      const h: HistoryFrame<{ n: number }> = await client.history<{ n: number }>('room:1', { since: w.connection_id, limit: 5 });
      const id: string | undefined = h.events[0]?.event_id;
      const last: string | null = client.lastEventId;
      // @ts-expect-error limit is a number
      await client.history('room:1', { limit: 'ten' });
      void id; void last; off();
      // Subscriptions: typed payloads, presence and history, and still a promise of 'subscribed'.
      const sub: Subscription<{ text: string }> = client.subscribe<{ text: string }>('chat:1', { history: 20 });
      sub.on('event', (e: EventFrame<{ text: string }>) => { const t: string = e.data.text; void t; });
      sub.on('join', (j: PresenceChangeFrame) => { const u: string = j.user_id; void u; });
      sub.on('leave', (l: PresenceChangeFrame) => { const c: string = l.connection_id; void c; });
      sub.on('error', (err) => { const code = err.code; void code; });
      // @ts-expect-error event data is { text: string }
      sub.on('event', (e: EventFrame<{ n: number }>) => e);
      const p: PresenceFrame = await sub.presence();
      const nodes: string[] = p.clients.map((c) => c.node);
      const hist: HistoryFrame<{ text: string }> = await sub.history({ since: '1-0', limit: 10 });
      const sf: SubscribedFrame = await sub;
      await sub.unsubscribe();
      const legacy: SubscribedFrame = await client.subscribe('room:2');
      void nodes; void hist; void sf; void legacy;
      const state: ChannelState<{ text: string }> = useChannel<{ text: string }>(client, 'chat:1', { history: 5, presence: true });
      const texts: string[] = state.events.map((e) => e.data.text);
      void texts;
    }
    void use;
  `);
  try {
    run(TSC, ['--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022',
      '--lib', 'es2022', 'check.ts'], app);
  } catch (err) {
    assert.fail(`tsc on a user's check.ts failed:\n${err.stdout}${err.stderr}`);
  }
});
