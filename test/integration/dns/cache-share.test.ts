// egressd's DNS caches are shared by every sandbox (src/dns/cache.ts: the listener's answers;
// src/net/dns-cache.ts: the addresses of names, which the listener's answers also fill): through
// the whole daemon on loopback, one sandbox asking more names than a cache holds must evict its
// own answers, not another sandbox's — neither its DNS answers nor the addresses its connections
// are dialed to.

import { createSocket } from 'node:dgram';
import { createServer, connect, type AddressInfo } from 'node:net';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';

const A = '127.0.0.71';
const B = '127.0.0.72';
const ENTRIES = 20;
const SHARED = 'shared.slow.test';

describe.skipIf(!haveDig)("the DNS listener's answer cache", () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      for (let i = 0; i < 2 * ENTRIES; i++) upstream.set(`n${i}.flood.test`, { kind: 'answer', a: ['198.18.5.1'], ttl: 300 });
      for (let i = 0; i < 2 * ENTRIES; i++) upstream.set(`m${i}.flood.test`, { kind: 'answer', a: ['198.18.5.1'], ttl: 300 });
      // Slow, so a second sandbox's query joins the first's on its way (and faster than the
      // forwarder's second attempt, at half of dns.timeoutMs).
      upstream.set(SHARED, { kind: 'answer', a: ['198.18.5.3'], ttl: 300, delayMs: 1500 });
      upstream.set('b.cached.test', { kind: 'answer', a: ['198.18.5.2'], ttl: 300 });
      upstream.set('b.dial.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 300 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 8000, cacheEntries: ENTRIES, limits: { perSecond: 10_000, burst: 10_000 } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.flood.test', SHARED] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['b.cached.test', 'b.dial.test', SHARED] } } },
      ],
    }),
  );

  it("keeps another sandbox's answers, and the address its connections dial, while one sandbox asks twice as many names as a cache holds", async () => {
    const origin = createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    dns.egressd.route(B, '127.0.0.1', (origin.address() as AddressInfo).port);
    const get = (): Promise<string> =>
      new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port: dns.egressd.port('http'), localAddress: B });
        let got = '';
        s.on('data', (b) => (got += b.toString()));
        s.on('error', () => {});
        s.on('close', () => resolve(got));
        s.write('GET / HTTP/1.1\r\nHost: b.dial.test\r\nConnection: close\r\n\r\n');
      });
    try {
      // B's connection to a name: resolved once, its addresses cached.
      expect(await get()).toMatch(/^HTTP\/1.1 200/);
      expect(dns.upstream.count('b.dial.test', 'A')).toBe(1);
      expect(await digFrom(dns.port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.5.2\n');
      for (let i = 0; i < 2 * ENTRIES; i++) expect(await digFrom(dns.port, A, `n${i}.flood.test`, 'A', '+short')).toBe('198.18.5.1\n');
      // A's answers filled the address cache too; B's next connection is dialed from it.
      expect(await get()).toMatch(/^HTTP\/1.1 200/);
      expect(dns.upstream.count('b.dial.test', 'A')).toBe(1);
    } finally {
      origin.close();
    }
    // B's answer still comes from the cache; A's first names were evicted to make room for its later ones.
    expect(await digFrom(dns.port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.5.2\n');
    expect(dns.upstream.count('b.cached.test', 'A')).toBe(1);
    expect(await digFrom(dns.port, A, 'n0.flood.test', 'A', '+short')).toBe('198.18.5.1\n');
    expect(dns.upstream.count('n0.flood.test', 'A')).toBe(2);
    expect(dns.egressd.daemon.dnsCache.heldBy('sb-a')).toBe(ENTRIES - 1);
    expect(dns.egressd.daemon.dnsCache.heldBy('sb-b')).toBe(1);
  });

  // An answer both sandboxes asked for, B joining A's query on its way, is charged to the one
  // holding fewer answers, as if B had asked alone: A's flood then evicts A's own, not it.
  it("keeps an answer another sandbox's query was joined for while that sandbox floods the cache", async () => {
    for (let i = 0; i < ENTRIES; i++) expect(await digFrom(dns.port, A, `m${i}.flood.test`, 'A', '+short')).toBe('198.18.5.1\n');
    const aAsked = askUdp(A, SHARED);
    for (let i = 0; i < 500 && dns.upstream.count(SHARED, 'A') === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const bAsked = askUdp(B, SHARED);
    expect(await Promise.all([aAsked, bAsked])).toEqual([['198.18.5.3'], ['198.18.5.3']]);
    expect(dns.upstream.count(SHARED, 'A')).toBe(1);
    for (let i = ENTRIES; i < 2 * ENTRIES; i++) expect(await digFrom(dns.port, A, `m${i}.flood.test`, 'A', '+short')).toBe('198.18.5.1\n');
    expect(await askUdp(B, SHARED)).toEqual(['198.18.5.3']);
    expect(dns.upstream.count(SHARED, 'A')).toBe(1);
  });

  /** The A records of the answer to one query from `from` over UDP (no retry: loopback loses nothing). */
  const askUdp = (from: string, name: string): Promise<string[]> =>
    new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      const timer = setTimeout(() => {
        s.close();
        reject(new Error(`no answer for ${name} within 10 s`));
      }, 10_000);
      s.on('message', (m) => {
        clearTimeout(timer);
        s.close();
        resolve((packet.decode(m).answers ?? []).filter((a) => a.type === 'A').map((a) => String((a as { data?: unknown }).data)));
      });
      s.bind(0, from, () =>
        s.send(
          packet.encode({ type: 'query', id: 1 + Math.floor(Math.random() * 60_000), flags: packet.RECURSION_DESIRED, questions: [{ name, type: 'A' }] }),
          dns.port,
          '127.0.0.1',
        ),
      );
    });
});
