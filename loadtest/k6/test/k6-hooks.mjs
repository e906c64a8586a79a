// Node module hooks for the k6 script tests: `k6` and `k6/*` imports resolve to small stand-ins
// that forward to `globalThis.__k6` (set up by k6-scripts.test.mjs), and a `?vu=N` query on a
// script is passed on to its relative imports, so each simulated VU gets its own module
// instances, as each k6 VU has its own JS runtime.

const STUBS = {
  k6: `
    export function check(value, sets) { return globalThis.__k6.check(value, sets); }
    export function sleep(seconds) { globalThis.__k6.sleep(seconds); }
    export default { check, sleep };`,
  'k6/ws': `export default { connect: (url, params, cb) => globalThis.__k6.wsConnect(url, params, cb) };`,
  'k6/http': `export default { post: (url, body, params) => globalThis.__k6.httpPost(url, body, params) };`,
  'k6/metrics': `
    class Metric {
      constructor(name, isTime) { this.name = name; this.isTime = !!isTime; }
      add(value) { globalThis.__k6.metric(this.name, value); }
    }
    export class Counter extends Metric {}
    export class Trend extends Metric {}
    export class Rate extends Metric {}
    export class Gauge extends Metric {}`,
  'k6/crypto': `
    export function hmac(algorithm, secret, data, outputEncoding) {
      return globalThis.__k6.hmac(algorithm, secret, data, outputEncoding);
    }
    export default { hmac };`,
  'k6/encoding': `
    export function b64encode(input, encoding) { return globalThis.__k6.b64encode(input, encoding); }
    export default { b64encode };`,
};

export async function resolve(specifier, context, next) {
  if (Object.hasOwn(STUBS, specifier)) return { url: `k6-stub:${specifier}`, shortCircuit: true };
  const r = await next(specifier, context);
  const parent = context.parentURL ? new URL(context.parentURL) : null;
  if (parent && parent.search && specifier.startsWith('.') && r.url.startsWith('file:')) {
    const u = new URL(r.url);
    u.search = parent.search;
    return { ...r, url: u.href };
  }
  return r;
}

export async function load(url, context, next) {
  if (url.startsWith('k6-stub:')) {
    return { format: 'module', source: STUBS[url.slice('k6-stub:'.length)], shortCircuit: true };
  }
  // k6 scripts are ES modules whatever the nearest package.json says.
  if (url.startsWith('file:') && new URL(url).pathname.endsWith('.js')) {
    return next(url, { ...context, format: 'module' });
  }
  return next(url, context);
}
