// Which owner (a sandbox) holds which entries of a shared cache, and how many bytes, so that a
// full cache takes room from the owner holding the most rather than from whoever used an entry
// least recently: one owner filling the cache evicts its own entries, and room nobody else uses
// is still its to use. A cache is full by count (its entries) or by bytes (its byte budget); each
// bound takes from whoever holds the most of what it counts.

/**
 * The keys each owner holds, oldest first, with each key's estimated bytes; which owner holds the
 * most keys in O(1) a change (owners are kept in buckets by count, the LFU bucket idea applied to
 * owners), and which holds the most bytes in O(owners) (a scan, made only while a cache is over
 * its byte budget). The cache calls add when it stores a key and remove whenever one leaves it
 * (lru-cache's dispose).
 */
export class OwnerCounts {
  /** Per owner, its keys in the order added, each with its bytes. */
  readonly #keys = new Map<string, Map<string, number>>();
  readonly #bytes = new Map<string, number>();
  readonly #byCount = new Map<number, Set<string>>();
  #most = 0;
  #totalBytes = 0;

  count(owner: string): number {
    return this.#keys.get(owner)?.size ?? 0;
  }

  /** The bytes `owner`'s keys were charged when added. */
  bytes(owner: string): number {
    return this.#bytes.get(owner) ?? 0;
  }

  /** The bytes of every key held. */
  get totalBytes(): number {
    return this.#totalBytes;
  }

  /** Charges `key` (its estimated size, `bytes`) to `owner`; a key it holds already is left as it is. */
  add(owner: string, key: string, bytes = 0): void {
    let keys = this.#keys.get(owner);
    if (keys === undefined) {
      keys = new Map();
      this.#keys.set(owner, keys);
    }
    if (keys.has(key)) return;
    this.#move(owner, keys.size, keys.size + 1);
    keys.set(key, bytes);
    this.#bytes.set(owner, (this.#bytes.get(owner) ?? 0) + bytes);
    this.#totalBytes += bytes;
  }

  remove(owner: string, key: string): void {
    const keys = this.#keys.get(owner);
    const bytes = keys?.get(key);
    if (keys === undefined || bytes === undefined) return;
    keys.delete(key);
    this.#move(owner, keys.size + 1, keys.size);
    this.#totalBytes -= bytes;
    if (keys.size === 0) {
      this.#keys.delete(owner);
      this.#bytes.delete(owner);
    } else this.#bytes.set(owner, this.#bytes.get(owner)! - bytes);
  }

  /** The oldest key of an owner holding the most keys, or undefined when none holds any. */
  oldestOfLargest(): string | undefined {
    const owner = this.#byCount.get(this.#most)?.values().next().value;
    return owner === undefined ? undefined : this.#keys.get(owner)?.keys().next().value;
  }

  /** The oldest key of the owner holding the most bytes, or undefined when none holds any. */
  oldestOfHeaviest(): string | undefined {
    let heaviest: string | undefined;
    let most = -1;
    for (const [owner, b] of this.#bytes) {
      if (b > most) {
        most = b;
        heaviest = owner;
      }
    }
    return heaviest === undefined ? undefined : this.#keys.get(heaviest)?.keys().next().value;
  }

  /**
   * The key to evict before storing a new one of `bytes` in a cache holding `size` of at most
   * `maxEntries` keys and `maxBytes` bytes, or undefined once there is room: the oldest of the
   * owner holding the most keys while the count is at its bound, else of the owner holding the
   * most bytes while the bytes would pass theirs.
   */
  victim(size: number, maxEntries: number, bytes: number, maxBytes: number): string | undefined {
    if (size >= maxEntries) return this.oldestOfLargest();
    if (this.#totalBytes + bytes > maxBytes) return this.oldestOfHeaviest();
    return undefined;
  }

  /**
   * Evicts `cache`'s victims (above), one at a time, until an entry of `bytes` fits. The cache's
   * delete must call remove (lru-cache's dispose); a victim the cache does not hold ends the loop,
   * since removing nothing would name it again forever.
   */
  makeRoom(cache: { readonly size: number; delete(key: string): boolean }, maxEntries: number, bytes: number, maxBytes: number): void {
    for (
      let k = this.victim(cache.size, maxEntries, bytes, maxBytes);
      k !== undefined && cache.delete(k);
      k = this.victim(cache.size, maxEntries, bytes, maxBytes)
    );
  }

  #move(owner: string, from: number, to: number): void {
    const old = this.#byCount.get(from);
    old?.delete(owner);
    if (old?.size === 0) this.#byCount.delete(from);
    if (to > 0) {
      let b = this.#byCount.get(to);
      if (b === undefined) {
        b = new Set();
        this.#byCount.set(to, b);
      }
      b.add(owner);
    }
    if (to > this.#most) this.#most = to;
    else if (from === this.#most && !this.#byCount.has(from)) this.#most = to;
  }
}
