// A DNS-over-TCP client that sends queries and reads none of the answers must not make egressd
// buffer answers without bound (RFC 7766 §6.2.1.1 lets a client pipeline queries; nothing lets
// it make the server hold what it will not take). Through the whole daemon on loopback: one
// connection pipelines QUERIES queries for a large cached answer, far more answer bytes than the
// kernel's buffers hold, and reads nothing; egressd must stop reading its queries once its answers
// back up, and answer every one once the client reads.

import { connect } from 'node:net';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';

const A = '127.0.0.81';
/** Records in the answer: 16 bytes each, about 24 KB an answer. */
const RECORDS = 1500;
/** About 24 MB of answers: several times what loopback's socket buffers take (a few MB each way). */
const QUERIES = 1000;

describe('DNS over TCP to a client that reads nothing', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      const a = Array.from({ length: RECORDS }, (_, i) => `198.18.${Math.floor(i / 250)}.${(i % 250) + 1}`);
      upstream.set('big.test', { kind: 'answer', a, ttl: 300 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], limits: { perSecond: 100_000, burst: 100_000 } },
      sandboxes: [{ id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['big.test'] } } }],
    }),
  );

  const allowed = async (): Promise<number> => {
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    return Number(/^egressd_dns_queries_total\{verdict="allow",type="A"\} (\d+)$/m.exec(m)?.[1] ?? 0);
  };

  it('stops reading its queries while its answers wait, and answers them all once it reads', async () => {
    const before = await allowed();
    const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: A });
    s.on('error', () => {});
    try {
      await new Promise<void>((r) => s.once('connect', () => r()));
      s.pause();
      const queries = Array.from({ length: QUERIES }, (_, i) =>
        packet.streamEncode({ type: 'query', id: i + 1, flags: packet.RECURSION_DESIRED, questions: [{ name: 'big.test', type: 'A' }] }),
      );
      s.write(Buffer.concat(queries));
      // Until the count has stood still a while: egressd answers what it reads at once (cached).
      let last = -1;
      for (let still = 0, i = 0; still < 5 && i < 200; i++) {
        await new Promise((r) => setTimeout(r, 200));
        const n = await allowed();
        still = n === last ? still + 1 : 0;
        last = n;
      }
      const answeredUnread = last - before;
      expect(answeredUnread).toBeGreaterThan(0);
      // Several times over what the buffers hold: egressd stopped well short of all of them.
      expect(answeredUnread).toBeLessThan(QUERIES / 2);
      // The client reads: every query is answered, none lost.
      let buf = Buffer.alloc(0);
      let frames = 0;
      const all = new Promise<void>((resolve, reject) => {
        s.on('data', (chunk: Buffer) => {
          buf = Buffer.concat([buf, chunk]);
          while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
            buf = buf.subarray(2 + buf.readUInt16BE(0));
            if (++frames === QUERIES) resolve();
          }
        });
        s.once('close', () => reject(new Error(`closed after ${frames} answers`)));
      });
      s.resume();
      await all;
      expect((await allowed()) - before).toBe(QUERIES);
    } finally {
      s.destroy();
    }
  });
});
