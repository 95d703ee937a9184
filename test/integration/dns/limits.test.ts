// The DNS listener's bounds through the whole daemon on loopback (issue 14 part 5): past each,
// the query is answered REFUSED at once and counted in egressd_dns_queries_total — queries
// waiting on an upstream that never answers (per sandbox and in total), and TCP connections
// held by one sandbox or by all together (where an idle one makes room for a new one) — while
// what stays within the bounds is answered as usual.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { askOverTcp, dnsQuery } from '../../helpers/tcp-dns.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.51';
const B = '127.0.0.52';
const C = '127.0.0.53';
/** A source of no sandbox. */
const NONE = '127.0.0.54';
/** Long enough that the silent upstream's queries are still waiting while the test asks more. */
const UPSTREAM_TIMEOUT_MS = 4000;

describe.skipIf(!haveDig)('the DNS listener past its bounds', () => {
  const held: UdpSocket[] = [];
  const allow = { mode: 'block-all', egress: { allowed_domains: ['*.slow.test', 'fast.test'] } };

  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      for (let i = 1; i <= 4; i++) upstream.set(`s${i}.slow.test`, { kind: 'silent' });
      upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: {
        servers: [upstream.server],
        timeoutMs: UPSTREAM_TIMEOUT_MS,
        limits: { perSecond: 1000, burst: 1000, inflightPerSandbox: 2, inflightTotal: 3, tcpPerSandbox: 2, tcpTotal: 3 },
      },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: allow },
        { id: 'sb-b', sources: [B], network: allow },
        { id: 'sb-c', sources: [C], network: allow },
      ],
    }),
  );
  afterAll(async () => {
    for (const s of held) s.close();
  });

  const dig = (from: string, ...args: string[]): Promise<string> => digFrom(dns.port, from, ...args);

  const scrape = async (re: RegExp): Promise<number> => Number(re.exec(await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text())?.[1] ?? 0);

  const metric = async (verdict: string): Promise<number> => {
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    let n = 0;
    for (const [, v] of m.matchAll(new RegExp(`egressd_dns_queries_total\\{verdict="${verdict}",type="[^"]+"\\} (\\d+)`, 'g'))) n += Number(v);
    return n;
  };

  /** Sends a query and leaves it waiting (its eventual SERVFAIL is not read). */
  const leave = (from: string, name: string): void => {
    const s = createSocket('udp4');
    held.push(s);
    s.on('error', () => {});
    s.bind(0, from, () => s.send(dnsQuery(name), dns.port, '127.0.0.1'));
  };

  /** Resolves once the upstream has seen `name` (the query is then in flight), bounded. */
  const reached = async (name: string): Promise<void> => {
    for (let i = 0; i < 100 && dns.upstream.count(name, 'A') === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(dns.upstream.count(name, 'A')).toBeGreaterThan(0);
  };

  it('refuses queries past the in-flight bounds, per sandbox and in total, and counts them', async () => {
    const before = await metric('inflight-limited');
    leave(A, 's1.slow.test');
    leave(A, 's2.slow.test');
    await reached('s1.slow.test');
    await reached('s2.slow.test');
    // sb-a holds its two: a third is refused here, not forwarded.
    expect(await dig(A, 's3.slow.test', 'A')).toMatch(/status: REFUSED/);
    expect(dns.upstream.count('s3.slow.test', 'A')).toBe(0);
    // A question already on its way upstream is joined, not refused: it costs the resolver
    // nothing more (the silent upstream leaves dig to time out, where the bound said REFUSED).
    const asked = dns.upstream.count('s1.slow.test', 'A');
    // (dig exits non-zero when it times out; what it printed is in the error either way.)
    const joined = await dig(A, 's1.slow.test', 'A', '+tries=1', '+time=1').catch((e: Error & { stdout?: string }) => `${e.message}\n${e.stdout ?? ''}`);
    expect(joined).not.toMatch(/status: REFUSED/);
    expect(joined).toMatch(/timed out|no servers could be reached/);
    expect(dns.upstream.count('s1.slow.test', 'A')).toBe(asked);
    // sb-b may still ask: that takes the total to its bound of three.
    leave(B, 's3.slow.test');
    await reached('s3.slow.test');
    // sb-c holds none, but the total is reached.
    expect(await dig(C, 's4.slow.test', 'A')).toMatch(/status: REFUSED/);
    expect(dns.upstream.count('s4.slow.test', 'A')).toBe(0);
    expect((await metric('inflight-limited')) - before).toBe(2);
    const line = await dns.egressd.waitForLog(
      (l) => action(l) === 'dns-query' && field(l, 'egressd.sandbox') === 'sb-c' && field(l, 'event.reason') === 'inflight-limited',
    );
    expect(line).toMatchObject({ dns: { question: { name: 's4.slow.test' } }, egressd: { verdict: 'refuse' } });
    // Once the upstream gives up on them (SERVFAIL), the bound is free again.
    await new Promise((r) => setTimeout(r, UPSTREAM_TIMEOUT_MS + 200));
    expect(await dig(A, 'fast.test', 'A', '+short')).toBe('198.18.2.1\n');
  });

  it('answers REFUSED on a TCP connection past the per-sandbox bound, counted, and closes it', async () => {
    const before = await metric('tcp-limited');
    const open: Socket[] = [];
    try {
      // Two connections, each proven accepted by an answer on it, held open.
      for (let i = 0; i < 2; i++) {
        const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: A });
        s.on('error', () => {});
        open.push(s);
        const first = await askOverTcp(s, 'fast.test');
        expect(first.rcode).toBe('NOERROR');
      }
      // A third, from dig: the bound answers its query REFUSED rather than resetting it.
      expect(await dig(A, '+tcp', 'fast.test', 'A')).toMatch(/status: REFUSED/);
      // And egressd closes such a connection after that one answer.
      const third = connect({ host: '127.0.0.1', port: dns.port, localAddress: A });
      third.on('error', () => {});
      const ended = new Promise<void>((r) => third.once('end', () => r()));
      expect((await askOverTcp(third, 'fast.test')).rcode).toBe('REFUSED');
      await ended;
      third.destroy();
      expect((await metric('tcp-limited')) - before).toBe(2);
      // Another sandbox is not held back by sb-a's connections.
      expect(await dig(B, '+tcp', 'fast.test', 'A', '+short')).toBe('198.18.2.1\n');
    } finally {
      for (const s of open) s.destroy();
    }
    // With its connections closed, sb-a connects again.
    for (let i = 0; i < 50; i++) {
      const out = await dig(A, '+tcp', 'fast.test', 'A', '+short');
      if (out === '198.18.2.1\n') return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error('sb-a was not served over TCP after closing its connections');
  });

  // A byte now and then is no query: it must not keep a connection past its bound for as long as
  // it dribbles — past the per-sandbox bound (docs/config.md: reset if it sends no query within
  // 2 s, from its place among those being refused), nor within it (no query, so idle).
  it.each([
    ['past the per-sandbox bound', A, 2],
    ['within the per-sandbox bound', C, 0],
  ])('closes a connection %s that dribbles bytes of a query it never completes', async (_, from, before) => {
    const open: Socket[] = [];
    try {
      for (let i = 0; i < before; i++) {
        const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: from });
        s.on('error', () => {});
        open.push(s);
        expect((await askOverTcp(s, 'fast.test')).rcode).toBe('NOERROR');
      }
      const slow = connect({ host: '127.0.0.1', port: dns.port, localAddress: from });
      slow.on('error', () => {});
      open.push(slow);
      const closed = new Promise<void>((r) => slow.once('close', () => r()));
      await new Promise<void>((r) => slow.once('connect', () => r()));
      // A length of 300, then one byte of the query every 250 ms: 60 bytes take 15 s, past any bound.
      slow.write(Buffer.from([0x01, 0x2c]));
      let sent = 0;
      let gone = false;
      void closed.then(() => (gone = true));
      while (!gone && sent < 60) {
        await new Promise((r) => setTimeout(r, 250));
        if (!gone) slow.write(Buffer.from([0x61]));
        sent++;
      }
      expect(gone).toBe(true);
      expect(sent).toBeLessThan(60);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  it('at dns.limits.tcpTotal closes an answered connection of the sandbox holding the most, refuses when all hold alike (counted, logged), and closes an idle one a second on', async () => {
    const total = /^egressd_dns_tcp_connections_refused_total\{scope="total"\} (\d+)$/m;
    const shedMetric = /^egressd_dns_tcp_connections_shed_total (\d+)$/m;
    const refusedBefore = await scrape(total);
    const shedBefore = await scrape(shedMetric);
    const open: Socket[] = [];
    const served = async (from: string): Promise<Socket> => {
      const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: from });
      s.on('error', () => {});
      open.push(s);
      expect((await askOverTcp(s, 'fast.test')).rcode).toBe('NOERROR');
      return s;
    };
    const closed = (s: Socket): Promise<void> => new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));
    try {
      // sb-a holds two, sb-b one: the listeners' total of three.
      const a1 = await served(A);
      const a2 = await served(A);
      await served(B);
      // sb-c holds none, two fewer than sb-a: sb-a's oldest answered one makes room at once.
      await served(C);
      await closed(a1);
      expect((await scrape(shedMetric)) - shedBefore).toBe(1);
      // Each of the three holds one now, none idle: a source of no sandbox is refused, counted and logged.
      expect(await dig(NONE, '+tcp', 'fast.test', 'A')).toMatch(/status: REFUSED/);
      expect((await scrape(total)) - refusedBefore).toBe(1);
      const line = await dns.egressd.waitForLog((l) => action(l) === 'dns-tcp-refused' && field(l, 'source.ip') === NONE);
      expect(line).toMatchObject({ sandbox: null, reason: 'total', count: 1, reset: 0, verdict: 'refuse' });
      // A second on, they are idle: the oldest, sb-a's, makes room for it (served: its policy,
      // block-all, answers NXDOMAIN).
      await new Promise((r) => setTimeout(r, 1100));
      expect(await dig(NONE, '+tcp', 'fast.test', 'A')).toMatch(/status: NXDOMAIN/);
      await closed(a2);
      expect((await scrape(shedMetric)) - shedBefore).toBe(2);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  it("answers another sandbox's refused connection REFUSED while one sandbox holds silent connections past its bound", async () => {
    const open: Socket[] = [];
    const connected = (from: string): Promise<Socket> =>
      new Promise((resolve) => {
        const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: from });
        s.on('error', () => {});
        open.push(s);
        s.once('connect', () => resolve(s));
        s.once('close', () => resolve(s));
      });
    try {
      for (let i = 0; i < 2; i++) expect((await askOverTcp(await connected(A), 'fast.test')).rcode).toBe('NOERROR');
      // sb-a, at its bound, opens more than the listener holds refusing, and sends nothing on them.
      await Promise.all(Array.from({ length: 260 }, () => connected(A)));
      await new Promise((r) => setTimeout(r, 100));
      // sb-b takes the last of the total, then one more: refused, with an answer, not a reset.
      expect((await askOverTcp(await connected(B), 'fast.test')).rcode).toBe('NOERROR');
      expect(await dig(B, '+tcp', 'fast.test', 'A').catch((e: Error) => e.message)).toMatch(/status: REFUSED/);
    } finally {
      for (const s of open) s.destroy();
    }
  });
});
