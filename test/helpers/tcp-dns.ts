// The TCP side of a test's DNS server (test/helpers/dns-server.ts is UDP only), for answers that
// come back truncated over UDP and are asked again over TCP (RFC 7766 §5).

import { createServer, type Socket } from 'node:net';
import * as packet from 'dns-packet';
import { onTestFinished } from 'vitest';

/**
 * A DNS-over-TCP side on 127.0.0.1:`port` (RFC 7766: two-octet length, then the message), beside
 * a DnsTestServer's UDP one, for a test's truncated answers: each query is answered with
 * `answers(question)` after `delayMs` (per question when a function; `answered` told when it is).
 * Closed when the test finishes.
 */
export async function tcpDns(
  port: number,
  answers: (question: packet.Question) => packet.Answer[],
  delayMs: number | ((question: packet.Question) => number) = 0,
  answered: () => void = () => {},
): Promise<void> {
  const tcp = createServer((s: Socket) => {
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
      const q = packet.decode(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      const question = q.questions![0]!;
      const reply = packet.streamEncode({
        type: 'response',
        id: q.id,
        flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
        questions: q.questions,
        answers: answers(question),
      });
      setTimeout(
        () => {
          answered();
          if (!s.destroyed) s.end(reply);
        },
        typeof delayMs === 'function' ? delayMs(question) : delayMs,
      ).unref();
    });
  });
  await new Promise<void>((r) => tcp.listen(port, '127.0.0.1', r));
  onTestFinished(() => void tcp.close());
}
