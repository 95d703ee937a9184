// Malformed DNS over TCP (RFC 7766 §8: two length octets, then the message): a zero-length
// message and a length past the largest query egressd reads are each counted as malformed in
// egressd_dns_queries_total, as the same bytes over UDP are; the first leaves the connection
// serving, the second closes it, and the listener answers everyone else meanwhile.

import { connect } from 'node:net';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { MAX_QUERY_BYTES } from '../../../src/dns/message.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';

describe.skipIf(!haveDig)('malformed DNS messages over TCP', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('allowed.test', { kind: 'answer', a: ['198.18.1.10'], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } },
      ],
    }),
  );

  const malformed = async (): Promise<number> => {
    const m = await (await fetch(`${dns.egressd.adminUrl}/metrics`)).text();
    let n = 0;
    for (const [, v] of m.matchAll(/egressd_dns_queries_total\{verdict="malformed",type="[^"]+"\} (\d+)/g)) n += Number(v);
    return n;
  };

  /** Writes `bytes` on a new connection from A; what came back, once the connection closed or `untilAnswers` answers came. */
  const exchange = (bytes: Buffer, untilAnswers: number): Promise<{ answers: packet.DecodedPacket[]; closedByServer: boolean }> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.port, localAddress: A });
      let buf = Buffer.alloc(0);
      const answers: packet.DecodedPacket[] = [];
      const timer = setTimeout(() => s.destroy(), 5000);
      s.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          answers.push(packet.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))));
          buf = buf.subarray(2 + buf.readUInt16BE(0));
        }
        if (answers.length >= untilAnswers && untilAnswers > 0) {
          clearTimeout(timer);
          s.destroy();
          resolve({ answers, closedByServer: false });
        }
      });
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(timer);
        resolve({ answers, closedByServer: untilAnswers === 0 || answers.length < untilAnswers });
      });
      s.write(bytes);
    });

  it('counts a zero-length message and keeps answering on the connection', async () => {
    const before = await malformed();
    const query = packet.streamEncode({ type: 'query', id: 5, flags: packet.RECURSION_DESIRED, questions: [{ name: 'allowed.test', type: 'A' }] });
    const r = await exchange(Buffer.concat([Buffer.from([0, 0]), query]), 1);
    expect(r.answers.map((a) => a.id)).toEqual([5]);
    expect(await malformed()).toBe(before + 1);
  });

  it('counts a message longer than the largest query and closes the connection, while another sandbox resolves', async () => {
    const before = await malformed();
    const head = Buffer.alloc(2 + 512);
    head.writeUInt16BE(65_535, 0);
    expect(65_535).toBeGreaterThan(MAX_QUERY_BYTES);
    const r = await exchange(head, 0);
    expect(r.closedByServer).toBe(true);
    expect(r.answers).toEqual([]);
    expect(await malformed()).toBe(before + 1);
    expect(await digFrom(dns.port, B, '+tcp', 'allowed.test', 'A', '+short')).toBe('198.18.1.10\n');
  });
});
