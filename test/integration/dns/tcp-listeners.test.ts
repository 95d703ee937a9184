// The DNS listeners' TCP bounds count every listener's connections together (the default set-up
// has two, `0.0.0.0` and `[::]`), through the whole daemon on loopback with two endpoints:
// dns.limits.tcpTotal is reached by one listener's connections, so room for a newcomer on the
// other must be made there; and a sandbox's dns.limits.tcpPerSandbox spans both.

import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { holdSecondDnsListener, twoDnsListeners } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { askOverTcp } from '../../helpers/tcp-dns.ts';

const A = '127.0.0.71';
const B = '127.0.0.72';
const C = '127.0.0.73';
/** The two listeners' addresses. */
const FIRST = '127.0.0.1';
const SECOND = '127.0.0.2';

describe('two DNS listeners', () => {
  let upstream: DnsTestServer;
  let d: LoopbackDaemon;
  const port: Record<string, number> = {};
  const open: Socket[] = [];

  const configWith = (limits: Record<string, number>): ReturnType<typeof loopbackConfig> => {
    const allow = { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } };
    return loopbackConfig({
      listen: twoDnsListeners(FIRST, SECOND),
      dns: { servers: [upstream.server], limits },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: allow },
        { id: 'sb-b', sources: [B], network: allow },
        { id: 'sb-c', sources: [C], network: allow },
      ],
    });
  };

  beforeAll(async () => {
    upstream = await DnsTestServer.start();
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
    d = await startLoopbackDaemon(configWith({ tcpPerSandbox: 3, tcpTotal: 4 }));
    for (const l of d.daemon.dnsListeners) port[l.endpoint.host] = l.port!;
  });
  afterAll(async () => {
    for (const s of open) s.destroy();
    await d?.stop();
    await upstream?.close();
  });

  const scrape = async (re: RegExp): Promise<number> => Number(re.exec(await (await fetch(`${d.adminUrl}/metrics`)).text())?.[1] ?? 0);
  const shedMetric = /^egressd_dns_tcp_connections_shed_total (\d+)$/m;
  const refusedMetric = (scope: string): RegExp => new RegExp(`^egressd_dns_tcp_connections_refused_total\\{scope="${scope}"\\} (\\d+)$`, 'm');

  /** A connection from `from` to the listener on `to`, and the rcode of one query asked on it. */
  const ask = async (from: string, to: string): Promise<{ s: Socket; rcode: string | undefined }> => {
    const s = connect({ host: to, port: port[to]!, localAddress: from });
    s.on('error', () => {});
    open.push(s);
    return { s, rcode: (await askOverTcp(s, 'fast.test')).rcode };
  };
  const closed = (s: Socket): Promise<void> => new Promise((r) => (s.destroyed ? r() : s.once('close', () => r())));

  it("makes room at dns.limits.tcpTotal on the listener holding the most, for a newcomer on the other, and bounds a sandbox's connections over both", async () => {
    const shedBefore = await scrape(shedMetric);
    const refusedBefore = await scrape(refusedMetric('sandbox'));
    try {
      // sb-a holds three on the first listener, its bound; one more on the second is past it too.
      const a: Socket[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await ask(A, FIRST);
        expect(r.rcode).toBe('NOERROR');
        a.push(r.s);
      }
      expect((await ask(A, SECOND)).rcode).toBe('REFUSED');
      expect((await scrape(refusedMetric('sandbox'))) - refusedBefore).toBe(1);
      // sb-b takes the last of the total on the second.
      expect((await ask(B, SECOND)).rcode).toBe('NOERROR');
      // sb-c, holding none, two fewer than sb-a: sb-a's oldest answered one, on the first
      // listener, makes room for it on the second.
      expect((await ask(C, SECOND)).rcode).toBe('NOERROR');
      await closed(a[0]!);
      expect((await scrape(shedMetric)) - shedBefore).toBe(1);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  // dns.* takes effect at a restart (docs/config.md, reload): a reload must not apply the new
  // total while the listeners keep the old per-sandbox bound, nor the other way round.
  it('keeps the DNS TCP bounds it started with across a reload, and says a restart is needed', async () => {
    const gauge = async (): Promise<number> => scrape(/^egressd_dns_tcp_connections (\d+)$/m);
    for (let i = 0; i < 500 && (await gauge()) > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await gauge()).toBe(0);
    const r = await d.daemon.reload(configWith({ tcpPerSandbox: 1, tcpTotal: 1 }));
    expect(r).toMatchObject({ ok: true, needsRestart: ['dns'] });
    try {
      for (let i = 0; i < 3; i++) expect((await ask(A, i % 2 === 0 ? FIRST : SECOND)).rcode).toBe('NOERROR');
      expect((await ask(A, FIRST)).rcode).toBe('REFUSED');
    } finally {
      for (const s of open) s.destroy();
    }
  });
});

// The budget is sized once every listener is bound (limits/controller.ts start): a DNS connection
// accepted by the first listener while the second still binds must not be held outside it. The
// second's bind is held here while the first has accepted a connection. The connection waits for
// the start (a rollout's new process gets its share from its bind on) and is then taken into the
// budget as any other.
describe('a DNS TCP connection arriving while the daemon starts', () => {
  let upstream: DnsTestServer;
  let d: LoopbackDaemon | undefined;
  let early: Socket | undefined;
  afterAll(async () => {
    early?.destroy();
    await d?.stop();
    await upstream?.close();
  });

  it('waits outside any count until the start, then is taken into the budget and answered', async () => {
    upstream = await DnsTestServer.start();
    upstream.set('fast.test', { kind: 'answer', a: ['198.18.2.1'], ttl: 60 });
    let earlyClosed = false;
    let dnsTcpBeforeStart = 0;
    d = await startLoopbackDaemon(
      loopbackConfig({
        listen: twoDnsListeners(FIRST, SECOND),
        dns: { servers: [upstream.server] },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['fast.test'] } } }],
      }),
      {
        beforeStart: holdSecondDnsListener(async (firstPort, daemon) => {
          early = connect({ host: FIRST, port: firstPort, localAddress: A });
          early.on('error', () => {});
          early.once('close', () => (earlyClosed = true));
          // 300 ms: time enough for its accept to reach the daemon, and for a count taken to show.
          for (let i = 0; i < 30 && !earlyClosed && dnsTcpBeforeStart === 0; i++) {
            await new Promise((r) => setTimeout(r, 10));
            dnsTcpBeforeStart = daemon.limits.snapshot().dnsTcp;
          }
        }),
      },
    );
    const gauge = async (): Promise<number> =>
      Number(/^egressd_dns_tcp_connections (\d+)$/m.exec(await (await fetch(`${d!.adminUrl}/metrics`)).text())?.[1] ?? -1);
    // Taken before the limits started, it would be in none: it waits, counted nowhere and open.
    expect(dnsTcpBeforeStart).toBe(0);
    expect(earlyClosed).toBe(false);
    // Once egressd serves it is taken into the budget and answered, as the next one is.
    expect((await askOverTcp(early!, 'fast.test')).rcode).toBe('NOERROR');
    expect(await gauge()).toBe(1);
    const s = connect({ host: FIRST, port: d.daemon.dnsListeners[0]!.port!, localAddress: A });
    s.on('error', () => {});
    try {
      expect((await askOverTcp(s, 'fast.test')).rcode).toBe('NOERROR');
      expect(await gauge()).toBe(2);
    } finally {
      s.destroy();
    }
  });
});
