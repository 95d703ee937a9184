// The answers the DNS listener forwarded, whole (any type, with their authority and additional
// sections), kept for their TTL (lru-cache) for the next sandbox asking the same question. The
// addresses of A and AAAA answers also go into the resolver's address cache (net/dns-cache.ts),
// so the address a sandbox was given and the address egressd dials come from one answer.
// Each answer is charged to the sandbox whose query fetched it (of several asking at once, the one
// holding fewest: dns/service.ts #fetch). When the cache is full, the
// sandbox holding the most answers loses its oldest (not the least recently used of all), so one
// sandbox asking thousands of names it may reach evicts its own answers, not the others'; room
// nobody else uses is its to fill.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';
import { OwnerCounts } from '../util/owner-counts.ts';
import type { Answer } from 'dns-packet';
import { RCODE, type Answered } from './message.ts';

/** A record's TTL is clamped to this, so a changed record is picked up within minutes. */
export const MAX_CACHE_TTL_S = 300;
const DEFAULT_MAX_ENTRIES = 10_000;

export interface CachedAnswer {
  readonly answered: Answered;
  /** When it was stored, on the cache's clock (ms). */
  readonly storedAt: number;
  /** Whose query fetched it (a sandbox id, or `source ADDR`). */
  readonly owner: string;
}

export interface AnswerCacheOptions {
  readonly maxEntries?: number;
  /** A monotonic millisecond clock; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
}

export class AnswerCache {
  readonly #cache: LRUCache<string, CachedAnswer>;
  readonly #clock: () => number;
  readonly #max: number;
  readonly #owners = new OwnerCounts();

  constructor(o: AnswerCacheOptions = {}) {
    this.#clock = o.clock ?? (() => performance.now());
    this.#max = Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES);
    this.#cache = growingLru<string, CachedAnswer>(this.#max, {
      perf: { now: this.#clock },
      ttlResolution: 0,
      // Every way an entry leaves (evicted, expired, replaced, deleted) un-charges its owner.
      dispose: (v, k) => this.#owners.remove(v.owner, k),
    });
  }

  static key(name: string, type: string, dnssecOk: boolean, checkingDisabled: boolean): string {
    return `${name}|${type}|${dnssecOk ? 1 : 0}${checkingDisabled ? 1 : 0}`;
  }

  /** The cached answer and its age in whole seconds, or undefined. */
  get(key: string): { answered: Answered; ageS: number } | undefined {
    const e = this.#cache.get(key);
    if (!e) return undefined;
    return { answered: e.answered, ageS: Math.floor((this.#clock() - e.storedAt) / 1000) };
  }

  /**
   * Stores an answer for its TTL (RFC 2308 §5 for negative answers), charged to `owner`; answers
   * with none are not kept. When full, the owner holding the most answers loses its oldest first.
   */
  set(key: string, answered: Answered, owner = ''): void {
    const ttlS = cacheTtl(answered);
    if (ttlS <= 0) return;
    if (!this.#cache.has(key) && this.#cache.size >= this.#max) {
      const oldest = this.#owners.oldestOfLargest();
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    this.#cache.set(key, { answered, storedAt: this.#clock(), owner }, { ttl: ttlS * 1000 });
    this.#owners.add(owner, key);
  }

  /** Answers charged to `owner` now (expired ones not yet dropped included). */
  heldBy(owner: string): number {
    return this.#owners.count(owner);
  }

  get size(): number {
    return this.#cache.size;
  }

  clear(): void {
    this.#cache.clear();
  }
}

/**
 * Seconds an answer may be kept: the least TTL among its records; for NXDOMAIN or an empty
 * NOERROR, the SOA's TTL bounded by its MINIMUM (RFC 2308 §5), and nothing without an SOA.
 * Failures (SERVFAIL, REFUSED) are never kept, so a recovered server is used at once.
 */
export function cacheTtl(a: Answered): number {
  if (a.rcode !== RCODE.NOERROR && a.rcode !== RCODE.NXDOMAIN) return 0;
  const ttls = (rs: readonly Answer[]): number[] => rs.map((r) => ('ttl' in r && typeof r.ttl === 'number' ? r.ttl : 0));
  if (a.rcode === RCODE.NOERROR && a.answers.length > 0) {
    return Math.min(MAX_CACHE_TTL_S, ...ttls(a.answers), ...ttls(a.authorities));
  }
  const soa = a.authorities.find((r) => r.type === 'SOA') as (Answer & { ttl?: number; data?: { minimum?: number } }) | undefined;
  if (!soa) return 0;
  return Math.min(MAX_CACHE_TTL_S, soa.ttl ?? 0, soa.data?.minimum ?? 0);
}
