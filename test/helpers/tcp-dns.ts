// The TCP side of a test's DNS server (test/helpers/dns-server.ts, started with `tcp: true`), for
// answers that come back truncated over UDP and are asked again over TCP (RFC 7766 §5).

import type { Socket } from 'node:net';
import * as packet from 'dns-packet';
import type { DnsTestServer } from './dns-server.ts';

/**
 * The DNS-over-TCP side of `dns` (started with `tcp: true`; RFC 7766: two-octet length, then the
 * message), for a test's truncated answers: each query is answered with `answers(question)` after
 * `delayMs` (per question when a function; `answered` told when it is).
 */
export function tcpDns(
  dns: DnsTestServer,
  answers: (question: packet.Question) => packet.Answer[],
  delayMs: number | ((question: packet.Question) => number) = 0,
  answered: () => void = () => {},
): void {
  dns.onTcpConnection = (s: Socket) => {
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
  };
}

/**
 * The DNS-over-TCP side of `dns` for a query retried twice over TCP: the first connection's query
 * is answered with `answers(question)` once a second connection has sent its own, and the second's
 * never (it stays open until the client closes it). `connections`: how many came;
 * `allClosed()`: resolves once the client has closed every one.
 */
export function secondHoldsFirst(
  dns: DnsTestServer,
  answers: (question: packet.Question) => packet.Answer[],
): { readonly connections: number; allClosed(): Promise<void> } {
  const asked: { s: Socket; q: packet.DecodedPacket }[] = [];
  let open = 0;
  let connections = 0;
  let onAllClosed: (() => void) | null = null;
  dns.onTcpConnection = (s: Socket) => {
    connections++;
    open++;
    s.on('error', () => {});
    s.once('close', () => {
      if (--open === 0) onAllClosed?.();
    });
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
      asked.push({ s, q: packet.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))) });
      if (asked.length !== 2) return;
      const { s: first, q } = asked[0]!;
      first.end(
        packet.streamEncode({
          type: 'response',
          id: q.id,
          flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
          questions: q.questions,
          answers: answers(q.questions![0]!),
        }),
      );
    });
  };
  return {
    get connections() {
      return connections;
    },
    allClosed: () => new Promise<void>((resolve) => (open === 0 ? resolve() : (onAllClosed = resolve))),
  };
}

/** A recursive query for `name`'s A records, as a stub resolver sends it (random id). */
export function dnsQuery(name: string): Buffer {
  return packet.encode({ type: 'query', id: 1 + Math.floor(Math.random() * 60_000), flags: packet.RECURSION_DESIRED, questions: [{ name, type: 'A' }] });
}

/**
 * Asks `name` on the DNS-over-TCP connection `s` (RFC 7766 §8: two-octet length, then the
 * message) and reads one answer: its rcode, or `closed without an answer` when the connection
 * closes first. Rejects when neither comes within `timeoutMs`.
 */
export function askOverTcp(s: Socket, name: string, timeoutMs = 5000): Promise<{ rcode: string | undefined }> {
  const msg = dnsQuery(name);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(msg.length);
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error(`no framed answer within ${timeoutMs} ms`)), timeoutMs);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= buf.readUInt16BE(0) + 2) done('answer');
    };
    const onClose = (): void => done('closed');
    const done = (how: 'answer' | 'closed' | Error): void => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      if (how instanceof Error) reject(how);
      else if (how === 'closed') resolve({ rcode: 'closed without an answer' });
      else resolve({ rcode: (packet.decode(buf.subarray(2, buf.readUInt16BE(0) + 2)) as { rcode?: string }).rcode });
    };
    s.on('data', onData);
    s.once('close', onClose);
    s.write(Buffer.concat([len, msg]));
  });
}
