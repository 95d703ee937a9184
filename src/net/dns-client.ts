// A stub resolver's exchange for one name: A and AAAA over UDP to the configured servers, with
// every query kept listening until the lookup's deadline.
//
// Why not c-ares (node:dns): it gives each attempt its own slice of the budget and abandons a
// query when its slice ends, so an answer that comes after the slice — a resolver that answers
// in 1.1 s under a 2 s budget — lands on a query nobody waits for any more. Here the lookup owns
// its sockets: retransmissions go out on the same sockets, and an answer to any of them, at any
// time before the deadline, is used (RFC 1035 §7.2: match the reply to the request by ID,
// question and server; RFC 5452 §9.1: a fresh random ID per query and a random source port per
// lookup). A truncated answer is asked again over TCP (RFC 7766 §5), as many at once as the
// process allows (net/query-sockets.ts tcpSlot). A lookup's own sockets are paid for by the
// connections waiting on it: each holds its admission ticket, two descriptors, until the lookup
// has answered (connection.ts), and the upstream's is not open yet.
//
// Messages are encoded and decoded by dns-packet; what is accepted from them is decided here.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { connect, isIP } from 'node:net';
import { canonicalSource } from '../match/ip.ts';
import * as packet from 'dns-packet';

export type DnsFailure = 'nxdomain' | 'nodata' | 'timeout' | 'servfail' | 'refused' | 'error';

export interface DnsRecord {
  readonly address: string;
  /** Seconds, as the answer gave it. */
  readonly ttl: number;
}

/**
 * A family's answer. `aliases`: the CNAME and DNAME targets its chain ran through (chainAliases),
 * in order: the data path judges them as the DNS listener does (a chain through a name a deny
 * rule names is refused, net/connection.ts).
 */
export type FamilyAnswer = { ok: true; records: DnsRecord[]; aliases: readonly string[] } | { ok: false; cause: DnsFailure };

export interface DnsServer {
  readonly address: string;
  readonly port: number;
}

/**
 * "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353" → a server; null for anything else.
 * Port 53 unless given (RFC 1035 §4.2).
 */
export function parseDnsServer(text: string): DnsServer | null {
  if (isIP(text) !== 0) return { address: text, port: 53 };
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text);
  if (!m) return null;
  const address = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (isIP(address) === 0 || port < 1 || port > 65535) return null;
  return { address, port };
}

export interface ExchangeOptions {
  readonly servers: readonly DnsServer[];
  /** Absolute deadline (performance.now() ms, the monotonic clock: a step of the wall clock moves it not): no query outlives it. */
  readonly deadline: number;
  /** Time between sends: the first goes to servers[0] at once, the next to servers[1]..., round robin. */
  readonly retransmitMs: number;
  /**
   * A place for one retry over TCP within `waitMs`; null when none came, or once `signal`
   * aborts (net/query-sockets.ts QuerySockets.tcpSlot).
   */
  readonly tcpSlot: (waitMs: number, signal: AbortSignal) => Promise<(() => void) | null>;
}

type QType = 'A' | 'AAAA';

/** RFC 1035 §4.2.2: a TCP message carries a two-octet length, so at most 65535 octets. */
const TCP_MAX_MESSAGE = 65_535;

/**
 * One lookup of `name`'s A and AAAA records. Each family settles on its own: `onFamily` is
 * called once per family (in whatever order the answers come), and at the deadline for any
 * family still unanswered, with `timeout` or the last failure a server answered with.
 * `cancel()` settles what is left as `error` and closes the sockets.
 */
export class AddressExchange {
  readonly #name: string;
  readonly #o: ExchangeOptions;
  readonly #onFamily: (family: 4 | 6, a: FamilyAnswer) => void;
  readonly #sockets = new Map<4 | 6, UdpSocket>();
  /** Outstanding query IDs per type; every ID ever sent for the type stays valid until it settles. */
  readonly #ids: Record<QType, Set<number>> = { A: new Set(), AAAA: new Set() };
  readonly #settled: Record<QType, boolean> = { A: false, AAAA: false };
  /**
   * Aborted when the type settles: its retries over TCP still waiting or connected end then, each
   * holding one of the process's few places (net/query-sockets.ts) for no use any more.
   */
  readonly #tcpDone: Record<QType, AbortController> = { A: new AbortController(), AAAA: new AbortController() };
  /** A failure answered by a server, kept in case no server answers better. */
  readonly #lastFailure: Record<QType, DnsFailure | null> = { A: null, AAAA: null };
  /** Servers that answered each type with a failure (SERVFAIL, REFUSED): not asked again. */
  readonly #failedBy: Record<QType, Set<number>> = { A: new Set(), AAAA: new Set() };
  #sends = 0;
  #retransmit: NodeJS.Timeout | null = null;
  #deadline: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(name: string, o: ExchangeOptions, onFamily: (family: 4 | 6, a: FamilyAnswer) => void) {
    this.#name = name;
    this.#o = o;
    this.#onFamily = onFamily;
    if (o.servers.length === 0) {
      // Settled on the next tick, so the caller always has the exchange before its callback runs.
      queueMicrotask(() => this.#settleAll('error'));
      return;
    }
    this.#deadline = setTimeout(() => this.#settleAll('timeout'), Math.max(0, o.deadline - performance.now()));
    this.#round();
  }

  cancel(): void {
    this.#settleAll('error');
  }

  /** One round: both unsettled types to the next server; then the next round after retransmitMs. */
  #round(): void {
    if (this.#closed) return;
    const n = this.#o.servers.length;
    for (const type of ['A', 'AAAA'] as const) {
      if (this.#settled[type]) continue;
      // The next server in turn that has not already refused this type.
      for (let k = 0; k < n; k++) {
        const i = (this.#sends + k) % n;
        if (!this.#failedBy[type].has(i)) {
          this.#send(type, i);
          break;
        }
      }
    }
    this.#sends++;
    this.#retransmit = setTimeout(() => this.#round(), this.#o.retransmitMs);
  }

  #send(type: QType, serverIndex: number): void {
    const server = this.#o.servers[serverIndex]!;
    const family = isIP(server.address) === 6 ? 6 : 4;
    let socket = this.#sockets.get(family);
    if (!socket) {
      socket = createSocket(family === 6 ? 'udp6' : 'udp4');
      // An ICMP port unreachable or a send error: the query stays unanswered; the deadline or
      // another server settles it.
      socket.on('error', () => {});
      socket.on('message', (msg, rinfo) => this.#onMessage(msg, rinfo.address, rinfo.port));
      this.#sockets.set(family, socket);
    }
    let id = randomInt(0x10000);
    while (this.#ids[type].has(id)) id = randomInt(0x10000);
    this.#ids[type].add(id);
    const query = packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ type, class: 'IN', name: this.#name }] });
    socket.send(query, server.port, server.address, () => {});
  }

  #serverIndex(address: string, port: number): number {
    return this.#o.servers.findIndex((s) => s.port === port && sameAddress(s.address, address));
  }

  #onMessage(msg: Buffer, address: string, port: number): void {
    if (this.#closed) return;
    const server = this.#serverIndex(address, port);
    if (server < 0) return; // Not from a server we asked: ignored (RFC 5452 §9.1).
    let m: packet.DecodedPacket;
    try {
      m = packet.decode(msg);
    } catch {
      return; // Malformed: keep listening for a real answer.
    }
    const type = this.#matchingType(m);
    if (type === null) return;
    if (m.flag_tc) {
      // RFC 7766 §5: a truncated UDP answer is asked again over TCP, on the same server.
      this.#ids[type].delete(m.id!);
      void this.#overTcp(type, server);
      return;
    }
    this.#accept(type, server, m);
  }

  /** The type this message answers, when it is a response to one of our outstanding queries. */
  #matchingType(m: packet.DecodedPacket): QType | null {
    if (m.type !== 'response' || m.id === undefined) return null;
    const q = m.questions?.[0];
    if (q === undefined || (m.questions?.length ?? 0) !== 1) return null;
    if (q.type !== 'A' && q.type !== 'AAAA') return null;
    if (this.#settled[q.type] || !this.#ids[q.type].has(m.id)) return null;
    if (q.name.toLowerCase() !== this.#name.toLowerCase()) return null;
    return q.type;
  }

  #accept(type: QType, server: number, m: packet.DecodedPacket): void {
    const rcode = (m.flags ?? 0) & 0xf;
    if (rcode === 0) {
      const owners = chainOwners(this.#name, m.answers ?? []);
      const records = addressRecords(owners, type, m.answers ?? []);
      if (records.length === 0) return this.#settle(type, { ok: false, cause: 'nodata' });
      const aliases = chainAliases(this.#name, m.answers ?? []);
      // A chain longer than resolvers follow is a server failure, as theirs is (MAX_CHAIN_ALIASES).
      if (aliases.length > MAX_CHAIN_ALIASES) return this.#settle(type, { ok: false, cause: 'servfail' });
      return this.#settle(type, { ok: true, records, aliases });
    }
    // RFC 8020: NXDOMAIN is final. SERVFAIL and REFUSED are one server's trouble: ask the others.
    if (rcode === 3) return this.#settle(type, { ok: false, cause: 'nxdomain' });
    this.#lastFailure[type] = rcode === 2 ? 'servfail' : rcode === 5 ? 'refused' : 'error';
    this.#failedBy[type].add(server);
    if (this.#failedBy[type].size >= this.#o.servers.length) this.#settle(type, { ok: false, cause: this.#lastFailure[type] });
    else this.#send(type, (server + 1) % this.#o.servers.length);
  }

  async #overTcp(type: QType, serverIndex: number): Promise<void> {
    const server = this.#o.servers[serverIndex]!;
    // Each retry over TCP is a descriptor beyond the lookup's own: past the process's bound it
    // waits its turn, within the deadline (the type's UDP rounds go on meanwhile).
    const settled = this.#tcpDone[type].signal;
    const release = await this.#o.tcpSlot(this.#o.deadline - performance.now(), settled);
    if (release === null) return;
    if (this.#closed || settled.aborted) return release();
    return new Promise<void>((resolve) => {
      const id = randomInt(0x10000);
      this.#ids[type].add(id);
      const s = connect({ host: server.address, port: server.port });
      const done = (): void => {
        clearTimeout(timer);
        settled.removeEventListener('abort', done);
        s.destroy();
        release();
        resolve();
      };
      settled.addEventListener('abort', done, { once: true });
      const timer = setTimeout(done, Math.max(0, this.#o.deadline - performance.now()));
      let buf = Buffer.alloc(0);
      s.on('error', done);
      s.on('close', done);
      s.on('connect', () => {
        s.write(packet.streamEncode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ type, class: 'IN', name: this.#name }] }));
      });
      s.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length > TCP_MAX_MESSAGE + 2) return done();
        if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
        try {
          const m = packet.decode(buf.subarray(2, 2 + buf.readUInt16BE(0)));
          if (!this.#closed && this.#matchingType(m) === type) this.#accept(type, serverIndex, m);
        } catch {
          // A malformed TCP answer: the deadline settles the type.
        }
        done();
      });
    });
  }

  #settle(type: QType, a: FamilyAnswer): void {
    if (this.#settled[type]) return;
    this.#settled[type] = true;
    this.#ids[type].clear();
    this.#tcpDone[type].abort();
    if (this.#settled.A && this.#settled.AAAA) this.#close();
    this.#onFamily(type === 'A' ? 4 : 6, a);
  }

  #settleAll(cause: DnsFailure): void {
    for (const type of ['A', 'AAAA'] as const) {
      const last = this.#lastFailure[type];
      this.#settle(type, { ok: false, cause: cause === 'timeout' && last !== null ? last : cause });
    }
    this.#close();
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retransmit) clearTimeout(this.#retransmit);
    if (this.#deadline) clearTimeout(this.#deadline);
    for (const s of this.#sockets.values()) s.close();
    this.#sockets.clear();
  }
}

/**
 * The owner names (lower case) of `name`'s chain in an answer section: `name`, then each CNAME
 * target reached from it (RFC 1034 §3.6.2; a DNAME comes with the CNAME it synthesizes, RFC 6672
 * §3.1). Records of any other owner are not part of the answer to `name`, and nothing reads
 * addresses from them: neither the data path's lookups nor the DNS listener's cache and memory.
 */
export function chainOwners(name: string, answers: readonly packet.Answer[]): Set<string> {
  const owners = new Set([name.toLowerCase()]);
  // A chain is at most as long as the answer section; each pass adds at least one owner or stops.
  for (let pass = 0; pass < answers.length; pass++) {
    let grew = false;
    for (const a of answers) {
      if (a.type === 'CNAME' && owners.has(a.name.toLowerCase()) && typeof a.data === 'string' && !owners.has(a.data.toLowerCase())) {
        owners.add(a.data.toLowerCase());
        grew = true;
      }
    }
    if (!grew) break;
  }
  return owners;
}

/**
 * The most aliases (CNAME and DNAME targets, chainAliases) a name's chain may run through to be
 * used: every one is judged against the policy on every connection to the name, so the bound is
 * the CPU one answer can cost each connection. Resolvers stop following a chain at about this
 * length and answer SERVFAIL: Unbound restarts a query a fixed number of times (MAX_RESTART_COUNT
 * in iterator.h, 8 until a Microsoft login name with 9 CNAMEs failed: NLnetLabs/unbound#438,
 * which raised it). Past the bound egressd's own
 * lookup is a server failure (the connection is refused `dns-failure`), the DNS listener does
 * not share the answer with the data path, and the DNS memory does not keep the name.
 */
export const MAX_CHAIN_ALIASES = 12;

/**
 * The aliases an answer to `name` ran through, as every path judges them (the DNS listener before
 * answering, its memory, the dial, net/connection.ts): the chain's CNAME targets in order
 * (chainOwners less `name`), then each DNAME's target (RFC 6672 §2: every name below the DNAME's
 * owner is an alias of the same name below its target, so a deny rule naming the target names
 * the chain). Lower case, each once.
 */
export function chainAliases(name: string, answers: readonly packet.Answer[]): string[] {
  const aliases = new Set([...chainOwners(name, answers)].slice(1));
  for (const a of answers) if (a.type === 'DNAME' && typeof a.data === 'string') aliases.add(a.data.toLowerCase());
  return [...aliases];
}

/**
 * A record's TTL in seconds as it is to be used: 0 for one with the most significant bit set,
 * which RFC 2181 §8 says to treat "as if the entire value received was zero" (dns-packet reads it
 * unsigned, so it would otherwise be kept for the longest time allowed), 0 when absent.
 */
export function recordTtl(ttl: unknown): number {
  return typeof ttl === 'number' && ttl >= 0 && ttl < 0x80000000 ? ttl : 0;
}

/** The addresses of `type` that answer a name whose chain is `owners` (chainOwners); records about other owners are ignored. */
function addressRecords(owners: ReadonlySet<string>, type: QType, answers: readonly packet.Answer[]): DnsRecord[] {
  const out: DnsRecord[] = [];
  for (const a of answers) {
    if (a.type !== type || !owners.has(a.name.toLowerCase()) || typeof a.data !== 'string') continue;
    if (isIP(a.data) !== (type === 'A' ? 4 : 6)) continue;
    out.push({ address: a.data, ttl: recordTtl(a.ttl) });
  }
  return out;
}

function sameAddress(a: string, b: string): boolean {
  if (a === b) return true;
  // Different spellings of one address; a dual-stack socket may report an IPv4 peer as ::ffff:a.b.c.d.
  const ca = canonicalSource(a);
  return ca !== undefined && ca === canonicalSource(b);
}
