// The process logger's destination: connection lines leave in batches (one write per
// LOG_BATCH_LINES or LOG_FLUSH_MS), every other line at once with the batch before it, in order,
// and what waits is written when the process exits.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ConnectionOutcome } from '../../../src/net/outcome.ts';
import { connectionLogger, logConnection } from '../../../src/observability/connection-log.ts';
import { createLogger, LOG_BATCH_LINES, LOG_BUFFER_BYTES, LOG_FLUSH_MS, timestampAt } from '../../../src/observability/logger.ts';

const outcome = (sourcePort: number): ConnectionOutcome => ({
  listener: 'tls',
  sandbox: 'sb-1',
  source: '198.18.0.2',
  sourcePort,
  destination: '198.18.1.2',
  destinationPort: 443,
  name: 'a.test',
  protocol: 'tls',
  verdict: 'allow',
  reason: 'allow-rule',
  endedBy: 'client',
  rule: 'allowed_domains "a.test"',
  dialed: '198.18.1.2',
  bytesUp: 1,
  bytesDown: 2,
  startedAt: 0,
  durationMs: 1,
});

const ROOT = join(import.meta.dirname, '../../..');
let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-logger-'));
  file = join(dir, 'egressd.log');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The lines in the file as `connection PORT` or the message, once `n` are there (polled, 5 s at most). */
async function lines(n: number): Promise<string[]> {
  const until = Date.now() + 5000;
  for (;;) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      // not created yet
    }
    const got = text
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const j = JSON.parse(l) as { message: string; source?: { port: number } };
        return j.message === 'connection' ? `connection ${j.source!.port}` : j.message;
      });
    if (got.length >= n || Date.now() > until) return got;
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('timestampAt', () => {
  it('writes what toISOString writes, within a second and across seconds, years and fractions', () => {
    const at = [0, 1, 9, 10, 99, 100, 999, 1000, 1001, Date.UTC(2026, 10, 30, 23, 59, 59, 999), Date.UTC(2026, 11, 1), -1, -1001, 1.5, 253402300800000];
    for (const ms of [...at, ...at.reverse()]) expect(timestampAt(ms)).toBe(`,"@timestamp":"${new Date(ms).toISOString()}"`);
  });
});

describe('createLogger', () => {
  it('writes connection lines in a batch, and the batch before any other line, in order', async () => {
    const log = createLogger({ level: 'info', destination: file });
    const c = connectionLogger(log);
    logConnection(c, outcome(1));
    logConnection(c, outcome(2));
    log.warn({ event: { action: 'x' } }, 'other');
    logConnection(c, outcome(3));
    expect(await lines(4)).toEqual(['connection 1', 'connection 2', 'other', 'connection 3']);
  });

  it('writes a lone connection line out within LOG_FLUSH_MS', async () => {
    const log = createLogger({ level: 'info', destination: file });
    const t0 = Date.now();
    logConnection(connectionLogger(log), outcome(7));
    expect(await lines(1)).toEqual(['connection 7']);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(LOG_FLUSH_MS - 5);
  });

  it('writes a full batch at once', async () => {
    const log = createLogger({ level: 'info', destination: file });
    const c = connectionLogger(log);
    const n = LOG_BATCH_LINES + 10;
    for (let i = 0; i < n; i++) logConnection(c, outcome(i));
    // Without waiting for the timer: the first batch is already on its way.
    const first = await lines(1);
    expect(first.length).toBeGreaterThan(0);
    expect(await lines(n)).toEqual(Array.from({ length: n }, (_, i) => `connection ${i}`));
  });

  it('stamps a batched line with the end of its connection, not the time the batch is written', async () => {
    const log = createLogger({ level: 'info', destination: file });
    logConnection(connectionLogger(log), { ...outcome(9), startedAt: Date.UTC(2026, 0, 2, 3, 4, 5, 6), durationMs: 1000 });
    expect(await lines(1)).toEqual(['connection 9']);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ '@timestamp': '2026-01-02T03:04:06.006Z', 'log.level': 'info' });
  });

  it('writes what waits when the process exits', () => {
    const script = `
      import { createLogger } from ${JSON.stringify(join(ROOT, 'src/observability/logger.ts'))};
      import { connectionLogger, logConnection } from ${JSON.stringify(join(ROOT, 'src/observability/connection-log.ts'))};
      const c = connectionLogger(createLogger({ level: 'info', destination: ${JSON.stringify(file)} }));
      for (let i = 0; i < 3; i++) logConnection(c, ${JSON.stringify(outcome(0))});
      process.exit(0);`;
    execFileSync(join(ROOT, 'node_modules/.bin/node'), ['--input-type=module', '-e', script]);
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(3);
  });

  // The lines are the sandboxes' to multiply (a refused connection or DNS query is a line), and a
  // destination can fall behind them (journald, a full pipe): what it has not taken waited in
  // memory without bound, 450 bytes of heap a line.
  it('holds at most 16 MiB a destination has not taken, drops the rest, and says how many once it takes them again', () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // In a process of its own, which reports and then kills itself: a destination that takes
    // nothing would hold its exit (the exit flush waits for the destination).
    const script = `
      import { constants, openSync, readSync, writeSync } from 'node:fs';
      import { setFlagsFromString } from 'node:v8';
      import { runInNewContext } from 'node:vm';
      import { createLogger, logLinesDropped } from ${JSON.stringify(join(ROOT, 'src/observability/logger.ts'))};
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc');
      const heap = () => (gc(), gc(), process.memoryUsage().heapUsed);
      const report = (o) => {
        writeSync(1, JSON.stringify(o) + '\\n');
        process.kill(process.pid, 'SIGKILL');
      };
      // Read-write, so the pipe stays open with no reader reading: it fills (64 KiB), then takes nothing.
      const fd = openSync(${JSON.stringify(fifo)}, constants.O_RDWR | constants.O_NONBLOCK);
      const log = createLogger({ level: 'info', destination: fd });
      const before = heap();
      const pad = 'x'.repeat(1000);
      for (let i = 0; i < 40 * 1024; i++) log.info({ event: { action: 'x' }, pad }, 'line ' + i);
      const grew = heap() - before;
      if (grew > 32 * 1024 * 1024) report({ grew, dropped: logLinesDropped(log), line: null });
      // Now the destination takes everything again. It is drained 16 KiB a write (sonic-boom's
      // maxWrite), each a hop to libuv's thread pool: 15 s on a loaded machine (load 8), so the
      // read goes on as long as bytes come, not to a deadline. It stops at the line that says
      // how many were dropped, when the pipe stays empty for 10 s (the logger stopped writing),
      // or past twice what may be held (it held more than it may).
      const buf = Buffer.alloc(1 << 20);
      let rest = '', bytes = 0, found = null, lastByte = Date.now();
      const read = () => {
        for (;;) {
          let n;
          try {
            n = readSync(fd, buf, 0, buf.length, null);
          } catch (e) {
            if (e.code !== 'EAGAIN') throw e;
            break;
          }
          lastByte = Date.now();
          const lines = (rest + buf.toString('latin1', 0, n)).split('\\n');
          rest = lines.pop();
          for (const l of lines) {
            if (found === null && l.includes('"log-lines-dropped"')) found = { line: JSON.parse(l), bytesBefore: bytes };
            bytes += l.length + 1;
          }
        }
        if (found === null && Date.now() - lastByte < 10_000 && bytes < ${2 * LOG_BUFFER_BYTES}) return void setImmediate(read);
        report({ grew, dropped: logLinesDropped(log), bytes, ...(found ?? { line: null }) });
      };
      read();`;
    // A hang guard, not a measure: the child's checks end it, however slow the machine.
    const run = spawnSync(join(ROOT, 'node_modules/.bin/node'), ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 110_000 });
    expect(run.stdout, `the child printed nothing: ${run.error?.message ?? `signal ${run.signal}`}, stderr ${run.stderr}`).not.toBe('');
    const out = JSON.parse(run.stdout) as { grew: number; dropped: number; bytes: number; line: { count: number } | null; bytesBefore?: number };
    // 40 MiB of lines: held whole, the heap grew by more than that.
    expect(out.grew).toBeLessThan(32 * 1024 * 1024);
    expect(out.dropped).toBeGreaterThan(16 * 1024);
    // What reached the destination before the warning is what was held: 16 MiB and the line in
    // flight when it filled (16,776,795 bytes in all), not the 40 MiB logged.
    expect(out.bytesBefore, `bytes before the warning (${out.bytes} read in all)`).toBeLessThanOrEqual(LOG_BUFFER_BYTES + 4096);
    expect(out.line).toMatchObject({ 'log.level': 'warn', count: out.dropped });
    // Past the project's 30 s: the child's run (40 MiB logged, 16 MiB drained) took 18 s at load 8.
  }, 120_000);
});
