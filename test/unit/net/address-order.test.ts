import { describe, expect, it } from 'vitest';
import { orderAddresses, precedence } from '../../../src/net/address-order.ts';

describe('precedence (RFC 6724 §2.1 default policy table)', () => {
  it.each([
    ['::1', 50],
    ['2606:4700::1111', 40],
    ['8.8.8.8', 35],
    ['::ffff:8.8.8.8', 35],
    ['2002:c000:0204::1', 30],
    ['2001:0:4136:e378::1', 5],
    ['fd00:ec2::254', 3],
    ['::8.8.8.8', 1],
    ['fec0::1', 1],
    ['3ffe::1', 1],
    ['not-an-address', -1],
  ])('%s has precedence %i', (a, p) => expect(precedence(a)).toBe(p));
});

describe('orderAddresses (RFC 6724 rule 6, then RFC 8305 §4 interleaving)', () => {
  it('interleaves the families, the preferred one first', () => {
    expect(orderAddresses(['198.51.100.1', '198.51.100.2', '2001:db8::1', '2001:db8::2'], 6)).toEqual([
      '2001:db8::1',
      '198.51.100.1',
      '2001:db8::2',
      '198.51.100.2',
    ]);
    expect(orderAddresses(['2001:db8::1', '2001:db8::2', '198.51.100.1'], 4)).toEqual(['198.51.100.1', '2001:db8::1', '2001:db8::2']);
  });

  it("puts higher precedence first within a family, keeping the resolver's order on ties, and drops duplicates", () => {
    expect(orderAddresses(['2002::1', 'fd00::1', '2606:4700::1', '2606:4700::1'], 6)).toEqual(['2606:4700::1', '2002::1', 'fd00::1']);
  });

  it('starts with the family of the highest precedence when none is preferred', () => {
    expect(orderAddresses(['198.51.100.1', '2606:4700::1'], null)).toEqual(['2606:4700::1', '198.51.100.1']);
  });
});
