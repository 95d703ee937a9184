import { describe, expect, it } from 'vitest';
import { sourceBlock, tenantKeyOf } from '../../../src/match/tenant-key.ts';

const DEFAULT = { ipv4: 32, ipv6: 64 };

describe('tenantKeyOf: whose limits a source counts against', () => {
  const key = tenantKeyOf(DEFAULT);

  it("keeps a sandbox's own key, whatever its source", () => {
    expect(key('sb-a', '2001:db8:0:1::a1')).toBe('sb-a');
    expect(key('sb-a', '198.18.0.2')).toBe('sb-a');
  });

  it('counts the addresses of one IPv6 /64 as one source of no sandbox, and two /64s apart', () => {
    const keys = ['2001:db8:0:1::a1', '2001:db8:0:1:ffff:ffff:ffff:ffff', '2001:db8:0:1:8000::1'].map((s) => key(null, s));
    expect(new Set(keys)).toEqual(new Set(['source 2001:db8:0:1::/64']));
    expect(key(null, '2001:db8:0:3::2')).toBe('source 2001:db8:0:3::/64');
  });

  it('gives one prefix one spelling, however its address is written', () => {
    for (const s of ['2001:DB8:0:1::5', '2001:db8:0:1:0:0:0:5', '2001:0db8:0000:0001::9', '2001:db8:0:1::0.0.0.5']) {
      expect(key(null, s), s).toBe('source 2001:db8:0:1::/64');
    }
  });

  it('counts the link-local addresses of one interface as one block, each interface apart (RFC 4007 §11)', () => {
    const keys = ['fe80::1%eth0', 'fe80::ffff:ffff:ffff:ffff%eth0', 'FE80::8000:0:0:1%eth0'].map((s) => key(null, s));
    expect(new Set(keys)).toEqual(new Set(['source fe80::/64%eth0']));
    expect(key(null, 'fe80::1%eth1')).toBe('source fe80::/64%eth1');
    expect(key(null, 'fe80::1%7')).toBe('source fe80::/64%7');
    expect(tenantKeyOf({ ipv4: 32, ipv6: 128 })(null, 'fe80::1%eth0')).toBe('source fe80::1/128%eth0');
    // A zone on what is no IPv6 address is no block.
    expect(key(null, '198.18.0.2%eth0')).toBe('source 198.18.0.2%eth0');
  });

  it('counts an IPv4-mapped IPv6 address as its IPv4 address (RFC 4291 §2.5.5.2)', () => {
    expect(key(null, '::ffff:198.18.0.2')).toBe('source 198.18.0.2/32');
    expect(key(null, '::FFFF:c612:2')).toBe(key(null, '198.18.0.2'));
    expect(tenantKeyOf({ ipv4: 24, ipv6: 128 })(null, '::ffff:198.18.0.77')).toBe('source 198.18.0.0/24');
  });

  it('counts IPv4 sources exactly by default, and by the block configured', () => {
    expect(key(null, '198.18.0.2')).not.toBe(key(null, '198.18.0.3'));
    const by24 = tenantKeyOf({ ipv4: 24, ipv6: 64 });
    expect(by24(null, '198.18.0.2')).toBe(by24(null, '198.18.0.3'));
    expect(by24(null, '198.18.0.2')).toBe('source 198.18.0.0/24');
  });

  it('counts each IPv6 address apart at /128, and every source together at /0', () => {
    const exact = tenantKeyOf({ ipv4: 32, ipv6: 128 });
    expect(exact(null, '2001:db8::1')).toBe('source 2001:db8::1/128');
    expect(exact(null, '2001:db8::1')).not.toBe(exact(null, '2001:db8::2'));
    const all = tenantKeyOf({ ipv4: 0, ipv6: 0 });
    expect(all(null, '2001:db8::1')).toBe('source ::/0');
    expect(all(null, 'fe80::1')).toBe('source ::/0');
    expect(all(null, '198.18.0.2')).toBe('source 0.0.0.0/0');
  });

  it('keys a source that is no address by its text (a client gone before its address was read)', () => {
    expect(key(null, '')).toBe('source ');
    expect(sourceBlock('not-an-address', DEFAULT)).toBe('not-an-address');
  });
});
