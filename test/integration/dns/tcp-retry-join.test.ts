// A query that joins another sandbox's pending upstream query (the same name and type asked while
// one is on its way: dns/service.ts #fetch) must not wait on that sandbox's share of the places
// for retries over TCP (net/query-sockets.ts tcpSlot), through the whole daemon on loopback.
// Sandbox A fills every place it may with truncated answers the upstream's TCP side holds long
// past every deadline, then asks a name whose answer comes back truncated too: its retry waits.
// B then asks the same name and joins A's query. Alone, B would take a place at once (it holds
// none); joined, its answer must come as soon.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { afterAll, describe, expect, it } from 'vitest';
import { tenantShare } from '../../../src/net/query-sockets.ts';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { dnsQuery, tcpDns } from '../../helpers/tcp-dns.ts';

const A = '127.0.0.63';
const B = '127.0.0.64';
/** A's queries: more than the daemon's places (8 with the default reserve of 64 descriptors). */
const FLOOD = 12;
const PLACES = 8;
const SHARED = 'shared.join.test';

describe.skipIf(!haveDig)('a query joining another sandbox’s query that is retried over TCP', () => {
  const held: UdpSocket[] = [];

  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start('127.0.0.1', 0, { tcp: true });
      for (let i = 0; i < FLOOD; i++) upstream.set(`a${i}.flood.test`, { kind: 'answer', a: ['198.18.3.1'], ttl: 60, truncate: true });
      upstream.set(SHARED, { kind: 'answer', a: ['198.18.3.3'], ttl: 60, truncate: true });
      return upstream;
    },
    (upstream) => ({
      // Far longer than the test: A's retries wait for a place until then, and the forwarder's
      // second attempt (at half of it) brings no second truncated answer meanwhile.
      dns: { servers: [upstream.server], timeoutMs: 20_000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.flood.test', SHARED] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: [SHARED] } } },
      ],
    }),
  );
  afterAll(async () => {
    for (const s of held) s.close();
  });

  const metric = async (name: string, labels = ''): Promise<number> => {
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    const l = labels === '' ? '' : `\\{${labels}\\}`;
    return Number(new RegExp(`^${name}${l} (\\d+)$`, 'm').exec(m)?.[1] ?? 0);
  };
  const heldBack = (): Promise<number> => metric('egressd_dns_tcp_retries_held_back_total', 'scope="sandbox"');

  const sendFromA = (name: string): void => {
    const s = createSocket('udp4');
    held.push(s);
    s.on('error', () => {});
    s.bind(0, A, () => s.send(dnsQuery(name), dns.port, '127.0.0.1'));
  };
  const waitFor = async (what: () => Promise<boolean>): Promise<void> => {
    for (let i = 0; i < 500 && !(await what()); i++) await new Promise((r) => setTimeout(r, 20));
    expect(await what()).toBe(true);
  };

  it('answers the joining sandbox as soon as it would be answered alone, its own share charged', async () => {
    // The TCP side: A's flood is answered long after every deadline, the shared name at once.
    const seen: string[] = [];
    tcpDns(
      dns.upstream,
      (q) => {
        seen.push(q.name);
        return [{ type: 'A', name: q.name, ttl: 60, data: q.name === SHARED ? '198.18.3.3' : '198.18.3.1' }];
      },
      (q) => (q.name === SHARED ? 0 : 30_000),
    );
    const before = await heldBack();
    for (let i = 0; i < FLOOD; i++) sendFromA(`a${i}.flood.test`);
    const most = PLACES - tenantShare(PLACES);
    await waitFor(async () => seen.length >= most && (await heldBack()) - before >= FLOOD - most);
    // A's own query of the shared name: its retry waits behind A's share like the rest.
    sendFromA(SHARED);
    await waitFor(async () => (await heldBack()) - before >= FLOOD - most + 1);
    expect(seen).not.toContain(SHARED);
    const joinedBefore = await metric('egressd_dns_tcp_retries_joined_total');
    // B asks the same name while A's query of it is pending: it joins it, and its share pays.
    const answered = await digFrom(dns.port, B, SHARED, 'A', '+short').catch((e: Error) => e.message);
    expect(answered).toBe('198.18.3.3\n');
    expect(seen.filter((n) => n === SHARED)).toHaveLength(1);
    expect((await metric('egressd_dns_tcp_retries_joined_total')) - joinedBefore).toBe(1);
  });
});
