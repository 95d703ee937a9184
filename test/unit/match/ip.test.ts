import { isIPv6 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  canonicalIp,
  canonicalSource,
  endsInNumber,
  formatIPv6,
  parseCidr,
  parseIPv4,
  parseIPv4Loose,
  parseIPv6,
  parseZonedIpInto,
  sandboxSource,
  wordsToBigInt,
} from '../../../src/match/ip.ts';

const v6 = (text: string): string | null => {
  const w = new Uint32Array(4);
  return parseIPv6(text, w) ? [...w].map((x) => x.toString(16).padStart(8, '0')).join('') : null;
};

describe('parseIPv4 (strict)', () => {
  it.each([
    ['0.0.0.0', 0],
    ['127.0.0.1', 0x7f000001],
    ['255.255.255.255', 0xffffffff],
    ['10.20.30.40', 0x0a141e28],
  ])('reads %j', (text, value) => {
    expect(parseIPv4(text)).toBe(value);
  });

  it.each(['010.0.0.1', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.4 ', '1..2.3', '0x7f.0.0.1', '1.2.3.-1', '', '1111.1.1.1', '١.٢.٣.٤'])(
    'refuses %j',
    (text) => {
      expect(parseIPv4(text)).toBe(-1);
    },
  );
});

describe('parseIPv4Loose (URL / inet_aton spellings)', () => {
  it.each([
    ['127.0.0.1', 0x7f000001],
    ['127.1', 0x7f000001],
    ['127.0.1', 0x7f000001],
    ['2130706433', 0x7f000001],
    ['0x7f000001', 0x7f000001],
    ['0x7f.1', 0x7f000001],
    ['0177.0.0.1', 0x7f000001],
    ['017700000001', 0x7f000001],
    ['0x', 0],
    ['0', 0],
    ['4294967295', 0xffffffff],
  ])('reads %j', (text, value) => {
    expect(parseIPv4Loose(text)).toBe(value);
  });

  it.each(['4294967296', '1.2.3.4.5', '1.256.1.1', '1.2.65536', '08', '0x1g', '1..1', '', 'a.b', '99999999999999999999999'])('refuses %j', (text) => {
    expect(parseIPv4Loose(text)).toBe(-1);
  });
});

describe('endsInNumber', () => {
  it.each([
    ['1.2.3.4', true],
    ['foo.123', true],
    ['foo.0x1f', true],
    ['foo.0x', true],
    ['foo.1com', false],
    ['example.com', false],
    ['foo.', false],
  ])('%j → %j', (name, expected) => {
    expect(endsInNumber(name)).toBe(expected);
  });
});

describe('parseIPv6', () => {
  it.each([
    ['::', '00000000000000000000000000000000'],
    ['::1', '00000000000000000000000000000001'],
    ['1::', '00010000000000000000000000000000'],
    ['2001:db8::1', '20010db8000000000000000000000001'],
    ['2001:DB8:0:0:0:0:0:1', '20010db8000000000000000000000001'],
    ['::ffff:1.2.3.4', '00000000000000000000ffff01020304'],
    ['1:2:3:4:5:6:1.2.3.4', '00010002000300040005000601020304'],
    ['1:2:3:4:5:6:7::', '00010002000300040005000600070000'],
    ['::2:3:4:5:6:7:8', '00000002000300040005000600070008'],
    ['fd00:ec2::254', 'fd000ec2000000000000000000000254'],
  ])('reads %j', (text, hex) => {
    expect(v6(text)).toBe(hex);
  });

  it.each([
    ':',
    ':::',
    '1:::2',
    '1::2::3',
    ':1::',
    '1:',
    '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6:7',
    '12345::',
    '::ffff:1.2.3',
    '::ffff:01.2.3.4',
    '1:2:3:4:5:6:7:1.2.3.4',
    '::1.2.3.4:1',
    'fe80::1%eth0',
    'g::',
    '1:2:3:4:5:6:7:8::',
    `${'0'.repeat(46)}`,
  ])('refuses %j', (text) => {
    expect(v6(text)).toBeNull();
  });

  it('agrees with node:net isIPv6 on random group spellings', () => {
    const group = fc.oneof(fc.constant('0'), fc.constant(''), fc.stringMatching(/^[0-9a-fA-F]{1,5}$/));
    fc.assert(
      fc.property(fc.array(group, { minLength: 1, maxLength: 10 }), (gs) => {
        const text = gs.join(':');
        expect(v6(text) !== null).toBe(isIPv6(text));
      }),
      { numRuns: 1000 },
    );
  });
});

describe('canonical text (RFC 5952)', () => {
  it.each([
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['0:0:0:0:0:0:0:0', '::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['1:0:0:0:0:0:0:0', '1::'],
    ['2001:0db8:0000:0000:0000:ff00:0042:8329', '2001:db8::ff00:42:8329'],
    ['::ffff:7f00:1', '::ffff:127.0.0.1'],
    ['::7f00:1', '::7f00:1'],
    ['64:ff9b::1.2.3.4', '64:ff9b::102:304'],
    ['10.0.0.1', '10.0.0.1'],
  ])('writes %j as %j', (text, canonical) => {
    expect(canonicalIp(text)).toBe(canonical);
  });

  it('round-trips random addresses', () => {
    fc.assert(
      fc.property(fc.uint32Array({ minLength: 4, maxLength: 4 }), (w) => {
        const text = formatIPv6(w);
        const back = new Uint32Array(4);
        expect(parseIPv6(text, back)).toBe(true);
        expect(wordsToBigInt(6, back)).toBe(wordsToBigInt(6, w));
      }),
      { numRuns: 1000 },
    );
  });
});

// canonicalSource keeps its answers per text: asked again, or after thousands of other texts
// (the kept answers start over), it answers exactly as canonicalIp and the IPv4-mapped rule do.
describe('canonicalSource', () => {
  it('answers the same each time, for addresses and non-addresses, past the kept answers too', () => {
    const texts = ['198.18.0.2', '::ffff:198.18.0.2', '2001:DB8::0:1', '2001:db8:0:0::1', 'not an address', '01.2.3.4', ''];
    const expected = ['198.18.0.2', '198.18.0.2', '2001:db8::1', '2001:db8::1', undefined, undefined, undefined];
    for (let round = 0; round < 3; round++) {
      expect(texts.map((t) => canonicalSource(t))).toEqual(expected);
      for (let i = 0; i < 5000; i++) canonicalSource(`10.${round}.${i >> 8}.${i & 255}`);
    }
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6(), fc.string()), (t) => {
        const first = canonicalSource(t);
        expect(canonicalSource(t)).toBe(first);
        if (first !== undefined && !t.toLowerCase().startsWith('::ffff:')) expect(first).toBe(canonicalIp(t));
      }),
    );
  });
});

describe('parseCidr', () => {
  it('reports host bits set while clearing them', () => {
    const r = parseCidr('192.168.1.0/16');
    expect(r.ok && r.hostBitsSet).toBe(true);
    expect(r.ok && r.block.words[0]).toBe(0xc0a80000);
  });

  it('names the zone index when it refuses one', () => {
    const r = parseCidr('fe80::1%eth0/64');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toContain('zone indexes');
  });
});

describe('parseZonedIpInto', () => {
  it.each([
    ['fe80::1%eth0', 6],
    ['fe80::1', 6],
    ['198.18.0.1', 4],
    ['fe80::1%', 0],
    ['198.18.0.1%eth0', 0],
    ['%eth0', 0],
  ] as const)('reads %j as family %d, the zone left aside', (text, family) => {
    const w = new Uint32Array(4);
    expect(parseZonedIpInto(text, w)).toBe(family);
    if (family === 6) expect(w[0]).toBe(0xfe800000);
  });
});

describe('sandboxSource', () => {
  it.each([
    ['198.18.0.2', '198.18.0.2'],
    ['::ffff:198.18.0.2', '198.18.0.2'],
    ['2001:DB8::1', '2001:db8::1'],
    // Linux interface names are case-sensitive: the zone is kept as written.
    ['FE80::B1%Eth1', 'fe80::b1%Eth1'],
    ['febf::1%veth-a.1', 'febf::1%veth-a.1'],
  ])('keys %j as %j', (text, key) => {
    expect(sandboxSource(text)).toEqual({ ok: true, source: key });
  });

  it.each([
    ['fe80::b1', 'needs the interface it is seen on, as in "fe80::b1%eth0"'],
    ['fe80::b1%', 'needs the interface'],
    ['fe80::b1%a/b', 'needs the interface'],
    ['fe80::b1%sixteen-chars-xx', 'needs the interface'],
    ['fe80::7%2', 'names its interface, not its index'],
    ['2001:db8::1%eth0', 'Only an IPv6 link-local address (fe80::/10) takes an interface, got "2001:db8::1%eth0"'],
    ['198.18.0.2%eth0', 'Only an IPv6 link-local address (fe80::/10) takes an interface, got "198.18.0.2%eth0"'],
    ['169.254.1.1%eth0', 'Only an IPv6 link-local address (fe80::/10) takes an interface'],
    ['fe80::/64', 'Expected an IPv4 or IPv6 address, got "fe80::/64"'],
  ])('refuses %j', (text, reason) => {
    const r = sandboxSource(text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toContain(reason);
  });
});
