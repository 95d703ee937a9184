// A TTL with its most significant bit set is to be treated "as if the entire value received was
// zero" (RFC 2181 §8). dns-packet reads TTLs unsigned, so such a record would otherwise read as
// some 68 years, clamped to egressd's longest (300 s): kept and handed on for five minutes where
// its publisher, by the RFC's reading, asked for none. The upstream is a real UDP DNS server on
// loopback answering with the TTL as written; dig asks the daemon's listener.

import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';

describe.skipIf(!haveDig)('a TTL with its top bit set (RFC 2181 §8)', () => {
  const dns = dnsDaemonPerBlock(
    () =>
      startRecordedDns(({ question, type }) => ({
        answers: type === 'A' ? [{ name: question.name, type: 'A', ttl: 0x80000000, data: '198.18.1.50' }] : [],
      })),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('is answered as 0 and not kept: the next query asks the upstream again', async () => {
    const dig = (): Promise<string> => digFrom(dns.port, A, 'top.allowed.test', 'A', '+noall', '+answer');
    expect(await dig()).toMatch(/^top\.allowed\.test\.\s+0\s+IN\s+A\s+198\.18\.1\.50$/m);
    expect(await dig()).toMatch(/\s0\s+IN\s+A\s+198\.18\.1\.50/);
    expect(dns.upstream.asked.filter((q) => q === 'top.allowed.test A')).toHaveLength(2);
  });
});
