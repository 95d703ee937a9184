// A token bucket per key (a sandbox): `perSecond` tokens flow in, at most `burst` are held, and
// each query takes one, and a large answer more (dns/service.ts answerCost). Buckets of keys not seen for a while are dropped (LRU-bounded), so a
// stream of new source addresses cannot grow memory without bound.

import type { LRUCache } from 'lru-cache';
import { growingLru } from '../util/lru.ts';

interface Bucket {
  tokens: number;
  at: number;
}

export class TokenBuckets {
  readonly #perMs: number;
  readonly #burst: number;
  readonly #clock: () => number;
  readonly #buckets: LRUCache<string, Bucket>;

  constructor(o: { perSecond: number; burst: number; maxKeys?: number; clock?: () => number }) {
    this.#perMs = o.perSecond / 1000;
    this.#burst = Math.max(1, o.burst);
    this.#clock = o.clock ?? (() => performance.now());
    this.#buckets = growingLru<string, Bucket>(o.maxKeys ?? 100_000);
  }

  /** The most tokens a bucket holds. */
  get burst(): number {
    return this.#burst;
  }

  /**
   * Takes `n` tokens for `key` (at most the burst, so a full bucket always pays): false, and none
   * taken, when its bucket holds fewer.
   */
  take(key: string, n = 1): boolean {
    const want = Math.min(Math.max(1, n), this.#burst);
    const b = this.#refilled(key);
    if (b.tokens < want) return false;
    b.tokens -= want;
    return true;
  }

  /**
   * Takes `n` tokens (at most the burst) for work already done, whether the bucket holds them or
   * not: it may go below empty, to minus the burst at most, and takes nothing more until it has
   * refilled. An upstream's large answer is read before its cost is known; refused for want of
   * tokens, it cost a query's one, and a sandbox asking new names of its own zone had one read a
   * token (dns/service.ts).
   */
  owe(key: string, n: number): void {
    const b = this.#refilled(key);
    b.tokens = Math.max(-this.#burst, b.tokens - Math.min(Math.max(1, n), this.#burst));
  }

  #refilled(key: string): Bucket {
    const now = this.#clock();
    let b = this.#buckets.get(key);
    if (!b) {
      b = { tokens: this.#burst, at: now };
      this.#buckets.set(key, b);
    }
    b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#perMs);
    b.at = now;
    return b;
  }
}
