// Generates wsgw.d.ts and react.d.ts from the JSDoc of wsgw.js and react.js (tsc --checkJs).
// `npm run build:types` writes them beside the sources; `-- --outDir DIR` writes them to DIR.
// tsc runs on copies of the sources in a scratch directory: beside the sources, react.js's
// `import('./wsgw.js')` would resolve to the old wsgw.d.ts (and tsc refuses to overwrite it).
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const i = args.indexOf('--outDir');
const outDir = i >= 0 ? path.resolve(args[i + 1]) : PKG;
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
// Inside the package, so that `react` resolves from its node_modules.
const tmp = mkdtempSync(path.join(PKG, '.types-'));
const SOURCES = ['wsgw.js', 'react.js'];
try {
  for (const f of SOURCES) copyFileSync(path.join(PKG, f), path.join(tmp, f));
  execFileSync(process.execPath, [tsc, '--allowJs', '--checkJs', '--declaration', '--emitDeclarationOnly',
    '--target', 'es2022', '--module', 'esnext', '--moduleResolution', 'bundler', '--lib', 'es2022,dom',
    '--outDir', 'out', ...SOURCES], { cwd: tmp, stdio: 'inherit' });
  mkdirSync(outDir, { recursive: true });
  for (const f of ['wsgw.d.ts', 'react.d.ts']) copyFileSync(path.join(tmp, 'out', f), path.join(outDir, f));
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
