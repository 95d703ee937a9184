// Resolves an allowed name to the addresses egressd may dial (net/upstream-target checks the
// original destination against them). A and AAAA are asked in parallel on the configured
// servers; answers are cached for their TTL, clamped, and concurrent lookups of one name share
// one query per type, so a burst of connections to one name sends two packets, not hundreds.
//
// Every lookup settles within `timeoutMs`, and never rejects: a failure is one of a fixed set
// of causes, safe as a metric label.

import { getServers } from 'node:dns';
import { Resolver } from 'node:dns/promises';
import { LRUCache } from 'lru-cache';

export type ResolveFailure = 'nxdomain' | 'nodata' | 'timeout' | 'servfail' | 'refused' | 'error';

export type ResolveResult = { ok: true; addresses: string[]; cached: boolean } | { ok: false; cause: ResolveFailure };

export interface ResolverOptions {
  /** "127.0.0.1", "127.0.0.1:5353", "[::1]:5353"; empty: the system's resolvers (/etc/resolv.conf). */
  readonly servers: readonly string[];
  /** The most one lookup may take, whatever the number of servers and retries. */
  readonly timeoutMs: number;
  readonly maxEntries?: number;
  /** Called once per resolve() call, for metrics. */
  readonly onLookup?: (e: { cached: boolean; outcome: 'ok' | ResolveFailure }) => void;
  /** How long NXDOMAIN and NODATA answers are cached. */
  readonly negativeTtlMs?: number;
  /** A monotonic millisecond clock for cache expiry; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
}

// A record's TTL is clamped: at least MIN so a TTL-0 name cannot turn every connection into a
// query, at most MAX so a changed record is picked up within minutes whatever its owner set.
const MIN_TTL_MS = 1_000;
const MAX_TTL_MS = 300_000;
const DEFAULT_NEGATIVE_TTL_MS = 5_000;
const DEFAULT_MAX_ENTRIES = 10_000;
// RFC 1035 §2.3.4: 255 octets on the wire, so at most 253 characters of text.
const MAX_NAME_LENGTH = 253;
// One retransmission over UDP (RFC 1035 §4.2.1 leaves the retry policy to the resolver).
const TRIES = 2;

type CacheEntry = { ok: true; addresses: readonly string[] } | { ok: false; cause: ResolveFailure };
type FamilyAnswer = { ok: true; records: { address: string; ttl: number }[] } | { ok: false; cause: ResolveFailure };

export class NameResolver {
  readonly #resolver: Resolver;
  readonly #timeoutMs: number;
  readonly #negativeTtlMs: number;
  readonly #onLookup: ResolverOptions['onLookup'];
  readonly #cache: LRUCache<string, CacheEntry>;
  readonly #inflight = new Map<string, Promise<CacheEntry>>();
  #closed = false;

  constructor(o: ResolverOptions) {
    this.#timeoutMs = Math.max(1, o.timeoutMs);
    this.#negativeTtlMs = o.negativeTtlMs ?? DEFAULT_NEGATIVE_TTL_MS;
    this.#onLookup = o.onLookup;
    const clock = o.clock;
    this.#cache = new LRUCache<string, CacheEntry>({
      max: Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES),
      ...(clock ? { perf: { now: clock }, ttlResolution: 0 } : {}),
    });
    // c-ares gives each server `tries` attempts of `timeout` each, and Node checks for expired
    // queries on a timer of that same period, so an expiry is seen up to one period late: the
    // per-attempt budget is set so that all of it fits in timeoutMs, and #lookup's own deadline
    // bounds whatever is left.
    const servers = o.servers.length > 0 ? o.servers.length : Math.max(1, getServers().length);
    const attempt = Math.max(1, Math.floor(this.#timeoutMs / (2 * TRIES * servers)));
    this.#resolver = new Resolver({ timeout: attempt, tries: TRIES, maxTimeout: attempt });
    if (o.servers.length > 0) this.#resolver.setServers([...o.servers]);
  }

  async resolve(name: string): Promise<ResolveResult> {
    const key = cacheKey(name);
    if (this.#closed || key === null) return this.#report(false, { ok: false, cause: 'error' });
    const hit = this.#cache.get(key);
    if (hit) return this.#report(true, hit);
    let p = this.#inflight.get(key);
    if (!p) {
      p = this.#lookup(key);
      this.#inflight.set(key, p);
      const q = p;
      void q.finally(() => {
        if (this.#inflight.get(key) === q) this.#inflight.delete(key);
      });
    }
    return this.#report(false, await p);
  }

  /** Cancels in-flight queries (they settle as `error`) and refuses every later lookup. */
  close(): void {
    this.#closed = true;
    this.#resolver.cancel();
    this.#cache.clear();
  }

  #report(cached: boolean, e: CacheEntry): ResolveResult {
    const r: ResolveResult = e.ok ? { ok: true, addresses: [...e.addresses], cached } : { ok: false, cause: e.cause };
    try {
      this.#onLookup?.({ cached, outcome: e.ok ? 'ok' : e.cause });
    } catch {
      // A metrics callback must not turn a resolved name into a failed connection.
    }
    return r;
  }

  #lookup(key: string): Promise<CacheEntry> {
    const answers = Promise.all([this.#family(key, 4), this.#family(key, 6)]).then(([a, aaaa]) => {
      const e = combine(a, aaaa, this.#negativeTtlMs);
      // A lookup that outlived its deadline still fills the cache for the next connection.
      if (!this.#closed && e.ttlMs > 0) this.#cache.set(key, e.entry, { ttl: e.ttlMs });
      return e.entry;
    });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<CacheEntry>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, cause: 'timeout' }), this.#timeoutMs);
    });
    return Promise.race([answers, deadline]).finally(() => clearTimeout(timer));
  }

  async #family(key: string, family: 4 | 6): Promise<FamilyAnswer> {
    try {
      const records = family === 4 ? await this.#resolver.resolve4(key, { ttl: true }) : await this.#resolver.resolve6(key, { ttl: true });
      return { ok: true, records };
    } catch (err) {
      return { ok: false, cause: causeOf(err) };
    }
  }
}

/** Lowercase, one trailing dot removed; null for what cannot be a DNS name. */
function cacheKey(name: string): string | null {
  if (typeof name !== 'string') return null;
  const n = (name.endsWith('.') ? name.slice(0, -1) : name).toLowerCase();
  return n.length === 0 || n.length > MAX_NAME_LENGTH ? null : n;
}

function combine(a: FamilyAnswer, aaaa: FamilyAnswer, negativeTtlMs: number): { entry: CacheEntry; ttlMs: number } {
  const records = [...(a.ok ? a.records : []), ...(aaaa.ok ? aaaa.records : [])];
  if (records.length > 0) {
    const ttlS = Math.min(...records.map((r) => r.ttl));
    let ttlMs = Math.min(MAX_TTL_MS, Math.max(MIN_TTL_MS, ttlS * 1000));
    // One family answered and the other failed for a passing reason: ask again soon, so the
    // missing family is not absent for the whole TTL.
    const transient = (f: FamilyAnswer): boolean => !f.ok && f.cause !== 'nodata' && f.cause !== 'nxdomain';
    if (transient(a) || transient(aaaa)) ttlMs = Math.min(ttlMs, negativeTtlMs);
    return { entry: { ok: true, addresses: [...new Set(records.map((r) => r.address))] }, ttlMs };
  }
  const causes = [a, aaaa].map((f) => (f.ok ? 'nodata' : f.cause));
  // RFC 8020: NXDOMAIN means no name at all, whichever type was asked.
  if (causes.includes('nxdomain')) return { entry: { ok: false, cause: 'nxdomain' }, ttlMs: negativeTtlMs };
  if (causes.every((c) => c === 'nodata')) return { entry: { ok: false, cause: 'nodata' }, ttlMs: negativeTtlMs };
  // RFC 2308 §7 allows caching server failures; they are not, so a recovered server is used at once.
  return { entry: { ok: false, cause: causes.find((c) => c !== 'nodata')! }, ttlMs: 0 };
}

function causeOf(err: unknown): ResolveFailure {
  switch ((err as { code?: unknown } | null)?.code) {
    case 'ENOTFOUND':
      return 'nxdomain';
    case 'ENODATA':
      return 'nodata';
    case 'ETIMEOUT':
      return 'timeout';
    case 'ESERVFAIL':
      return 'servfail';
    // The REFUSED rcode, or an ICMP port unreachable: either way the server would not answer.
    case 'EREFUSED':
    case 'ECONNREFUSED':
      return 'refused';
    default:
      return 'error';
  }
}
