// The DNS memory of one sandbox is bounded by bytes, not only by addresses: a sandbox asks names
// of its choosing (long random labels under a wildcard it may resolve) whose answers all give the
// same few addresses, and each address would keep 16 such names. Through the whole daemon on
// loopback, with dig as the sandbox's resolver.

import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';

const A = '127.0.0.2';
const PER_SANDBOX = 16;
const ADDRESSES = Array.from({ length: 8 }, (_, i) => `198.18.7.${i + 1}`);
/** A 245-character name under the allowed wildcard, the `i`th. */
const longName = (i: number): string => `n${i}-${'a'.repeat(55)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(50)}.allowed.test`.toLowerCase();

describe.skipIf(!haveDig)('the DNS memory of a sandbox asking long names', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      for (let i = 0; i < 24; i++) upstream.set(longName(i), { kind: 'answer', a: ADDRESSES, ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000, memory: { perSandbox: PER_SANDBOX } },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
    }),
  );

  it('holds at most perSandbox × 512 bytes of names, the latest name still remembered for every address', async () => {
    for (let i = 0; i < 24; i++) expect(await digFrom(dns.port, A, longName(i), 'A', '+short')).toBe(`${ADDRESSES.join('\n')}\n`);
    const view = dns.egressd.daemon.dnsMemory.view('sb-a');
    const chars = view.reduce((n, e) => n + e.names.reduce((k, x) => k + x.name.length, 0), 0);
    // Bounded by addresses alone: 8 addresses × 16 names × 245 characters (31 KB).
    expect(chars).toBeLessThanOrEqual(PER_SANDBOX * 512);
    for (const address of ADDRESSES) expect(dns.egressd.daemon.dnsMemory.namesFor('sb-a', address)).toContain(longName(23));
  });
});
