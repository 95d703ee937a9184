// RFC 2181 §8: a TTL with its most significant bit set counts as zero, wherever egressd reads one:
// the data path's lookups, the DNS listener's answer cache and what it hands on.

import { describe, expect, it } from 'vitest';
import { recordTtl } from '../../../src/net/dns-client.ts';
import { cacheTtl } from '../../../src/dns/cache.ts';
import type { Answered } from '../../../src/dns/message.ts';

const answered = (ttl: number): Answered => ({
  rcode: 0,
  authenticData: false,
  answers: [{ name: 'a.test', type: 'A', ttl, data: '198.18.1.1' }],
  authorities: [],
  additionals: [],
});

describe('recordTtl', () => {
  it.each([
    [0, 0],
    [60, 60],
    [0x7fffffff, 0x7fffffff],
    [0x80000000, 0],
    [0xffffffff, 0],
    [-1, 0],
    [undefined, 0],
  ])('reads %s as %s', (ttl, want) => {
    expect(recordTtl(ttl)).toBe(want);
  });

  it('keeps an answer whose TTL has its top bit set for no time at all', () => {
    expect(cacheTtl(answered(0x80000000))).toBe(0);
    expect(cacheTtl(answered(0x7fffffff))).toBe(300);
  });
});
