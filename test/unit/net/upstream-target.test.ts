// chooseUpstream: which address a connection allowed by its name may be dialed, in the three
// dial modes, with a stub resolver (it only needs resolve(name)) and the policy's own verdict on
// each candidate address.

import { describe, expect, it } from 'vitest';
import { chooseUpstream, chooseUpstreamNow, type UpstreamQuery } from '../../../src/net/upstream-target.ts';
import type { ResolveResult } from '../../../src/net/resolve.ts';
import { compilePolicy } from '../../../src/policy/compile.ts';
import { decide } from '../../../src/policy/decide.ts';
import { compileProtected } from '../../../src/match/protected.ts';

/** A resolver that answers from a table and records every name it is asked. */
function stubResolver(answers: Record<string, ResolveResult>) {
  const asked: string[] = [];
  return {
    asked,
    resolve: async (name: string): Promise<ResolveResult> => {
      asked.push(name);
      return answers[name] ?? { ok: false, cause: 'nxdomain' };
    },
  };
}

const ok = (...addresses: string[]): ResolveResult => ({ ok: true, addresses, cached: false });

/** A query for `api.example.com`, allowed by name, on 443; every address allowed unless told. */
function query(over: Partial<UpstreamQuery> & { resolver: UpstreamQuery['resolver'] }): UpstreamQuery {
  return { mode: 'resolved', name: 'api.example.com', original: '192.0.2.10', port: 443, allows: () => true, ...over };
}

describe('chooseUpstream in resolved mode', () => {
  it("dials the original destination when it is one of the name's addresses", async () => {
    const r = stubResolver({ 'api.example.com': ok('198.51.100.1', '192.0.2.10') });
    expect(await chooseUpstream(query({ resolver: r }))).toEqual({ ok: true, addresses: ['192.0.2.10', '198.51.100.1'], how: 'original' });
    expect(r.asked).toEqual(['api.example.com']);
  });

  it('recognizes the original destination however its address is spelled', async () => {
    const r = stubResolver({ 'api.example.com': ok('2001:db8::a', '192.0.2.10') });
    expect(await chooseUpstream(query({ resolver: r, original: '::ffff:192.0.2.10' }))).toMatchObject({ ok: true, how: 'original' });
    expect(await chooseUpstream(query({ resolver: r, original: '2001:DB8:0:0::A' }))).toMatchObject({ ok: true, how: 'original' });
    // An AAAA record in IPv4-mapped form names the IPv4 address.
    const mapped = stubResolver({ 'api.example.com': ok('::ffff:192.0.2.10') });
    expect(await chooseUpstream(query({ resolver: mapped, original: '192.0.2.10', allows: () => false }))).toEqual({
      ok: true,
      addresses: ['192.0.2.10'],
      how: 'original',
    });
  });

  it("dials one of the name's own addresses when the original destination is not one (a spoofed SNI)", async () => {
    const r = stubResolver({ 'api.example.com': ok('198.51.100.1') });
    const t = await chooseUpstream(query({ resolver: r, original: '203.0.113.66' }));
    expect(t).toEqual({ ok: true, addresses: ['198.51.100.1'], how: 'resolved' });
  });

  it('prefers an address of the family the client used', async () => {
    const r = stubResolver({ 'api.example.com': ok('2001:db8::1', '198.51.100.1', '2001:db8::2', '198.51.100.2') });
    // RFC 8305 §4: the families interleaved, the client's first.
    expect(await chooseUpstream(query({ resolver: r, original: '203.0.113.66' }))).toEqual({
      ok: true,
      addresses: ['198.51.100.1', '2001:db8::1', '198.51.100.2', '2001:db8::2'],
      how: 'resolved',
    });
    expect(await chooseUpstream(query({ resolver: r, original: '2001:db8:ffff::66' }))).toMatchObject({
      ok: true,
      addresses: ['2001:db8::1', '198.51.100.1', '2001:db8::2', '198.51.100.2'],
    });
    // An IPv4-mapped destination is an IPv4 client.
    expect(await chooseUpstream(query({ resolver: r, original: '::ffff:203.0.113.66' }))).toMatchObject({
      ok: true,
      addresses: ['198.51.100.1', '2001:db8::1', '198.51.100.2', '2001:db8::2'],
    });
  });

  it("dials the other family when the client's family has no allowed address", async () => {
    const r = stubResolver({ 'api.example.com': ok('2001:db8::1', '198.51.100.1') });
    const t = await chooseUpstream(query({ resolver: r, original: '203.0.113.66', allows: (a) => a !== '198.51.100.1' }));
    expect(t).toEqual({ ok: true, addresses: ['2001:db8::1'], how: 'resolved' });
  });

  it('never dials a resolved address the policy refuses', async () => {
    const r = stubResolver({ 'api.example.com': ok('169.254.169.254', '10.0.0.5', '198.51.100.7') });
    const judged: string[] = [];
    const allows = (a: string): boolean => {
      judged.push(a);
      return a === '198.51.100.7';
    };
    expect(await chooseUpstream(query({ resolver: r, original: '203.0.113.66', allows }))).toEqual({ ok: true, addresses: ['198.51.100.7'], how: 'resolved' });
    expect(judged).toContain('169.254.169.254');
  });

  it('refuses with no-allowed-address when the policy refuses every address of the name', async () => {
    const r = stubResolver({ 'api.example.com': ok('169.254.169.254', '10.0.0.5') });
    const t = await chooseUpstream(query({ resolver: r, original: '203.0.113.66', allows: () => false }));
    expect(t).toMatchObject({ ok: false, reason: 'no-allowed-address' });
    expect(t.ok ? '' : t.detail).toContain('"api.example.com"');
    expect(t.ok ? '' : t.detail).toContain('169.254.169.254');
  });

  it('refuses with no-allowed-address when the name has no address at all', async () => {
    const r = stubResolver({ 'api.example.com': ok() });
    expect(await chooseUpstream(query({ resolver: r }))).toMatchObject({ ok: false, reason: 'no-allowed-address' });
  });

  it('refuses with dns-failure when the lookup fails, naming the cause', async () => {
    const r = stubResolver({ 'api.example.com': { ok: false, cause: 'servfail' } });
    const t = await chooseUpstream(query({ resolver: r }));
    expect(t).toMatchObject({ ok: false, reason: 'dns-failure' });
    expect(t.ok ? '' : t.detail).toContain('servfail');
  });

  it('keeps DNS rebinding to the metadata address out under a real policy, in IPv4 and mapped IPv6 spellings', async () => {
    const policy = compilePolicy(
      { mode: 'block-all', allow: { domains: ['api.example.com'], cidrs: [], ports: [] }, deny: { domains: [], cidrs: [], ports: [] } },
      compileProtected({}),
    );
    const allows = (ip: string): boolean => decide(policy, { name: 'api.example.com', ip, port: 443 }).verdict === 'allow';
    const rebound = stubResolver({ 'api.example.com': ok('169.254.169.254', '::ffff:169.254.169.254', 'fd00:ec2::254') });
    // Public addresses here: the documentation ranges used elsewhere in this file are protected.
    expect(await chooseUpstream(query({ resolver: rebound, original: '93.184.216.34', allows }))).toMatchObject({ ok: false, reason: 'no-allowed-address' });
    const mixed = stubResolver({ 'api.example.com': ok('::ffff:169.254.169.254', '140.82.112.3') });
    expect(await chooseUpstream(query({ resolver: mixed, original: '93.184.216.34', allows }))).toEqual({
      ok: true,
      addresses: ['140.82.112.3'],
      how: 'resolved',
    });
  });
});

describe('chooseUpstream in verify mode', () => {
  it("dials the original destination when it is one of the name's addresses", async () => {
    const r = stubResolver({ 'api.example.com': ok('192.0.2.10') });
    expect(await chooseUpstream(query({ mode: 'verify', resolver: r }))).toEqual({ ok: true, addresses: ['192.0.2.10'], how: 'original' });
  });

  it("refuses a destination that is not one of the name's addresses with dns-mismatch, rather than dialing another", async () => {
    const r = stubResolver({ 'api.example.com': ok('198.51.100.1') });
    const t = await chooseUpstream(query({ mode: 'verify', resolver: r, original: '203.0.113.66' }));
    expect(t).toMatchObject({ ok: false, reason: 'dns-mismatch' });
    expect(t.ok ? '' : t.detail).toContain('"203.0.113.66"');
  });

  it('refuses with dns-failure when the lookup fails', async () => {
    const r = stubResolver({});
    expect(await chooseUpstream(query({ mode: 'verify', resolver: r }))).toMatchObject({ ok: false, reason: 'dns-failure' });
  });
});

describe('chooseUpstream with a link-local original destination', () => {
  // The original destination of a link-local connection carries the zone of the link it came in
  // on (fe80::1%eth1, SO_ORIGINAL_DST's scope); the name's AAAA records carry none.
  it.each(['resolved', 'verify'] as const)("%s: finds it among the name's addresses and dials it on its link", async (mode) => {
    const r = stubResolver({ 'api.example.com': ok('fe80::1', '2001:db8::9') });
    const t = await chooseUpstream(query({ mode, resolver: r, original: 'fe80::1%eth1' }));
    expect(t).toMatchObject({ ok: true, how: 'original' });
    expect(t.ok && t.addresses[0]).toBe('fe80::1%eth1');
  });
});

describe('chooseUpstream in original mode', () => {
  it('dials the original destination and never resolves, even for a connection allowed by name', async () => {
    const r = stubResolver({ 'api.example.com': ok('198.51.100.1') });
    const t = await chooseUpstream(query({ mode: 'original', resolver: r, original: '203.0.113.66' }));
    expect(t).toEqual({ ok: true, addresses: ['203.0.113.66'], how: 'original' });
    expect(r.asked).toEqual([]);
  });
});

describe('chooseUpstream honours a presented name, whatever rule allowed the connection (issue 10 §7)', () => {
  it("dials the name's own allowed address, not the original destination, in resolved mode", async () => {
    // allow-all with attacker.test denied: other.test presented to attacker.test's address.
    const r = stubResolver({ 'other.test': ok('198.51.100.20') });
    const t = await chooseUpstream(query({ resolver: r, name: 'other.test', original: '198.51.100.13' }));
    expect(t).toEqual({ ok: true, addresses: ['198.51.100.20'], how: 'resolved' });
  });

  it("refuses in verify mode when the original destination is not the presented name's", async () => {
    const r = stubResolver({ 'other.test': ok('198.51.100.20') });
    expect(await chooseUpstream(query({ mode: 'verify', resolver: r, name: 'other.test', original: '198.51.100.13' }))).toMatchObject({
      ok: false,
      reason: 'dns-mismatch',
    });
  });

  it('refuses a presented name that does not resolve (dns-failure), rather than trusting the destination', async () => {
    const r = stubResolver({});
    expect(await chooseUpstream(query({ resolver: r, name: 'nowhere.test' }))).toMatchObject({ ok: false, reason: 'dns-failure' });
  });

  it('dials the original destination without resolving when the client sent no name', async () => {
    const r = stubResolver({});
    for (const mode of ['resolved', 'verify', 'original'] as const) {
      expect(await chooseUpstream(query({ mode, resolver: r, name: null }))).toEqual({ ok: true, addresses: ['192.0.2.10'], how: 'original' });
    }
    expect(r.asked).toEqual([]);
  });
});

describe('chooseUpstream: the next address when one fails (issue 10 §8)', () => {
  it("lists the original destination first, then the name's other allowed addresses, families interleaved", async () => {
    const r = stubResolver({ 'api.example.com': ok('198.51.100.1', '192.0.2.10', '2001:db8::1', '198.51.100.2', '2001:db8::2') });
    expect(await chooseUpstream(query({ resolver: r }))).toEqual({
      ok: true,
      addresses: ['192.0.2.10', '198.51.100.1', '2001:db8::1', '198.51.100.2', '2001:db8::2'],
      how: 'original',
    });
  });

  it('leaves out the addresses the policy refuses', async () => {
    const r = stubResolver({ 'api.example.com': ok('192.0.2.10', '2001:db8::1', '198.51.100.2') });
    const t = await chooseUpstream(query({ resolver: r, allows: (a) => a !== '2001:db8::1' }));
    expect(t).toEqual({ ok: true, addresses: ['192.0.2.10', '198.51.100.2'], how: 'original' });
  });
});

// A connection whose name is cached is dialed in the same turn (no promise): the answer must be
// chooseUpstream's own, and a name that is not cached must be left to chooseUpstream.
describe('chooseUpstreamNow', () => {
  const answers: Record<string, ResolveResult> = {
    'api.example.com': ok('198.51.100.1', '192.0.2.10'),
    'other.example.com': ok('198.51.100.7'),
    'gone.example.com': { ok: false, cause: 'nxdomain' },
  };
  const cachedResolver = () => ({ ...stubResolver(answers), cached: (name: string): ResolveResult | null => answers[name] ?? null });

  it('answers as chooseUpstream does for a cached name, in every mode, and for no name', async () => {
    for (const mode of ['resolved', 'verify', 'original'] as const) {
      for (const name of ['api.example.com', 'other.example.com', 'gone.example.com', null]) {
        const q = query({ resolver: cachedResolver(), mode, name });
        expect(chooseUpstreamNow(q)).toEqual(await chooseUpstream(q));
      }
    }
  });

  it('leaves a name that is not cached to chooseUpstream, which looks it up', async () => {
    const r = { ...stubResolver(answers), cached: (): ResolveResult | null => null };
    const q = query({ resolver: r });
    expect(chooseUpstreamNow(q)).toBeNull();
    expect(r.asked).toEqual([]);
    expect(await chooseUpstream(q)).toEqual({ ok: true, addresses: ['192.0.2.10', '198.51.100.1'], how: 'original' });
    expect(r.asked).toEqual(['api.example.com']);
  });
});
