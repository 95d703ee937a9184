// The answers the DNS listener forwarded, whole (any type, with their authority and additional
// sections), kept for their TTL (lru-cache) for the next sandbox asking the same question. The
// addresses of A and AAAA answers also go into the resolver's address cache (net/dns-cache.ts),
// so the address a sandbox was given and the address egressd dials come from one answer.
//
// Each sandbox sees the cache through a view of its own, so that no answer tells it what another
// sandbox asked (cache snooping between tenants): an upstream answer is fetched once and shared
// (#shared), but a sandbox is answered from its own view entry, made when it first gets that
// answer, with the TTLs as they were fetched and aged only from that moment (Unbound's
// `serve-original-ttl` hides the age the same way; Cilium's DNS proxy keeps no cache and leaves
// it to the resolver behind it). A view entry lives its whole TTL from its sandbox's first sight,
// whatever happens to the shared answer, so a view never ends early either (which would date the
// other's query); a sandbox may so keep an answer up to one TTL (at most MAX_CACHE_TTL_S) past the
// upstream's. The first sight's wait, as long as the fetch took, is dns/service.ts's (#fetch).
// Each view entry is charged to its sandbox and bounded by answers and by bytes (an answer over
// TCP may be 64 KiB on the wire and ~0.7 MB decoded: 10,000 of them would be ~7 GB). When it is
// full by count, the sandbox holding the most answers loses its oldest; by bytes, the one holding
// the most bytes (not the least recently used of all), so one sandbox asking thousands of names,
// or names with huge answers, evicts its own answers, not the others'; room nobody else uses is
// its to fill. A shared answer lives while some view holds it and its TTL from the fetch runs.
// A sandbox whose view of it left before that (its own flood evicted it) is not given it again:
// had it been, it would be answered from its first fetch when another sandbox's view held the
// shared answer and by the upstream afresh when none did (whose cache had aged the TTLs since).

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';
import { OwnerCounts } from '../util/owner-counts.ts';
import type { Answer } from 'dns-packet';
import { RCODE, type Answered } from './message.ts';
import { recordTtl } from '../net/dns-client.ts';

/** A record's TTL is clamped to this, so a changed record is picked up within minutes. */
export const MAX_CACHE_TTL_S = 300;
const DEFAULT_MAX_ENTRIES = 10_000;
/** The byte budget when none is given (the `dns.cacheBytes` default, docs/config.md says why). */
const DEFAULT_MAX_BYTES = 32 * 1_048_576;

export interface CachedAnswer {
  readonly answered: Answered;
  /** When its owner first got it, on the cache's clock (ms): its TTLs age from then. */
  readonly storedAt: number;
  /** Whose view it is (a sandbox id, or `source BLOCK`: match/tenant-key.ts). */
  readonly owner: string;
  /** The question's key (AnswerCache.key). */
  readonly key: string;
}

/** An answer as fetched, for any sandbox's first sight of it while its TTL from the fetch runs. */
interface SharedAnswer {
  readonly answered: Answered;
  /** On the cache's clock, ms. */
  readonly expiresAt: number;
  /** How long the upstream took to answer it, ms: what a sandbox asking alone would have waited. */
  readonly fetchMs: number;
  /** Its estimated bytes (answerBytes), made once. */
  readonly bytes: number;
  /** View entries holding it; at 0 it goes. */
  views: number;
  /**
   * Owners whose view of it left while others' held it: not given it again (shared()). Past
   * MAX_LEFT it goes, as at 0 views, so what it remembers stays bounded.
   */
  left: Set<string> | null;
}

/** The most owners a shared answer remembers as having left it; past it, it goes. */
const MAX_LEFT = 256;

export interface AnswerCacheOptions {
  readonly maxEntries?: number;
  /** The most bytes the answers may hold, as answerBytes estimates them. */
  readonly maxBytes?: number;
  /** A monotonic millisecond clock; tests replace it to expire entries without waiting. */
  readonly clock?: () => number;
}

export class AnswerCache {
  /** The views: `owner NUL key` → the owner's entry. */
  readonly #cache: LRUCache<string, CachedAnswer>;
  /** The latest answer fetched for each question some view holds. */
  readonly #shared = new Map<string, SharedAnswer>();
  readonly #clock: () => number;
  readonly #max: number;
  readonly #maxBytes: number;
  readonly #owners = new OwnerCounts();

  constructor(o: AnswerCacheOptions = {}) {
    this.#clock = o.clock ?? (() => performance.now());
    this.#max = Math.max(1, o.maxEntries ?? DEFAULT_MAX_ENTRIES);
    this.#maxBytes = Math.max(0, o.maxBytes ?? DEFAULT_MAX_BYTES);
    this.#cache = growingLru<string, CachedAnswer>(this.#max, {
      perf: { now: this.#clock },
      ttlResolution: 0,
      // Every way an entry leaves (evicted, expired, replaced, deleted) un-charges its owner, and
      // lets go of the shared answer it held.
      dispose: (v, k) => {
        this.#owners.remove(v.owner, k);
        const sh = this.#shared.get(v.key);
        if (sh?.answered !== v.answered) return;
        if (--sh.views <= 0) return void this.#shared.delete(v.key);
        (sh.left ??= new Set()).add(v.owner);
        if (sh.left.size > MAX_LEFT) this.#shared.delete(v.key);
      },
    });
  }

  static key(name: string, type: string, dnssecOk: boolean, checkingDisabled: boolean): string {
    return `${name}|${type}|${dnssecOk ? 1 : 0}${checkingDisabled ? 1 : 0}`;
  }

  /** `owner`'s own cached answer and its age in whole seconds since `owner` first got it, or undefined. */
  get(key: string, owner: string): { answered: Answered; ageS: number } | undefined {
    const e = this.#cache.get(viewKey(owner, key));
    if (!e) return undefined;
    return { answered: e.answered, ageS: Math.floor((this.#clock() - e.storedAt) / 1000) };
  }

  /**
   * The answer another sandbox's query fetched for `key`, while its TTL from the fetch runs, and
   * how long that fetch took, for `owner`'s first sight of it; undefined when there is none, or
   * when `owner` had a view of it that left early. Nothing is stored: `adopt` does.
   */
  shared(key: string, owner: string): { answered: Answered; fetchMs: number } | undefined {
    const sh = this.#shared.get(key);
    if (sh === undefined || sh.expiresAt <= this.#clock() || sh.left?.has(owner) === true) return undefined;
    return { answered: sh.answered, fetchMs: sh.fetchMs };
  }

  /**
   * Gives `owner` a view entry of `answered` (a shared answer it was waiting for), first seen now;
   * `owner`'s own entry, if any, is left as it is.
   */
  adopt(key: string, answered: Answered, owner: string): void {
    if (this.#cache.has(viewKey(owner, key))) return;
    const sh = this.#shared.get(key);
    this.#store(key, answered, owner, sh?.answered === answered ? sh : null);
  }

  /**
   * Stores an answer `owner`'s query fetched (in `fetchMs`), for its TTL (RFC 2308 §5 for
   * negative answers): `owner`'s view of it, and the shared answer other sandboxes' first sight
   * takes. Answers with no TTL are not kept, nor one larger than the whole byte budget. When full
   * by count, the owner holding the most answers loses its oldest first; by bytes, the owner
   * holding the most bytes.
   */
  set(key: string, answered: Answered, owner = '', fetchMs = 0): void {
    const ttlS = cacheTtl(answered);
    if (ttlS <= 0) return;
    // The owner's view it replaces leaves first, so its bytes make room rather than count twice.
    this.#cache.delete(viewKey(owner, key));
    const sh: SharedAnswer = { answered, expiresAt: this.#clock() + ttlS * 1000, fetchMs, bytes: answerBytes(answered), views: 0, left: null };
    if (this.#store(key, answered, owner, sh)) this.#shared.set(key, sh);
  }

  /** Stores `owner`'s view entry; `sh`: the shared answer it holds (its bytes made once). Whether it was stored. */
  #store(key: string, answered: Answered, owner: string, sh: SharedAnswer | null): boolean {
    const ttlS = cacheTtl(answered);
    if (ttlS <= 0) return false;
    const vk = viewKey(owner, key);
    // Each view counts its answer's bytes whole, shared or not: a shared answer outlives the view
    // that fetched it while another holds it, so the bound holds whichever views remain.
    const bytes = ENTRY_BYTES + vk.length + (sh?.bytes ?? answerBytes(answered));
    if (bytes > this.#maxBytes) return false;
    // Each delete gives the key's bytes back (dispose).
    this.#owners.makeRoom(this.#cache, this.#max, bytes, this.#maxBytes);
    this.#cache.set(vk, { answered, storedAt: this.#clock(), owner, key }, { ttl: ttlS * 1000 });
    this.#owners.add(owner, vk, bytes);
    if (sh !== null) sh.views++;
    return true;
  }

  /** Answers charged to `owner` now (expired ones not yet dropped included). */
  heldBy(owner: string): number {
    return this.#owners.count(owner);
  }

  /** The bytes of the answers charged to `owner` now, as estimated when stored. */
  bytesHeldBy(owner: string): number {
    return this.#owners.bytes(owner);
  }

  /** The bytes of every answer held, as estimated when stored (at most the byte budget). */
  get bytes(): number {
    return this.#owners.totalBytes;
  }

  /** View entries held, every sandbox's together. */
  get size(): number {
    return this.#cache.size;
  }

  /** Shared answers held (each held by one view or more). */
  get sharedSize(): number {
    return this.#shared.size;
  }

  clear(): void {
    this.#cache.clear();
    this.#shared.clear();
  }
}

const viewKey = (owner: string, key: string): string => `${owner}\u0000${key}`;

/**
 * Seconds an answer may be kept: the least TTL among its records; for NXDOMAIN or an empty
 * NOERROR, the SOA's TTL bounded by its MINIMUM (RFC 2308 §5), and nothing without an SOA.
 * Failures (SERVFAIL, REFUSED) are never kept, so a recovered server is used at once.
 */
export function cacheTtl(a: Answered): number {
  if (a.rcode !== RCODE.NOERROR && a.rcode !== RCODE.NXDOMAIN) return 0;
  const ttls = (rs: readonly Answer[]): number[] => rs.map((r) => ('ttl' in r ? recordTtl(r.ttl) : 0));
  if (a.rcode === RCODE.NOERROR && a.answers.length > 0) {
    return Math.min(MAX_CACHE_TTL_S, ...ttls(a.answers), ...ttls(a.authorities));
  }
  const soa = a.authorities.find((r) => r.type === 'SOA') as (Answer & { ttl?: number; data?: { minimum?: number } }) | undefined;
  if (!soa) return 0;
  return Math.min(MAX_CACHE_TTL_S, recordTtl(soa.ttl), recordTtl(soa.data?.minimum));
}

// The size an answer keeps on the heap, estimated when it is stored from the decoded records
// themselves (the encoded length alone is no guide: 64 KiB of A records decode to ~0.7 MB, 64 KiB
// of TXT to ~0.1 MB). A conservative per-value estimate, calibrated with `node --expose-gc` on
// decoded answers (heapUsed and arrayBuffers per answer over 200 copies): 4,000 A records, 167
// bytes a record measured, 207 estimated; 250 TXT records of 255 bytes, 420 bytes a record plus
// the message measured, 437 estimated plus the message.
/** A string: V8's header, then a byte a character (DNS names and text are Latin-1). */
const STRING_BYTES = 16;
/** An object or array: its header and elements pointer. */
const OBJECT_BYTES = 24;
/** A property of an object (its slot, with the shape's share); an array element takes 8. */
const FIELD_BYTES = 16;
/** A Buffer (a Uint8Array view): the typed-array object and its wrapper. */
const VIEW_BYTES = 224;
/**
 * An entry's own bookkeeping: the lru-cache slot, CachedAnswer and Answered objects, the owner's
 * map entry. Generous: 10,000 answers of one A record measured 224 bytes each, estimated 644.
 */
const ENTRY_BYTES = 400;

/**
 * The estimated heap bytes of an answer's records (every section), in bytes. A Buffer in a record
 * (TXT strings, an unknown type's RDATA, keys and signatures) is dns-packet's view of the message
 * it was decoded from, and keeps that whole message alive: the bytes of each distinct backing
 * ArrayBuffer are counted once, so a small record from a large message counts as the message.
 */
export function answerBytes(a: Answered): number {
  const backing = new Set<ArrayBufferLike>();
  let n = 0;
  for (const rs of [a.answers, a.authorities, a.additionals]) for (const r of rs) n += valueBytes(r, backing);
  return n;
}

function valueBytes(v: unknown, backing: Set<ArrayBufferLike>): number {
  if (typeof v === 'string') return STRING_BYTES + v.length;
  if (typeof v !== 'object' || v === null) return 0;
  if (ArrayBuffer.isView(v)) {
    if (backing.has(v.buffer)) return VIEW_BYTES;
    backing.add(v.buffer);
    return VIEW_BYTES + v.buffer.byteLength;
  }
  let n = OBJECT_BYTES;
  if (Array.isArray(v)) for (const e of v as unknown[]) n += 8 + valueBytes(e, backing);
  else for (const e of Object.values(v)) n += FIELD_BYTES + valueBytes(e, backing);
  return n;
}
