// An LRU cache bounded by a count of entries that allocates as entries arrive.
//
// lru-cache's `max` preallocates its bookkeeping for all `max` slots at construction (two
// arrays of `max` pointers and three typed arrays: ≈ 28 bytes a slot). egressd's bounds are
// generous ceilings that are rarely reached: 100,000 slots cost 2.7 MB of idle RSS at start-up,
// and the 4,096 names remembered per sandbox cost 112 KB for every sandbox that ever resolved a
// name. Bounding by `maxSize` with every entry of size 1 evicts exactly as `max` does (the least
// recently used first, once the count would pass the bound), with storage that grows instead.

import { LRUCache } from 'lru-cache';

/** lru-cache's options without the three that `growingLru` sets. */
export type GrowingLruOptions<K extends {}, V extends {}> = Omit<LRUCache.Options<K, V, unknown>, 'max' | 'maxSize' | 'sizeCalculation'>;

/**
 * An LRU holding at most `max` entries (an integer ≥ 1), evicting the least recently used,
 * whose storage grows with its entries instead of being allocated for `max` up front.
 * @throws TypeError (from lru-cache) when `max` is not a positive integer.
 */
export function growingLru<K extends {}, V extends {}>(max: number, options: GrowingLruOptions<K, V> = {}): LRUCache<K, V> {
  return new LRUCache<K, V>({ ...options, maxSize: max, sizeCalculation: () => 1 } as LRUCache.Options<K, V, unknown>);
}
