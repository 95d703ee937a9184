import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { QueryLines } from '../../../src/dns/query-lines.ts';
import type { QueryLog } from '../../../src/dns/query-log.ts';
import { loggerOptions, type Logger } from '../../../src/observability/logger.ts';

/** A logger whose lines land in an array, and the lines. */
function sink(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const out = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const log: Logger = pino(loggerOptions('info'), out);
  return { log, lines };
}

const refused = (source: string, sandbox: string | null, reason = 'not-allowed'): QueryLog => ({
  sandbox,
  source,
  transport: 'udp',
  name: 'x.denied.test',
  type: 'A',
  verdict: 'refuse',
  reason,
});
const suppressedOf = (l: Record<string, unknown>): number | undefined => (l['egressd'] as { suppressed?: number }).suppressed;

describe('QueryLines', () => {
  it('writes the first line of a sandbox and reason at once, then the last of each second with how many were left out', async () => {
    const { log, lines } = sink();
    const told: [string, number][] = [];
    const q = new QueryLines(log, (reason, n) => told.push([reason, n]));
    for (let i = 0; i < 10; i++) q.write('sb-a', 'info', refused('198.18.0.2', 'sb-a'));
    q.write('sb-a', 'info', refused('198.18.0.2', 'sb-a', 'deny-rule'));
    q.write('sb-a', 'debug', { ...refused('198.18.0.2', 'sb-a'), verdict: 'allow', reason: 'policy' });
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(2);
    q.flush();
    await new Promise((r) => setImmediate(r));
    // The nine left: one written with 8 left out; the deny-rule one had no more, and is forgotten.
    expect(lines.map(suppressedOf)).toEqual([undefined, undefined, 8]);
    expect(told).toEqual([['not-allowed', 8]]);
    q.flush();
    q.write('sb-a', 'info', refused('198.18.0.2', 'sb-a', 'deny-rule'));
    q.close();
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(4);
  });

  it('gives the first 16 blocks of sources of no sandbox lines of their own and gathers the others', async () => {
    const { log, lines } = sink();
    const q = new QueryLines(log);
    for (let i = 1; i <= 40; i++) q.write(`source 198.18.9.${i}`, 'info', refused(`198.18.9.${i}`, null));
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(17);
    q.close();
    await new Promise((r) => setImmediate(r));
    // The 23 gathered: the last written with 22 left out.
    expect(lines).toHaveLength(18);
    expect(suppressedOf(lines[17]!)).toBe(22);
  });

  it('counts the 16 by blocks, not by block and reason: a block refused for many reasons takes one place', async () => {
    const { log, lines } = sink();
    const q = new QueryLines(log);
    const reasons = ['not-allowed', 'deny-rule', 'rate-limited', 'malformed', 'invalid-name', 'inflight-limited', 'upstream-failed', 'unencodable'];
    // Two blocks refused for eight reasons each, then 14 more blocks: 16 blocks, each its own lines.
    for (const block of ['source 198.18.1.0', 'source 198.18.2.0']) for (const r of reasons) q.write(block, 'info', refused(block.slice(7), null, r));
    for (let i = 3; i <= 16; i++) q.write(`source 198.18.${i}.0`, 'info', refused(`198.18.${i}.0`, null));
    await new Promise((r) => setImmediate(r));
    expect(lines.map((l) => (l['source'] as { ip: string }).ip)).toEqual([
      ...reasons.map(() => '198.18.1.0'),
      ...reasons.map(() => '198.18.2.0'),
      ...Array.from({ length: 14 }, (_, i) => `198.18.${i + 3}.0`),
    ]);
    // The 17th block is gathered with the others past 16.
    q.write('source 198.18.17.0', 'info', refused('198.18.17.0', null));
    q.write('source 198.18.18.0', 'info', refused('198.18.18.0', null));
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(31);
    q.close();
  });
});
