import { describe, expect, it } from 'vitest';
import { TokenBuckets } from '../../../src/dns/token-bucket.ts';

describe('TokenBuckets', () => {
  it('owes work already done below empty, to minus the burst at most, and takes nothing until refilled', () => {
    let now = 0;
    const b = new TokenBuckets({ perSecond: 10, burst: 8, clock: () => now });
    expect(b.take('k', 6)).toBe(true); // 2 left
    b.owe('k', 5); // -3
    expect(b.take('k')).toBe(false);
    now += 350; // +3.5: 0.5
    expect(b.take('k')).toBe(false);
    now += 50; // 1
    expect(b.take('k')).toBe(true);
    b.owe('k', 100); // at most the burst: -8, not -108
    now += 1600; // +16: 8
    expect(b.take('k', 8)).toBe(true);
    expect(b.take('other', 8)).toBe(true);
  });
});
