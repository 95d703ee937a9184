// egressd's DNS caches are bounded by bytes as well as answers (src/dns/cache.ts, src/net/dns-cache.ts):
// through the whole daemon on loopback, one allow-all sandbox asking names whose answers are huge
// (thousands of A records, 64 KiB of TXT, asked again over TCP as a real upstream would send
// them) must keep each cache under `dns.cacheBytes` and evict its own answers, not another
// sandbox's, which is still answered from the cache.

import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { tcpDns } from '../../helpers/tcp-dns.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';

const A = '127.0.0.81';
const B = '127.0.0.82';
const BUDGET = 1_048_576;
/** Per big name: 2,000 A records (~62 KiB on the wire, ~0.4 MB decoded), or 220 TXT strings of 255 bytes (~62 KiB). */
const A_RECORDS = 2000;
const TXT_RECORDS = 220;
const BIG = 4;

describe.skipIf(!haveDig)("the DNS caches' byte budget", () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start('127.0.0.1', 0, { tcp: true });
      // Truncated over UDP, so the forwarder asks again over TCP, where the whole answer comes.
      for (let i = 0; i < BIG; i++) upstream.set(`big${i}.huge.test`, { kind: 'answer', a: ['198.18.7.1'], ttl: 300, truncate: true });
      tcpDns(upstream, (q) =>
        q.type === 'TXT'
          ? Array.from({ length: TXT_RECORDS }, () => ({ type: 'TXT' as const, name: q.name, ttl: 300, data: 'x'.repeat(255) }))
          : Array.from({ length: A_RECORDS }, (_, j) => ({ type: 'A' as const, name: q.name, ttl: 300, data: `198.18.${8 + (j >> 8)}.${j & 255}` })),
      );
      upstream.set('b.cached.test', { kind: 'answer', a: ['198.18.7.2'], ttl: 300 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 8000, cacheBytes: BUDGET, limits: { perSecond: 10_000, burst: 10_000 } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'allow-all' } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['b.cached.test'] } } },
      ],
    }),
  );

  it("keeps each cache under dns.cacheBytes, and another sandbox's answer cached, while one sandbox asks names with huge answers", async () => {
    expect(await digFrom(dns.port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.7.2\n');
    for (let i = 0; i < BIG; i++) {
      const a = await digFrom(dns.port, A, `big${i}.huge.test`, 'A', '+tcp', '+short');
      expect(a.trim().split('\n')).toHaveLength(A_RECORDS);
      const txt = await digFrom(dns.port, A, `big${i}.huge.test`, 'TXT', '+tcp', '+short');
      expect(txt.trim().split('\n')).toHaveLength(TXT_RECORDS);
    }
    // Every answer came whole; together they are several times the budget.
    expect(dns.upstream.count('big0.huge.test', 'A')).toBe(1);
    const cache = dns.egressd.daemon.dnsCache;
    const addresses = dns.egressd.daemon.resolver.cache;
    expect(cache.bytes).toBeLessThanOrEqual(BUDGET);
    expect(addresses.bytes).toBeLessThanOrEqual(BUDGET);
    expect(cache.bytesHeldBy('sb-a')).toBeGreaterThan(BUDGET / 2);
    // The budget was reached: A lost answers of its own.
    expect(cache.heldBy('sb-a')).toBeLessThan(2 * BIG);
    // A name's addresses are kept as many as a dial tries.
    const big = addresses.get(`big${BIG - 1}.huge.test`);
    expect(big?.ok === true ? big.addresses.length : 0).toBe(16);

    // B's answer, the oldest of all, is still answered from the cache.
    expect(await digFrom(dns.port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.7.2\n');
    expect(dns.upstream.count('b.cached.test', 'A')).toBe(1);
    expect(cache.heldBy('sb-b')).toBe(1);

    const metrics = await (await request(`${dns.egressd.adminUrl}/metrics`)).body.text();
    const gauge = (name: string): number => Number(new RegExp(`^egressd_dns_cache_bytes\\{cache="${name}"\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? NaN);
    expect(gauge('answers')).toBe(cache.bytes);
    expect(gauge('addresses')).toBe(addresses.bytes);
    expect(gauge('answers')).toBeGreaterThan(0);
    expect(gauge('answers')).toBeLessThanOrEqual(BUDGET);
  });
});
