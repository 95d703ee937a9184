// Every metric the daemon serves passes `promtool check metrics` (Prometheus' own linter: names,
// units, help text, counter suffixes), read from a real daemon's /metrics after it has carried a
// connection. promtool comes from the Debian package prometheus (scripts/ensure-test-tools.sh);
// without it the test is skipped with the reason printed.

import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action } from '../helpers/log-line.ts';

const probe = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
const missing = probe.error ? `promtool is not installed (${(probe.error as NodeJS.ErrnoException).code ?? 'error'}); apt-get install prometheus` : null;
if (missing) console.warn(`promtool check skipped: ${missing}`);

describe.skipIf(missing !== null)('promtool check metrics', () => {
  let d: LoopbackDaemon;
  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({ sandboxes: [{ id: 'sb-m', sources: ['127.0.0.41'], network: { mode: 'block-all', egress: { allowed_cidrs: ['127.0.0.1/32'] } } }] }),
    );
  });
  afterAll(async () => {
    await d.stop();
  });

  it('finds no problem in any egressd_* metric, after a connection has been counted', async () => {
    const up = createServer((s) => s.end('ok'));
    up.listen(0, '127.0.0.1');
    await once(up, 'listening');
    d.route('127.0.0.41', '127.0.0.1', (up.address() as { port: number }).port);
    const c = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: '127.0.0.41' });
    c.on('error', () => {});
    c.resume();
    await once(c, 'close');
    up.close();
    await d.waitForLog((l) => action(l) === 'connection');

    const res = await request(`${d.adminUrl}/metrics`);
    const text = await res.body.text();
    expect(text).toMatch(/^egressd_/m);
    // egressd's own families; prom-client's default nodejs_* gauges named *_total are its
    // authors' choice (promtool flags them), not ours to rename.
    const ours = text
      .split('\n')
      .filter((l) => /^(# (HELP|TYPE) )?egressd_/.test(l))
      .join('\n');
    expect(ours.split('\n').filter((l) => l.startsWith('# TYPE')).length).toBeGreaterThan(10);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: `${ours}\n`, encoding: 'utf8', timeout: 30_000 });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe('');
    expect(r.status).toBe(0);
  });
});
