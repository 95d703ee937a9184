// What one connection log line costs: pino writing an outcome-shaped record to a file, one line
// per turn of the event loop (connections end one by one, so an unbuffered destination's previous
// write has usually finished and every line becomes a write(2) handed to libuv's thread pool).
// CPU time of all threads (process.cpuUsage), best of five rounds, minus the same loop without
// a line; the machine is shared, so read the ratios.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { ConnectionOutcome } from '../src/net/outcome.ts';
import { connectionLogger, logConnection } from '../src/observability/connection-log.ts';
import { createLogger } from '../src/observability/logger.ts';

const N = 20_000;
const ROUNDS = 5;
const dir = mkdtempSync(join(tmpdir(), 'egressd-log-bench-'));
/** The flat line egressd wrote before the ECS fields (ip:port strings, camelCase keys). */
const flat = {
  event: 'connection',
  listener: 'tls',
  sandbox: 'build-7',
  source: '10.200.0.7:51234',
  destination: '198.18.1.2:443',
  name: 'files.pythonhosted.org',
  protocol: 'tls',
  verdict: 'allow',
  reason: 'allow-rule',
  rule: 'allowed_domains[1]',
  dialed: '198.18.1.2',
  bytesUp: 517,
  bytesDown: 4096,
  durationMs: 12,
  end: 'closed',
};
/** The same connection as its outcome record, from which the ECS line is built each time. */
const outcome: ConnectionOutcome = {
  listener: 'tls',
  sandbox: 'build-7',
  source: '10.200.0.7',
  sourcePort: 51234,
  destination: '198.18.1.2',
  destinationPort: 443,
  name: 'files.pythonhosted.org',
  protocol: 'tls',
  alpn: ['h2', 'http/1.1'],
  ech: false,
  verdict: 'allow',
  reason: 'allow-rule',
  endedBy: 'client',
  rule: 'allowed_domains[1]',
  dialed: '198.18.1.2',
  bytesUp: 517,
  bytesDown: 4096,
  end: 'closed',
  startedAt: 0,
  durationMs: 12,
  peekMs: 1,
  connectMs: 2,
};
const turn = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

/** CPU µs per iteration, best of ROUNDS. */
async function cpuPerIteration(line: (() => void) | null, flush: () => Promise<void>): Promise<number> {
  let best = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < N; i++) {
      line?.();
      await turn();
    }
    await flush();
    const cpu = process.cpuUsage(cpu0);
    best = Math.min(best, (cpu.user + cpu.system) / N);
  }
  return best;
}

const flushOf = (log: pino.Logger) => (): Promise<void> => new Promise<void>((resolve) => log.flush(() => resolve()));
const options = { base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label: string) => ({ level: label }) } };
try {
  const base = await cpuPerIteration(null, async () => {});
  const flatLine = (log: pino.Logger) => (): void => log.info(flat, 'connection');
  const ecsLine = (log: pino.Logger) => {
    const connections = connectionLogger(log);
    return (): void => logConnection(connections, outcome);
  };
  const egressd = createLogger({ level: 'info', destination: join(dir, 'd.log') });
  const cases: Array<[string, pino.Logger, (log: pino.Logger) => () => void]> = [
    ['unbuffered, a write per line, flat', pino(options, pino.destination({ dest: join(dir, 'a.log'), sync: false, mkdir: true })), flatLine],
    ['batched, no redaction, flat', pino(options, pino.destination({ dest: join(dir, 'b.log'), sync: false, minLength: 8192, mkdir: true })), flatLine],
    ['egressd logger, flat line (before ECS)', createLogger({ level: 'info', destination: join(dir, 'c.log') }), flatLine],
    ['egressd logger, ECS line from the outcome (now)', egressd, ecsLine],
  ];
  console.log(`one line per event-loop turn, ${N} lines × ${ROUNDS} rounds; CPU µs per line, all threads, loop cost (${base.toFixed(2)} µs) removed\n`);
  for (const [label, log, line] of cases) {
    for (let i = 0; i < 1000; i++) line(log)();
    const us = (await cpuPerIteration(line(log), flushOf(log))) - base;
    console.log(`${label.padEnd(48)} ${us.toFixed(2).padStart(7)} µs`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
