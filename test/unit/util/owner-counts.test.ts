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
});
