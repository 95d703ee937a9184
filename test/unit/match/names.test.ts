import { describe, expect, it } from 'vitest';
import { judgedDnsName, normalizeName, normalizePattern, normalizeWireName } from '../../../src/match/names.ts';

const reasonOf = (raw: string): string => {
  const r = normalizeName(raw);
  if (r.ok) throw new Error(`expected a refusal for ${JSON.stringify(raw)}, got ${JSON.stringify(r)}`);
  return r.reason;
};

describe('normalizeName', () => {
  it.each([
    ['Example.COM', 'example.com'],
    ['example.com.', 'example.com'],
    ['API.GitHub.com.', 'api.github.com'],
    ['bücher.de', 'xn--bcher-kva.de'],
    ['BÜCHER.DE.', 'xn--bcher-kva.de'],
    ['xn--bcher-kva.de', 'xn--bcher-kva.de'],
    ['_acme-challenge.example.com', '_acme-challenge.example.com'],
    ['a-b.c_d.example', 'a-b.c_d.example'],
    ['localhost', 'localhost'],
  ])('normalizes %j to the name %j', (raw, name) => {
    expect(normalizeName(raw)).toEqual({ ok: true, name });
  });

  it.each([
    ['104.236.167.107', '104.236.167.107'],
    ['2130706433', '127.0.0.1'],
    ['0x7f.1', '127.0.0.1'],
    ['0X7F.0.0.1', '127.0.0.1'],
    ['127.1', '127.0.0.1'],
    ['0177.0.0.1', '127.0.0.1'],
    ['127.0.0.1.', '127.0.0.1'],
    ['169.254.43518', '169.254.169.254'],
    ['0xa9fea9fe', '169.254.169.254'],
    ['１２７.０.０.１', '127.0.0.1'],
    ['[::1]', '::1'],
    ['::1', '::1'],
    ['[0:0:0:0:0:0:0:1]', '::1'],
    ['[FD00:EC2::254]', 'fd00:ec2::254'],
    ['::ffff:127.0.0.1', '::ffff:127.0.0.1'],
  ])('classifies %j as the address %j, not a name', (raw, ip) => {
    expect(normalizeName(raw)).toEqual({ ok: true, ip });
  });

  it('refuses an empty name', () => {
    expect(reasonOf('')).toBe('Name is empty');
  });

  it('refuses a lone dot', () => {
    expect(reasonOf('.')).toBe('Name "." is empty once its trailing dot is removed');
  });

  it.each(['exa\u0000mple.com', 'example.com\u0000.evil.com', 'a\tb.com', 'a\r\nb.com', 'a\u007fb.com', 'a\u0085b.com'])(
    'refuses %j, which holds a control character, instead of cutting it',
    (raw) => {
      expect(reasonOf(raw)).toContain('contains a control character');
    },
  );

  it.each([
    ['a b.com', '" "'],
    ['a/b.com', '"/"'],
    ['a*.com', '"*"'],
    ['a@b.com', '"@"'],
    ['a%2eb.com', '"%"'],
  ])('refuses %j, which holds the character %s', (raw, ch) => {
    expect(reasonOf(raw)).toBe(`Name ${JSON.stringify(raw)} contains ${ch}, which is not allowed in a host name`);
  });

  it('refuses a colon that is not part of an IPv6 address', () => {
    expect(reasonOf('example.com:443')).toBe('Name "example.com:443" contains ":", which is not allowed in a host name');
  });

  it('refuses brackets around anything but an IPv6 address', () => {
    expect(reasonOf('[1.2.3.4]')).toBe('Name "[1.2.3.4]" is bracketed but is not an IPv6 address');
    expect(reasonOf('[1.2.3.4%eth0]')).toContain('is bracketed but is not an IPv6 address');
  });

  // Node's http writes a link-local destination's zone into its Host as the interface is named
  // (`[fe80::1%eth0]`); a URI writes it after "%25" (RFC 6874 §2).
  it.each([
    ['[fe80::1%eth0]', 'fe80::1'],
    ['[fe80::1%25eth0]', 'fe80::1'],
    ['[FE80::B1%eg1a2b3sb]', 'fe80::b1'],
    ['[fe80::1%eth0.100]', 'fe80::1'],
    ['[fe80::1%2]', 'fe80::1'],
    ['fe80::1%eth0', 'fe80::1'],
  ])('classifies %j, an IPv6 address with its zone, as the address %j', (raw, ip) => {
    expect(normalizeName(raw)).toEqual({ ok: true, ip });
    expect(normalizeWireName(raw)).toEqual({ ok: true, ip });
  });

  it.each(['[fe80::1%]', '[fe80::1%eth 0]', '[fe80::1%eth0%zz]', '[fe80::1%eth0/64]', '[%eth0]'])('refuses %j, whose zone or address is malformed', (raw) => {
    expect(normalizeName(raw).ok).toBe(false);
  });

  it.each(['a..b.com', '.example.com', 'example.com..'])('refuses the empty label in %j', (raw) => {
    expect(reasonOf(raw)).toBe(`Name ${JSON.stringify(raw)} has an empty label`);
  });

  it('accepts a 63-character label and refuses a 64-character one', () => {
    expect(normalizeName(`${'a'.repeat(63)}.com`).ok).toBe(true);
    expect(reasonOf(`${'a'.repeat(64)}.com`)).toContain('has a label longer than 63 characters');
  });

  it('accepts a 253-character name and refuses a 254-character one', () => {
    const name253 = `${'a'.repeat(63)}.`.repeat(3) + 'b'.repeat(61);
    expect(name253.length).toBe(253);
    expect(normalizeName(name253)).toEqual({ ok: true, name: name253 });
    expect(normalizeName(`${name253}.`)).toEqual({ ok: true, name: name253 });
    expect(reasonOf(`a${name253}`)).toContain('is longer than 253 characters');
  });

  it('refuses very long input without looking at all of it', () => {
    expect(reasonOf('a.'.repeat(100_000))).toContain('is longer than 253 characters');
  });

  it('quotes a long value shortened, never the whole of it', () => {
    const r = reasonOf(`${'a'.repeat(300)}.com`);
    expect(r.length).toBeLessThan(150);
  });

  it.each(['ex ample.bücher.de', 'a\ufffd.com', 'xn--zz.bücher.de', '\u200d.com'])('refuses %j, which IDNA (UTS #46) cannot encode', (raw) => {
    expect(reasonOf(raw)).toBe(`Name ${JSON.stringify(raw)} is not a valid internationalized domain name`);
  });

  it.each(['1.2.3.4.5', 'foo.123', 'example.0x1f', '256.0.0.1', '1.2.3.256', '4294967296', '08.1.1.1'])(
    'refuses %j, which ends in a number but is not an IPv4 address',
    (raw) => {
      expect(reasonOf(raw)).toBe(`Name ${JSON.stringify(raw)} ends in a number but is not an IPv4 address`);
    },
  );

  it('treats a name whose last label only starts with digits as a name', () => {
    expect(normalizeName('example.1com')).toEqual({ ok: true, name: 'example.1com' });
  });

  it('never throws on a value that is not a string', () => {
    expect(normalizeName(42 as unknown as string).ok).toBe(false);
    expect(normalizeName(null as unknown as string).ok).toBe(false);
  });
});

describe('normalizePattern', () => {
  it.each([
    ['example.com', 'example.com'],
    ['Example.COM.', 'example.com'],
    ['*.example.com', '*.example.com'],
    ['*.Example.com.', '*.example.com'],
    ['*', '*'],
    ['*.bücher.de', '*.xn--bcher-kva.de'],
    ['com', 'com'],
    ['*.vercel.app', '*.vercel.app'],
    ['*.github.io', '*.github.io'],
    ['*.internal', '*.internal'],
    ['*.github.com', '*.github.com'],
    ['*.bbc.co.uk', '*.bbc.co.uk'],
  ])('normalizes %j to %j', (raw, pattern) => {
    expect(normalizePattern(raw)).toEqual({ ok: true, pattern });
  });

  it.each([
    ['*.com', 'com'],
    ['*.COM.', 'com'],
    ['*.co.uk', 'co.uk'],
    ['*.uk', 'uk'],
    ['*.kawasaki.jp', 'kawasaki.jp'],
    ['*.xn--p1ai', 'xn--p1ai'],
    ['*.рф', 'xn--p1ai'],
  ])('refuses %j, a wildcard over the ICANN public suffix %j', (raw, suffix) => {
    expect(normalizePattern(raw)).toEqual({ ok: false, reason: `Pattern ${JSON.stringify(raw)} is a wildcard over the public suffix "${suffix}"` });
    // In a deny list it only narrows: taken, normalized.
    expect(normalizePattern(raw, 'deny')).toEqual({ ok: true, pattern: `*.${suffix}` });
  });

  it.each(['a*.example.com', '*.*.example.com', 'foo.*.example.com', '**.example.com', '*example.com', 'example.*'])(
    'refuses %j, which uses * other than as a whole first label',
    (raw) => {
      expect(normalizePattern(raw)).toEqual({
        ok: false,
        reason: `Pattern ${JSON.stringify(raw)} may use "*" only as its whole first label, as in "*.example.com"`,
      });
    },
  );

  it.each(['1.2.3.4', '127.1', '[::1]', '::1', '*.1.2.3.4'])('refuses %j, an address that can never match a name', (raw) => {
    const r = normalizePattern(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(/is an IP address|ends in a number/);
  });

  it('reports the name problems of a pattern with the pattern quoted whole', () => {
    expect(normalizePattern('*.a..b.com')).toEqual({ ok: false, reason: 'Pattern "*.a..b.com" has an empty label' });
    expect(normalizePattern('')).toEqual({ ok: false, reason: 'Pattern is empty' });
    expect(normalizePattern('*.')).toEqual({ ok: false, reason: 'Pattern is empty' });
  });
});

describe('normalizeWireName', () => {
  it('refuses a name with a byte at or above 0x80, as a client sent it, instead of punycoding it', () => {
    const r = normalizeWireName('b\u00fccher.test');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toContain('non-ASCII byte at 1');
  });

  it('normalizes an ASCII name exactly as normalizeName does', () => {
    expect(normalizeWireName('XN--BCHER-KVA.Test.')).toEqual(normalizeName('XN--BCHER-KVA.Test.'));
    expect(normalizeWireName('127.1')).toEqual({ ok: true, ip: '127.0.0.1' });
  });
});

describe('judgedDnsName', () => {
  it('is the normalized host name of a name that is one', () => {
    expect(judgedDnsName('WWW.Denied.test')).toBe('www.denied.test');
    expect(judgedDnsName('_xmpp._tcp.a.test')).toBe('_xmpp._tcp.a.test');
  });

  it('judges a name that is no host name as a child of the nearest host name above it', () => {
    expect(judgedDnsName('*.denied.test')).toBe('*.denied.test');
    expect(judgedDnsName('a b.Denied.test')).toBe('*.denied.test');
    expect(judgedDnsName('x.a!b.denied.test')).toBe('*.denied.test');
    expect(judgedDnsName('b\u00fccher.denied.test')).toBe('*.denied.test');
    expect(judgedDnsName('\ufffd\ufffd.denied.test')).toBe('*.denied.test');
  });

  it('is null for what has no host name above it: the root, an address, bad bytes to the last label', () => {
    expect(judgedDnsName('')).toBeNull();
    expect(judgedDnsName('198.18.0.1')).toBeNull();
    expect(judgedDnsName('*')).toBeNull();
    expect(judgedDnsName('a.b!c')).toBeNull();
  });
});
