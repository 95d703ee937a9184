// A TTL with its most significant bit set is to be treated "as if the entire value received was
// zero" (RFC 2181 §8). dns-packet reads TTLs unsigned, so such a record would otherwise read as
// some 68 years, clamped to egressd's longest (300 s): kept and handed on for five minutes where
// its publisher, by the RFC's reading, asked for none. The upstream is a real UDP DNS server on
// loopback answering with the TTL as written; dig asks the daemon's listener.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import * as packet from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';

const A = '127.0.0.2';

async function startUpstream(ttl: number): Promise<{ server: string; asked: string[]; close: () => Promise<void> }> {
  const sock: UdpSocket = createSocket('udp4');
  const asked: string[] = [];
  sock.on('message', (msg, rinfo) => {
    let q: packet.DecodedPacket;
    try {
      q = packet.decode(msg);
    } catch {
      return;
    }
    const question = q.questions?.[0];
    if (!question) return;
    asked.push(`${question.name} ${question.type}`);
    const answers: packet.Answer[] = question.type === 'A' ? [{ name: question.name, type: 'A', ttl, data: '198.18.1.50' }] : [];
    sock.send(
      packet.encode({ type: 'response', id: q.id, flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE, questions: [question], answers }),
      rinfo.port,
      rinfo.address,
    );
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  return { server: `127.0.0.1:${sock.address().port}`, asked, close: () => new Promise<void>((resolve) => sock.close(() => resolve())) };
}

describe.skipIf(!haveDig)('a TTL with its top bit set (RFC 2181 §8)', () => {
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let d: LoopbackDaemon;

  beforeAll(async () => {
    upstream = await startUpstream(0x80000000);
    d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [upstream.server], timeoutMs: 1000 },
        sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } }],
      }),
    );
  });
  afterAll(async () => {
    await d?.stop();
    await upstream?.close();
  });

  it('is answered as 0 and not kept: the next query asks the upstream again', async () => {
    const dig = (): Promise<string> => digFrom(d.daemon.dnsListeners[0]!.port!, A, 'top.allowed.test', 'A', '+noall', '+answer');
    expect(await dig()).toMatch(/^top\.allowed\.test\.\s+0\s+IN\s+A\s+198\.18\.1\.50$/m);
    expect(await dig()).toMatch(/\s0\s+IN\s+A\s+198\.18\.1\.50/);
    expect(upstream.asked.filter((q) => q === 'top.allowed.test A')).toHaveLength(2);
  });
});
