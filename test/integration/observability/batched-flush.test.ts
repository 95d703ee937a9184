// Connection lines and counters are batched (100 ms, src/observability): nothing may be lost to
// the batch. A real egressd process on each data path: every connection whose line was written
// is in the next scrape of /metrics, and a SIGTERM right after connections ended still writes
// each one's line before the process exits.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join, resolve } from 'node:path';
import { request } from 'undici';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loopbackDocument, writeConfig } from '../../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../../helpers/daemon-process.ts';
import { action, type LogLine } from '../../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const N = 40;

/** Opens `n` connections at once; resolves when the daemon has closed every one. */
function closedConnections(port: number, n: number): Promise<void> {
  return Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<void>((r) => {
          const s = connect(port, '127.0.0.1');
          s.on('error', () => {});
          s.on('close', () => r());
        }),
    ),
  ).then(() => undefined);
}

function counted(metrics: string): number {
  let sum = 0;
  for (const line of metrics.split('\n')) if (line.startsWith('egressd_connections_total{')) sum += Number(line.split(' ').at(-1));
  return sum;
}

describe.each([{ plane: 'default' }, { plane: 'js' }])('batched lines and counts, data plane $plane', ({ plane }) => {
  let dir: string;
  let d: DaemonProcess | undefined;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-flush-'));
  });
  afterEach(async () => {
    await d?.stop('SIGKILL');
    d = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (log?: string): Promise<{ admin: string; tcp: number }> => {
    const file = writeConfig(
      dir,
      loopbackDocument({ shutdown: { drainMs: 2000 }, ...(log ? { log: { level: 'info', destination: log } } : {}) }, { token: 'flush-test-token' }),
    );
    const env = { ...process.env, ...(plane === 'js' ? { EGRESSD_DATA_PLANE: 'js' } : {}) };
    if (plane !== 'js') delete env['EGRESSD_DATA_PLANE'];
    const child = spawn(NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], env });
    if (log) {
      // The lines go to the file: wait for the admin port to answer instead of the started line.
      for (let i = 0; i < 400 && !existsSync(log); i++) await sleep(25);
      for (let i = 0; i < 400 && !readFileSync(log, 'utf8').includes('"started"'); i++) await sleep(25);
      const started = readFileSync(log, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as LogLine)
        .find((l) => action(l) === 'started')!;
      const listeners = started['listeners'] as { kind: string; port: number }[];
      let exit: Promise<number | null> | null = null;
      const stop = (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
        exit ??= once(child, 'close').then(([code]) => code as number | null);
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
        return exit;
      };
      d = { child, stop } as unknown as DaemonProcess;
      return { admin: `http://127.0.0.1:${started['adminPort']}`, tcp: listeners.find((l) => l.kind === 'tcp')!.port };
    }
    d = await watchDaemon(child);
    const started = d.lines.find((l) => action(l) === 'started')!;
    const listeners = started['listeners'] as { kind: string; port: number }[];
    return { admin: `http://127.0.0.1:${started['adminPort']}`, tcp: listeners.find((l) => l.kind === 'tcp')!.port };
  };

  it('counts in /metrics every connection whose line is out, at once', async () => {
    const { admin, tcp } = await start();
    for (let round = 1; round <= 3; round++) {
      await closedConnections(tcp, N);
      // Not redirected (no iptables here): each one refused, one line each.
      await d!.waitFor(() => d!.connections().length >= round * N, 10_000);
      const metrics = await (await request(`${admin}/metrics`)).body.text();
      expect(counted(metrics)).toBeGreaterThanOrEqual(d!.connections().length);
    }
    expect(d!.connections().length).toBe(3 * N);
  });

  it('writes the line of every connection that ended before a SIGTERM', async () => {
    const { tcp } = await start();
    await closedConnections(tcp, N);
    const closed = once(d!.child, 'close');
    expect(await d!.stop('SIGTERM')).toBe(0);
    await closed;
    expect(d!.connections().length).toBe(N);
    expect(d!.lines.map((l) => action(l))).toContain('stopped');
  });

  it('writes them to log.destination too', async () => {
    const log = join(dir, 'egressd.log');
    const { tcp } = await start(log);
    await closedConnections(tcp, N);
    expect(await d!.stop('SIGTERM')).toBe(0);
    const lines = readFileSync(log, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as LogLine);
    expect(lines.filter((l) => action(l) === 'connection').length).toBe(N);
    expect(lines.map((l) => action(l))).toContain('stopped');
  });
});
