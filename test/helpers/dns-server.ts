// A DNS server for tests, on loopback UDP (node:dgram). It answers A and AAAA for names under
// `.test` as each test chooses — addresses with a TTL, NXDOMAIN, SERVFAIL, REFUSED, an empty
// NOERROR (no data) or silence — and counts the queries it receives, so tests can check what a
// resolver actually sent. No name is ever forwarded anywhere: anything outside `.test` gets
// REFUSED.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket } from 'node:net';

export type Behaviour = (
  | { kind: 'answer'; a?: readonly string[]; aaaa?: readonly string[]; ttl: number }
  | { kind: 'nxdomain' }
  | { kind: 'servfail' }
  | { kind: 'refused' }
  | { kind: 'nodata' }
  | { kind: 'silent' }
) &
  Timing;

/** How a slow or lossy server treats the queries for a name (each optional). */
export interface Timing {
  /** The answer is sent this long after the query arrived (a slow upstream), for every type or per type. */
  readonly delayMs?: number | Partial<Record<QueryType, number>>;
  /** The first this-many queries of each type get no answer (lost packets); later ones are answered. */
  readonly dropFirst?: number;
  /** Queries of these types are never answered (a resolver that drops AAAA). */
  readonly silentTypes?: readonly QueryType[];
  /** Answers carry the TC bit (RFC 1035 §4.1.1): the client should ask again over TCP. */
  readonly truncate?: boolean;
}

export type QueryType = 'A' | 'AAAA' | 'other';

const TYPE_A = 1;
const TYPE_AAAA = 28;
// RFC 1035 §4.1.1 response codes.
const RCODE = { noerror: 0, servfail: 2, nxdomain: 3, refused: 5 } as const;
const MAX_LABELS = 128;

export interface Query {
  readonly name: string;
  readonly type: QueryType;
}

export class DnsTestServer {
  readonly #socket: UdpSocket;
  readonly #zone = new Map<string, Behaviour>();
  readonly queries: Query[] = [];
  #waiters: ((q: Query) => void)[] = [];
  #port = 0;
  /** The TCP side on the same port (`start`'s `tcp`), and what serves its connections (tcp-dns.ts). */
  #tcp: Server | null = null;
  readonly #tcpConnections = new Set<Socket>();
  onTcpConnection: (s: Socket) => void = (s) => s.destroy();

  private constructor(socket: UdpSocket) {
    this.#socket = socket;
  }

  /**
   * Starts a server on `host` (127.0.0.1 or ::1, or a rig address), on `port` (ephemeral by
   * default). `tcp`: a TCP listener on the same port too, for answers asked again over TCP
   * (test/helpers/tcp-dns.ts); an ephemeral UDP port's number may be a live TCP connection's local
   * port at that moment, so another port is taken then.
   */
  static async start(host = '127.0.0.1', port = 0, o: { tcp?: boolean } = {}): Promise<DnsTestServer> {
    for (let attempt = 0; ; attempt++) {
      const server = await DnsTestServer.#bind(host, port);
      if (!o.tcp) return server;
      const tcp = createServer((s) => {
        server.#tcpConnections.add(s);
        s.once('close', () => server.#tcpConnections.delete(s));
        server.onTcpConnection(s);
      });
      const err = await new Promise<Error | null>((resolve) => {
        tcp.once('error', resolve);
        tcp.listen(server.#port, host, () => resolve(null));
      });
      if (err === null) {
        server.#tcp = tcp;
        return server;
      }
      await server.close();
      if (port !== 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt === 9) throw err;
    }
  }

  static async #bind(host: string, port: number): Promise<DnsTestServer> {
    const socket = createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
    const server = new DnsTestServer(socket);
    socket.on('message', (msg, rinfo) => server.#onMessage(msg, rinfo.address, rinfo.port));
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, host, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    server.#port = socket.address().port;
    return server;
  }

  /** `host:port` as NameResolver's `servers` takes it. */
  get server(): string {
    const { address } = this.#socket.address();
    return isIP(address) === 6 ? `[${address}]:${this.#port}` : `${address}:${this.#port}`;
  }

  set(name: string, b: Behaviour): void {
    this.#zone.set(name.toLowerCase(), b);
  }

  /** How many queries of `type` for `name` arrived. */
  count(name: string, type: QueryType): number {
    const n = name.toLowerCase();
    return this.queries.filter((q) => q.name === n && q.type === type).length;
  }

  /** Resolves when the next query arrives (whatever the server then does with it). */
  nextQuery(): Promise<Query> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Closes both sides; TCP connections still held (a test's answer not yet sent) are closed too. */
  close(): Promise<void> {
    const tcp = this.#tcp;
    this.#tcp = null;
    for (const c of this.#tcpConnections) c.destroy();
    return Promise.all([
      new Promise<void>((resolve) => this.#socket.close(() => resolve())),
      tcp ? new Promise<void>((resolve) => tcp.close(() => resolve())) : undefined,
    ]).then(() => undefined);
  }

  #onMessage(msg: Buffer, address: string, port: number): void {
    const q = parseQuery(msg);
    if (q === null) return;
    const query: Query = { name: q.name, type: q.qtype === TYPE_A ? 'A' : q.qtype === TYPE_AAAA ? 'AAAA' : 'other' };
    this.queries.push(query);
    for (const w of this.#waiters.splice(0)) w(query);
    const b: Behaviour = q.name.endsWith('.test') ? (this.#zone.get(q.name) ?? { kind: 'nxdomain' }) : { kind: 'refused' };
    if (b.kind === 'silent' || b.silentTypes?.includes(query.type)) return;
    if (b.dropFirst !== undefined && this.count(q.name, query.type) <= b.dropFirst) return;
    let rcode: number = RCODE.noerror;
    let answers: Buffer[] = [];
    if (b.kind === 'nxdomain' || b.kind === 'servfail' || b.kind === 'refused') rcode = RCODE[b.kind];
    else if (b.kind === 'answer') {
      if (q.qtype === TYPE_A) answers = (b.a ?? []).map((a) => record(TYPE_A, b.ttl, ipv4Bytes(a)));
      if (q.qtype === TYPE_AAAA) answers = (b.aaaa ?? []).map((a) => record(TYPE_AAAA, b.ttl, ipv6Bytes(a)));
    }
    const header = Buffer.alloc(12);
    header.writeUInt16BE(msg.readUInt16BE(0), 0);
    // QR=1, the query's opcode and RD, RA=1 (RFC 1035 §4.1.1).
    const flags = 0x8000 | (msg.readUInt16BE(2) & 0x7900) | 0x0080 | (b.truncate ? 0x0200 : 0) | rcode;
    header.writeUInt16BE(flags, 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answers.length, 6);
    const reply = Buffer.concat([header, msg.subarray(12, q.questionEnd), ...answers]);
    const delay = typeof b.delayMs === 'object' ? b.delayMs[query.type] : b.delayMs;
    if (delay === undefined) this.#socket.send(reply, port, address);
    else {
      setTimeout(() => {
        try {
          this.#socket.send(reply, port, address, () => {});
        } catch {
          // Closed meanwhile: the test is over.
        }
      }, delay).unref();
    }
  }
}

/** The first question of a query, or null for anything malformed (which gets no answer). */
function parseQuery(msg: Buffer): { name: string; qtype: number; questionEnd: number } | null {
  if (msg.length < 12 || (msg.readUInt16BE(2) & 0x8000) !== 0 || msg.readUInt16BE(4) < 1) return null;
  const labels: string[] = [];
  let at = 12;
  for (let i = 0; i < MAX_LABELS; i++) {
    if (at >= msg.length) return null;
    const len = msg[at]!;
    at += 1;
    if (len === 0) {
      if (at + 4 > msg.length) return null;
      return { name: labels.join('.').toLowerCase(), qtype: msg.readUInt16BE(at), questionEnd: at + 4 };
    }
    // A query's question carries no compression pointers (RFC 1035 §4.1.4 compresses answers).
    if (len > 63 || at + len > msg.length) return null;
    labels.push(msg.toString('latin1', at, at + len));
    at += len;
  }
  return null;
}

function record(type: number, ttl: number, rdata: Buffer): Buffer {
  const rr = Buffer.alloc(12);
  rr.writeUInt16BE(0xc00c, 0); // a pointer to the question's name at offset 12
  rr.writeUInt16BE(type, 2);
  rr.writeUInt16BE(1, 4); // class IN
  rr.writeUInt32BE(ttl, 6);
  rr.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([rr, rdata]);
}

function ipv4Bytes(a: string): Buffer {
  return Buffer.from(a.split('.').map(Number));
}

function ipv6Bytes(a: string): Buffer {
  const [head, tail] = a.includes('::') ? a.split('::') : [a, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
