// The sockets egressd's DNS queries to `dns.servers` leave from, one set per process.
//
// UDP: the DNS listener's forwarder (dns/upstream.ts) sends each query from one of POOL_SIZE
// sockets per address family, each bound to its own random port by its first send, picked at
// random, with an id not in use on it (RFC 5452 §9.2: ports × 16 bits of id against spoofed
// answers; unbound's outgoing-range is the same idea): a socket per query cost ~0.5 ms of the
// loop each. The resolver of the names egressd dials (net/dns-client.ts) does not use the pool:
// a lookup is rarer (its answer is cached) and takes a fresh random port of its own (RFC 5452
// §9.1), whose descriptor its waiting connections' admission already counts.
//
// TCP: a retry over TCP after a truncated answer (RFC 7766 §5) holds a descriptor no budget
// counts, for the resolver and the forwarder alike: tcpSlot bounds how many run at once; the
// others wait their turn, in order, within their own deadline.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';

/** Sockets per address family (the forwarder's figure before the pool was shared). */
export const POOL_SIZE = 32;
/** TCP retries in flight at once, all queries together. */
export const TCP_RETRIES = 16;

/** Told every datagram that arrives on the query's socket with its id (the caller checks the rest). */
export type ReplyHandler = (buf: Buffer, address: string, port: number) => void;

interface PooledSocket {
  readonly sock: UdpSocket;
  /** The queries waiting on this socket, by id. */
  readonly waiting: Map<number, ReplyHandler>;
}

export interface SentQuery {
  /** The query's id (RFC 1035 §4.1.1), chosen free on its socket. */
  readonly id: number;
  /** Stops delivering replies to this query; idempotent. The socket stays in the pool. */
  cancel(): void;
}

export class QuerySockets {
  readonly #size: number;
  readonly #tcpMax: number;
  readonly #pools: Record<4 | 6, (PooledSocket | undefined)[]> = { 4: [], 6: [] };
  #tcpInUse = 0;
  /** Retries waiting for a TCP place, oldest first. */
  readonly #tcpWaiting: { grant: (release: (() => void) | null) => void; timer: NodeJS.Timeout }[] = [];
  #closed = false;

  constructor(o: { size?: number; tcpMax?: number } = {}) {
    this.#size = Math.max(1, o.size ?? POOL_SIZE);
    this.#tcpMax = Math.max(0, o.tcpMax ?? TCP_RETRIES);
  }

  /**
   * Sends the query `make(id)` builds to `address`:`port` from a pooled socket of the address's
   * family, `id` random and free on that socket; `onReply` is told each datagram for that id on
   * that socket until cancel(). Null once closed. `onSent` gets the send's error, if any.
   */
  send(address: string, port: number, make: (id: number) => Buffer, onReply: ReplyHandler, onSent?: (err: Error | null) => void): SentQuery | null {
    if (this.#closed) return null;
    const ps = this.#socket(isIP(address) === 6 ? 6 : 4);
    let id = randomInt(0, 65_536);
    while (ps.waiting.has(id)) id = randomInt(0, 65_536);
    ps.waiting.set(id, onReply);
    ps.sock.send(make(id), port, address, (err) => onSent?.(err ?? null));
    return {
      id,
      cancel: () => {
        if (ps.waiting.get(id) === onReply) ps.waiting.delete(id);
      },
    };
  }

  /**
   * A place for one TCP retry, to release when it ends (idempotent): at once while fewer than
   * tcpMax run, else the first to free up within `waitMs`; null when none did, or once closed.
   */
  tcpSlot(waitMs: number): Promise<(() => void) | null> {
    if (this.#closed) return Promise.resolve(null);
    if (this.#tcpInUse < this.#tcpMax) {
      this.#tcpInUse++;
      return Promise.resolve(this.#release());
    }
    if (waitMs <= 0) return Promise.resolve(null);
    return new Promise((resolve) => {
      const w = {
        grant: resolve,
        timer: setTimeout(() => {
          const i = this.#tcpWaiting.indexOf(w);
          if (i >= 0) this.#tcpWaiting.splice(i, 1);
          resolve(null);
        }, waitMs),
      };
      this.#tcpWaiting.push(w);
    });
  }

  #release(): () => void {
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.#tcpWaiting.shift();
      if (next === undefined || this.#closed) {
        this.#tcpInUse--;
        return;
      }
      // The place passes straight to the oldest waiter.
      clearTimeout(next.timer);
      next.grant(this.#release());
    };
  }

  /** Sockets open now, both families. */
  get open(): number {
    return this.#pools[4].filter(Boolean).length + this.#pools[6].filter(Boolean).length;
  }

  /** Queries waiting for a reply now. */
  get waiting(): number {
    let n = 0;
    for (const family of [4, 6] as const) for (const ps of this.#pools[family]) n += ps?.waiting.size ?? 0;
    return n;
  }

  /** Closes every socket; queries still waiting are never answered, and later sends return null. */
  close(): void {
    this.#closed = true;
    for (const w of this.#tcpWaiting.splice(0)) {
      clearTimeout(w.timer);
      w.grant(null);
    }
    for (const family of [4, 6] as const) {
      for (const ps of this.#pools[family]) {
        try {
          ps?.sock.close();
        } catch {
          // already closed
        }
      }
      this.#pools[family] = [];
    }
  }

  /** A socket of the pool, picked at random; made on first use, remade after an error. */
  #socket(family: 4 | 6): PooledSocket {
    const pool = this.#pools[family];
    const i = randomInt(0, this.#size);
    const have = pool[i];
    if (have) return have;
    const sock = createSocket(family === 6 ? 'udp6' : 'udp4');
    const ps: PooledSocket = { sock, waiting: new Map() };
    sock.on('message', (buf, rinfo) => {
      if (buf.length < 2) return;
      ps.waiting.get(buf.readUInt16BE(0))?.(buf, rinfo.address, rinfo.port);
    });
    sock.on('error', () => {
      // An ICMP port unreachable or a send error: the queries on it time out or are answered on
      // another socket; the slot gets a new socket.
      if (pool[i] === ps) pool[i] = undefined;
      try {
        sock.close();
      } catch {
        // already closed
      }
    });
    // Unref'd: a pool nobody uses keeps no process alive; the queries' own timers do.
    sock.unref();
    pool[i] = ps;
    return ps;
  }
}
