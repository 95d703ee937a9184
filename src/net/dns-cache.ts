// The resolver's answers, by name, for as long as their records may be kept: a positive answer
// for the smallest TTL among its records (clamped), a negative one (NXDOMAIN, NODATA) for the
// negative TTL. A piece of its own so that anything else answering names for sandboxes (a DNS
// listener) can share it: one name, one set of addresses, whoever asked.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';
import { MAX_NAME_LENGTH } from '../match/names.ts';
import type { DnsFailure } from './dns-client.ts';

export type CachedAnswer = { ok: true; addresses: readonly string[] } | { ok: false; cause: DnsFailure };

export interface AddressCacheOptions {
  readonly maxEntries?: number;
  /** A monotonic millisecond clock for expiry; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
}

// A record's TTL is clamped: at least MIN so a TTL-0 name cannot turn every connection into a
// query, at most MAX so a changed record is picked up within minutes whatever its owner set.
export const MIN_TTL_MS = 1_000;
export const MAX_TTL_MS = 300_000;
const DEFAULT_MAX_ENTRIES = 10_000;

/** A TTL in seconds (from the records) as the milliseconds an answer is kept. */
export function clampTtlMs(ttlSeconds: number): number {
  return Math.min(MAX_TTL_MS, Math.max(MIN_TTL_MS, ttlSeconds * 1000));
}

/** Lowercase, one trailing dot removed; null for what cannot be a DNS name. */
export function cacheKey(name: string): string | null {
  if (typeof name !== 'string') return null;
  const n = (name.endsWith('.') ? name.slice(0, -1) : name).toLowerCase();
  return n.length === 0 || n.length > MAX_NAME_LENGTH ? null : n;
}

export class AddressCache {
  readonly #lru: LRUCache<string, CachedAnswer>;

  constructor(o: AddressCacheOptions = {}) {
    const clock = o.clock;
    this.#lru = growingLru<string, CachedAnswer>(Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES), clock ? { perf: { now: clock }, ttlResolution: 0 } : {});
  }

  /** The answer for a name already passed through cacheKey, while it may be kept. */
  get(key: string): CachedAnswer | undefined {
    return this.#lru.get(key);
  }

  /** How much longer the answer may be kept, in milliseconds (0 when there is none). */
  remainingMs(key: string): number {
    return this.#lru.has(key) ? Math.max(0, this.#lru.getRemainingTTL(key)) : 0;
  }

  set(key: string, answer: CachedAnswer, ttlMs: number): void {
    if (ttlMs > 0) this.#lru.set(key, answer, { ttl: ttlMs });
  }

  clear(): void {
    this.#lru.clear();
  }
}
