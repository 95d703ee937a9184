// The resolver's answers, by name, for as long as their records may be kept: a positive answer
// for the smallest TTL among its records (clamped), a negative one (NXDOMAIN, NODATA) for the
// negative TTL. A piece of its own so that anything else answering names for sandboxes (a DNS
// listener) can share it: one name, one set of addresses, whoever asked. Each answer is charged to
// the sandbox whose lookup or query brought it; when full, the one holding the most loses its
// oldest (util/owner-counts.ts), so a sandbox resolving thousands of names evicts its own. It is
// full by count or by bytes, each taking from whoever holds the most of what it counts; a name
// keeps no more addresses than a dial tries (dialableAddresses), so thousands of records in one
// answer cost no more than sixteen a family.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';
import { OwnerCounts } from '../util/owner-counts.ts';
import { MAX_NAME_LENGTH } from '../match/names.ts';
import { familyOf, precedence } from './address-order.ts';
import { MAX_DIAL_ADDRESSES } from './client-side.ts';
import type { DnsFailure } from './dns-client.ts';

/** `aliases`: the CNAME targets the answer's chain ran through (FamilyAnswer), absent when none. */
export type CachedAnswer = { ok: true; addresses: readonly string[]; aliases?: readonly string[] } | { ok: false; cause: DnsFailure };

export interface AddressCacheOptions {
  readonly maxEntries?: number;
  /** The most bytes the entries may hold, as entryBytes estimates them. */
  readonly maxBytes?: number;
  /** A monotonic millisecond clock for expiry; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
}

// A record's TTL is clamped: at least MIN so a TTL-0 name cannot turn every connection into a
// query, at most MAX so a changed record is picked up within minutes whatever its owner set.
export const MIN_TTL_MS = 1_000;
export const MAX_TTL_MS = 300_000;
const DEFAULT_MAX_ENTRIES = 10_000;
const DEFAULT_MAX_BYTES = 32 * 1_048_576;
// An entry's estimated heap bytes: its bookkeeping (the lru-cache slot, the owner maps' entries,
// the answer object and its array), then per address a string (V8's header, a byte a character)
// and its slot in the array. Conservative, as dns/cache.ts answerBytes: 10,000 entries of one IPv4
// and one IPv6 address measured 441 bytes each with `node --expose-gc`, estimated 514.
const ENTRY_BYTES = 400;
const ADDRESS_BYTES = 16 + 8;

/** The estimated heap bytes of an entry for `key`. */
export function entryBytes(key: string, answer: CachedAnswer): number {
  let n = ENTRY_BYTES + key.length;
  if (answer.ok) for (const a of [...answer.addresses, ...(answer.aliases ?? [])]) n += ADDRESS_BYTES + a.length;
  return n;
}

/**
 * The addresses of an answer worth keeping: of each family, the MAX_DIAL_ADDRESSES a dial would
 * try first (highest RFC 6724 precedence, the resolver's order breaking ties, as
 * net/address-order.ts orders them), in the resolver's order. A dial tries at most that many
 * (net/connection.ts), however many a name has. What else reads the cached addresses: the check
 * that a connection's original destination is one of the name's (net/upstream-target.ts), which
 * then sees these only; an address the sandbox was given by egressd's DNS listener is judged by
 * its DNS memory (dns/memory.ts, every address given), not by this cache.
 */
export function dialableAddresses(addresses: readonly string[]): readonly string[] {
  if (addresses.length <= MAX_DIAL_ADDRESSES) return addresses;
  const ranked = addresses.map((a, i) => ({ a, i, p: precedence(a) })).sort((x, y) => y.p - x.p || x.i - y.i);
  const taken = { 4: 0, 6: 0 };
  const keep = new Set<number>();
  for (const r of ranked) {
    const family = familyOf(r.a);
    if (taken[family] < MAX_DIAL_ADDRESSES) {
      taken[family]++;
      keep.add(r.i);
    }
  }
  return addresses.filter((_, i) => keep.has(i));
}

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
  readonly #maxBytes: number;
  readonly #owners = new OwnerCounts();
  /** Each key's owner (lru-cache's dispose gives the key and value, not set's options). */
  readonly #ownerOf = new Map<string, string>();

  constructor(o: AddressCacheOptions = {}) {
    const clock = o.clock;
    this.#max = Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES);
    this.#maxBytes = Math.max(0, o.maxBytes ?? DEFAULT_MAX_BYTES);
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

  /**
   * Keeps `answer` for `ttlMs`, charged to `owner` (a sandbox id, or `source BLOCK`: match/tenant-key.ts), with its
   * dialable addresses only (dialableAddresses). When full by count, the owner holding the most
   * entries loses its oldest first; by bytes, the owner holding the most bytes.
   */
  set(key: string, answer: CachedAnswer, ttlMs: number, owner = ''): void {
    if (ttlMs <= 0) return;
    const kept: CachedAnswer = answer.ok ? { ...answer, addresses: dialableAddresses(answer.addresses) } : answer;
    // The entry it replaces leaves first, so its bytes make room rather than count twice.
    this.#lru.delete(key);
    const bytes = entryBytes(key, kept);
    if (bytes > this.#maxBytes) return;
    // Each delete gives the key's bytes back (dispose).
    this.#owners.makeRoom(this.#lru, this.#max, bytes, this.#maxBytes);
    this.#lru.set(key, kept, { ttl: ttlMs });
    this.#ownerOf.set(key, owner);
    this.#owners.add(owner, key, bytes);
  }

  /** Answers charged to `owner` now (expired ones not yet dropped included). */
  heldBy(owner: string): number {
    return this.#owners.count(owner);
  }

  /** The bytes of the entries charged to `owner` now, as estimated when stored. */
  bytesHeldBy(owner: string): number {
    return this.#owners.bytes(owner);
  }

  /** The bytes of every entry held, as estimated when stored (at most the byte budget). */
  get bytes(): number {
    return this.#owners.totalBytes;
  }

  clear(): void {
    this.#lru.clear();
  }
}
