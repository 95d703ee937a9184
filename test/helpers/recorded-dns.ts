// An upstream DNS server for tests that serves answer sections as recorded: CNAME and DNAME
// chains, records of other owners, TTLs as written, flags a validating resolver sets, and the
// authority and additional sections beside them (NS, SOA, glue). It is a
// real UDP socket on loopback (or a rig address); replies are encoded by dns-packet, the library
// egressd reads them with, unless a test hands back raw bytes on purpose (a malformed reply).
// For answers chosen per name by kind (addresses, NXDOMAIN, silence, delays, TCP), see
// test/helpers/dns-server.ts instead.

import { createSocket, type RemoteInfo } from 'node:dgram';
import { isIPv6 } from 'node:net';
import * as packet from 'dns-packet';
import type { Answer, Question } from 'dns-packet';
import { RCODE, type RcodeName } from '../../src/dns/message.ts';

/** One query as it arrived: its question as asked, and its header flags (RFC 1035 §4.1.1). */
export interface RecordedQuery {
  /** The query's id, for a reply written as raw bytes. */
  readonly id: number;
  readonly question: Question;
  /** The question's name lowercased, for looking up a table. */
  readonly name: string;
  readonly type: string;
  readonly flags: number;
}

/**
 * What to send back for a query: an answer section (and authority and additional sections) with
 * an rcode (NOERROR by default) and extra header flags OR-ed into RD|RA (e.g. CD echoed); a
 * Buffer sent as it is; or null for no reply at all.
 */
export type RecordedReply =
  | {
      readonly answers?: readonly Answer[];
      readonly authorities?: readonly Answer[];
      readonly additionals?: readonly Answer[];
      readonly rcode?: RcodeName;
      readonly flags?: number;
    }
  | Buffer
  | null;

/**
 * A function from query to reply, or a table from lowercase question name to its answer
 * section, served whatever the type asked (NXDOMAIN for a name not in it).
 */
export type Recording = ((query: RecordedQuery) => RecordedReply) | Readonly<Record<string, readonly Answer[]>>;

export interface RecordedDns {
  /** `host:port` (`[host]:port` for IPv6), as `dns.servers` takes it. */
  readonly server: string;
  /** Every query answered or not, as `name type` (name lowercased), in arrival order. */
  readonly asked: string[];
  close(): Promise<void>;
}

/** Answers each query with `recording`'s reply for it; starts on `host`, on an ephemeral port. */
export async function startRecordedDns(recording: Recording, host = '127.0.0.1'): Promise<RecordedDns> {
  const reply = typeof recording === 'function' ? recording : fromTable(recording);
  const sock = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
  const asked: string[] = [];
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    let q: packet.DecodedPacket;
    try {
      q = packet.decode(msg);
    } catch {
      return;
    }
    const question = q.questions?.[0];
    if (!question) return;
    const query: RecordedQuery = { id: q.id ?? 0, question, name: question.name.toLowerCase(), type: question.type, flags: msg.readUInt16BE(2) };
    asked.push(`${query.name} ${query.type}`);
    const r = reply(query);
    if (r === null) return;
    const bytes = Buffer.isBuffer(r)
      ? r
      : packet.encode({
          type: 'response',
          id: q.id,
          // RFC 1035 §4.1.1: the rcode is the header's low four bits.
          flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE | (r.flags ?? 0) | RCODE[r.rcode ?? 'NOERROR'],
          questions: [question],
          answers: [...(r.answers ?? [])],
          authorities: [...(r.authorities ?? [])],
          additionals: [...(r.additionals ?? [])],
        });
    sock.send(bytes, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, host, resolve));
  const port = sock.address().port;
  return {
    server: isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`,
    asked,
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}

function fromTable(table: Readonly<Record<string, readonly Answer[]>>): (query: RecordedQuery) => RecordedReply {
  return ({ name }) => {
    const answers = table[name];
    return answers ? { answers } : { rcode: 'NXDOMAIN' };
  };
}
