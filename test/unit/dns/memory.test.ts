import { describe, expect, it } from 'vitest';
import { ResolvedNames } from '../../../src/dns/memory.ts';
import { TokenBuckets } from '../../../src/dns/token-bucket.ts';

describe('ResolvedNames', () => {
  it('remembers names per sandbox until TTL plus grace', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 1000, perSandbox: 10, clock: () => now });
    m.remember('a', 'x.test', ['198.18.1.10'], 5);
    m.remember('a', 'y.test', ['198.18.1.10'], 60);
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['x.test', 'y.test']);
    expect(m.namesFor('b', '198.18.1.10')).toEqual([]);
    now = 5999;
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['x.test', 'y.test']);
    now = 6001;
    expect(m.namesFor('a', '198.18.1.10')).toEqual(['y.test']);
    expect(m.view('a')).toEqual([{ address: '198.18.1.10', names: [{ name: 'y.test', expiresInMs: 54_999 }] }]);
  });

  it('says when the first name given for an address expires: a verdict on those names holds until then', () => {
    let now = 0;
    const m = new ResolvedNames({ graceMs: 1000, perSandbox: 10, clock: () => now });
    expect(m.expiryOf('a', '198.18.1.10')).toBe(Infinity);
    m.remember('a', 'y.test', ['198.18.1.10'], 60);
    m.remember('a', 'x.test', ['198.18.1.10'], 5);
    expect(m.expiryOf('a', '198.18.1.10')).toBe(6000);
    expect(m.expiryOf('b', '198.18.1.10')).toBe(Infinity);
    // Given again with a longer TTL: the later expiry stands.
    now = 3000;
    m.remember('a', 'x.test', ['198.18.1.10'], 100);
    expect(m.expiryOf('a', '198.18.1.10')).toBe(61_000);
  });

  it('keeps at most perSandbox addresses, dropping the least recently given', () => {
    const m = new ResolvedNames({ graceMs: 0, perSandbox: 2, clock: () => 0 });
    m.remember('a', 'x.test', ['198.18.1.1', '198.18.1.2', '198.18.1.3'], 60);
    expect(m.namesFor('a', '198.18.1.1')).toEqual([]);
    expect(m.namesFor('a', '198.18.1.3')).toEqual(['x.test']);
    expect(m.total).toBe(2);
    expect(m.top(5)).toEqual([{ sandbox: 'a', addresses: 2 }]);
    m.forget('a');
    expect(m.total).toBe(0);
  });
});

describe('TokenBuckets', () => {
  it('allows the burst, then the rate', () => {
    let now = 0;
    const b = new TokenBuckets({ perSecond: 10, burst: 3, clock: () => now });
    expect([b.take('a'), b.take('a'), b.take('a'), b.take('a')]).toEqual([true, true, true, false]);
    expect(b.take('b')).toBe(true);
    now = 100;
    expect([b.take('a'), b.take('a')]).toEqual([true, false]);
  });
});
