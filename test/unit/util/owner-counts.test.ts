import { describe, expect, it } from 'vitest';
import { OwnerCounts } from '../../../src/util/owner-counts.ts';

describe('OwnerCounts: bytes', () => {
  it('charges each key its bytes to its owner, once, and gives them back when it leaves', () => {
    const o = new OwnerCounts();
    o.add('a', 'k1', 100);
    o.add('a', 'k2', 50);
    o.add('a', 'k2', 999);
    o.add('b', 'k3', 10);
    expect([o.bytes('a'), o.bytes('b'), o.totalBytes]).toEqual([150, 10, 160]);
    o.remove('a', 'k1');
    o.remove('a', 'k1');
    o.remove('b', 'k1');
    expect([o.bytes('a'), o.bytes('b'), o.totalBytes]).toEqual([50, 10, 60]);
    o.remove('a', 'k2');
    o.remove('b', 'k3');
    expect([o.bytes('a'), o.count('a'), o.totalBytes]).toEqual([0, 0, 0]);
  });

  it('evicts from the owner holding the most bytes when bytes are full, from the one holding the most keys when the count is', () => {
    const o = new OwnerCounts();
    // a: few large keys; b: many small ones.
    o.add('a', 'a1', 1000);
    o.add('a', 'a2', 1000);
    for (let i = 0; i < 5; i++) o.add('b', `b${i}`, 10);
    expect(o.victim(7, 100, 100, 10_000)).toBeUndefined();
    expect(o.victim(7, 100, 100, 2_100)).toBe('a1');
    expect(o.victim(7, 7, 100, 10_000)).toBe('b0');
  });

  it('makes room in a cache by evicting its victims until the new entry fits, and stops at a key the cache does not hold', () => {
    const o = new OwnerCounts();
    const held = new Map<string, string>();
    // A cache whose delete gives the key back, as lru-cache's dispose does.
    const cache = {
      get size() {
        return held.size;
      },
      delete: (key: string): boolean => {
        const owner = held.get(key);
        if (owner === undefined) return false;
        held.delete(key);
        o.remove(owner, key);
        return true;
      },
    };
    const store = (owner: string, key: string, bytes: number): void => {
      held.set(key, owner);
      o.add(owner, key, bytes);
    };
    store('a', 'a1', 400);
    store('a', 'a2', 400);
    store('b', 'b1', 100);
    // 900 held, 1000 at most: 300 more take a1 (a holds the most bytes), and then there is room.
    o.makeRoom(cache, 10, 300, 1000);
    expect([...held.keys()]).toEqual(['a2', 'b1']);
    // The count bound: at 2 of 2, one key leaves (a and b hold one each), and then there is room.
    o.makeRoom(cache, 2, 0, 1000);
    expect(held.size).toBe(1);
    // A victim the cache no longer holds (charged, never stored) ends the loop instead of spinning.
    o.add('c', 'ghost', 5000);
    const left = [...held.keys()];
    o.makeRoom(cache, 10, 1, 1000);
    expect([...held.keys()]).toEqual(left);
    expect(o.count('c')).toBe(1);
  });
});
