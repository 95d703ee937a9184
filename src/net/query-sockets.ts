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
// others wait their turn within their own deadline. Each place is charged to a tenant (the
// sandbox whose query it is, TenantPlaces): a tenant holds at most its share (tenantShare) while the
// places left free are fewer than a share, so one sandbox whose answers all come back truncated cannot hold
// every place; a freed place goes to the waiting tenant holding fewest. A query other tenants
// joined (the same question asked while it was on its way) is theirs too (QueryTenants): its retry
// is charged to whichever of them may take a place, so a tenant that joins never waits longer
// than it would have alone.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';

/** Sockets per address family (the forwarder's figure before the pool was shared). */
export const POOL_SIZE = 32;
/** TCP retries in flight at once, all queries together. */
export const TCP_RETRIES = 16;

/** Why a TCP retry got no place at once: its tenant held its share, or every place was taken. */
export type TcpHeldBack = 'sandbox' | 'global';

/** A tenant's share of `places` (TenantPlaces): a quarter, at least one. */
export function tenantShare(places: number): number {
  return Math.max(1, Math.floor(places / 4));
}

/**
 * Tenants beyond the first a QueryTenants keeps. At most a TenantPlaces' max (TCP_RETRIES, and
 * net/resolve.ts LATE_FAMILIES, at most, in the daemon) tenants hold a place at any time, so among more than that one always holds none: a longer list
 * would never find a place a shorter one does not.
 */
export const JOINED_MAX = TCP_RETRIES + 1;

/**
 * The tenants a shared query is for: the one that asked first, then each that joined it while it
 * was on its way (up to JOINED_MAX more). Its retries over TCP may be charged to any of them, and
 * so may its answer in a cache (fewest), so a tenant that joins pays as if it had asked alone.
 */
export class QueryTenants {
  readonly first: string;
  readonly #all: Set<string>;
  /** Told when a tenant joins: a retry of the query waiting may now have a place. */
  readonly #onJoin = new Set<() => void>();

  constructor(first: string) {
    this.first = first;
    this.#all = new Set([first]);
  }

  /** Adds `tenant` (idempotent; ignored past JOINED_MAX). */
  join(tenant: string): void {
    if (this.#all.has(tenant) || this.#all.size > JOINED_MAX) return;
    this.#all.add(tenant);
    for (const f of [...this.#onJoin]) f();
  }

  /** Of the tenants, the one for which `held` is least (the earliest among equals). */
  fewest(held: (tenant: string) => number): string {
    let best = this.first;
    let least = Infinity;
    for (const t of this.#all) {
      const n = held(t);
      if (n < least) {
        best = t;
        least = n;
        if (n === 0) break;
      }
    }
    return best;
  }

  /** The tenants, the first first, then in the order they joined. */
  get all(): ReadonlySet<string> {
    return this.#all;
  }

  /** @internal QuerySockets' watch while a retry of this query waits; returns the unwatch. */
  watch(f: () => void): () => void {
    this.#onJoin.add(f);
    return () => this.#onJoin.delete(f);
  }
}

/**
 * A bounded number of places, each charged to a tenant while held: a tenant holds at most its
 * share (tenantShare) while the places left free are fewer than a share (an unused share is lent,
 * never the last one), so one sandbox cannot hold them all. The TCP retries (QuerySockets.tcpSlot)
 * and the settled lookups listening for their late family (net/resolve.ts, LATE_FAMILIES) are each
 * one.
 */
export class TenantPlaces {
  readonly max: number;
  readonly share: number;
  #inUse = 0;
  /** Places held, by tenant. */
  readonly #by = new Map<string, number>();
  /** Told each time a place is given back (while waiters may want it). */
  readonly #onFree: (() => void) | undefined;

  constructor(max: number, onFree?: () => void) {
    this.max = Math.max(0, max);
    this.share = tenantShare(this.max);
    this.#onFree = onFree;
  }

  /** Places held now, all tenants together. */
  get inUse(): number {
    return this.#inUse;
  }

  /** Places `tenant` holds now. */
  held(tenant: string): number {
    return this.#by.get(tenant) ?? 0;
  }

  /** A free place, and `tenant` under its share or taking one more still leaves more than a share free. */
  mayTake(tenant: string): boolean {
    const free = this.max - this.#inUse;
    return free > 0 && (this.held(tenant) < this.share || free > this.share);
  }

  /**
   * Of `tenants`, the one a place is charged to now: of those that may take one, the one holding
   * fewest (the earliest among equals); null when none may.
   */
  pick(tenants: QueryTenants): string | null {
    let best: string | null = null;
    let fewest = Infinity;
    for (const t of tenants.all) {
      const held = this.held(t);
      if (held < fewest && this.mayTake(t)) {
        best = t;
        fewest = held;
        if (held === 0) break;
      }
    }
    return best;
  }

  /** Charges a place to `tenant` (the caller checked mayTake or pick); returns its release (idempotent). */
  take(tenant: string): () => void {
    this.#inUse++;
    this.#by.set(tenant, this.held(tenant) + 1);
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#inUse--;
      const left = this.held(tenant) - 1;
      if (left <= 0) this.#by.delete(tenant);
      else this.#by.set(tenant, left);
      this.#onFree?.();
    };
  }
}

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

interface TcpWaiter {
  readonly tenants: QueryTenants;
  /** Ends the wait with a place or none (once): the timer, the watch and the abort listener go. */
  readonly settle: (release: (() => void) | null) => void;
}

export class QuerySockets {
  readonly #size: number;
  readonly #pools: Record<4 | 6, (PooledSocket | undefined)[]> = { 4: [], 6: [] };
  readonly #tcp: TenantPlaces;
  /** Retries waiting for a TCP place, oldest first. */
  readonly #tcpWaiting: TcpWaiter[] = [];
  readonly #onTcpHeldBack: ((why: TcpHeldBack) => void) | undefined;
  readonly #onTcpJoined: (() => void) | undefined;
  #closed = false;

  /**
   * `tcpMax`: TCP retries at once, all tenants together (TCP_RETRIES when absent);
   * `onTcpHeldBack`: told of each retry that got no place at once (it waits, or fails when it
   * may not), and why; `onTcpJoined`: told of each place charged to a tenant that joined the
   * query, not the one that asked first.
   */
  constructor(o: { size?: number; tcpMax?: number; onTcpHeldBack?: (why: TcpHeldBack) => void; onTcpJoined?: () => void } = {}) {
    this.#size = Math.max(1, o.size ?? POOL_SIZE);
    this.#tcp = new TenantPlaces(o.tcpMax ?? TCP_RETRIES, () => {
      if (!this.#closed) this.#handOn();
    });
    this.#onTcpHeldBack = o.onTcpHeldBack;
    this.#onTcpJoined = o.onTcpJoined;
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
   * A place for one TCP retry of `tenant`'s (a sandbox id, or any key its caller counts by; or the
   * tenants of a query others joined, charged to one of them that may take it), to release when it
   * ends (idempotent): at once while a tenant may take one (TenantPlaces.mayTake), else when one is handed on
   * within `waitMs` (a tenant joining meanwhile may take it); null when none was, once closed, or
   * when `signal` aborts first (the query was answered otherwise: it leaves the queue).
   */
  tcpSlot(waitMs: number, tenant: string | QueryTenants = '', signal?: AbortSignal): Promise<(() => void) | null> {
    if (this.#closed || signal?.aborted === true) return Promise.resolve(null);
    const tenants = typeof tenant === 'string' ? new QueryTenants(tenant) : tenant;
    const now = this.#tcp.pick(tenants);
    if (now !== null) return Promise.resolve(this.#take(tenants, now));
    this.#onTcpHeldBack?.(this.#why());
    if (waitMs <= 0) return Promise.resolve(null);
    return new Promise((resolve) => {
      const leave = (): void => {
        const i = this.#tcpWaiting.indexOf(w);
        if (i >= 0) this.#tcpWaiting.splice(i, 1);
        w.settle(null);
      };
      const timer = setTimeout(leave, waitMs);
      const unwatch = tenants.watch(() => this.#handOn());
      signal?.addEventListener('abort', leave, { once: true });
      let done = false;
      const w: TcpWaiter = {
        tenants,
        settle: (release) => {
          if (done) return release?.();
          done = true;
          clearTimeout(timer);
          unwatch();
          signal?.removeEventListener('abort', leave);
          resolve(release);
        },
      };
      this.#tcpWaiting.push(w);
    });
  }

  /** TCP places held now, all tenants together. */
  get tcpInUse(): number {
    return this.#tcp.inUse;
  }

  /** Why no tenant of a retry may take a place (pick gave none). */
  #why(): TcpHeldBack {
    return this.#tcp.inUse < this.#tcp.max ? 'sandbox' : 'global';
  }

  #take(tenants: QueryTenants, tenant: string): () => void {
    if (tenant !== tenants.first) this.#onTcpJoined?.();
    return this.#tcp.take(tenant);
  }

  /**
   * Hands free places to waiters: the one whose tenant to charge (pick) holds fewest first,
   * oldest first among equals.
   */
  #handOn(): void {
    for (;;) {
      let best = -1;
      let bestTenant = '';
      let fewest = Infinity;
      for (let i = 0; i < this.#tcpWaiting.length; i++) {
        const t = this.#tcp.pick(this.#tcpWaiting[i]!.tenants);
        if (t === null) continue;
        const held = this.#tcp.held(t);
        if (held < fewest) {
          best = i;
          bestTenant = t;
          fewest = held;
        }
      }
      if (best < 0) return;
      const [w] = this.#tcpWaiting.splice(best, 1);
      w!.settle(this.#take(w!.tenants, bestTenant));
    }
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
    for (const w of this.#tcpWaiting.splice(0)) w.settle(null);
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
