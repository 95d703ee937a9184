// Probes an HTTP URL on a fixed interval for a duration, run where the URL is reachable (the
// rig's router namespace for egressd's admin listener):
//   node probe-client.ts --url URL --interval-ms MS --duration-ms MS [--timeout-ms MS]
// One JSON line at the end: probes sent, answered 200, failures, and the latency figures.

import { request } from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    'interval-ms': { type: 'string', default: '100' },
    'duration-ms': { type: 'string', default: '10000' },
    'timeout-ms': { type: 'string', default: '2000' },
  },
});
const timeoutMs = Number(values['timeout-ms']);
const results: { ok: boolean; ms: number; error?: string }[] = [];
const pending = new Set<Promise<void>>();

function probe(): Promise<void> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let doneOnce = false;
    const fin = (ok: boolean, error?: string): void => {
      if (doneOnce) return;
      doneOnce = true;
      results.push({ ok, ms: Math.round((performance.now() - t0) * 10) / 10, ...(error ? { error } : {}) });
      resolve();
    };
    const req = request(values.url!, { timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      res.on('end', () => fin(res.statusCode === 200, res.statusCode === 200 ? undefined : `status ${res.statusCode}`));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on('error', (e) => fin(false, e.message));
    req.end();
  });
}

const end = Date.now() + Number(values['duration-ms']);
while (Date.now() < end) {
  const p = probe();
  pending.add(p);
  void p.then(() => pending.delete(p));
  await new Promise((r) => setTimeout(r, Number(values['interval-ms'])));
}
await Promise.all(pending);
const ms = results.map((r) => r.ms).sort((a, b) => a - b);
const q = (f: number): number => ms[Math.min(ms.length - 1, Math.floor(ms.length * f))] ?? 0;
console.log(
  JSON.stringify({
    event: 'done',
    probes: results.length,
    ok: results.filter((r) => r.ok).length,
    failed: results.filter((r) => !r.ok).length,
    over100ms: ms.filter((x) => x > 100).length,
    p50Ms: q(0.5),
    p99Ms: q(0.99),
    maxMs: ms.at(-1) ?? 0,
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => r.error))].slice(0, 5),
  }),
);
process.exit(0);
