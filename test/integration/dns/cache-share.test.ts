// egressd's DNS caches are shared by every sandbox (src/dns/cache.ts: the listener's answers;
// src/net/dns-cache.ts: the addresses of names, which the listener's answers also fill): through
// the whole daemon on loopback, one sandbox asking more names than a cache holds must evict its
// own answers, not another sandbox's — neither its DNS answers nor the addresses its connections
// are dialed to.

import { createServer, connect, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';

const A = '127.0.0.71';
const B = '127.0.0.72';
const ENTRIES = 20;

describe.skipIf(!haveDig)("the DNS listener's answer cache", () => {
  let upstream: DnsTestServer;
  let d: LoopbackDaemon;
  let port: number;

  beforeAll(async () => {
    upstream = await DnsTestServer.start();
    for (let i = 0; i < 2 * ENTRIES; i++) upstream.set(`n${i}.flood.test`, { kind: 'answer', a: ['198.18.5.1'], ttl: 300 });
    upstream.set('b.cached.test', { kind: 'answer', a: ['198.18.5.2'], ttl: 300 });
    upstream.set('b.dial.test', { kind: 'answer', a: ['127.0.0.1'], ttl: 300 });
    d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [upstream.server], cacheEntries: ENTRIES, limits: { perSecond: 10_000, burst: 10_000 } },
        sandboxes: [
          { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.flood.test'] } } },
          { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['b.cached.test', 'b.dial.test'] } } },
        ],
      }),
    );
    port = d.daemon.dnsListeners[0]!.port!;
  });
  afterAll(async () => {
    await d?.stop();
    await upstream?.close();
  });

  it("keeps another sandbox's answers, and the address its connections dial, while one sandbox asks twice as many names as a cache holds", async () => {
    const origin = createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    d.route(B, '127.0.0.1', (origin.address() as AddressInfo).port);
    const get = (): Promise<string> =>
      new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port: d.port('http'), localAddress: B });
        let got = '';
        s.on('data', (b) => (got += b.toString()));
        s.on('error', () => {});
        s.on('close', () => resolve(got));
        s.write('GET / HTTP/1.1\r\nHost: b.dial.test\r\nConnection: close\r\n\r\n');
      });
    try {
      // B's connection to a name: resolved once, its addresses cached.
      expect(await get()).toMatch(/^HTTP\/1.1 200/);
      expect(upstream.count('b.dial.test', 'A')).toBe(1);
      expect(await digFrom(port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.5.2\n');
      for (let i = 0; i < 2 * ENTRIES; i++) expect(await digFrom(port, A, `n${i}.flood.test`, 'A', '+short')).toBe('198.18.5.1\n');
      // A's answers filled the address cache too; B's next connection is dialed from it.
      expect(await get()).toMatch(/^HTTP\/1.1 200/);
      expect(upstream.count('b.dial.test', 'A')).toBe(1);
    } finally {
      origin.close();
    }
    // B's answer still comes from the cache; A's first names were evicted to make room for its later ones.
    expect(await digFrom(port, B, 'b.cached.test', 'A', '+short')).toBe('198.18.5.2\n');
    expect(upstream.count('b.cached.test', 'A')).toBe(1);
    expect(await digFrom(port, A, 'n0.flood.test', 'A', '+short')).toBe('198.18.5.1\n');
    expect(upstream.count('n0.flood.test', 'A')).toBe(2);
    expect(d.daemon.dnsCache.heldBy('sb-a')).toBe(ENTRIES - 1);
    expect(d.daemon.dnsCache.heldBy('sb-b')).toBe(1);
  });
});
