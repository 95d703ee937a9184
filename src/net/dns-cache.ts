// The resolver's answers, by name, for as long as their records may be kept: a positive answer
// for the smallest TTL among its records (clamped), a negative one (NXDOMAIN, NODATA) for the
// negative TTL. A piece of its own so that anything else answering names for sandboxes (a DNS
// listener) can share it: one name, one set of addresses, whoever asked. Each answer is charged to
// the sandbox whose lookup or query brought it; when full, the one holding the most loses its
// oldest (util/owner-counts.ts), so a sandbox resolving thousands of names evicts its own.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';
import { OwnerCounts } from '../util/owner-counts.ts';
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
  readonly #max: number;
  readonly #owners = new OwnerCounts();
  /** Each key's owner (lru-cache's dispose gives the key and value, not set's options). */
  readonly #ownerOf = new Map<string, string>();

  constructor(o: AddressCacheOptions = {}) {
    const clock = o.clock;
    this.#max = Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES);
    this.#lru = growingLru<string, CachedAnswer>(this.#max, {
      ...(clock ? { perf: { now: clock }, ttlResolution: 0 } : {}),
      dispose: (_v, k) => {
        const owner = this.#ownerOf.get(k);
        this.#ownerOf.delete(k);
        if (owner !== undefined) this.#owners.remove(owner, k);
      },
    });
  }

  /** The answer for a name already passed through cacheKey, while it may be kept. */
  get(key: string): CachedAnswer | undefined {
    return this.#lru.get(key);
  }

  /** How much longer the answer may be kept, in milliseconds (0 when there is none). */
  remainingMs(key: string): number {
    return this.#lru.has(key) ? Math.max(0, this.#lru.getRemainingTTL(key)) : 0;
  }

  /** Keeps `answer` for `ttlMs`, charged to `owner` (a sandbox id, or `source ADDR`). */
  set(key: string, answer: CachedAnswer, ttlMs: number, owner = ''): void {
    if (ttlMs <= 0) return;
    if (!this.#lru.has(key) && this.#lru.size >= this.#max) {
      const oldest = this.#owners.oldestOfLargest();
      if (oldest !== undefined) this.#lru.delete(oldest);
    }
    this.#lru.set(key, answer, { ttl: ttlMs });
    this.#ownerOf.set(key, owner);
    this.#owners.add(owner, key);
  }

  /** Answers charged to `owner` now (expired ones not yet dropped included). */
  heldBy(owner: string): number {
    return this.#owners.count(owner);
  }

  clear(): void {
    this.#lru.clear();
  }
}
