// A sandbox asking denied names as fast as its query rate allows must not write a log line per
// query (the log destination is every sandbox's): refused dns-query lines are bounded as the
// refusals at accept are, one a second per sandbox and reason after the first, each saying how
// many were left out (`egressd.suppressed`), counted in egressd_dns_query_lines_suppressed_total.
// Through the whole daemon on loopback, dnsmasq behind it.

import { createSocket } from 'node:dgram';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { haveDig } from '../../helpers/dig.ts';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { haveDnsmasq, startDnsmasq } from '../../helpers/dnsmasq.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.91';
const B = '127.0.0.92';
const QUERIES = 600;
/** Longest the burst may take to be sent and answered (lines are bounded by the seconds it took). */
const BURST_MS = 10_000;

describe.skipIf(!haveDig || !haveDnsmasq)('refused dns-query lines under a burst', () => {
  const dns = dnsDaemonPerBlock(
    () => startDnsmasq({ 'allowed.test': ['198.18.8.1'] }, 60),
    (upstream) => ({
      dns: { servers: [upstream.server], limits: { perSecond: 1000, burst: 1000 } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
      ],
    }),
  );

  /** `n` queries for denied names from `from`, 50 at a time, each waiting for its answer; resolves with the rcodes. */
  const burst = (from: string, n: number): Promise<number> =>
    new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      let answered = 0;
      let sent = 0;
      const timer = setTimeout(() => {
        s.close();
        reject(new Error(`${answered} of ${n} answered within ${BURST_MS} ms`));
      }, BURST_MS);
      const send = (): void => {
        const q = packet.encode({
          type: 'query',
          id: sent & 0xffff,
          flags: packet.RECURSION_DESIRED,
          questions: [{ name: `n${sent}.denied.test`, type: 'A' }],
        });
        sent++;
        s.send(q, dns.port, '127.0.0.1');
      };
      s.on('message', () => {
        answered++;
        if (answered === n) {
          clearTimeout(timer);
          s.close();
          resolve(answered);
        } else if (sent < n) send();
      });
      s.bind(0, from, () => {
        for (let i = 0; i < 50 && sent < n; i++) send();
      });
    });

  const refusedLines = (from: string): Record<string, unknown>[] =>
    dns.egressd.logs.filter((l) => action(l) === 'dns-query' && field(l, 'source.ip') === from && field(l, 'event.reason') === 'not-allowed');

  it('writes at most one refused line a second per sandbox after the first, and counts every query left out', async () => {
    const started = performance.now();
    expect(await burst(A, QUERIES)).toBe(QUERIES);
    const tookS = (performance.now() - started) / 1000;
    // The second's last line comes at its end.
    await dns.egressd.waitForLog(() => {
      const lines = refusedLines(A);
      return lines.length + lines.reduce((n, l) => n + Number(field(l, 'egressd.suppressed') ?? 0), 0) === QUERIES;
    }, 3_000);
    const lines = refusedLines(A);
    expect(lines.length).toBeLessThanOrEqual(Math.ceil(tookS) + 2);
    const suppressed = lines.reduce((n, l) => n + Number(field(l, 'egressd.suppressed') ?? 0), 0);
    expect(lines.length + suppressed).toBe(QUERIES);
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    expect(Number(/egressd_dns_query_lines_suppressed_total\{reason="not-allowed"\} (\d+)/.exec(m)?.[1])).toBe(suppressed);
    // Another sandbox's first refusal meanwhile is written at once, on its own.
    expect(await burst(B, 1)).toBe(1);
    expect(refusedLines(B)).toHaveLength(1);
    expect(field(refusedLines(B)[0]!, 'egressd.suppressed')).toBeUndefined();
  });
});
