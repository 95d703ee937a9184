// Every metric the daemon serves passes `promtool check metrics` (Prometheus' own linter: names,
// units, help text, counter suffixes), read from a real daemon's /metrics after it has carried a
// connection. promtool comes from the Debian package prometheus (scripts/ensure-test-tools.sh);
// without it the test is skipped with the reason printed.

import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action } from '../helpers/log-line.ts';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
import { watchDaemon } from '../helpers/daemon-process.ts';

const ROOT = resolve(import.meta.dirname, '../..');

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

/** The sample of one series in a scrape, as a promtool input value: `_` (no sample) when the scrape lacks it. */
function sampleOf(text: string, series: string): string {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? '_' : line.slice(series.length + 1).trim();
}

// An alert on a counter's increase() sees only what the counter gained between two samples: a
// series first exported when its first event counts it starts at 1, and that event never moves
// increase(). egressd_config_reloads_total{result="refused"} appeared with the first refused
// reload, so EgressdConfigReloadRefused missed it: the alert fired only for a second one.
describe.skipIf(missing !== null)('the alerts, fed by what a running egressd exports', () => {
  it('fire for the first refused reload of a process: the counter was exported at 0 before it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'egressd-alerts-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const file = writeConfig(dir, loopbackDocument());
    const d = await watchDaemon(
      spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'src/main.ts'), 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] }),
    );
    onTestFinished(async () => void (await d.stop('SIGKILL')));
    const admin = `http://127.0.0.1:${String(d.lines.find((l) => action(l) === 'started')!['adminPort'])}`;
    const scrape = async (): Promise<string> => (await request(`${admin}/metrics`)).body.text();
    const series = 'egressd_config_reloads_total{result="refused"}';

    const before = await scrape();
    // The errnos docs/metrics.md lists for the state's writes are exported from the start too.
    for (const errno of ['ENOSPC', 'EROFS', 'EACCES', 'EIO', 'EBUSY', 'ENOMEM'])
      expect(sampleOf(before, `egressd_state_write_failures_total{errno="${errno}"}`), errno).toBe('0');
    writeFileSync(file, JSON.stringify(loopbackDocument({ sandboxes: [{ id: 'sb-bad', sources: ['not-an-address'], network: { mode: 'allow-all' } }] })));
    d.child.kill('SIGHUP');
    await d.waitFor((l) => action(l) === 'reload-refused');
    const after = await scrape();
    expect(sampleOf(after, series)).toBe('1');

    // Prometheus scraping it once a minute: three scrapes before the refusal, three after.
    const [v0, v1] = [sampleOf(before, series), sampleOf(after, series)];
    const test = join(dir, 'alerts-test.yaml');
    writeFileSync(
      test,
      JSON.stringify({
        rule_files: [join(ROOT, 'deploy/prometheus/egressd-rules.yaml')],
        evaluation_interval: '1m',
        tests: [
          {
            interval: '1m',
            input_series: [{ series: 'egressd_config_reloads_total{result="refused",instance="host-1"}', values: `${v0} ${v0} ${v0} ${v1} ${v1} ${v1}` }],
            alert_rule_test: [
              {
                eval_time: '4m',
                alertname: 'EgressdConfigReloadRefused',
                exp_alerts: [
                  {
                    exp_labels: { severity: 'warning', result: 'refused', instance: 'host-1' },
                    exp_annotations: { summary: 'A configuration reload on host-1 was refused; the previous configuration still runs.' },
                  },
                ],
              },
            ],
          },
        ],
      }),
    );
    const r = spawnSync('promtool', ['test', 'rules', test], { encoding: 'utf8', timeout: 30_000 });
    expect(`${r.stdout}${r.stderr}`).toContain('SUCCESS');
    expect(r.status).toBe(0);
  });
});
