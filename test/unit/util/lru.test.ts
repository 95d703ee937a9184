import { describe, expect, it } from 'vitest';
import { growingLru } from '../../../src/util/lru.ts';

describe('growingLru', () => {
  it('holds at most max entries and evicts the least recently used first', () => {
    const c = growingLru<string, number>(3);
    c.set('a', 1);
    c.set('b', 2);
    c.set('c', 3);
    expect(c.get('a')).toBe(1); // a is now the most recently used
    c.set('d', 4);
    expect([...c.keys()].sort()).toEqual(['a', 'c', 'd']);
    expect(c.size).toBe(3);
    c.set('a', 10); // replacing keeps the count
    expect(c.size).toBe(3);
    expect(c.get('a')).toBe(10);
  });

  it('keeps its other options (a ttl with an injected clock)', () => {
    let now = 1; // lru-cache reads a start time of 0 as "no ttl"
    const c = growingLru<string, number>(10, { perf: { now: () => now }, ttlResolution: 0 });
    c.set('k', 1, { ttl: 1000 });
    now = 1000;
    expect(c.get('k')).toBe(1);
    now = 1002;
    expect(c.get('k')).toBeUndefined();
  });

  it('allocates nothing for its bound up front: 100 caches bounded at 100,000 stay under 4 MB of heap', () => {
    // lru-cache's `max` would preallocate ≈ 2.7 MB each: 270 MB for these.
    const before = process.memoryUsage().heapUsed;
    const caches = Array.from({ length: 100 }, () => growingLru<string, number>(100_000));
    const grown = process.memoryUsage().heapUsed - before;
    expect(caches.length).toBe(100);
    expect(grown).toBeLessThan(4 << 20);
  });

  it('refuses a bound that is not a positive integer', () => {
    expect(() => growingLru(0)).toThrow(TypeError);
    expect(() => growingLru(1.5)).toThrow(TypeError);
  });
});
