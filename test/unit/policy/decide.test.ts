import { describe, expect, it } from 'vitest';
import { compilePolicy, PortTable } from '../../../src/policy/compile.ts';
import { decide, decideByName, matchSide, matchSideByName, type Decision, type Facts } from '../../../src/policy/decide.ts';
import type { Mode, PortRange, Side } from '../../../src/policy/model.ts';
import { compileProtected, type ProtectedRanges } from '../../../src/match/protected.ts';
import { HostAddresses } from '../../../src/net/host-addresses.ts';

/** The decision without its rule-hit reference (rule-hits.ts has its own tests). */
const plain = ({ hit: _hit, ...d }: Decision): Decision => d;

function iface(address: string) {
  const family = address.includes(':') ? ('IPv6' as const) : ('IPv4' as const);
  return { address, family, netmask: '', mac: '00:00:00:00:00:00', internal: false, cidr: null, scopeid: 0 };
}

const P = compileProtected({});

interface SideIn {
  domains?: string[];
  cidrs?: string[];
  ports?: (number | [number, number])[];
}
const side = (s: SideIn = {}): Side => ({
  domains: s.domains ?? [],
  cidrs: s.cidrs ?? [],
  ports: (s.ports ?? []).map((p): PortRange => (typeof p === 'number' ? { from: p, to: p } : { from: p[0], to: p[1] })),
});
const compiled = (mode: Mode, allow: SideIn = {}, deny: SideIn = {}, protectedSet: ProtectedRanges = P) =>
  compilePolicy({ mode, allow: side(allow), deny: side(deny) }, protectedSet);
const facts = (ip: string, port = 443, name: string | null = null): Facts => ({ name, ip, port });

describe('decide (1): protected addresses', () => {
  it('refuses a protected address even in allow-all mode', () => {
    expect(plain(decide(compiled('allow-all'), facts('169.254.169.254', 80)))).toEqual<Decision>({
      verdict: 'refuse',
      reason: 'protected-address',
      rule: 'protected "169.254.0.0/16"',
      matchedBy: 'protected',
    });
  });

  it('refuses a protected address whose name an allowed domain matches (a name never unlocks)', () => {
    const d = decide(compiled('block-all', { domains: ['metadata.example.com'] }), facts('169.254.169.254', 80, 'metadata.example.com'));
    expect(d.reason).toBe('protected-address');
  });

  it.each([
    ['10.0.0.0/8', '10.1.2.3'],
    ['169.254.169.254/32', '169.254.169.254'],
    ['127.0.0.0/8', '127.0.0.1'],
    ['fd00:ec2::254/128', 'fd00:ec2::254'],
    ['::ffff:10.0.0.0/104', '10.9.9.9'],
  ])('lets the allowed CIDR %s, wholly inside the protected ranges, unlock %s', (cidr, ip) => {
    expect(decide(compiled('block-all', { cidrs: [cidr] }), facts(ip))).toMatchObject({ verdict: 'allow', reason: 'allow-rule', matchedBy: 'address' });
  });

  it.each([
    ['0.0.0.0/0', '10.1.2.3'],
    ['8.0.0.0/6', '10.1.2.3'],
    ['::/0', 'fd00:ec2::254'],
    ['169.254.0.0/15', '169.254.169.254'],
  ])('does not let %s, which reaches beyond the protected ranges, unlock %s', (cidr, ip) => {
    expect(decide(compiled('block-all', { cidrs: [cidr] }), facts(ip)).reason).toBe('protected-address');
  });

  it('unlocks by the most specific allowed CIDR, so a wide one beside a narrow one still unlocks', () => {
    const p = compiled('block-all', { cidrs: ['0.0.0.0/0', '169.254.169.254/32'] });
    expect(decide(p, facts('169.254.169.254')).verdict).toBe('allow');
    expect(decide(p, facts('169.254.169.253')).reason).toBe('protected-address');
    expect(decide(p, facts('8.8.8.8')).verdict).toBe('allow');
  });

  it('unlocks only past step 1: the allow side must still match the port', () => {
    const p = compiled('block-all', { cidrs: ['10.0.0.0/8'], ports: [443] });
    expect(decide(p, facts('10.0.0.1', 443)).verdict).toBe('allow');
    expect(decide(p, facts('10.0.0.1', 22))).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
  });

  it('judges an IPv4-mapped address as its IPv4 address, protected or not', () => {
    expect(decide(compiled('allow-all'), facts('::ffff:169.254.169.254')).rule).toBe('protected "169.254.0.0/16"');
    expect(decide(compiled('allow-all'), facts('::ffff:7f00:1')).rule).toBe('protected "127.0.0.0/8"');
    expect(decide(compiled('allow-all'), facts('::ffff:8.8.8.8')).verdict).toBe('allow');
    expect(decide(compiled('block-all', { cidrs: ['10.0.0.0/8'] }), facts('::ffff:10.0.0.1')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, { cidrs: ['8.8.8.0/24'] }), facts('::ffff:8.8.8.8')).reason).toBe('deny-rule');
  });

  it('reaches an address carved out of the protected set', () => {
    const rig = compileProtected({ except: ['198.18.0.0/15', '2001:db8::/32'] });
    expect(decide(compiled('allow-all', {}, {}, rig), facts('198.18.0.5')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, {}, rig), facts('2001:db8::5')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, {}, rig), facts('10.0.0.5')).verdict).toBe('refuse');
  });

  it('judges a link-local destination by its address, its zone left for the dial', () => {
    const rig = compileProtected({ except: ['fe80::/10'] });
    expect(decide(compiled('allow-all', {}, {}, rig), facts('fe80::1%eth0')).verdict).toBe('allow');
    expect(decide(compiled('allow-all'), facts('fe80::1%eth0'))).toMatchObject({
      verdict: 'refuse',
      reason: 'protected-address',
      rule: expect.stringContaining('fe80::/10'),
    });
  });

  it('refuses an address that does not parse, failing closed', () => {
    for (const ip of ['', 'localhost', '127.1', '010.0.0.1', '[::1]', 'fe80::1%', '198.18.0.1%eth0']) {
      expect(decide(compiled('allow-all'), facts(ip))).toMatchObject({ verdict: 'refuse', reason: 'protected-address', matchedBy: 'protected' });
    }
  });
});

describe("decide (1b): the operator's protected.extra ranges are never unlocked by a policy", () => {
  // Issue 10 part 2's example: extra 192.168.1.100/32, a policy allowing 192.168.1.0/24.
  const extra = compileProtected({ extra: ['192.168.1.100/32', '203.0.113.0/24', 'fd00:ec2::/64', '8.8.4.0/24'] });
  it.each([
    ['192.168.1.0/24', '192.168.1.100'],
    ['192.168.1.100/32', '192.168.1.100'],
    ['203.0.113.0/24', '203.0.113.7'],
    ['fd00:ec2::/32', 'fd00:ec2::254'],
    ['8.8.4.0/24', '8.8.4.4'],
    ['0.0.0.0/0', '8.8.4.4'],
  ])('an allowed CIDR %s does not unlock %s, which protected.extra names', (cidr, ip) => {
    expect(decide(compiled('block-all', { cidrs: [cidr] }, {}, extra), facts(ip))).toMatchObject({
      verdict: 'refuse',
      reason: 'protected-address',
      matchedBy: 'protected',
    });
    expect(decide(compiled('allow-all', {}, {}, extra), facts(ip)).reason).toBe('protected-address');
  });

  it('still lets the allowed CIDR unlock the built-in addresses beside the extra one', () => {
    const p = compiled('block-all', { cidrs: ['192.168.1.0/24'] }, {}, extra);
    expect(decide(p, facts('192.168.1.100')).rule).toBe('protected.extra "192.168.1.100/32"');
    expect(decide(p, facts('192.168.1.101')).verdict).toBe('allow');
  });

  it('locks an extra range that repeats a built-in one', () => {
    const p = compileProtected({ extra: ['10.0.0.0/8'] });
    expect(decide(compiled('block-all', { cidrs: ['10.0.0.0/8'] }, {}, p), facts('10.1.2.3')).rule).toBe('protected.extra "10.0.0.0/8"');
  });

  it('lets only protected.except, which the operator sets, lift an extra range', () => {
    const p = compileProtected({ extra: ['192.168.1.0/24'], except: ['192.168.1.100/32'] });
    expect(decide(compiled('allow-all', {}, {}, p), facts('192.168.1.100')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, {}, p), facts('192.168.1.101')).reason).toBe('protected-address');
  });
});

describe('decide (1c): an IPv6 address that hands an IPv4 address to a translator or a tunnel', () => {
  // The gateway connects to the IPv4 address inside (RFC 6052 NAT64, RFC 2765 SIIT, RFC 3056
  // 6to4, RFC 4380 Teredo, RFC 4291 §2.5.5.1): that address is protected as itself, as an
  // IPv4-mapped address is. Unlocking the IPv6 range opens its public IPv4 addresses only.
  it.each([
    ['64:ff9b::/96', '64:ff9b::a9fe:a9fe', '169.254.0.0/16'],
    ['64:ff9b::/96', '64:ff9b::7f00:1', '127.0.0.0/8'],
    ['64:ff9b::/96', '64:ff9b::10.0.0.5', '10.0.0.0/8'],
    ['::ffff:0:0:0/96', '::ffff:0:a9fe:a9fe', '169.254.0.0/16'],
    ['::/96', '::a9fe:a9fe', '169.254.0.0/16'],
    ['2002::/16', '2002:a9fe:a9fe::1', '169.254.0.0/16'],
    ['2002::/16', '2002:c0a8:101::1', '192.168.0.0/16'],
    // Teredo: the server's address, and the client's, obfuscated (bits inverted).
    ['2001::/32', '2001:0:a9fe:a9fe::1', '169.254.0.0/16'],
    ['2001::/32', '2001:0:808:808:0:0:5601:5601', '169.254.0.0/16'],
  ])('an allowed %s does not unlock %s, which reaches %s', (cidr, ip, range) => {
    const d = decide(compiled('block-all', { cidrs: [cidr] }), facts(ip));
    expect(d).toMatchObject({ verdict: 'refuse', reason: 'protected-address', matchedBy: 'protected' });
    expect(d.rule).toContain(`protected "${range}"`);
  });

  it('opens the public IPv4 addresses behind an unlocked translation prefix, and a protected one only with an IPv4 CIDR that unlocks it', () => {
    expect(decide(compiled('block-all', { cidrs: ['64:ff9b::/96'] }), facts('64:ff9b::808:808')).verdict).toBe('allow');
    expect(decide(compiled('block-all', { cidrs: ['2002::/16'] }), facts('2002:808:808::1')).verdict).toBe('allow');
    const both = compiled('block-all', { cidrs: ['64:ff9b::/96', '169.254.169.254/32'] });
    expect(decide(both, facts('64:ff9b::a9fe:a9fe')).verdict).toBe('allow');
    expect(decide(both, facts('64:ff9b::a9fe:a9fd')).reason).toBe('protected-address');
  });

  it('keeps the IPv4 address protected when the operator lifts the NAT64 prefix (protected.except), as a DNS64 host must', () => {
    const nat64 = compileProtected({ except: ['64:ff9b::/96'] });
    expect(decide(compiled('allow-all', {}, {}, nat64), facts('64:ff9b::808:808')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, {}, nat64), facts('64:ff9b::a9fe:a9fe'))).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
    expect(
      decide(compiled('allow-all', {}, {}, compileProtected({ except: ['64:ff9b::/96'], extra: ['8.8.4.0/24'] })), facts('64:ff9b::808:404')).rule,
    ).toContain('protected.extra "8.8.4.0/24"');
  });

  it('judges :: and ::1 as themselves, not as 0.0.0.0 and 0.0.0.1: lifting ::1/128 opens the loopback, and :: stays protected', () => {
    const loopback = compileProtected({ except: ['::1/128'] });
    expect(decide(compiled('allow-all', {}, {}, loopback), facts('::1')).verdict).toBe('allow');
    expect(decide(compiled('allow-all', {}, {}, loopback), facts('::'))).toMatchObject({
      verdict: 'refuse',
      rule: expect.stringContaining('protected "::/128"'),
    });
    expect(decide(compiled('allow-all'), facts('::1'))).toMatchObject({ verdict: 'refuse', rule: expect.stringContaining('protected "::1/128"') });
    // The addresses after them are IPv4-compatible: with ::/96 lifted, ::2 is still 0.0.0.2.
    const compatible = compileProtected({ except: ['::/96'] });
    expect(decide(compiled('allow-all', {}, {}, compatible), facts('::2'))).toMatchObject({ verdict: 'refuse', rule: expect.stringContaining('0.0.0.0/8') });
    expect(decide(compiled('allow-all', {}, {}, compatible), facts('::808:808')).verdict).toBe('allow');
  });

  it('lets a policy that allows ::1/128 or ::/128 reach it, and keeps a denied 0.0.0.0/8 off :: and ::1', () => {
    for (const ip of ['::', '::1']) {
      const own = `${ip}/128`;
      expect(plain(decide(compiled('block-all', { cidrs: [own] }), facts(ip)))).toEqual<Decision>({
        verdict: 'allow',
        reason: 'allow-rule',
        rule: `allowed_cidrs ${JSON.stringify(own)}`,
        matchedBy: 'address',
      });
      const lifted = compileProtected({ except: [own] });
      expect(decide(compiled('allow-all', {}, { cidrs: ['0.0.0.0/8'] }, lifted), facts(ip)).verdict).toBe('allow');
      expect(matchSide(compiled('block-all', { cidrs: ['0.0.0.0/8'] }, {}, lifted).allow, facts(ip), lifted.nat64)).toBeNull();
    }
  });
});

describe('decide (3): a denied IPv4 CIDR holds against its NAT64, 6to4 and SIIT forms', () => {
  // On a DNS64 host the operator lifts 64:ff9b::/96, and every IPv4-only name resolves to its
  // NAT64 form: a deny rule written for the IPv4 address must still match, as it does for the
  // IPv4-mapped form.
  const lifted = compileProtected({ except: ['64:ff9b::/96', '2002::/16', '::ffff:0:0:0/96'] });
  it.each(['64:ff9b::102:304', '2002:102:304::1', '::ffff:0:102:304'])('refuses %s under allow-all with denied_cidrs 1.2.3.0/24', (ip) => {
    const p = compiled('allow-all', {}, { cidrs: ['1.2.3.0/24'] }, lifted);
    expect(plain(decide(p, facts(ip)))).toEqual<Decision>({
      verdict: 'refuse',
      reason: 'deny-rule',
      rule: `denied_cidrs "1.2.3.0/24" (1.2.3.4, inside ${ip})`,
      matchedBy: 'address',
    });
    expect(decide(p, facts(ip.replace('102:304', '808:808'))).verdict).toBe('allow');
  });

  it("matches an always-deny entry's IPv4 CIDR in its NAT64 form too (matchSide)", () => {
    const side = compiled('block-all', { cidrs: ['1.2.3.0/24'] }, {}, lifted).allow;
    expect(matchSide(side, facts('64:ff9b::102:304'), lifted.nat64)).toMatchObject({ verdict: 'allow', matchedBy: 'address' });
    expect(matchSide(side, facts('64:ff9b::808:808'), lifted.nat64)).toBeNull();
  });
});

describe('decide (1d, 3): a NAT64 prefix the operator declares (protected.nat64Prefixes)', () => {
  // A DNS64 host whose translator uses the local-use prefix (RFC 8215) at /48, or its own
  // network-specific prefix at /64, lifts it for its sandboxes to reach IPv4-only names: the
  // IPv4 address behind each form is judged as if dialed, so the metadata service and private
  // networks stay refused and deny rules on IPv4 CIDRs hold.
  const lifted = compileProtected({
    except: ['64:ff9b:1::/48', '2001:db8::/32'],
    nat64Prefixes: ['64:ff9b:1::/48', '2001:db8:122:344::/64'],
  });
  // The same addresses, each the form of 169.254.169.254, 10.0.0.5, 8.8.8.8 or 1.2.3.4 behind one of the two prefixes.
  const forms = {
    '64:ff9b:1::/48': {
      metadata: '64:ff9b:1:a9fe:a9:fe00::',
      private: '64:ff9b:1:a00:0:500::',
      public: '64:ff9b:1:808:8:800::',
      denied: '64:ff9b:1:102:3:400::',
    },
    '2001:db8:122:344::/64': {
      metadata: '2001:db8:122:344:a9:fea9:fe00:0',
      private: '2001:db8:122:344:a:0:500:0',
      public: '2001:db8:122:344:8:808:800:0',
      denied: '2001:db8:122:344:1:203:400:0',
    },
  };

  describe.each(Object.entries(forms))('through %s', (_prefix, ip) => {
    it('refuses the forms of a protected IPv4 address under allow-all, naming it', () => {
      expect(plain(decide(compiled('allow-all', {}, {}, lifted), facts(ip.metadata)))).toEqual<Decision>({
        verdict: 'refuse',
        reason: 'protected-address',
        rule: `protected "169.254.0.0/16" (169.254.169.254, inside ${ip.metadata})`,
        matchedBy: 'protected',
      });
      expect(decide(compiled('allow-all', {}, {}, lifted), facts(ip.private)).rule).toBe(`protected "10.0.0.0/8" (10.0.0.5, inside ${ip.private})`);
    });

    it('allows the form of a public IPv4 address once the prefix is lifted', () => {
      expect(decide(compiled('allow-all', {}, {}, lifted), facts(ip.public))).toMatchObject({ verdict: 'allow', reason: 'default-allow' });
    });

    it('refuses the form of an address a denied IPv4 CIDR holds, in decide and in an always-deny entry (matchSide)', () => {
      expect(plain(decide(compiled('allow-all', {}, { cidrs: ['1.2.3.0/24'] }, lifted), facts(ip.denied)))).toEqual<Decision>({
        verdict: 'refuse',
        reason: 'deny-rule',
        rule: `denied_cidrs "1.2.3.0/24" (1.2.3.4, inside ${ip.denied})`,
        matchedBy: 'address',
      });
      const side = compiled('block-all', { cidrs: ['1.2.3.0/24'] }, {}, lifted).allow;
      expect(matchSide(side, facts(ip.denied), lifted.nat64)).toMatchObject({ verdict: 'allow', matchedBy: 'address' });
      expect(matchSide(side, facts(ip.public), lifted.nat64)).toBeNull();
    });
  });

  it('lets an allowed IPv4 CIDR unlock the address behind the form, as for 64:ff9b::/96', () => {
    const p = compiled('block-all', { cidrs: ['64:ff9b:1::/48', '169.254.169.254/32'] }, {}, compileProtected({ nat64Prefixes: ['64:ff9b:1::/48'] }));
    expect(decide(p, facts('64:ff9b:1:a9fe:a9:fe00::')).verdict).toBe('allow');
    expect(decide(p, facts('64:ff9b:1:a9fe:a9:fd00::')).reason).toBe('protected-address');
  });
});

describe('decide (1a): the host itself', () => {
  const host = new HostAddresses({
    reachable: ['198.18.7.1'],
    interfaces: () => ({
      lo: [iface('127.0.0.1'), iface('::1')],
      eth0: [iface('198.18.7.1'), iface('198.18.7.2'), iface('2001:db8:7::1'), iface('fe80::1%eth0')],
    }),
  });
  host.setListeners([
    { host: '0.0.0.0', port: 15080 },
    { host: '::', port: 15443 },
    { host: '127.0.0.1', port: 9901 },
  ]);
  const open = compileProtected({ except: ['0.0.0.0/0', '::/0'], host });
  const p = compiled('block-all', { cidrs: ['0.0.0.0/0', '::/0'] }, {}, open);
  it.each([
    ['198.18.7.2', 22, 'host address "198.18.7.2"'],
    ['2001:db8:7::1', 443, 'host address "2001:db8:7::1"'],
    ['fe80::1', 80, 'host address "fe80::1"'],
    ['127.0.0.1', 6379, 'host address "127.0.0.1"'],
    ['127.8.9.10', 6379, 'host address "127.8.9.10"'],
    ['::ffff:127.0.0.1', 6379, 'host address "127.0.0.1"'],
    ['0.0.0.0', 80, 'host address "0.0.0.0"'],
    ['::', 80, 'host address "::"'],
    ['::1', 80, 'host address "::1"'],
    ['198.18.7.1', 15080, "egressd's own listener 198.18.7.1:15080"],
    ['198.18.7.1', 15443, "egressd's own listener 198.18.7.1:15443"],
    ['2001:db8:7::1', 15080, "egressd's own listener [2001:db8:7::1]:15080"],
    ['127.0.0.1', 9901, "egressd's own listener 127.0.0.1:9901"],
  ])('refuses %s port %i whatever the policy and protected.except say (%s)', (ip, port, rule) => {
    expect(plain(decide(p, facts(ip, port)))).toEqual<Decision>({ verdict: 'refuse', reason: 'protected-address', rule, matchedBy: 'protected' });
    expect(decide(compiled('allow-all', {}, {}, open), facts(ip, port)).rule).toBe(rule);
  });

  it("opens only the address protected.reachableHostAddresses names, and never egressd's own ports on it", () => {
    expect(decide(p, facts('198.18.7.1', 22)).verdict).toBe('allow');
    expect(decide(p, facts('198.18.7.2', 22)).verdict).toBe('refuse');
    expect(decide(p, facts('198.18.7.1', 15080)).verdict).toBe('refuse');
  });

  it('follows the interface table as it changes', () => {
    let table: Record<string, ReturnType<typeof iface>[]> = { eth0: [iface('198.18.8.1')] };
    const live = new HostAddresses({ interfaces: () => table });
    const q = compiled('allow-all', {}, {}, compileProtected({ except: ['0.0.0.0/0'], host: live }));
    expect(decide(q, facts('198.18.8.1')).verdict).toBe('refuse');
    expect(decide(q, facts('198.18.8.2')).verdict).toBe('allow');
    table = { eth0: [iface('198.18.8.2')] };
    live.refresh();
    expect(decide(q, facts('198.18.8.1')).verdict).toBe('allow');
    expect(decide(q, facts('198.18.8.2')).verdict).toBe('refuse');
    // A table that cannot be read keeps the last one: an empty set would open the host.
    let broken = false;
    const failing = new HostAddresses({
      interfaces: () => {
        if (broken) throw new Error('getifaddrs failed');
        return table;
      },
    });
    broken = true;
    failing.refresh();
    expect(failing.addresses).toEqual(['198.18.8.2']);
  });
});

describe('decide (2): the allow side', () => {
  it('allows by name, reporting the domain rule and matchedBy name', () => {
    expect(plain(decide(compiled('block-all', { domains: ['*.github.com'] }), facts('140.82.112.6', 443, 'api.github.com')))).toEqual<Decision>({
      verdict: 'allow',
      reason: 'allow-rule',
      rule: 'allowed_domains "*.github.com"',
      matchedBy: 'name',
    });
  });

  it('allows by address, reporting the CIDR rule and the port rule', () => {
    expect(plain(decide(compiled('block-all', { cidrs: ['8.8.8.0/24'], ports: [[8000, 8999], 443] }), facts('8.8.8.8', 8080)))).toEqual<Decision>({
      verdict: 'allow',
      reason: 'allow-rule',
      rule: 'allowed_cidrs "8.8.8.0/24" + allowed_ports "8000-8999"',
      matchedBy: 'address',
    });
  });

  it('allows any host on a listed port when the side lists no hosts', () => {
    expect(plain(decide(compiled('block-all', { ports: [443] }), facts('8.8.8.8', 443, 'anything.example')))).toEqual<Decision>({
      verdict: 'allow',
      reason: 'allow-rule',
      rule: 'allowed_ports "443"',
      matchedBy: 'port',
    });
    expect(decide(compiled('block-all', { ports: [443] }), facts('8.8.8.8', 80)).verdict).toBe('refuse');
  });

  it('requires the host AND the port', () => {
    const p = compiled('block-all', { domains: ['github.com'], ports: [443] });
    expect(decide(p, facts('140.82.112.3', 443, 'github.com')).verdict).toBe('allow');
    expect(decide(p, facts('140.82.112.3', 22, 'github.com')).verdict).toBe('refuse');
    expect(decide(p, facts('140.82.112.3', 443, 'gitlab.com')).verdict).toBe('refuse');
  });

  it('matches a name only by domain rules and an address only by CIDR rules', () => {
    const byName = compiled('block-all', { domains: ['github.com'] });
    expect(decide(byName, facts('140.82.112.3', 443, null)).verdict).toBe('refuse');
    const byAddress = compiled('block-all', { cidrs: ['140.82.112.0/20'] });
    expect(decide(byAddress, facts('140.82.112.3', 443, 'evil.example'))).toMatchObject({ verdict: 'allow', matchedBy: 'address' });
    expect(decide(byAddress, facts('1.2.3.4', 443, 'github.com')).verdict).toBe('refuse');
  });

  it('does not match * without a name', () => {
    const p = compiled('block-all', { domains: ['*'] });
    expect(decide(p, facts('8.8.8.8', 443, 'x.example')).verdict).toBe('allow');
    expect(decide(p, facts('8.8.8.8', 443, null)).verdict).toBe('refuse');
  });

  it('prefers the address when both the address and the name match', () => {
    const p = compiled('block-all', { domains: ['github.com'], cidrs: ['140.82.112.0/20'] });
    expect(decide(p, facts('140.82.112.3', 443, 'github.com'))).toMatchObject({ matchedBy: 'address', rule: 'allowed_cidrs "140.82.112.0/20"' });
    expect(decide(p, facts('1.2.3.4', 443, 'github.com'))).toMatchObject({ matchedBy: 'name', rule: 'allowed_domains "github.com"' });
  });

  it('matches nothing when the side lists nothing', () => {
    expect(plain(decide(compiled('block-all'), facts('8.8.8.8', 443, 'github.com')))).toEqual<Decision>({
      verdict: 'refuse',
      reason: 'default-block',
      rule: 'mode "block-all"',
      matchedBy: 'mode',
    });
  });

  it('beats the deny side (allow beats deny)', () => {
    const p = compiled('allow-all', { cidrs: ['1.1.1.1/32'] }, { cidrs: ['0.0.0.0/0'] });
    expect(decide(p, facts('1.1.1.1')).reason).toBe('allow-rule');
    expect(decide(p, facts('1.1.1.2'))).toMatchObject({ verdict: 'refuse', reason: 'deny-rule', rule: 'denied_cidrs "0.0.0.0/0"' });
  });

  it('matches IPv6 addresses by IPv6 CIDRs only', () => {
    const p = compiled('block-all', { cidrs: ['2606:4700::/32', '0.0.0.0/0'] });
    expect(decide(p, facts('2606:4700::1111')).rule).toBe('allowed_cidrs "2606:4700::/32"');
    expect(decide(p, facts('2a00:1450::1')).verdict).toBe('refuse');
  });
});

describe('decide (3): the deny side', () => {
  const p = compiled('allow-all', {}, { domains: ['facebook.com', '*.facebook.com'], cidrs: ['157.240.0.0/16'], ports: [22, [6000, 6063]] });

  it.each<[Facts, string, Decision['matchedBy']]>([
    [facts('31.13.64.35', 443, 'facebook.com'), 'denied_domains "facebook.com"', 'name'],
    [facts('31.13.64.35', 443, 'www.facebook.com'), 'denied_domains "*.facebook.com"', 'name'],
    [facts('157.240.1.1', 443, null), 'denied_cidrs "157.240.0.0/16"', 'address'],
    [facts('157.240.1.1', 443, 'other.example'), 'denied_cidrs "157.240.0.0/16"', 'address'],
    [facts('8.8.8.8', 22, null), 'denied_ports "22"', 'port'],
    [facts('8.8.8.8', 6010, 'x.example'), 'denied_ports "6000-6063"', 'port'],
  ])('refuses %j by %s', (f, rule, matchedBy) => {
    expect(plain(decide(p, f))).toEqual<Decision>({ verdict: 'refuse', reason: 'deny-rule', rule, matchedBy });
  });

  it('lets through what no deny rule names', () => {
    expect(plain(decide(p, facts('8.8.8.8', 443, 'github.com')))).toEqual<Decision>({
      verdict: 'allow',
      reason: 'default-allow',
      rule: 'mode "allow-all"',
      matchedBy: 'mode',
    });
  });

  it('applies in block-all mode too, naming the deny rule rather than the mode', () => {
    const b = compiled('block-all', {}, { ports: [22] });
    expect(decide(b, facts('8.8.8.8', 22)).reason).toBe('deny-rule');
    expect(decide(b, facts('8.8.8.8', 23)).reason).toBe('default-block');
  });
});

describe('decide (4): the mode', () => {
  it('allows in allow-all and refuses in block-all', () => {
    expect(decide(compiled('allow-all'), facts('8.8.8.8')).reason).toBe('default-allow');
    expect(decide(compiled('block-all'), facts('8.8.8.8')).reason).toBe('default-block');
  });
});

describe('decide: hostile facts', () => {
  it.each([0, 65536, -1, 1.5, Number.NaN])('refuses the port %j rather than matching it', (port) => {
    expect(decide(compiled('allow-all'), facts('8.8.8.8', port))).toMatchObject({ verdict: 'refuse', matchedBy: 'port' });
  });
});

describe('PortTable', () => {
  const table = (ranges: [number, number][]) => new PortTable(ranges.map(([from, to]) => ({ from, to })));

  it('finds the range holding a port, at both edges', () => {
    const t = table([
      [443, 443],
      [8000, 8999],
    ]);
    expect([442, 443, 444, 7999, 8000, 8999, 9000].map((p) => t.find(p))).toEqual([-1, 0, -1, -1, 1, 1, -1]);
  });

  it('covers 1 and 65535', () => {
    const t = table([
      [1, 1],
      [65535, 65535],
    ]);
    expect([1, 2, 65534, 65535].map((p) => t.find(p))).toEqual([0, -1, -1, 1]);
  });

  it('answers some range holding the port when ranges overlap', () => {
    const ranges: [number, number][] = [
      [10, 20],
      [15, 30],
      [12, 13],
      [40, 50],
      [25, 45],
    ];
    const t = table(ranges);
    for (let p = 1; p <= 60; p++) {
      const i = t.find(p);
      const holders = ranges.map((r, k) => (r[0] <= p && p <= r[1] ? k : -1)).filter((k) => k >= 0);
      if (holders.length === 0) expect(i).toBe(-1);
      else expect(holders).toContain(i);
    }
  });
});

describe('compilePolicy', () => {
  it('throws on a CIDR that was not validated', () => {
    expect(() => compiled('block-all', { cidrs: ['10.0.0.0/33'] })).toThrow(TypeError);
  });

  it('throws on a port range that was not validated', () => {
    expect(() => compiled('block-all', { ports: [[90, 80]] })).toThrow(TypeError);
  });

  it('keeps the policy it compiled', () => {
    const policy = { mode: 'block-all' as const, allow: side({ ports: [443] }), deny: side() };
    expect(compilePolicy(policy, P).policy).toBe(policy);
  });
});

describe('decide: a side whose domains match on some ports only (Side.domainPorts)', () => {
  const WEB: PortRange[] = [
    { from: 80, to: 80 },
    { from: 443, to: 443 },
  ];
  const withNamePorts = (s: SideIn): Side => ({ ...side(s), domainPorts: WEB });
  const policy = (mode: Mode, allow: Side, deny: Side) => compilePolicy({ mode, allow, deny }, P);

  it('matches an allowed name on those ports and judges it as nameless elsewhere, in decide, decideByName and matchSide', () => {
    const p = policy('block-all', withNamePorts({ domains: ['github.com'], cidrs: ['44.0.0.0/8'] }), side());
    expect(plain(decide(p, facts('140.82.112.3', 443, 'github.com')))).toMatchObject({ verdict: 'allow', rule: 'allowed_domains "github.com"' });
    expect(decide(p, facts('140.82.112.3', 22, 'github.com')).verdict).toBe('refuse');
    expect(decide(p, facts('44.1.2.3', 22, 'github.com'))).toMatchObject({ verdict: 'allow', rule: 'allowed_cidrs "44.0.0.0/8"' });
    expect(decideByName(p, 'github.com', 80).verdict).toBe('allow');
    expect(decideByName(p, 'github.com', 8443).verdict).toBe('refuse');
    expect(matchSide(p.allow, facts('140.82.112.3', 443, 'github.com'), [])).toMatchObject({ matchedBy: 'name' });
    expect(matchSide(p.allow, facts('140.82.112.3', 22, 'github.com'), [])).toBeNull();
    expect(matchSideByName(p.allow, 'github.com', 22)).toBeNull();
  });

  it('reads the name only where it can match (the trace behind nameMatters)', () => {
    const p = policy('block-all', withNamePorts({ domains: ['github.com'] }), side());
    const at = (port: number): boolean => {
      const t = { nameConsulted: false };
      decide(p, facts('140.82.112.3', port), t);
      return t.nameConsulted;
    };
    expect(at(443)).toBe(true);
    expect(at(22)).toBe(false);
  });

  it('applies to a deny side the same way', () => {
    const p = policy('allow-all', side(), withNamePorts({ domains: ['bad.test'] }));
    expect(decide(p, facts('140.82.112.3', 443, 'bad.test')).verdict).toBe('refuse');
    expect(decide(p, facts('140.82.112.3', 22, 'bad.test')).verdict).toBe('allow');
    expect(decideByName(p, 'bad.test', 22).verdict).toBe('allow');
  });
});
