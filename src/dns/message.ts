// DNS messages as the listener reads and writes them. Decoding and encoding are dns-packet's
// (RFC 1035 §4 wire format); what is ours is the checks a query must pass before it is judged,
// the answers built for it, and truncation to the size the client can take.
//
// Every function here is pure: bytes in, a closed result out.

import * as packet from 'dns-packet';
import type { Answer, Packet, Question } from 'dns-packet';

/** RFC 1035 §4.1.1 RCODEs (and RFC 6891 §6.1.3's extended BADVERS, 16). */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, BADVERS: 16 } as const;
export type RcodeName = keyof typeof RCODE;

/** RFC 1035 §4.2.1: a UDP message without EDNS(0) is at most 512 octets. */
export const CLASSIC_UDP_SIZE = 512;
/**
 * The EDNS(0) payload size egressd advertises and the most it sends over UDP: 1232 octets fit
 * an IPv6 minimum MTU without fragmentation (the DNS Flag Day 2020 value).
 */
export const EDNS_UDP_SIZE = 1232;
/** The largest query accepted: a question plus OPT with cookies or padding fits easily. */
export const MAX_QUERY_BYTES = 4096;

const FLAG_QR = 0x8000;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;
const FLAG_AD = 0x0020;
const FLAG_CD = 0x0010;
const FLAG_TC = 0x0200;
const OPCODE_MASK = 0x7800;

/** The meta query types a forwarder does not serve (RFC 1035 §3.2.3, RFC 1995, RFC 5936). */
const UNSERVED_TYPES = new Set(['AXFR', 'IXFR', 'MAILA', 'MAILB']);

export interface Query {
  readonly id: number;
  /** The question exactly as the client asked it (its case, for the echo RFC 1035 §7.3 expects). */
  readonly question: Question;
  /** Lowercase, no trailing dot. */
  readonly name: string;
  readonly type: string;
  readonly recursionDesired: boolean;
  readonly checkingDisabled: boolean;
  /** The client's EDNS(0) record, or null when it sent none. */
  readonly edns: { readonly udpSize: number; readonly dnssecOk: boolean } | null;
}

export type ParsedQuery =
  | { kind: 'query'; query: Query }
  /** An answer is owed, with this rcode; `question` is echoed when it could be read. */
  | { kind: 'error'; id: number; flags: number; rcode: RcodeName; question: Question | null; edns: boolean; why: string }
  /** Not a query at all (too short, or a response): dropped without a word, as RFC 1035 §7.3 lets. */
  | { kind: 'drop'; why: string };

/**
 * What to keep of a message answered later (a query that comes while egressd starts): parseQuery
 * answers one past MAX_QUERY_BYTES from its header and length alone, so only those are kept, a
 * copy, not the datagram's up to 65,507 bytes (the start's 1,024 places held ~64 MiB so).
 */
export function heldQuery(msg: Buffer): { readonly bytes: Buffer; readonly length: number } {
  if (msg.length <= MAX_QUERY_BYTES) return { bytes: msg, length: msg.length };
  const header = Buffer.alloc(12);
  msg.copy(header, 0, 0, 12);
  return { bytes: header, length: msg.length };
}

/**
 * Reads one query. The name judged is the name on the wire: a label holding a dot or a byte
 * outside ASCII, or a compression pointer in the question, cannot be read back to the same
 * bytes and is answered FORMERR rather than guessed at. `length`: the message's length when
 * `buf` holds only its header (heldQuery); past MAX_QUERY_BYTES nothing beyond the header is read.
 */
export function parseQuery(buf: Buffer, length = buf.length): ParsedQuery {
  if (buf.length < 12) return { kind: 'drop', why: `message of ${buf.length} bytes is shorter than a header` };
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  if ((flags & FLAG_QR) !== 0) return { kind: 'drop', why: 'a response, not a query' };
  const err = (rcode: RcodeName, why: string, question: Question | null = null, edns = false): ParsedQuery => ({
    kind: 'error',
    id,
    flags,
    rcode,
    question,
    edns,
    why,
  });
  if (length > MAX_QUERY_BYTES) return err('FORMERR', `query of ${length} bytes is larger than ${MAX_QUERY_BYTES}`);
  // RFC 1035 §4.1.1: only QUERY (0) is served; NOTIFY, UPDATE and the rest are not implemented.
  if ((flags & OPCODE_MASK) !== 0) return err('NOTIMP', `opcode ${(flags & OPCODE_MASK) >> 11} is not QUERY`);
  const qdcount = buf.readUInt16BE(4);
  // RFC 9619: a query carries exactly one question.
  if (qdcount !== 1) return err('FORMERR', `${qdcount} questions, expected 1`);
  if (buf.readUInt16BE(6) !== 0 || buf.readUInt16BE(8) !== 0) return err('FORMERR', 'a query with answer or authority records');
  let p: Packet;
  try {
    p = packet.decode(buf);
  } catch (e) {
    return err('FORMERR', `undecodable: ${(e as Error).message}`);
  }
  const q = p.questions?.[0];
  if (!q) return err('FORMERR', 'no question');
  const opts = (p.additionals ?? []).filter((a) => a.type === 'OPT');
  // RFC 6891 §6.1.1: more than one OPT record is a format error.
  if (opts.length > 1) return err('FORMERR', 'more than one OPT record', q);
  const opt = opts[0] as (Answer & { udpPayloadSize?: number; ednsVersion?: number; flags?: number }) | undefined;
  if (opt && opt.name !== '.') return err('FORMERR', 'OPT record not owned by the root', q);
  const edns = opt ? { udpSize: opt.udpPayloadSize ?? CLASSIC_UDP_SIZE, dnssecOk: ((opt.flags ?? 0) & packet.DNSSEC_OK) !== 0 } : null;
  // RFC 6891 §6.1.3: an EDNS version above 0 is answered BADVERS.
  if (opt && (opt.ednsVersion ?? 0) > 0) return err('BADVERS', `EDNS version ${opt.ednsVersion}`, q, true);
  if (!sameWireName(buf, q.name)) return err('FORMERR', 'a question name that does not read back to its own bytes', q, edns !== null);
  if (q.class !== 'IN') return err('NOTIMP', `class ${q.class}`, q, edns !== null);
  if (q.type === 'OPT') return err('FORMERR', 'OPT as a question type', q, edns !== null);
  if (UNSERVED_TYPES.has(q.type)) return err('NOTIMP', `query type ${q.type}`, q, edns !== null);
  const name = q.name.toLowerCase().replace(/\.$/, '');
  return {
    kind: 'query',
    query: {
      id,
      question: q,
      name,
      type: q.type,
      recursionDesired: (flags & FLAG_RD) !== 0,
      checkingDisabled: (flags & FLAG_CD) !== 0,
      edns,
    },
  };
}

/** Whether the question's name, encoded again, is the bytes the client sent (ASCII case aside). */
function sameWireName(buf: Buffer, name: string): boolean {
  let again: Buffer;
  try {
    again = wireName.encode(name);
  } catch {
    return false;
  }
  if (12 + again.length > buf.length) return false;
  for (let i = 0; i < again.length; i++) {
    const a = again[i]!;
    const b = buf[12 + i]!;
    if (a !== b && lower(a) !== lower(b)) return false;
    if (b > 0x7f) return false;
  }
  return true;
}

// dns-packet exports its name codec, which its type definitions leave out.
const wireName = (packet as unknown as { name: { encode(n: string): Buffer; decode(b: Buffer): string } }).name;

const lower = (c: number): number => (c >= 0x41 && c <= 0x5a ? c + 0x20 : c);

/** The most a response to this query may be over UDP (RFC 6891 §6.2.5; at least 512). */
export function udpLimit(q: Pick<Query, 'edns'>): number {
  if (q.edns === null) return CLASSIC_UDP_SIZE;
  return Math.min(EDNS_UDP_SIZE, Math.max(CLASSIC_UDP_SIZE, q.edns.udpSize));
}

function optRecord(): Answer {
  return { type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, flags: 0, options: [] } as unknown as Answer;
}

function baseFlags(q: { recursionDesired: boolean; checkingDisabled: boolean }): number {
  return (q.recursionDesired ? FLAG_RD : 0) | FLAG_RA | (q.checkingDisabled ? FLAG_CD : 0);
}

/** A response with only a code: refusals, limits and errors. */
export function errorResponse(id: number, clientFlags: number, rcode: RcodeName, question: Question | null, edns: boolean): Buffer {
  const code = RCODE[rcode];
  const p: Packet = {
    type: 'response',
    id,
    flags: (clientFlags & (FLAG_RD | FLAG_CD)) | FLAG_RA | (code & 0xf),
    questions: question ? [question] : [],
    answers: [],
    authorities: [],
    additionals: edns ? [withExtendedRcode(optRecord(), code >> 4)] : [],
  };
  return packet.encode(p);
}

function withExtendedRcode(opt: Answer, extended: number): Answer {
  return { ...opt, extendedRcode: extended } as unknown as Answer;
}

export function refusalResponse(q: Query, rcode: 'NXDOMAIN' | 'REFUSED' | 'SERVFAIL'): Buffer {
  return errorResponse(q.id, baseFlags(q), rcode, q.question, q.edns !== null);
}

/**
 * REFUSED for any message, judged no further (a limit was reached before it could be): the
 * question echoed when it can be read; null for what is no query at all (RFC 1035 §7.3 silence).
 */
export function refusedFor(buf: Buffer): Buffer | null {
  const p = parseQuery(buf);
  if (p.kind === 'drop') return null;
  return p.kind === 'query' ? refusalResponse(p.query, 'REFUSED') : errorResponse(p.id, p.flags, 'REFUSED', p.question, p.edns);
}

/** What an upstream said, kept in the cache and turned into one response per client. */
export interface Answered {
  readonly rcode: number;
  readonly authenticData: boolean;
  readonly answers: readonly Answer[];
  readonly authorities: readonly Answer[];
  /** Additional records other than OPT (glue); OPT is hop-by-hop (RFC 6891 §6.1.1). */
  readonly additionals: readonly Answer[];
}

/**
 * The response to `q` from `a`, each TTL lowered by `ageS` seconds. Over UDP, a response larger
 * than `limit` is sent with TC set and no records (RFC 2181 §9; the client retries over TCP, RFC
 * 7766 §5); over TCP, `limit` is 65535.
 */
export function answerResponse(q: Query, a: Answered, ageS: number, limit: number): Buffer {
  const age = (r: Answer): Answer => ('ttl' in r && typeof r.ttl === 'number' ? ({ ...r, ttl: Math.max(0, r.ttl - ageS) } as Answer) : r);
  // RFC 6840 §5.8: AD only to a client that showed it understands it.
  const ad = a.authenticData && q.edns?.dnssecOk === true ? FLAG_AD : 0;
  const p: Packet = {
    type: 'response',
    id: q.id,
    flags: baseFlags(q) | ad | (a.rcode & 0xf),
    questions: [q.question],
    answers: a.answers.map(age),
    authorities: a.authorities.map(age),
    additionals: [...a.additionals.map(age), ...(q.edns ? [optRecord()] : [])],
  };
  // dns-packet writes every name whole: an answer the upstream fitted in the client's size with
  // its repeated names compressed would come back truncated. Compressed only when too long, as
  // most answers are not: a small answer costs nothing more.
  const whole = packet.encode(p);
  const full = whole.length <= limit ? whole : compressOwners(whole, limit);
  if (full !== null) return full;
  const truncated: Packet = { ...p, flags: (p.flags ?? 0) | FLAG_TC, answers: [], authorities: [], additionals: q.edns ? [optRecord()] : [] };
  return packet.encode(truncated);
}

/** The query egressd sends upstream for `q`: a fresh id, RD, EDNS(0) with DO when the client set it. */
export function upstreamQuery(id: number, name: string, type: string, dnssecOk: boolean, checkingDisabled: boolean): Buffer {
  return packet.encode({
    type: 'query',
    id,
    flags: FLAG_RD | (checkingDisabled ? FLAG_CD : 0),
    questions: [{ name, type: type as Question['type'], class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_SIZE, flags: dnssecOk ? packet.DNSSEC_OK : 0, options: [] } as unknown as Answer],
  });
}

export type UpstreamReply = { kind: 'answer'; answered: Answered; truncated: boolean } | { kind: 'mismatch'; why: string } | { kind: 'malformed'; why: string };

/**
 * Reads an upstream's response to the query with this id, name and type. A response whose id
 * or question differs is not an answer to it (RFC 5452 §9.1) and is ignored by the caller.
 */
export function parseUpstreamReply(buf: Buffer, id: number, name: string, type: string): UpstreamReply {
  if (buf.length < 12) return { kind: 'malformed', why: 'shorter than a header' };
  if (buf.readUInt16BE(0) !== id) return { kind: 'mismatch', why: 'another id' };
  let p: Packet;
  try {
    p = packet.decode(buf);
  } catch (e) {
    return { kind: 'malformed', why: (e as Error).message };
  }
  if (p.type !== 'response') return { kind: 'mismatch', why: 'not a response' };
  const q = p.questions?.[0];
  if (!q || (p.questions?.length ?? 0) !== 1 || q.name.toLowerCase().replace(/\.$/, '') !== name || q.type !== type) {
    return { kind: 'mismatch', why: 'another question' };
  }
  const flags = buf.readUInt16BE(2);
  const opt = (p.additionals ?? []).find((r) => r.type === 'OPT') as { extendedRcode?: number } | undefined;
  const rcode = (flags & 0xf) | ((opt?.extendedRcode ?? 0) << 4);
  const truncated = (flags & FLAG_TC) !== 0;
  const answered: Answered = {
    rcode,
    authenticData: (flags & FLAG_AD) !== 0,
    answers: p.answers ?? [],
    authorities: p.authorities ?? [],
    additionals: (p.additionals ?? []).filter((r) => r.type !== 'OPT'),
  };
  // A truncated answer's records are not used: it is asked again over TCP.
  if (!truncated) {
    const why = notWrittenAsRead(answered);
    if (why !== null) return { kind: 'malformed', why };
  }
  return { kind: 'answer', truncated, answered };
}

/**
 * Why the records, written again as egressd writes its answers (dns-packet's encoder, then
 * compressOwners), would not read back as egressd read them, or null. Names are decoded to text
 * and written again from it: a label holding a dot (`a.` then `b` reads as `a..b`, which is
 * written back as `a`, an empty label that ends the name, then bytes a client takes for the
 * record's type, class and length), a line break before a dot (dns-packet strips a dot at a line's
 * start or end), or bytes that are not UTF-8 (three octets each once written: a label past 63, a
 * name past 255) would each reach the client as another record than the one judged and
 * remembered, and the misread name would take compressOwners' walk outside the message. Refused,
 * as a question whose name does not read back is (parseQuery). Each owner name, and the name a
 * CNAME, DNAME, NS or PTR record holds, is checked once however often it repeats: writing and
 * reading the whole message again tripled the cost of reading a large answer (1,900 A records:
 * 1.2 ms to 6.5, measured).
 */
function notWrittenAsRead(a: Answered): string | null {
  const checked = new Set<string>();
  const check = (name: string): string | null => {
    if (checked.has(name)) return null;
    checked.add(name);
    let again: string;
    try {
      again = wireName.decode(wireName.encode(name));
    } catch (e) {
      return `a name that does not read back once written again: ${JSON.stringify(name)} (${(e as Error).message})`;
    }
    return again === name ? null : `a name that does not read back once written again: ${JSON.stringify(name)} is written as ${JSON.stringify(again)}`;
  };
  for (const rs of [a.answers, a.authorities, a.additionals]) {
    for (const r of rs) {
      const data = (r as { data?: unknown }).data;
      const why = check(r.name) ?? (NAME_DATA_TYPES.has(r.type) && typeof data === 'string' ? check(data) : null);
      if (why !== null) return why;
    }
  }
  return null;
}

/** The types of NAME_RDATA, by dns-packet's names for them. */
const NAME_DATA_TYPES = new Set(['CNAME', 'NS', 'PTR', 'DNAME']);

/** Types whose RDATA is one name and nothing else: CNAME, NS, PTR (RFC 1035 §3.3), DNAME (RFC 6672 §2.1). */
const NAME_RDATA = new Set([5, 2, 12, 39]);
/** A compression pointer holds 14 bits of offset (RFC 1035 §4.1.4). */
const MAX_POINTER = 0x3fff;

/**
 * `msg` as dns-packet encodes it (every name written whole) with each record's owner name
 * compressed (RFC 1035 §4.1.4): its longest suffix already written, in the question, an earlier
 * owner or the name a CNAME, NS, PTR or DNAME record holds, becomes a pointer to it. Suffixes
 * match byte for byte, so a question asked in mixed case (RFC 5452 §9 0x20) keeps its own bytes
 * and lends them to no owner written in other case. RDATA is copied as it is: the names in it
 * stay whole. The records and their order are unchanged; the message is never longer.
 * `msg` must be dns-packet's output, uncompressed and well formed; anything else throws.
 *
 * Null once what is written passes `limit`: the rest would be written only to be truncated, and
 * an answer's names can be long (a 64 KiB answer of 240 owners of 120 labels each took 4 to 5 ms
 * of the event loop, every query over UDP; 2.3 ms stopped at 1232 octets, as long as over TCP,
 * most of it dns-packet's first writing).
 */
export function compressOwners(msg: Buffer, limit = Infinity): Buffer | null {
  const out = Buffer.allocUnsafe(msg.length);
  msg.copy(out, 0, 0, 12);
  let r = 12;
  let w = 12;
  /** Each suffix written so far, as its wire bytes (latin1, no root octet), and where it starts in `out`. */
  const seen = new Map<string, number>();
  /** The uncompressed name at `at` in `msg`: its wire bytes without the root octet, and where each label starts in them. */
  // Each length is checked, so that a message that is not what dns-packet writes (a label
  // past 63 octets, a name or record running past the end) throws rather than walking on.
  const nameAt = (at: number, end = msg.length): { wire: string; starts: number[] } => {
    const starts: number[] = [];
    let i = at;
    for (; i < end && msg[i] !== 0; i += 1 + msg[i]!) {
      if (msg[i]! > 63) throw new Error(`a label of ${msg[i]} octets at ${i}`);
      starts.push(i - at);
    }
    if (i >= end) throw new Error(`a name at ${at} that runs past its end`);
    return { wire: msg.toString('latin1', at, i), starts };
  };
  /** Registers the suffixes of a name written at `at` in `out`. */
  const register = (wire: string, starts: readonly number[], at: number, upTo = starts.length): void => {
    for (let i = 0; i < upTo; i++) {
      const key = wire.slice(starts[i]);
      if (at + starts[i]! <= MAX_POINTER && !seen.has(key)) seen.set(key, at + starts[i]!);
    }
  };
  const name = (): void => {
    const { wire, starts } = nameAt(r);
    r += wire.length + 1;
    let known = starts.length;
    let target = -1;
    for (let i = 0; i < starts.length; i++) {
      const at = seen.get(wire.slice(starts[i]));
      if (at !== undefined) {
        known = i;
        target = at;
        break;
      }
    }
    const head = known < starts.length ? starts[known]! : wire.length;
    const at = w;
    w += out.write(wire.slice(0, head), w, 'latin1');
    if (target >= 0) w = out.writeUInt16BE(0xc000 | target, w);
    else out[w++] = 0;
    register(wire, starts, at, known);
  };
  const copy = (n: number): void => {
    if (r + n > msg.length) throw new Error(`${n} octets at ${r} run past the end of the message`);
    w += msg.copy(out, w, r, r + n);
    r += n;
  };
  for (let i = msg.readUInt16BE(4); i > 0; i--) {
    name();
    copy(4);
  }
  for (let i = msg.readUInt16BE(6) + msg.readUInt16BE(8) + msg.readUInt16BE(10); i > 0; i--) {
    if (w > limit) return null;
    name();
    const type = msg.readUInt16BE(r);
    const rdlength = msg.readUInt16BE(r + 8);
    copy(10);
    if (NAME_RDATA.has(type)) {
      const { wire, starts } = nameAt(r, r + rdlength);
      register(wire, starts, w);
    }
    copy(rdlength);
  }
  if (r !== msg.length) throw new Error(`${msg.length - r} octets after the last record`);
  return w > limit ? null : out.subarray(0, w);
}

/** RFC 1035 §4.2.2: a TCP message is preceded by its length as two octets. */
export function frame(msg: Buffer): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(msg.length);
  return Buffer.concat([len, msg]);
}
