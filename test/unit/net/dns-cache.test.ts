import { describe, expect, it } from 'vitest';
import { AddressCache, dialableAddresses, entryBytes } from '../../../src/net/dns-cache.ts';
import { MAX_DIAL_ADDRESSES } from '../../../src/net/client-side.ts';

const v4 = (n: number, third = 0): string[] => Array.from({ length: n }, (_, i) => `198.18.${third + (i >> 8)}.${i & 255}`);
const v6 = (n: number): string[] => Array.from({ length: n }, (_, i) => `2001:db8::${(i + 1).toString(16)}`);

describe('dialableAddresses', () => {
  it('keeps what a dial can try: MAX_DIAL_ADDRESSES of each family, in the resolver order', () => {
    expect(dialableAddresses(v4(3))).toEqual(v4(3));
    const many = [...v4(4000), ...v6(4000)];
    const kept = dialableAddresses(many);
    expect(kept).toEqual([...v4(MAX_DIAL_ADDRESSES), ...v6(MAX_DIAL_ADDRESSES)]);
  });

  it('keeps the addresses of highest RFC 6724 precedence first, as a dial orders them', () => {
    // 2001::/32 (Teredo, precedence 5) sorts after global IPv6 (40).
    const teredo = Array.from({ length: 20 }, (_, i) => `2001:0:1::${i + 1}`);
    const kept = dialableAddresses([...teredo, ...v6(20)]);
    expect(kept).toEqual(v6(MAX_DIAL_ADDRESSES));
  });
});

describe('AddressCache: bytes', () => {
  it('stores a name with thousands of addresses as the ones a dial tries', () => {
    const c = new AddressCache();
    c.set('big.test', { ok: true, addresses: v4(4000) }, 60_000, 'a');
    expect(c.get('big.test')).toEqual({ ok: true, addresses: v4(MAX_DIAL_ADDRESSES) });
    expect(c.bytes).toBe(entryBytes('big.test', { ok: true, addresses: v4(MAX_DIAL_ADDRESSES) }));
  });

  it('keeps the bytes under the budget by evicting the sandbox holding the most bytes, oldest first', () => {
    const full = { ok: true as const, addresses: v4(MAX_DIAL_ADDRESSES) };
    const one = entryBytes('a00.test', full);
    const c = new AddressCache({ maxEntries: 10_000, maxBytes: 10 * one });
    for (let i = 0; i < 5; i++) c.set(`b${i}.test`, { ok: true, addresses: ['198.18.9.1'] }, 60_000, 'b');
    const small = c.bytesHeldBy('b');
    for (let i = 0; i < 40; i++) {
      c.set(`a${String(i).padStart(2, '0')}.test`, full, 60_000, 'a');
      expect(c.bytes).toBeLessThanOrEqual(10 * one);
    }
    for (let i = 0; i < 5; i++) expect(c.get(`b${i}.test`), `b${i}`).toBeDefined();
    expect(c.bytesHeldBy('b')).toBe(small);
    expect(c.get('a00.test')).toBeUndefined();
    expect(c.get('a39.test')).toBeDefined();
  });
});
