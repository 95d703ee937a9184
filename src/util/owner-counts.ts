// Which owner (a sandbox) holds which entries of a shared cache, so that a full cache takes room
// from the owner holding the most rather than from whoever used an entry least recently: one
// owner filling the cache evicts its own entries, and room nobody else uses is still its to use.

/**
 * The keys each owner holds, oldest first, and which owner holds the most, in O(1) a change:
 * owners are kept in buckets by count (the LFU bucket idea, applied to owners). The cache calls
 * add when it stores a key and remove whenever one leaves it (lru-cache's dispose).
 */
export class OwnerCounts {
  readonly #keys = new Map<string, Set<string>>();
  readonly #byCount = new Map<number, Set<string>>();
  #most = 0;

  count(owner: string): number {
    return this.#keys.get(owner)?.size ?? 0;
  }

  add(owner: string, key: string): void {
    let keys = this.#keys.get(owner);
    if (keys === undefined) {
      keys = new Set();
      this.#keys.set(owner, keys);
    }
    if (keys.has(key)) return;
    this.#move(owner, keys.size, keys.size + 1);
    keys.add(key);
  }

  remove(owner: string, key: string): void {
    const keys = this.#keys.get(owner);
    if (keys === undefined || !keys.delete(key)) return;
    this.#move(owner, keys.size + 1, keys.size);
    if (keys.size === 0) this.#keys.delete(owner);
  }

  /** The oldest key of an owner holding the most, or undefined when none holds any. */
  oldestOfLargest(): string | undefined {
    const owner = this.#byCount.get(this.#most)?.values().next().value;
    return owner === undefined ? undefined : this.#keys.get(owner)?.values().next().value;
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
