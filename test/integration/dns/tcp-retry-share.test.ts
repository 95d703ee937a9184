// One sandbox's truncated answers must not hold every place for retries over TCP (RFC 7766 §5;
// net/query-sockets.ts tcpSlot), through the whole daemon on loopback: sandbox A asks names whose
// UDP answers come back truncated and whose TCP answers never come in time, B then asks one name
// truncated the same way, answered at once over TCP. B is answered before dig gives up, while
// A's retries past its share wait, counted.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { afterAll, describe, expect, it } from 'vitest';
import { tenantShare } from '../../../src/net/query-sockets.ts';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { dnsQuery, tcpDns } from '../../helpers/tcp-dns.ts';

const A = '127.0.0.61';
const B = '127.0.0.62';
/** A's queries: more than the daemon's places (8 with the default reserve of 64 descriptors). */
const FLOOD = 12;
const PLACES = 8;

describe.skipIf(!haveDig)("the DNS listener's retries over TCP", () => {
  const held: UdpSocket[] = [];

  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start('127.0.0.1', 0, { tcp: true });
      for (let i = 0; i < FLOOD; i++) upstream.set(`a${i}.flood.test`, { kind: 'answer', a: ['198.18.3.1'], ttl: 60, truncate: true });
      upstream.set('b.truncated.test', { kind: 'answer', a: ['198.18.3.2'], ttl: 60, truncate: true });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 4000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.flood.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['b.truncated.test'] } } },
      ],
    }),
  );
  afterAll(async () => {
    for (const s of held) s.close();
  });

  const metric = async (scope: string): Promise<number> => {
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    return Number(new RegExp(`^egressd_dns_tcp_retries_held_back_total\\{scope="${scope}"\\} (\\d+)$`, 'm').exec(m)?.[1] ?? 0);
  };

  it("answers another sandbox's truncated query while one sandbox's retries hold all they may", async () => {
    // The TCP side: A's names are answered long after every deadline, B's at once.
    let tcpSeen = 0;
    tcpDns(
      dns.upstream,
      (q) => {
        tcpSeen++;
        return [{ type: 'A', name: q.name, ttl: 60, data: q.name.startsWith('b.') ? '198.18.3.2' : '198.18.3.1' }];
      },
      (q) => (q.name.startsWith('b.') ? 0 : 30_000),
    );
    const heldBefore = await metric('sandbox');
    for (let i = 0; i < FLOOD; i++) {
      const s = createSocket('udp4');
      held.push(s);
      s.on('error', () => {});
      s.bind(0, A, () => s.send(dnsQuery(`a${i}.flood.test`), dns.port, '127.0.0.1'));
    }
    // A's retries reach the TCP side: all it may hold, every place but a share's worth.
    const most = PLACES - tenantShare(PLACES);
    for (let i = 0; i < 100 && tcpSeen < most; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    // B's truncated answer is asked again over TCP at once, answered before dig's 2 s are up.
    const answered = await digFrom(dns.port, B, 'b.truncated.test', 'A', '+short').catch((e: Error) => e.message);
    expect(answered).toBe('198.18.3.2\n');
    expect(tcpSeen).toBe(most + 1);
    expect((await metric('sandbox')) - heldBefore).toBe(FLOOD - most);
  });
});
