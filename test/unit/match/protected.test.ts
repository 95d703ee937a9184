import { describe, expect, it } from 'vitest';
import { formatIPv4, parseIpInto, type CidrBlock } from '../../../src/match/ip.ts';
import { compileProtected, embeddedIPv4, MAX_EMBEDDED_IPV4, parseNat64Prefix, PROTECTED_RANGES } from '../../../src/match/protected.ts';
import { validateCidr } from '../../../src/policy/validate.ts';

describe('compileProtected: the built-in ranges', () => {
  const p = compileProtected({});

  it.each([
    ['0.0.0.0', '0.0.0.0/8', '"this network" (0.0.0.0 reaches the local host)'],
    ['10.1.2.3', '10.0.0.0/8', 'RFC 1918'],
    ['100.64.0.1', '100.64.0.0/10', 'CGNAT'],
    ['100.100.100.200', '100.64.0.0/10', 'Alibaba Cloud metadata'],
    ['127.0.0.1', '127.0.0.0/8', 'loopback'],
    ['127.255.255.254', '127.0.0.0/8', 'loopback'],
    ['169.254.169.254', '169.254.0.0/16', 'AWS/GCP/Azure/OCI metadata'],
    ['172.16.0.1', '172.16.0.0/12', 'RFC 1918'],
    ['172.31.255.255', '172.16.0.0/12', 'RFC 1918'],
    ['192.0.0.170', '192.0.0.0/24', 'IETF protocol assignments'],
    ['192.0.2.1', '192.0.2.0/24', 'TEST-NET-1'],
    ['192.88.99.1', '192.88.99.0/24', 'deprecated 6to4 relay'],
    ['192.168.1.1', '192.168.0.0/16', 'RFC 1918'],
    ['198.18.0.1', '198.18.0.0/15', 'benchmarking'],
    ['198.19.255.255', '198.18.0.0/15', 'benchmarking'],
    ['198.51.100.7', '198.51.100.0/24', 'TEST-NET-2'],
    ['203.0.113.7', '203.0.113.0/24', 'TEST-NET-3'],
    ['224.0.0.251', '224.0.0.0/4', 'multicast (mDNS)'],
    ['239.255.255.250', '224.0.0.0/4', 'multicast (SSDP)'],
    ['240.0.0.1', '240.0.0.0/4', 'reserved'],
    ['255.255.255.255', '255.255.255.255/32', 'limited broadcast'],
    ['168.63.129.16', '168.63.129.16/32', 'Azure WireServer'],
    ['::', '::/128', 'unspecified'],
    ['::1', '::1/128', 'loopback'],
    ['::1.2.3.4', '::/96', 'IPv4-compatible (deprecated)'],
    ['64:ff9b::a00:1', '64:ff9b::/96', 'NAT64'],
    ['::ffff:0:a9fe:a9fe', '::ffff:0:0:0/96', 'IPv4-translated (SIIT), to 169.254.169.254'],
    ['64:ff9b:1::1', '64:ff9b:1::/48', 'local-use NAT64'],
    ['100::1', '100::/64', 'discard-only'],
    ['2001:0:4136:e378::1', '2001::/32', 'Teredo'],
    ['2001:2::1', '2001:2::/48', 'IPv6 benchmarking'],
    ['2001:10::1', '2001::/23', 'IETF protocol assignments'],
    ['2001:db8::1', '2001:db8::/32', 'documentation'],
    ['2002:a00:1::1', '2002::/16', '6to4'],
    ['3fff::1', '3fff::/20', 'documentation (RFC 9637)'],
    ['5f00::1', '5f00::/16', 'SRv6 SIDs'],
    ['fd00:ec2::254', 'fc00::/7', 'AWS IPv6 metadata'],
    ['fc00::1', 'fc00::/7', 'unique local'],
    ['fe80::1', 'fe80::/10', 'link local'],
    ['fec0::1', 'fec0::/10', 'site local (deprecated)'],
    ['ff02::1', 'ff00::/8', 'multicast'],
  ])('protects %s in %s (%s)', (ip, range) => {
    expect(p.lookup(ip)).toBe(range);
  });

  it.each([
    '8.8.8.8',
    '1.1.1.1',
    '100.63.255.255',
    '100.128.0.0',
    '172.15.255.255',
    '172.32.0.0',
    '192.0.3.1',
    '198.17.255.255',
    '198.20.0.0',
    '223.255.255.255',
    '2606:4700::1111',
    '2a00:1450::1',
    '2001:200::1',
    '2003::1',
  ])('leaves %s, a global address, unprotected', (ip) => {
    expect(p.lookup(ip)).toBeNull();
  });

  it('judges an IPv4-mapped address as its IPv4 address', () => {
    expect(p.lookup('::ffff:127.0.0.1')).toBe('127.0.0.0/8');
    expect(p.lookup('::ffff:a9fe:a9fe')).toBe('169.254.0.0/16');
    expect(p.lookup('::ffff:8.8.8.8')).toBeNull();
  });

  it('lists every built-in range in canonical text', () => {
    for (const r of PROTECTED_RANGES) expect(validateCidr(r.cidr)).toEqual({ ok: true, cidr: r.cidr });
    expect(p.ranges).toEqual(PROTECTED_RANGES.map((r) => r.cidr));
  });

  it('answers null for text that is not an address', () => {
    expect(p.lookup('localhost')).toBeNull();
    expect(p.lookup('')).toBeNull();
  });
});

describe('coversWholly: the condition for an allowed CIDR to unlock', () => {
  const p = compileProtected({});

  it.each([
    '10.0.0.0/8',
    '10.1.0.0/16',
    '169.254.169.254/32',
    '169.254.169.254',
    '127.0.0.1/32',
    'fd00:ec2::254/128',
    'fc00::/7',
    '::ffff:10.0.0.0/104',
    '224.0.0.0/3',
  ])('%s lies wholly inside the protected ranges', (cidr) => {
    expect(p.coversWholly(cidr)).toBe(true);
  });

  it.each(['0.0.0.0/0', '8.0.0.0/7', '10.0.0.0/7', '169.254.0.0/15', '::/0', 'fc00::/6', '::ffff:0:0/96', '192.0.0.0/16', 'not a cidr'])(
    '%s does not',
    (cidr) => {
      expect(p.coversWholly(cidr)).toBe(false);
    },
  );

  it('counts adjacent protected ranges together', () => {
    // 192.88.99.0/24 is protected but 192.88.98.0/24 is not; 240/4 and 224/4 are neighbours.
    expect(p.coversWholly('192.88.98.0/23')).toBe(false);
    expect(p.coversWholly('224.0.0.0/3')).toBe(true);
  });
});

describe('compileProtected: extra and except', () => {
  it('adds the extra ranges, locked: no allowed CIDR unlocks them (issue 10 part 2)', () => {
    const p = compileProtected({ extra: ['8.8.8.0/24', '2606:4700::/32'] });
    expect(p.lookup('8.8.8.8')).toBe('8.8.8.0/24');
    expect(p.lookup('2606:4700::1111')).toBe('2606:4700::/32');
    expect(p.lookupLocked('8.8.8.8')).toBe('8.8.8.0/24');
    expect(p.lookupLocked('::ffff:8.8.8.8')).toBe('8.8.8.0/24');
    expect(p.lookupLocked('10.0.0.1')).toBeNull();
    expect(p.coversWholly('8.8.8.8/32')).toBe(false);
    expect(p.ranges).toContain('8.8.8.0/24');
  });

  it('carves out the except ranges, as test rigs do with 198.18.0.0/15 and 2001:db8::/32', () => {
    const p = compileProtected({ except: ['198.18.0.0/15', '2001:db8::/32'] });
    expect(p.lookup('198.18.0.1')).toBeNull();
    expect(p.lookup('2001:db8::1')).toBeNull();
    expect(p.lookup('2001::1')).toBe('2001::/32');
    expect(p.lookup('10.0.0.1')).toBe('10.0.0.0/8');
    expect(p.ranges).not.toContain('198.18.0.0/15');
    expect(p.ranges).not.toContain('2001:db8::/32');
    expect(p.coversWholly('198.18.0.0/15')).toBe(false);
    expect(p.coversWholly('2001:db8::/48')).toBe(false);
    expect(p.coversWholly('2001::/32')).toBe(true);
  });

  it('carves a hole in a wider range and keeps the rest protected', () => {
    const p = compileProtected({ except: ['10.1.0.0/16'] });
    expect(p.lookup('10.1.2.3')).toBeNull();
    expect(p.lookup('10.2.0.0')).toBe('10.0.0.0/8');
    expect(p.ranges).toContain('10.0.0.0/8');
    expect(p.coversWholly('10.0.0.0/8')).toBe(false);
    expect(p.coversWholly('10.0.0.0/16')).toBe(true);
    expect(p.coversWholly('10.128.0.0/9')).toBe(true);
  });

  it('lets except win over extra', () => {
    const p = compileProtected({ extra: ['8.8.8.8/32'], except: ['8.8.8.0/24'] });
    expect(p.lookup('8.8.8.8')).toBeNull();
  });

  it('throws on a range that was not validated', () => {
    expect(() => compileProtected({ extra: ['10.0.0.0/33'] })).toThrow(TypeError);
  });
});

/** The IPv4 addresses embeddedIPv4 finds inside the IPv6 address `ip`, as text. */
function embedded(ip: string, nat64: readonly CidrBlock[]): string[] {
  const words = new Uint32Array(4);
  expect(parseIpInto(ip, words)).toBe(6);
  const out = new Uint32Array(MAX_EMBEDDED_IPV4);
  return [...out.subarray(0, embeddedIPv4(words, out, nat64))].map(formatIPv4);
}

describe('embeddedIPv4: the NAT64 prefixes the operator declares (protected.nat64Prefixes)', () => {
  // RFC 6052 §2.4's table: 192.0.2.33 behind a network-specific prefix of each length.
  it.each([
    ['2001:db8::/32', '2001:db8:c000:221::'],
    ['2001:db8:100::/40', '2001:db8:1c0:2:21::'],
    ['2001:db8:122::/48', '2001:db8:122:c000:2:2100::'],
    ['2001:db8:122:300::/56', '2001:db8:122:3c0:0:221::'],
    ['2001:db8:122:344::/64', '2001:db8:122:344:c0:2:2100:0'],
    ['2001:db8:122:344::/96', '2001:db8:122:344::192.0.2.33'],
  ])('reads 192.0.2.33 inside %s from %s (RFC 6052 §2.4), and nothing while undeclared', (prefix, ip) => {
    expect(embedded(ip, compileProtected({ nat64Prefixes: [prefix] }).nat64)).toEqual(['192.0.2.33']);
    expect(embedded(ip, [])).toEqual([]);
  });

  it('keeps decoding the well-known prefix with nothing declared (RFC 6052 §2.4)', () => {
    expect(embedded('64:ff9b::192.0.2.33', [])).toEqual(['192.0.2.33']);
  });

  it('skips bits 64-71 and ignores the suffix, as a translator does (RFC 6052 §2.2)', () => {
    const nat64 = compileProtected({ nat64Prefixes: ['2001:db8:122::/48'] }).nat64;
    expect(embedded('2001:db8:122:c000:ff02:21ff:ffff:ffff', nat64)).toEqual(['192.0.2.33']);
  });

  it('reads nothing from an address outside every declared prefix', () => {
    const nat64 = compileProtected({ nat64Prefixes: ['2001:db8:122::/48', '64:ff9b:1::/48'] }).nat64;
    expect(embedded('2001:db8:123:c000:2:2100::', nat64)).toEqual([]);
    expect(embedded('64:ff9b:1:a9fe:a9:fe00::', nat64)).toEqual(['169.254.169.254']);
  });

  it('reads the address of each nested prefix holding it, and a repeated prefix once', () => {
    // The translator uses one of them; egressd cannot tell which, so it judges both.
    const nat64 = compileProtected({ nat64Prefixes: ['64:ff9b:1::/48', '64:ff9b:1:a9fe::/64', '64:ff9b:1::/48'] }).nat64;
    expect(nat64).toHaveLength(2);
    expect(embedded('64:ff9b:1:a9fe:a9:fe00::', nat64)).toEqual(['169.254.169.254', '169.254.0.0']);
  });

  it('protects nothing by itself: the prefix stays as protected or open as it was', () => {
    const p = compileProtected({ nat64Prefixes: ['2600:db8:64::/96'] });
    expect(p.lookup('2600:db8:64::808:808')).toBeNull();
    expect(compileProtected({ nat64Prefixes: ['64:ff9b:1::/48'] }).lookup('64:ff9b:1::1')).toBe('64:ff9b:1::/48');
  });
});

describe('parseNat64Prefix: the RFC 6052 §2.2 formats only', () => {
  it.each(['2001:db8::/32', '2001:db8:100::/40', '64:ff9b:1::/48', '2001:db8:122:300::/56', '2001:db8:122:344::/64', '2001:db8:122:344::/96'])(
    'accepts %s',
    (text) => {
      expect(parseNat64Prefix(text)).toMatchObject({ ok: true, block: { family: 6 } });
    },
  );

  it.each([
    ['10.0.0.0/8', 'NAT64 prefix "10.0.0.0/8" is not an IPv6 prefix'],
    ['2001:db8::/33', 'NAT64 prefix "2001:db8::/33" has a length other than 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)'],
    ['2001:db8::', 'NAT64 prefix "2001:db8::" has a length other than 32, 40, 48, 56, 64 or 96 (RFC 6052 §2.2)'],
    ['2001:db8:122:344::/48', 'NAT64 prefix "2001:db8:122:344::/48" sets bits past its length; did you mean "2001:db8:122::/48"?'],
    ['2001:db8:122:344:100::/64', 'NAT64 prefix "2001:db8:122:344:100::/64" sets bits 64-71, which RFC 6052 §2.2 reserves as zero'],
    ['2001:db8:122:344:100::/96', 'NAT64 prefix "2001:db8:122:344:100::/96" sets bits 64-71, which RFC 6052 §2.2 reserves as zero'],
    ['nat64', 'CIDR "nat64" does not start with an IPv4 or IPv6 address'],
  ])('refuses %s', (text, reason) => {
    expect(parseNat64Prefix(text)).toEqual({ ok: false, reason });
  });
});
