// The DNS listener's answer cache is shared by every sandbox (one upstream query per question),
// but no sandbox may learn from an answer that another asked the same question: not by the TTL
// (aged by the time since the other's query) nor by how fast the answer came (a cache hit against
// an upstream round trip). Through the whole daemon on loopback, with dnsmasq as the upstream
// (its records carry the same TTL on every answer, so any ageing is egressd's) and, where the
// round trip must be long enough to time, a slow test server.

import { createSocket } from 'node:dgram';
import * as packet from 'dns-packet';
import { describe, expect, it, onTestFinished } from 'vitest';
import { AnswerCache } from '../../../src/dns/cache.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { haveDnsmasq, startDnsmasq } from '../../helpers/dnsmasq.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';

const A = '127.0.0.81';
const B = '127.0.0.82';
const TTL = 300;
const SLOW_MS = 400;

const sandboxes = (names: string[]): Record<string, unknown>[] => [
  { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: names } } },
  { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: names } } },
];

/** The TTL of the A record in dig's answer section. */
const ttlOf = (dig: string): number => {
  const line = dig.split('\n').find((l) => /\sIN\s+A\s/.test(l));
  if (line === undefined) throw new Error(`no A record in ${JSON.stringify(dig)}`);
  return Number(line.split(/\s+/)[1]);
};

describe.skipIf(!haveDig || !haveDnsmasq)("the answer cache, as another sandbox's query shows it", () => {
  const dns = dnsDaemonPerBlock(
    () => startDnsmasq({ 'seen.test': ['198.18.7.1'], 'other.test': ['198.18.7.2'] }, TTL),
    (upstream) => ({ dns: { servers: [upstream.server] }, sandboxes: sandboxes(['seen.test', 'other.test']) }),
  );

  it("gives a sandbox the TTL as it would have had it alone, not aged by another sandbox's earlier query, with one upstream query", async () => {
    // What B gets for a name nobody asked: the upstream's TTL.
    expect(ttlOf(await digFrom(dns.port, B, 'other.test', 'A', '+noall', '+answer'))).toBe(TTL);
    expect(ttlOf(await digFrom(dns.port, A, 'seen.test', 'A', '+noall', '+answer'))).toBe(TTL);
    await new Promise((r) => setTimeout(r, 2_100));
    // B's first sight of the name A asked 2 s ago: the same as for a name nobody asked.
    expect(ttlOf(await digFrom(dns.port, B, 'seen.test', 'A', '+noall', '+answer'))).toBe(TTL);
    // A's own view keeps ageing, from A's query.
    expect(ttlOf(await digFrom(dns.port, A, 'seen.test', 'A', '+noall', '+answer'))).toBeLessThanOrEqual(TTL - 2);
    await new Promise((r) => setTimeout(r, 1_100));
    // And B's ages from B's first query.
    expect(ttlOf(await digFrom(dns.port, B, 'seen.test', 'A', '+noall', '+answer'))).toBe(TTL - 1);
    // The upstream was asked once for it: the work is still shared.
    expect(dns.upstream.log().match(/query\[A\] seen\.test /g)).toHaveLength(1);
  });
});

describe.skipIf(!haveDig)("the answer cache's timing, as another sandbox's query shows it", () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      for (const n of ['cached.slow.test', 'joined.slow.test']) upstream.set(n, { kind: 'answer', a: ['198.18.7.3'], ttl: TTL, delayMs: SLOW_MS });
      for (const n of ['s1.silent.test', 's2.silent.test', 's3.silent.test']) upstream.set(n, { kind: 'silent' });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 4000, limits: { perSecond: 1000, burst: 1000, inflightPerSandbox: 2, inflightTotal: 16 } },
      sandboxes: sandboxes(['cached.slow.test', 'joined.slow.test', '*.silent.test']),
    }),
  );

  /** One query over UDP from `from`: its A records, its rcode and how long the answer took, ms. */
  const timed = (from: string, name: string): Promise<{ a: string[]; rcode: string | undefined; ms: number }> =>
    new Promise((resolve, reject) => {
      const s = createSocket('udp4');
      const timer = setTimeout(() => {
        s.close();
        reject(new Error(`no answer for ${name} within 5 s`));
      }, 5_000);
      let sent = 0;
      s.on('message', (m) => {
        const ms = performance.now() - sent;
        clearTimeout(timer);
        s.close();
        const p = packet.decode(m);
        resolve({
          a: (p.answers ?? []).filter((r) => r.type === 'A').map((r) => String((r as { data?: unknown }).data)),
          rcode: (p as { rcode?: string }).rcode,
          ms,
        });
      });
      s.bind(0, from, () => {
        sent = performance.now();
        s.send(
          packet.encode({ type: 'query', id: 1 + Math.floor(Math.random() * 60_000), flags: packet.RECURSION_DESIRED, questions: [{ name, type: 'A' }] }),
          dns.port,
          '127.0.0.1',
        );
      });
    });

  it("answers a sandbox's first query for a name another sandbox has cached no sooner than its own upstream query would be, then at once", async () => {
    expect((await timed(A, 'cached.slow.test')).ms).toBeGreaterThanOrEqual(SLOW_MS - 20);
    const first = await timed(B, 'cached.slow.test');
    expect(first.a).toEqual(['198.18.7.3']);
    expect(first.ms).toBeGreaterThanOrEqual(SLOW_MS - 20);
    // B's own cached answer now: no wait.
    expect((await timed(B, 'cached.slow.test')).ms).toBeLessThan(SLOW_MS / 2);
    expect(dns.upstream.count('cached.slow.test', 'A')).toBe(1);
  });

  it("answers a sandbox that joins another's query on its way no sooner than its own upstream query would be", async () => {
    const aAsked = timed(A, 'joined.slow.test');
    for (let i = 0; i < 200 && dns.upstream.count('joined.slow.test', 'A') === 0; i++) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, SLOW_MS / 2));
    const b = await timed(B, 'joined.slow.test');
    await aAsked;
    expect(b.a).toEqual(['198.18.7.3']);
    expect(b.ms).toBeGreaterThanOrEqual(SLOW_MS - 20);
    expect(dns.upstream.count('joined.slow.test', 'A')).toBe(1);
  });

  it('refuses a sandbox holding its whole in-flight share a question another sandbox has on its way, as it refuses one nobody asked', async () => {
    // B's question on its way (the upstream never answers it).
    const bAsked = timed(B, 's1.silent.test').catch(() => null);
    for (let i = 0; i < 200 && dns.upstream.count('s1.silent.test', 'A') === 0; i++) await new Promise((r) => setTimeout(r, 5));
    // A fills its share with questions of its own.
    const aHeld = [timed(A, 's2.silent.test').catch(() => null), timed(A, 's3.silent.test').catch(() => null)];
    for (let i = 0; i < 200 && dns.upstream.count('s3.silent.test', 'A') === 0; i++) await new Promise((r) => setTimeout(r, 5));
    // Joined free, A's answer (or its wait) would tell that B is asking the name now.
    const a = await timed(A, 's1.silent.test');
    expect(a.rcode).toBe('REFUSED');
    expect(a.ms).toBeLessThan(1000);
    await Promise.all([bAsked, ...aHeld]);
  });
});

describe("a sandbox's view that its own flood evicted", () => {
  // A asks k.test, B asks it (or not), the upstream's answer changes, A's flood of other names
  // evicts A's view, A asks k.test again. Answered from the answer B's view kept alive, A was
  // given its first fetch's record when B had asked and the upstream's new one when not: it
  // could tell whether another sandbox had asked the name since (as by a caching upstream's TTL).
  const probe = async (bAsked: boolean): Promise<string> => {
    const upstream = await DnsTestServer.start();
    onTestFinished(() => upstream.close());
    upstream.set('k.test', { kind: 'answer', a: ['198.18.7.11'], ttl: TTL });
    const d = await startLoopbackDaemon(loopbackConfig({ dns: { servers: [upstream.server], cacheEntries: 4 }, sandboxes: sandboxes(['*.test']) }));
    onTestFinished(() => d.stop());
    const port = d.daemon.dnsListeners[0]!.port!;
    expect(await askA(port, A, 'k.test')).toEqual(['198.18.7.11']);
    if (bAsked) expect(await askA(port, B, 'k.test')).toEqual(['198.18.7.11']);
    upstream.set('k.test', { kind: 'answer', a: ['198.18.7.12'], ttl: TTL });
    for (let i = 0; i < 8 && d.daemon.dnsCache.get(AnswerCache.key('k.test', 'A', false, false), 'sb-a') !== undefined; i++) {
      upstream.set(`n${i}.test`, { kind: 'answer', a: ['198.18.7.13'], ttl: TTL });
      await askA(port, A, `n${i}.test`);
    }
    expect(d.daemon.dnsCache.get(AnswerCache.key('k.test', 'A', false, false), 'sb-a')).toBeUndefined();
    return (await askA(port, A, 'k.test')).join();
  };

  it('is answered alike whether another sandbox holds the answer or not', async () => {
    expect([await probe(false), await probe(true)]).toEqual(['198.18.7.12', '198.18.7.12']);
  });
});

/** The addresses of the A answer to `name` asked over UDP from `from`; rejects after 5 s. */
function askA(port: number, from: string, name: string): Promise<string[]> {
  const msg = packet.encode({ type: 'query', id: 9, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      reject(new Error(`no answer for ${name} within 5 s`));
    }, 5000);
    s.on('message', (m) => {
      clearTimeout(timer);
      s.close();
      const r = packet.decode(m) as { answers?: { type: string; data?: unknown }[] };
      resolve((r.answers ?? []).filter((a) => a.type === 'A').map((a) => String(a.data)));
    });
    s.bind(0, from, () => s.send(msg, port, '127.0.0.1'));
  });
}
