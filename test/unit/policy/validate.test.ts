import { describe, expect, it } from 'vitest';
import { validateCidr, validatePort } from '../../../src/policy/validate.ts';

describe('validateCidr', () => {
  it.each([
    ['10.0.0.0/8', '10.0.0.0/8'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['1.2.3.4', '1.2.3.4/32'],
    ['1.2.3.4/32', '1.2.3.4/32'],
    ['::1', '::1/128'],
    ['2001:DB8::/32', '2001:db8::/32'],
    ['2001:0db8:0000::/48', '2001:db8::/48'],
    ['::/0', '::/0'],
    ['::ffff:10.0.0.0/104', '::ffff:10.0.0.0/104'],
  ])('accepts %j as %j', (text, cidr) => {
    expect(validateCidr(text)).toEqual({ ok: true, cidr });
  });

  it.each([
    ['192.168.1.0/16', '192.168.0.0/16'],
    ['10.1.2.3/8', '10.0.0.0/8'],
    ['1.2.3.4/0', '0.0.0.0/0'],
    ['2001:db8::1/32', '2001:db8::/32'],
    ['fe80::1:2:3:4/10', 'fe80::/10'],
  ])('clears the host bits of %j to %j instead of refusing it', (text, cidr) => {
    expect(validateCidr(text)).toEqual({ ok: true, cidr });
  });

  it.each([
    ['', 'Expected a CIDR such as "10.0.0.0/8", got an empty string'],
    ['10.0.0.0/33', 'CIDR "10.0.0.0/33" has a prefix length outside 0-32'],
    ['::/129', 'CIDR "::/129" has a prefix length outside 0-128'],
    ['10.0.0.0/', 'CIDR "10.0.0.0/" has a malformed prefix length ""'],
    ['10.0.0.0/08', 'CIDR "10.0.0.0/08" has a malformed prefix length "08"'],
    ['10.0.0.0/-1', 'CIDR "10.0.0.0/-1" has a malformed prefix length "-1"'],
    ['10.0.0.0/8/8', 'CIDR "10.0.0.0/8/8" has a malformed prefix length "8/8"'],
    ['example.com/8', 'CIDR "example.com/8" does not start with an IPv4 or IPv6 address'],
    ['010.0.0.0/8', 'CIDR "010.0.0.0/8" does not start with an IPv4 or IPv6 address (write IPv4 as four decimal parts without leading zeros)'],
    ['10.1/16', 'CIDR "10.1/16" does not start with an IPv4 or IPv6 address (write IPv4 as four decimal parts without leading zeros)'],
    ['fe80::1%eth0', 'CIDR "fe80::1%eth0" does not start with an IPv4 or IPv6 address (zone indexes such as "%eth0" are not accepted)'],
    [' 10.0.0.0/8', 'CIDR " 10.0.0.0/8" does not start with an IPv4 or IPv6 address'],
    ['256.0.0.0/8', 'CIDR "256.0.0.0/8" does not start with an IPv4 or IPv6 address'],
  ])('refuses %j: %s', (text, reason) => {
    expect(validateCidr(text)).toEqual({ ok: false, reason });
  });

  it('refuses overlong input with a shortened quote', () => {
    const r = validateCidr(`${'1'.repeat(10_000)}/8`);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason.length).toBeLessThan(150);
  });

  it('refuses a value that is not a string without throwing', () => {
    expect(validateCidr(8 as unknown as string).ok).toBe(false);
  });
});

describe('validatePort', () => {
  it.each([
    [443, { from: 443, to: 443 }],
    [1, { from: 1, to: 1 }],
    [65535, { from: 65535, to: 65535 }],
    ['443', { from: 443, to: 443 }],
    ['8000-8999', { from: 8000, to: 8999 }],
    ['22-22', { from: 22, to: 22 }],
    ['1-65535', { from: 1, to: 65535 }],
  ])('accepts %j', (v, range) => {
    expect(validatePort(v)).toEqual({ ok: true, range });
  });

  it.each([
    [0, 'Port "0" is outside 1-65535'],
    [70000, 'Port "70000" is outside 1-65535'],
    [-1, 'Port "-1" is outside 1-65535'],
    ['0', 'Port "0" is outside 1-65535'],
    ['70000', 'Port "70000" is outside 1-65535'],
    ['0-80', 'Port "0-80" is outside 1-65535'],
    ['80-65536', 'Port "80-65536" is outside 1-65535'],
    ['9000-8000', 'Port range "9000-8000" is reversed; write the lower port first'],
    [1.5, 'Port "1.5" is not a whole number'],
    [Number.NaN, 'Port "NaN" is not a whole number'],
    ['443 ', 'Port "443 " is not a port (443) or a range ("8000-8999")'],
    ['1-2-3', 'Port "1-2-3" is not a port (443) or a range ("8000-8999")'],
    ['https', 'Port "https" is not a port (443) or a range ("8000-8999")'],
    ['', 'Port "" is not a port (443) or a range ("8000-8999")'],
    [null, 'Expected a port (443) or a range ("8000-8999"), got null'],
    [true, 'Expected a port (443) or a range ("8000-8999"), got boolean'],
    [[443], 'Expected a port (443) or a range ("8000-8999"), got object'],
  ])('refuses %j: %s', (v, reason) => {
    expect(validatePort(v)).toEqual({ ok: false, reason });
  });
});
