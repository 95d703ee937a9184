// Resolves an allowed name to the addresses egressd may dial (net/upstream-target checks the
// original destination against them). A and AAAA are asked in parallel on the configured
// servers (net/dns-client); answers are cached for their TTL, clamped (net/dns-cache), and
// concurrent lookups of one name share one exchange, so a burst of connections to one name
// sends two packets, not hundreds.
//
// Every lookup settles within `timeoutMs`, and never rejects: a failure is one of a fixed set
// of causes, safe as a metric label. Any answer that arrives within `timeoutMs` is used: the
// queries of a lookup keep listening until then, retransmissions included. A lookup every waiter
// has left (its connections went, or were closed) is cancelled at once: its sockets are
// descriptors no one's place in the limits counts any more.

import { getServers } from 'node:dns';
import { AddressExchange, MAX_CHAIN_ALIASES, parseDnsServer, type DnsFailure, type DnsServer, type FamilyAnswer } from './dns-client.ts';
import { AddressCache, cacheKey, clampTtlMs, dialableAddresses, type CachedAnswer } from './dns-cache.ts';
import { QuerySockets, QueryTenants, TenantPlaces } from './query-sockets.ts';

export type ResolveFailure = DnsFailure;

/** `aliases`: the CNAME targets the name's chain ran through (CachedAnswer), absent when none. */
export type ResolveResult = { ok: true; addresses: string[]; cached: boolean; aliases?: readonly string[] } | { ok: false; cause: ResolveFailure };

export interface ResolverOptions {
  /** "127.0.0.1", "127.0.0.1:5353", "[::1]:5353"; empty: the system's resolvers (/etc/resolv.conf). */
  readonly servers: readonly string[];
  /** The most one lookup may take, whatever the number of servers and retries. */
  readonly timeoutMs: number;
  readonly maxEntries?: number;
  /** The address cache's byte budget (net/dns-cache.ts). */
  readonly maxBytes?: number;
  /** Called once per resolve() call that was answered (not one left through its signal), for metrics. */
  readonly onLookup?: (e: { cached: boolean; outcome: 'ok' | ResolveFailure }) => void;
  /** How long NXDOMAIN and NODATA answers are cached. */
  readonly negativeTtlMs?: number;
  /** A monotonic millisecond clock for cache expiry; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
  /** The cache to read and fill; one is made when none is given (a DNS listener may share it). */
  readonly cache?: AddressCache;
  /** Where retries over TCP take their place (shared with the DNS listener's forwarder); its own when absent. */
  readonly sockets?: QuerySockets;
  /**
   * The most settled lookups that keep listening for their other family (LATE_FAMILIES when
   * absent), each charged to a tenant as TCP retries are: each holds a socket no connection's
   * admission counts any more.
   */
  readonly lateFamilies?: number;
}

const DEFAULT_NEGATIVE_TTL_MS = 5_000;
// Each server is asked twice within the budget: the sends are spread evenly over it, and none
// is closer to the last than this (RFC 1536 §1 warns against retransmitting faster than answers
// can come back).
const SENDS_PER_SERVER = 2;
const MIN_RETRANSMIT_MS = 100;
// RFC 8305 §3 "Resolution Delay": once one family has answered, the other is waited for this
// long before the lookup settles with what it has. The other family's answer still fills the
// cache if it comes before the deadline.
const RESOLUTION_DELAY_MS = 50;
/**
 * Settled lookups listening on for their other family, at most, by default. A lookup's socket is
 * counted with the connections waiting for it (their admission tickets) until it settles; they
 * then go on, and may end, while it listens to the timeout. Each place is charged to a tenant
 * (net/query-sockets.ts TenantPlaces: at most a share while fewer than a share are free), so one
 * sandbox dialing names whose other family is slow cannot leave every other sandbox's lookups
 * cached with one family for their TTL. Past the bound, or the tenants' shares, a settled lookup
 * stops: its other family is then asked again on the name's next lookup.
 */
export const LATE_FAMILIES = 16;

const TIMEOUT: FamilyAnswer = { ok: false, cause: 'timeout' };

export class NameResolver {
  readonly #servers: DnsServer[];
  readonly #timeoutMs: number;
  readonly #retransmitMs: number;
  readonly #negativeTtlMs: number;
  readonly #onLookup: ResolverOptions['onLookup'];
  readonly #cache: AddressCache;
  /** Lookups on their way, and the tenants that asked them (the first, then those that joined). */
  readonly #inflight = new Map<string, Lookup>();
  readonly #exchanges = new Set<AddressExchange>();
  readonly #sockets: QuerySockets;
  /** The sockets are this resolver's own, to close with it. */
  readonly #ownSockets: boolean;
  /** Settled lookups still listening for their other family, by tenant. */
  readonly #late: TenantPlaces;
  #closed = false;

  constructor(o: ResolverOptions) {
    this.#timeoutMs = Math.max(1, o.timeoutMs);
    this.#negativeTtlMs = o.negativeTtlMs ?? DEFAULT_NEGATIVE_TTL_MS;
    this.#ownSockets = o.sockets === undefined;
    this.#late = new TenantPlaces(o.lateFamilies ?? LATE_FAMILIES);
    this.#sockets = o.sockets ?? new QuerySockets();
    this.#onLookup = o.onLookup;
    this.#cache =
      o.cache ??
      new AddressCache({
        ...(o.maxEntries !== undefined ? { maxEntries: o.maxEntries } : {}),
        ...(o.maxBytes !== undefined ? { maxBytes: o.maxBytes } : {}),
        ...(o.clock ? { clock: o.clock } : {}),
      });
    const texts = o.servers.length > 0 ? o.servers : getServers();
    this.#servers = texts.map(parseDnsServer).filter((s): s is DnsServer => s !== null);
    this.#retransmitMs = Math.max(MIN_RETRANSMIT_MS, Math.floor(this.#timeoutMs / (SENDS_PER_SERVER * Math.max(1, this.#servers.length))));
  }

  /** The cache this resolver fills. */
  get cache(): AddressCache {
    return this.#cache;
  }

  /**
   * The answer when it is in the cache (the lookup is reported as resolve() reports it), else
   * null and nothing reported: the caller then awaits resolve(). Lets a connection whose name is
   * cached be dialed in the same turn, without a promise.
   */
  cached(name: string): ResolveResult | null {
    const key = cacheKey(name);
    if (this.#closed || key === null) return null;
    const hit = this.#cache.get(key);
    return hit ? this.#report(true, hit) : null;
  }

  /**
   * `tenant`: whose lookup this is (a sandbox id, or `source BLOCK`: match/tenant-key.ts): a retry over TCP takes a place
   * of the tenant's share (net/query-sockets.ts tcpSlot), and so does a settled lookup listening on
   * for its late family (LATE_FAMILIES). A lookup joined by others is theirs too: its retry and its
   * late family are charged to the one with room in its share holding fewest, and its cache entry
   * to the one holding fewest, so one that joins pays as if it had asked alone, never on another's
   * account.
   *
   * `signal`: the caller leaves when it aborts (its client went, it was closed): the call answers
   * `{ ok: false, cause: 'error' }` at once, unreported, and a lookup on the wire that every
   * waiter has left is cancelled, its sockets closed (an NXDOMAIN already answered still cached,
   * not one family's records alone).
   * One that others still wait on goes on for them, and its answer is cached as ever. A call
   * without a signal waits to the end, so its lookup is never cancelled under it.
   */
  resolve(name: string, tenant = '', signal?: AbortSignal): Promise<ResolveResult> {
    const key = cacheKey(name);
    if (this.#closed || key === null) return Promise.resolve(this.#report(false, { ok: false, cause: 'error' }));
    const hit = this.#cache.get(key);
    if (hit) return Promise.resolve(this.#report(true, hit));
    if (signal?.aborted) return Promise.resolve(LEFT);
    let p = this.#inflight.get(key);
    if (p) {
      p.tenants.join(tenant);
      p.waiters++;
    } else {
      const tenants = new QueryTenants(tenant);
      const q: Lookup = { answer: null!, tenants, waiters: 1, cancel: null };
      q.answer = this.#lookup(key, q);
      this.#inflight.set(key, q);
      p = q;
      void q.answer.finally(() => {
        if (this.#inflight.get(key) === q) this.#inflight.delete(key);
      });
    }
    const q = p;
    if (signal === undefined) return q.answer.then((e) => this.#report(false, e));
    return new Promise<ResolveResult>((resolve) => {
      let waiting = true;
      const leave = (): void => {
        if (!waiting) return;
        waiting = false;
        resolve(LEFT);
        if (--q.waiters > 0 || q.cancel === null) return;
        // The last waiter left a lookup still on the wire: no one is left to pay for its sockets.
        if (this.#inflight.get(key) === q) this.#inflight.delete(key);
        q.cancel();
      };
      signal.addEventListener('abort', leave, { once: true });
      void q.answer.then((e) => {
        signal.removeEventListener('abort', leave);
        if (!waiting) return;
        waiting = false;
        resolve(this.#report(false, e));
      });
    });
  }

  /** Cancels in-flight queries (they settle as `error`) and refuses every later lookup. */
  close(): void {
    this.#closed = true;
    for (const x of [...this.#exchanges]) x.cancel();
    if (this.#ownSockets) this.#sockets.close();
    this.#cache.clear();
  }

  #report(cached: boolean, e: CachedAnswer): ResolveResult {
    const r: ResolveResult = e.ok
      ? { ok: true, addresses: [...e.addresses], cached, ...(e.aliases !== undefined ? { aliases: e.aliases } : {}) }
      : { ok: false, cause: e.cause };
    try {
      this.#onLookup?.({ cached, outcome: e.ok ? 'ok' : e.cause });
    } catch {
      // A metrics callback must not turn a resolved name into a failed connection.
    }
    return r;
  }

  /** One lookup of `key` on the wire; sets `q.cancel` while it is unsettled. */
  #lookup(key: string, q: Lookup): Promise<CachedAnswer> {
    const tenants = q.tenants;
    return new Promise<CachedAnswer>((resolve) => {
      const answers: { 4: FamilyAnswer | null; 6: FamilyAnswer | null } = { 4: null, 6: null };
      let settled = false;
      /** Gives back the #late place held while settled with the other family still asked for. */
      let late: (() => void) | null = null;
      let delay: NodeJS.Timeout | null = null;
      /** Every waiter left (q.cancel): the families the cancel settled were never answered. */
      let cancelled = false;
      const store = (): CachedAnswer => {
        const e = combine(answers[4] ?? TIMEOUT, answers[6] ?? TIMEOUT, this.#negativeTtlMs);
        // One family's records alone would stand for the name's for their whole TTL, no late
        // family completing them, so whoever leaves just after the first answer would choose what
        // every sandbox gets. Only NXDOMAIN is final without the other family (RFC 8020).
        const whole = !cancelled || (!e.entry.ok && e.entry.cause === 'nxdomain');
        if (!this.#closed && whole)
          this.#cache.set(
            key,
            e.entry,
            e.ttlMs,
            tenants.fewest((t) => this.#cache.heldBy(t)),
          );
        return e.entry;
      };
      const settle = (): void => {
        if (settled) return;
        settled = true;
        q.cancel = null;
        if (delay) clearTimeout(delay);
        resolve(store());
        // The other family still unanswered: it listens on only within the bound (LATE_FAMILIES)
        // and a tenant's share of it.
        if (answers[4] !== null && answers[6] !== null) return;
        const tenant = this.#late.pick(tenants);
        if (tenant === null) return exchange.cancel();
        late = this.#late.take(tenant);
      };
      const exchange = new AddressExchange(
        key,
        {
          servers: this.#servers,
          deadline: performance.now() + this.#timeoutMs,
          retransmitMs: this.#retransmitMs,
          tcpSlot: (ms, signal) => this.#sockets.tcpSlot(ms, tenants, signal),
        },
        (family, a) => {
          answers[family] = a;
          const both = answers[4] !== null && answers[6] !== null;
          if (both) {
            this.#exchanges.delete(exchange);
            late?.();
            late = null;
            // The late family of a lookup that already settled completes the cached answer.
            if (settled) {
              if (a.ok) store();
            } else settle();
          } else if (a.ok && delay === null && !settled) {
            delay = setTimeout(settle, RESOLUTION_DELAY_MS);
          }
        },
      );
      if (answers[4] === null || answers[6] === null) {
        this.#exchanges.add(exchange);
        // Settles every family not yet answered as `error` (closing the sockets), and so the lookup.
        if (!settled)
          q.cancel = () => {
            cancelled = true;
            exchange.cancel();
          };
      }
    });
  }
}

/** A lookup on its way: its answer, who asked it, how many wait on it, and its cancel while unsettled. */
interface Lookup {
  answer: Promise<CachedAnswer>;
  readonly tenants: QueryTenants;
  /** resolve() calls waiting on the answer (one without a signal never leaves). */
  waiters: number;
  cancel: (() => void) | null;
}

/** What a caller that left gets (never reported: no resolution was made for it). */
const LEFT: ResolveResult = Object.freeze({ ok: false, cause: 'error' }) as ResolveResult;

/**
 * One cache entry from the two families' answers, and how long it may be kept. Records from
 * either family make a positive answer kept for the smallest TTL among them, even when the
 * other family failed: the failure says nothing about the records that did come. Its addresses
 * are those the cache keeps (dialableAddresses), so the lookup's first connections see what
 * the later ones, answered from the cache, see.
 */
function combine(a: FamilyAnswer, aaaa: FamilyAnswer, negativeTtlMs: number): { entry: CachedAnswer; ttlMs: number } {
  const records = [...(a.ok ? a.records : []), ...(aaaa.ok ? aaaa.records : [])];
  if (records.length > 0) {
    const ttlMs = clampTtlMs(Math.min(...records.map((r) => r.ttl)));
    const aliases = [...new Set([...(a.ok ? a.aliases : []), ...(aaaa.ok ? aaaa.aliases : [])])];
    // Each family's chain is within the bound (dns-client.ts); two different ones together may not be.
    if (aliases.length > MAX_CHAIN_ALIASES) return { entry: { ok: false, cause: 'servfail' }, ttlMs: 0 };
    const addresses = dialableAddresses([...new Set(records.map((r) => r.address))]);
    return { entry: aliases.length > 0 ? { ok: true, addresses, aliases } : { ok: true, addresses }, ttlMs };
  }
  const causes = [a, aaaa].map((f) => (f.ok ? 'nodata' : f.cause));
  // RFC 8020: NXDOMAIN means no name at all, whichever type was asked.
  if (causes.includes('nxdomain')) return { entry: { ok: false, cause: 'nxdomain' }, ttlMs: negativeTtlMs };
  if (causes.every((c) => c === 'nodata')) return { entry: { ok: false, cause: 'nodata' }, ttlMs: negativeTtlMs };
  // RFC 2308 §7 allows caching server failures; they are not, so a recovered server is used at once.
  return { entry: { ok: false, cause: causes.find((c) => c !== 'nodata')! }, ttlMs: 0 };
}
