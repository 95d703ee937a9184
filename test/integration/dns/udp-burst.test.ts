// Each sandbox may send `dns.limits.burst` queries at once (1000 by default), and every one of them
// is owed an answer. They all wait in the DNS listener's one UDP socket until egressd reads them:
// with the kernel's default receive buffer (net.core.rmem_default, 208 KiB) that socket holds
// ~256 small datagrams, so one sandbox's burst within its limits filled it, and the kernel dropped
// the queries of every other sandbox that came behind it. Here the burst is sent in one turn of
// the event loop the daemon shares, so all of it is queued before egressd reads any: the counts
// say what the socket held, whatever the machine's speed.

import { readFileSync } from 'node:fs';
import { createSocket, type Socket } from 'node:dgram';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import type { LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { DNS_UDP_RECEIVE_BUFFER } from '../../../src/dns/listener.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
const BURST = 1000;

/** Whether an unprivileged socket may have the buffer the listener asks for (the kernel caps it at rmem_max). */
const rmemMax = Number(/^\d+/.exec(readFileSync('/proc/sys/net/core/rmem_max', 'utf8'))?.[0] ?? 0);

describe.skipIf(rmemMax < DNS_UDP_RECEIVE_BUFFER)("one sandbox's burst of UDP queries", () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('cached.allowed.test', { kind: 'answer', a: ['198.18.1.11'], ttl: 300 });
      upstream.set('other.allowed.test', { kind: 'answer', a: ['198.18.1.12'], ttl: 300 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000, limits: { perSecond: 1, burst: BURST } },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
      ],
    }),
  );

  it("is held whole by the listener's socket, and another sandbox's query sent behind it is answered", async () => {
    const a = await bound(A);
    const b = await bound(B);
    try {
      const query = (name: string, id: number): Buffer =>
        packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
      // Cached first, so that no query of the burst waits on the upstream.
      await exchange(a, dns.port, query('cached.allowed.test', 1));
      await exchange(b, dns.port, query('other.allowed.test', 2));
      const before = await allowed(dns.egressd);
      let fromA = 0;
      a.on('message', () => fromA++);
      const fromB = new Promise<Buffer>((resolve) => b.once('message', resolve));
      // One turn: the burst, then B's query, queued behind it before egressd reads a byte.
      for (let i = 0; i < BURST - 1; i++) a.send(query('cached.allowed.test', 10 + i), dns.port, '127.0.0.1');
      b.send(query('other.allowed.test', 7), dns.port, '127.0.0.1');
      const answer = await Promise.race([fromB, new Promise<null>((resolve) => setTimeout(() => resolve(null), 3000))]);
      // Every query of the burst was read and answered (within the sandbox's burst: none refused).
      const deadline = performance.now() + 5000;
      while ((await allowed(dns.egressd)) - before < BURST && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect((await allowed(dns.egressd)) - before).toBe(BURST);
      expect(answer, "sandbox B's query was dropped behind A's burst").not.toBeNull();
      expect(packet.decode(answer!).answers?.map((r) => (r as { data?: unknown }).data)).toEqual(['198.18.1.12']);
      expect(fromA).toBe(BURST - 1);
    } finally {
      a.close();
      b.close();
    }
  });
});

/** A client socket on `from`, with room for every answer of a burst. */
async function bound(from: string): Promise<Socket> {
  const s = createSocket({ type: 'udp4', recvBufferSize: DNS_UDP_RECEIVE_BUFFER });
  await new Promise<void>((resolve) => s.bind(0, from, resolve));
  return s;
}

function exchange(s: Socket, port: number, msg: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    s.once('message', resolve);
    s.send(msg, port, '127.0.0.1');
  });
}

/** Queries of type A the listener answered (every sandbox), from /metrics. */
async function allowed(d: LoopbackDaemon): Promise<number> {
  const m = await (await fetch(`${d.adminUrl}/metrics`)).text();
  return Number(/^egressd_dns_queries_total\{verdict="allow",type="A"\} (\d+)/m.exec(m)?.[1] ?? 0);
}
