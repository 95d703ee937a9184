import { describe, expect, it } from 'vitest';
import { compileProtected } from '../../../src/match/protected.ts';
import { SharedDomains } from '../../../src/policy/compile.ts';
import type { DialectResult, Policy } from '../../../src/policy/model.ts';
import { parseNetworkBody } from '../../../src/policy/network-body.ts';
import {
  compileLayer,
  nameMatters,
  nameReach,
  tierNetwork,
  verdict,
  type CompiledLayer,
  type Facts,
  type LayerSettings,
  type PolicyChain,
  type Tier,
} from '../../../src/policy/verdict.ts';
import { compileOverlays, type OverlayEntry, type Overlays } from '../../../src/policy/overlay.ts';

const settings: LayerSettings = {
  protectedRanges: compileProtected({}),
  catalog: new SharedDomains(['registry.npmjs.org', '*.pypi.org']),
  dnsServers: ['9.9.9.9'],
};
const NONE = { domains: [], cidrs: [], ports: [] };
const net = (policy: Policy, extra: Partial<DialectResult> = {}): DialectResult => ({
  dialect: 'sandbox0',
  policy,
  essentialServices: false,
  dnsServersAllowed: false,
  ...extra,
});

const SANDBOXES = {
  full: net({ mode: 'allow-all', allow: NONE, deny: NONE }),
  names: net({ mode: 'block-all', allow: { ...NONE, domains: ['*.allowed.test'] }, deny: NONE }),
  cidr: net({ mode: 'block-all', allow: { ...NONE, cidrs: ['44.0.0.0/8'] }, deny: NONE }),
  // Novita: a domain rule turns the DNS servers on port 53 on.
  namesDns: net({ mode: 'block-all', allow: { ...NONE, domains: ['*.allowed.test'] }, deny: NONE }, { dnsServersAllowed: true }),
  // Daytona networkAllowList: the catalog joins the allow side.
  cidrCatalog: net({ mode: 'block-all', allow: { ...NONE, cidrs: ['44.0.0.0/8'] }, deny: NONE }, { essentialServices: true }),
} as const;

type OrgKind = 'none' | 'unknown' | 'full' | 'essential' | 'denies-other';
const ORGS: Record<OrgKind, DialectResult | null | 'unknown'> = {
  none: null,
  unknown: 'unknown',
  full: tierNetwork(4),
  essential: tierNetwork(1),
  'denies-other': net({ mode: 'allow-all', allow: NONE, deny: { ...NONE, domains: ['other.test'] } }),
};

const chainOf = (org: OrgKind, sandbox: keyof typeof SANDBOXES): PolicyChain => {
  const o = ORGS[org];
  return {
    sandbox: 'sb',
    org: o === null ? null : { id: 'acme', layer: o === 'unknown' ? null : compileLayer(o, settings) },
    layer: compileLayer(SANDBOXES[sandbox], settings),
  };
};

// The columns of the table: one connection each.
const FACTS: readonly Facts[] = [
  { name: 'pkg.allowed.test', ip: '93.184.216.34', port: 443 }, // a: a name the sandbox allows
  { name: 'other.test', ip: '93.184.216.34', port: 443 }, // b: another name
  { name: null, ip: '93.184.216.34', port: 443 }, // c: no name
  { name: null, ip: '9.9.9.9', port: 53 }, // d: the sandbox DNS server on 53
  { name: 'registry.npmjs.org', ip: '93.184.216.34', port: 443 }, // e: a catalog name
  { name: null, ip: '169.254.169.254', port: 80 }, // f: a protected address
  { name: null, ip: '44.1.2.3', port: 443 }, // g: inside the sandbox's CIDR
];

// Every organization kind × every sandbox kind: `a` allow, `r` refuse, per column a..g.
const TABLE: readonly [OrgKind, keyof typeof SANDBOXES, string][] = [
  ['none', 'full', 'aaaaara'],
  ['none', 'names', 'arrrrrr'],
  ['none', 'cidr', 'rrrrrra'],
  ['none', 'namesDns', 'arrarrr'],
  ['none', 'cidrCatalog', 'rrrrara'],
  // An unknown organization fails closed whatever its sandbox says.
  ['unknown', 'full', 'rrrrrrr'],
  ['unknown', 'names', 'rrrrrrr'],
  ['unknown', 'cidr', 'rrrrrrr'],
  ['unknown', 'namesDns', 'rrrrrrr'],
  ['unknown', 'cidrCatalog', 'rrrrrrr'],
  ['full', 'full', 'aaaaara'],
  ['full', 'names', 'arrrrrr'],
  ['full', 'cidr', 'rrrrrra'],
  ['full', 'namesDns', 'arrarrr'],
  ['full', 'cidrCatalog', 'rrrrara'],
  // Tier 1: the organization allows the catalog only; the sandbox can narrow, never widen.
  ['essential', 'full', 'rrrrarr'],
  ['essential', 'names', 'rrrrrrr'],
  ['essential', 'cidr', 'rrrrrrr'],
  ['essential', 'namesDns', 'rrrrrrr'],
  ['essential', 'cidrCatalog', 'rrrrarr'],
  ['denies-other', 'full', 'araaara'],
  ['denies-other', 'names', 'arrrrrr'],
  ['denies-other', 'cidr', 'rrrrrra'],
  ['denies-other', 'namesDns', 'arrarrr'],
  ['denies-other', 'cidrCatalog', 'rrrrara'],
];

describe('verdict: organization ∧ sandbox, the catalog, the DNS servers', () => {
  it.each(TABLE)('org %s, sandbox %s → %s', (org, sandbox, expected) => {
    const chain = chainOf(org, sandbox);
    const got = FACTS.map((f) => (verdict(chain, f).verdict === 'allow' ? 'a' : 'r')).join('');
    expect(got).toBe(expected);
  });

  it('covers every organization kind with every sandbox kind', () => {
    const seen = new Set(TABLE.map(([o, s]) => `${o}/${s}`));
    for (const o of Object.keys(ORGS)) for (const s of Object.keys(SANDBOXES)) expect(seen.has(`${o}/${s}`)).toBe(true);
  });

  it('names the unknown organization and the layer that refused', () => {
    expect(verdict(chainOf('unknown', 'full'), FACTS[0]!)).toEqual({
      verdict: 'refuse',
      reason: 'default-block',
      rule: 'org acme: unknown organization',
      matchedBy: 'mode',
      layer: 'org',
    });
    expect(verdict(chainOf('denies-other', 'full'), FACTS[1]!)).toMatchObject({
      verdict: 'refuse',
      reason: 'deny-rule',
      rule: 'org acme: denied_domains "other.test"',
      layer: 'org',
    });
    expect(verdict(chainOf('essential', 'cidr'), FACTS[6]!)).toMatchObject({ verdict: 'refuse', rule: 'org acme: mode "block-all"', layer: 'org' });
    expect(verdict(chainOf('full', 'cidr'), FACTS[2]!)).toMatchObject({ verdict: 'refuse', rule: 'mode "block-all"', layer: 'sandbox' });
  });

  it('says matchedBy name when the organization allowed by name, so the name is still resolved', () => {
    expect(verdict(chainOf('essential', 'full'), FACTS[4]!)).toMatchObject({ verdict: 'allow', reason: 'default-allow', matchedBy: 'name' });
    expect(verdict(chainOf('none', 'full'), FACTS[4]!)).toMatchObject({ verdict: 'allow', matchedBy: 'mode' });
  });

  it('allows the DNS servers on port 53 only, with a rule that says so', () => {
    const chain = chainOf('none', 'namesDns');
    expect(verdict(chain, FACTS[3]!)).toMatchObject({ verdict: 'allow', rule: 'dns servers: allowed_cidrs "9.9.9.9" + allowed_ports "53"' });
    expect(verdict(chain, { name: null, ip: '9.9.9.9', port: 853 }).verdict).toBe('refuse');
  });

  it('report-only: every refusal of the table becomes would-refuse, except a protected address (column f)', () => {
    for (const [org, sandbox, expected] of TABLE) {
      for (const level of ['global', 'org', 'sandbox'] as const) {
        const chain: PolicyChain = { ...chainOf(org, sandbox), reportOnly: [level] };
        const got = FACTS.map((f) => verdict(chain, f).verdict[0]).join('');
        const want = expected
          .split('')
          .map((c, i) => (c === 'a' ? 'a' : FACTS[i] === FACTS[5] ? 'r' : 'w'))
          .join('');
        expect(got, `${org}/${sandbox} report-only by ${level}`).toBe(want);
      }
    }
  });

  it('report-only keeps the reason, the rule and the layer that would have refused', () => {
    const chain: PolicyChain = { ...chainOf('denies-other', 'full'), reportOnly: ['sandbox'] };
    expect(verdict(chain, FACTS[1]!)).toMatchObject({
      verdict: 'would-refuse',
      reason: 'deny-rule',
      rule: 'org acme: denied_domains "other.test"',
      layer: 'org',
    });
    expect(verdict({ ...chainOf('unknown', 'full'), reportOnly: ['global'] }, FACTS[0]!)).toMatchObject({
      verdict: 'would-refuse',
      rule: 'org acme: unknown organization',
    });
    // The host, egressd's own listeners and protected.extra are a boundary, not policy.
    const extra = compileProtected({ extra: ['203.0.113.0/24'] });
    const guarded: PolicyChain = {
      sandbox: 'sb',
      org: null,
      layer: compileLayer(SANDBOXES.full, { ...settings, protectedRanges: extra }),
      reportOnly: ['global', 'org', 'sandbox'],
    };
    expect(verdict(guarded, { name: null, ip: '203.0.113.9', port: 443 })).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
    expect(verdict(guarded, { name: null, ip: '127.0.0.1', port: 443 })).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
    expect(verdict(guarded, { name: null, ip: 'localhost', port: 80 }).verdict).toBe('refuse');
    expect(verdict({ ...chainOf('none', 'names'), reportOnly: ['global'] }, { name: null, ip: '93.184.216.34', port: 0 }).verdict).toBe('refuse');
  });

  it('refuses facts that do not parse, whichever layer sees them first', () => {
    for (const org of ['none', 'full'] as const) {
      expect(verdict(chainOf(org, 'full'), { name: null, ip: 'localhost', port: 80 }).verdict).toBe('refuse');
      expect(verdict(chainOf(org, 'full'), { name: null, ip: '93.184.216.34', port: 0 }).verdict).toBe('refuse');
    }
  });
});

// The operator's overlays around every row of TABLE. `deny` columns are refused by an always-deny
// entry (`D`), `allow` columns allowed by an always-allow entry, deny first; the rest keep the row.
const entry = (name: string, side: Partial<OverlayEntry['side']>): OverlayEntry => ({ name, side: { ...NONE, ...side } });
const OVERLAYS: Record<string, { overlays: Overlays; deny: string; allow: string }> = {
  'deny a name': { overlays: { alwaysAllow: [], alwaysDeny: [entry('no-allowed', { domains: ['*.allowed.test'] })] }, deny: 'a', allow: '' },
  'deny port 53': { overlays: { alwaysAllow: [], alwaysDeny: [entry('no-dns', { ports: [{ from: 53, to: 53 }] })] }, deny: 'd', allow: '' },
  'allow a name on 443': {
    overlays: { alwaysAllow: [entry('other', { domains: ['other.test'], ports: [{ from: 443, to: 443 }] })], alwaysDeny: [] },
    deny: '',
    allow: 'b',
  },
  'allow a network': { overlays: { alwaysAllow: [entry('net', { cidrs: ['93.184.216.0/24'] })], alwaysDeny: [] }, deny: '', allow: 'abce' },
  // Deny beats allow: the name is refused at an always-allowed address.
  'deny a name, allow its network': {
    overlays: { alwaysAllow: [entry('net', { cidrs: ['93.184.216.0/24'] })], alwaysDeny: [entry('no-allowed', { domains: ['*.allowed.test'] })] },
    deny: 'a',
    allow: 'bce',
  },
  // A metadata address is not opened by an entry whose CIDR is not wholly inside the range.
  'allow everything on port 80': { overlays: { alwaysAllow: [entry('web', { ports: [{ from: 80, to: 80 }] })], alwaysDeny: [] }, deny: '', allow: '' },
};
const COLUMNS = 'abcdefg';
const withOverlays = (expected: string, o: { deny: string; allow: string }): string =>
  expected
    .split('')
    .map((c, i) => (o.deny.includes(COLUMNS[i]!) ? 'D' : o.allow.includes(COLUMNS[i]!) ? 'a' : c))
    .join('');

describe('verdict: the operator overlays around organization ∧ sandbox, and report-only over all of it', () => {
  const cases = Object.entries(OVERLAYS).flatMap(([kind, o]) =>
    TABLE.map(([org, sandbox, expected]) => [kind, org, sandbox, withOverlays(expected, o)] as const),
  );

  it.each(cases)('%s, org %s, sandbox %s → %s (D: always-deny)', (kind, org, sandbox, expected) => {
    const chain: PolicyChain = { ...chainOf(org, sandbox), overlays: compileOverlays(OVERLAYS[kind]!.overlays, settings.protectedRanges) };
    const got = FACTS.map((f) => {
      const v = verdict(chain, f);
      return v.verdict === 'allow' ? 'a' : v.layer === 'always-deny' ? 'D' : 'r';
    }).join('');
    expect(got).toBe(expected);
    // Report-only over the same chain: the policies' refusals become would-refuse; the
    // always-deny list and the protected address (column f) stay refused.
    for (const level of ['global', 'org', 'sandbox'] as const) {
      const ro: PolicyChain = { ...chain, reportOnly: [level] };
      const want = expected
        .split('')
        .map((c, i) => (c === 'a' ? 'a' : c === 'D' || i === 5 ? 'r' : 'w'))
        .join('');
      expect(FACTS.map((f) => verdict(ro, f).verdict[0]).join(''), `report-only by ${level}`).toBe(want);
    }
  });

  it('names the entry that decided, and its layer', () => {
    const chain: PolicyChain = {
      ...chainOf('essential', 'names'),
      overlays: compileOverlays(OVERLAYS['deny a name, allow its network']!.overlays, settings.protectedRanges),
    };
    expect(verdict(chain, FACTS[0]!)).toMatchObject({
      verdict: 'refuse',
      reason: 'deny-rule',
      layer: 'always-deny',
      rule: 'always-deny "no-allowed": denied_domains "*.allowed.test"',
    });
    expect(verdict(chain, FACTS[1]!)).toMatchObject({
      verdict: 'allow',
      reason: 'allow-rule',
      layer: 'always-allow',
      rule: 'always-allow "net": allowed_cidrs "93.184.216.0/24"',
      matchedBy: 'address',
    });
    const byName: PolicyChain = {
      ...chainOf('unknown', 'cidr'),
      overlays: compileOverlays(OVERLAYS['allow a name on 443']!.overlays, settings.protectedRanges),
    };
    // Allowed by name: the data path still resolves the name and dials only its addresses.
    expect(verdict(byName, FACTS[1]!)).toMatchObject({
      verdict: 'allow',
      matchedBy: 'name',
      rule: 'always-allow "other": allowed_domains "other.test" + allowed_ports "443"',
    });
    expect(verdict(byName, { ...FACTS[1]!, port: 8443 })).toMatchObject({ verdict: 'refuse', layer: 'org' });
  });

  it("never opens the host, egressd's own listeners or protected.extra, whatever the always-allow list says", () => {
    const prot = compileProtected({
      extra: ['203.0.113.0/24'],
      host: {
        refuses: (_f: unknown, w: Uint32Array, port: number) => (w[0] === 0xc6120063 && port === 9901 ? 'host 198.18.0.99 (egressd admin)' : null),
      } as never,
    });
    const overlays = compileOverlays(
      {
        alwaysAllow: [entry('all-of-it', { cidrs: ['203.0.113.0/24', '198.18.0.99/32'] }), entry('every-port', { ports: [{ from: 1, to: 65535 }] })],
        alwaysDeny: [],
      },
      prot,
    );
    const chain: PolicyChain = {
      sandbox: 'sb',
      org: null,
      layer: compileLayer(SANDBOXES.full, { ...settings, protectedRanges: prot }),
      overlays,
      reportOnly: ['global'],
    };
    expect(verdict(chain, { name: null, ip: '203.0.113.9', port: 443 })).toMatchObject({
      verdict: 'refuse',
      reason: 'protected-address',
      rule: 'protected.extra "203.0.113.0/24"',
    });
    expect(verdict(chain, { name: null, ip: '198.18.0.99', port: 9901 })).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
    expect(verdict(chain, { name: null, ip: '127.0.0.1', port: 80 })).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
    expect(verdict(chain, { name: null, ip: '169.254.169.254', port: 80 })).toMatchObject({ verdict: 'refuse', reason: 'protected-address' });
  });

  it("holds an always-deny IPv4 CIDR against its form inside the protected set's declared NAT64 prefix", () => {
    const prot = compileProtected({ except: ['64:ff9b:1::/48'], nat64Prefixes: ['64:ff9b:1::/48'] });
    const chain: PolicyChain = {
      sandbox: 'sb',
      org: null,
      layer: compileLayer(SANDBOXES.full, { ...settings, protectedRanges: prot }),
      overlays: compileOverlays({ alwaysAllow: [], alwaysDeny: [entry('exfil', { cidrs: ['1.2.3.0/24'] })] }, prot),
    };
    expect(verdict(chain, { name: null, ip: '64:ff9b:1:102:3:400::', port: 443 })).toMatchObject({
      verdict: 'refuse',
      layer: 'always-deny',
      rule: 'always-deny "exfil": denied_cidrs "1.2.3.0/24"',
    });
    expect(verdict(chain, { name: null, ip: '64:ff9b:1:808:8:800::', port: 443 })).toMatchObject({ verdict: 'allow' });
  });

  it('nameReach: always-deny on every port hides a name, on some ports it does not; always-allow names reach', () => {
    const chain = (o: Overlays, org: OrgKind = 'essential'): PolicyChain => ({
      ...chainOf(org, 'cidr'),
      overlays: compileOverlays(o, settings.protectedRanges),
    });
    const deny = chain({ alwaysAllow: [], alwaysDeny: [entry('x', { domains: ['*.allowed.test'] })] }, 'full');
    expect(nameReach({ ...chainOf('full', 'full') }, 'pkg.allowed.test')).toMatchObject({ reach: true });
    expect(nameReach({ ...deny, layer: chainOf('full', 'full').layer }, 'pkg.allowed.test')).toMatchObject({
      reach: false,
      denied: true,
      rule: 'always-deny "x": denied_domains "*.allowed.test"',
    });
    const denySome = chain({ alwaysAllow: [], alwaysDeny: [entry('x', { domains: ['*.allowed.test'], ports: [{ from: 25, to: 25 }] })] }, 'full');
    expect(nameReach({ ...denySome, layer: chainOf('full', 'full').layer }, 'pkg.allowed.test')).toMatchObject({ reach: true });
    const allow = chain({ alwaysAllow: [entry('other', { domains: ['other.test'], ports: [{ from: 443, to: 443 }] })], alwaysDeny: [] });
    expect(nameReach(allow, 'other.test')).toMatchObject({ reach: true, rule: 'always-allow "other": allowed_domains "other.test" + allowed_ports "443"' });
    expect(nameReach(allow, 'unrelated.test')).toMatchObject({ reach: false });
    // Report-only forwards what the policies would not reach, never what always-deny hides.
    expect(nameReach({ ...allow, reportOnly: ['sandbox'] }, 'unrelated.test')).toMatchObject({ reach: true, wouldRefuse: true });
    expect(nameReach({ ...deny, reportOnly: ['global'] }, 'pkg.allowed.test')).toMatchObject({ reach: false, denied: true });
  });

  it('nameReach: a name reaches only when one port passes every layer', () => {
    const layer = (policy: Policy): CompiledLayer => compileLayer(net(policy), settings);
    const org = layer({ mode: 'block-all', allow: { ...NONE, domains: ['registry.test'], ports: [{ from: 443, to: 443 }] }, deny: NONE });
    const of = (sandbox: Policy, extra: Partial<PolicyChain> = {}): PolicyChain => ({
      sandbox: 'sb',
      org: { id: 'acme', layer: org },
      layer: layer(sandbox),
      ...extra,
    });
    // The organization allows the name on 443 only, the sandbox port 22 only: no port passes both.
    const ssh = of({ mode: 'block-all', allow: { ...NONE, ports: [{ from: 22, to: 22 }] }, deny: NONE });
    for (const port of [22, 443]) expect(verdict(ssh, { name: 'registry.test', ip: '93.184.216.34', port }).verdict).toBe('refuse');
    expect(nameReach(ssh, 'registry.test')).toEqual({ reach: false, rule: 'mode "block-all"', denied: false });
    // A port-only deny rule of the sandbox takes the one port the organization allows.
    const noTls = of({ mode: 'allow-all', allow: NONE, deny: { ...NONE, ports: [{ from: 400, to: 500 }] } });
    expect(nameReach(noTls, 'registry.test')).toEqual({ reach: false, rule: 'denied_ports "400-500"', denied: false });
    // Ranges that overlap on one port reach, and the rule is the verdict's on that port.
    const some = of({
      mode: 'block-all',
      allow: {
        ...NONE,
        ports: [
          { from: 22, to: 22 },
          { from: 443, to: 8443 },
        ],
      },
      deny: NONE,
    });
    expect(nameReach(some, 'registry.test')).toEqual({ reach: true, rule: 'allowed_ports "443-8443"', denied: false });
    // An always-allow entry for the name on 22 opens the port no layer shares.
    const overlays = compileOverlays(
      { alwaysAllow: [entry('git', { domains: ['registry.test'], ports: [{ from: 22, to: 22 }] })], alwaysDeny: [] },
      settings.protectedRanges,
    );
    expect(nameReach({ ...ssh, overlays }, 'registry.test')).toMatchObject({
      reach: true,
      rule: 'always-allow "git": allowed_domains "registry.test" + allowed_ports "22"',
    });
    // Report-only forwards it, with the rule that would refuse it.
    expect(nameReach({ ...ssh, reportOnly: ['org'] }, 'registry.test')).toMatchObject({ reach: true, wouldRefuse: true });
  });
});

describe('nameMatters: derived from the verdict', () => {
  const NAMES = [null, 'pkg.allowed.test', 'other.test', 'registry.npmjs.org', 'files.pypi.org', 'unrelated.test'];

  it('is true wherever some name changes the verdict made without one (never skips a peek that matters)', () => {
    for (const [org, sandbox] of TABLE) {
      const chain = chainOf(org, sandbox);
      for (const f of FACTS) {
        const at = { ip: f.ip, port: f.port };
        const bare = verdict(chain, { ...at, name: null });
        const changes = NAMES.some((name) => {
          const d = verdict(chain, { ...at, name });
          return d.verdict !== bare.verdict || d.reason !== bare.reason || d.rule !== bare.rule;
        });
        if (changes) expect(nameMatters(chain, at), `${org}/${sandbox} ${f.ip}:${f.port}`).toBe(true);
      }
    }
  });

  it('stays exact with the overlays and report-only: a name that changes the verdict is always peeked for', () => {
    for (const o of Object.values(OVERLAYS)) {
      for (const [org, sandbox] of TABLE) {
        for (const reportOnly of [[], ['sandbox']] as const) {
          const chain: PolicyChain = { ...chainOf(org, sandbox), overlays: compileOverlays(o.overlays, settings.protectedRanges), reportOnly };
          for (const f of FACTS) {
            const at = { ip: f.ip, port: f.port };
            const bare = verdict(chain, { ...at, name: null });
            const changes = NAMES.some((name) => {
              const d = verdict(chain, { ...at, name });
              return d.verdict !== bare.verdict || d.reason !== bare.reason || d.rule !== bare.rule;
            });
            if (changes) expect(nameMatters(chain, at), `${org}/${sandbox} ${f.ip}:${f.port}`).toBe(true);
          }
        }
      }
    }
  });

  it('is false where no step reads a name: full access, an allowing CIDR, a protected address, an unknown organization', () => {
    expect(nameMatters(chainOf('none', 'full'), FACTS[2]!)).toBe(false);
    expect(nameMatters(chainOf('full', 'full'), FACTS[2]!)).toBe(false);
    expect(nameMatters(chainOf('none', 'cidr'), FACTS[6]!)).toBe(false);
    expect(nameMatters(chainOf('full', 'cidrCatalog'), FACTS[6]!)).toBe(false);
    expect(nameMatters(chainOf('none', 'names'), FACTS[5]!)).toBe(false);
    expect(nameMatters(chainOf('unknown', 'names'), FACTS[2]!)).toBe(false);
    expect(nameMatters(chainOf('none', 'namesDns'), FACTS[3]!)).toBe(false);
    expect(nameMatters(chainOf('none', 'cidr'), FACTS[2]!)).toBe(false);
  });

  it('is true where a domain rule is reached: an allow list, a deny list, the catalog, an organization that allows by name', () => {
    expect(nameMatters(chainOf('none', 'names'), FACTS[2]!)).toBe(true);
    expect(nameMatters(chainOf('denies-other', 'full'), FACTS[2]!)).toBe(true);
    expect(nameMatters(chainOf('none', 'cidrCatalog'), FACTS[2]!)).toBe(true);
    expect(nameMatters(chainOf('essential', 'full'), FACTS[2]!)).toBe(true);
  });
});

// A protected address (decide.ts step 1c/1d) is opened by the sandbox's own grant — an allowed
// CIDR wholly inside the protected ranges, or its DNS servers on port 53 — and an organization
// bounds that grant, never makes it and never cancels it by protection alone: Daytona "Network
// Limits (Firewall)" gives tiers 3 and 4 "full internet access ... with the ability to configure
// custom network settings", its example list opening "192.168.1.0/24 (Private network)"; tiers 1
// and 2 "cannot be overridden at the sandbox level". Bodies go through the dialects' parser.
describe('verdict: a protected address across the organization and the sandbox', () => {
  const body = (b: unknown): DialectResult => {
    const r = parseNetworkBody(b);
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    return r.value;
  };
  const ORG_KINDS = {
    none: null,
    tier1: tierNetwork(1),
    tier2: tierNetwork(2),
    tier3: tierNetwork(3),
    tier4: tierNetwork(4),
    // An organization that opens the private ranges itself: it grants its sandboxes nothing.
    unlocks: body({ mode: 'block-all', egress: { allowed_cidrs: ['192.168.0.0/16', 'fd00::/8'] } }),
    // Allows every IPv4 address by a CIDR that unlocks nothing.
    everyIPv4: body({ network: { denyOut: ['::/0'], allowOut: ['0.0.0.0/0'] } }),
    deniesRange: body({ mode: 'allow-all', egress: { denied_cidrs: ['192.168.1.0/24'] } }),
    deniesName: body({ mode: 'allow-all', egress: { denied_domains: ['other.test'] } }),
    port80: body({ mode: 'block-all', egress: { allowed_ports: [80] } }),
    // Allows by name only: a name never unlocks an address, the sandbox's CIDR notwithstanding.
    names: body({ mode: 'block-all', egress: { allowed_domains: ['registry.npmjs.org', 'other.test'] } }),
  } as const;
  const SANDBOX_KINDS = {
    daytona: body({ networkAllowList: '208.80.154.232/32, 192.168.1.0/24' }),
    novita: body({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['192.168.1.0/24'] } }),
    full: body({}),
    ula: body({ mode: 'block-all', egress: { allowed_cidrs: ['fd00:1::/64'] } }),
  } as const;
  const COLS: readonly Facts[] = [
    { name: null, ip: '192.168.1.5', port: 80 }, // p: inside the sandbox's private CIDR
    { name: 'registry.npmjs.org', ip: '192.168.1.5', port: 443 }, // n: a catalog name there
    { name: 'other.test', ip: '192.168.1.5', port: 80 }, // d: a name an organization denies
    { name: null, ip: '::ffff:192.168.1.5', port: 80 }, // m: its IPv4-mapped form
    { name: null, ip: '64:ff9b::c0a8:105', port: 80 }, // x: its NAT64 form (the prefix protected)
    { name: null, ip: '192.168.2.5', port: 80 }, // o: private, outside the sandbox's CIDR
    { name: null, ip: 'fd00:1::5', port: 443 }, // u: an IPv6 unique-local address
    { name: null, ip: '169.254.169.254', port: 80 }, // k: the metadata service
  ];
  const rows: [keyof typeof ORG_KINDS, keyof typeof SANDBOX_KINDS, string][] = [
    ['none', 'daytona', 'aaaarrrr'],
    ['tier1', 'daytona', 'rrrrrrrr'],
    ['tier2', 'daytona', 'rrrrrrrr'],
    ['tier3', 'daytona', 'aaaarrrr'],
    ['tier4', 'daytona', 'aaaarrrr'],
    ['unlocks', 'daytona', 'aaaarrrr'],
    ['everyIPv4', 'daytona', 'aaaarrrr'],
    ['deniesRange', 'daytona', 'rrrrrrrr'],
    ['deniesName', 'daytona', 'aararrrr'],
    ['port80', 'daytona', 'araarrrr'],
    ['names', 'daytona', 'rrrrrrrr'],
    ['tier3', 'novita', 'aaaarrrr'],
    ['tier1', 'novita', 'rrrrrrrr'],
    ['deniesName', 'novita', 'aararrrr'],
    // The sandbox opens nothing: no organization's own unlock reaches it.
    ['none', 'full', 'rrrrrrrr'],
    ['tier4', 'full', 'rrrrrrrr'],
    ['unlocks', 'full', 'rrrrrrrr'],
    ['everyIPv4', 'full', 'rrrrrrrr'],
    ['none', 'ula', 'rrrrrrar'],
    ['tier3', 'ula', 'rrrrrrar'],
    ['unlocks', 'ula', 'rrrrrrar'],
    ['everyIPv4', 'ula', 'rrrrrrrr'],
    ['tier1', 'ula', 'rrrrrrrr'],
    ['deniesRange', 'ula', 'rrrrrrar'],
  ];
  const chainFor = (org: keyof typeof ORG_KINDS, sandbox: keyof typeof SANDBOX_KINDS, s: LayerSettings = settings): PolicyChain => {
    const o = ORG_KINDS[org];
    return { sandbox: 'sb', org: o === null ? null : { id: 'o', layer: compileLayer(o, s) }, layer: compileLayer(SANDBOX_KINDS[sandbox], s) };
  };

  it.each(rows)('org %s, sandbox %s → %s', (org, sandbox, expected) => {
    const chain = chainFor(org, sandbox);
    expect(COLS.map((f) => (verdict(chain, f).verdict === 'allow' ? 'a' : 'r')).join('')).toBe(expected);
  });

  it("opens an IPv4 address behind a lifted NAT64 prefix by the sandbox's IPv4 CIDR, never by the organization's", () => {
    const lifted: LayerSettings = { ...settings, protectedRanges: compileProtected({ except: ['64:ff9b::/96'] }) };
    const both = compileLayer(body({ mode: 'block-all', egress: { allowed_cidrs: ['64:ff9b::/96', '192.168.1.0/24'] } }), lifted);
    const prefixOnly = compileLayer(body({ mode: 'block-all', egress: { allowed_cidrs: ['64:ff9b::/96'] } }), lifted);
    const org = (r: DialectResult): PolicyChain['org'] => ({ id: 'o', layer: compileLayer(r, lifted) });
    const nat64 = { name: null, ip: '64:ff9b::c0a8:105', port: 80 };
    expect(verdict({ sandbox: 'sb', org: null, layer: both }, nat64).verdict).toBe('allow');
    expect(verdict({ sandbox: 'sb', org: org(tierNetwork(3)), layer: both }, nat64).verdict).toBe('allow');
    expect(verdict({ sandbox: 'sb', org: org(tierNetwork(1)), layer: both }, nat64).verdict).toBe('refuse');
    expect(verdict({ sandbox: 'sb', org: org(tierNetwork(3)), layer: both }, { ...nat64, ip: '64:ff9b::a9fe:a9fe' })).toMatchObject({
      verdict: 'refuse',
      rule: 'org o: protected "169.254.0.0/16" (169.254.169.254, inside 64:ff9b::a9fe:a9fe)',
    });
    const orgUnlocks = org(body({ mode: 'block-all', egress: { allowed_cidrs: ['64:ff9b::/96', '192.168.0.0/16'] } }));
    expect(verdict({ sandbox: 'sb', org: orgUnlocks, layer: both }, nat64).verdict).toBe('allow');
    expect(verdict({ sandbox: 'sb', org: orgUnlocks, layer: prefixOnly }, nat64)).toMatchObject({
      verdict: 'refuse',
      reason: 'protected-address',
      layer: 'sandbox',
    });
  });

  it("opens the sandbox's DNS servers on port 53 only (Novita), under an organization that allows everything", () => {
    const privateDns: LayerSettings = { ...settings, dnsServers: ['10.0.0.2'] };
    const layer = compileLayer(body({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['pypi.org'] } }), privateDns);
    const chain = (t: Tier): PolicyChain => ({ sandbox: 'sb', org: { id: 'o', layer: compileLayer(tierNetwork(t), privateDns) }, layer });
    expect(verdict(chain(3), { name: null, ip: '10.0.0.2', port: 53 })).toMatchObject({
      verdict: 'allow',
      rule: 'dns servers: allowed_cidrs "10.0.0.2" + allowed_ports "53"',
    });
    expect(verdict(chain(3), { name: null, ip: '10.0.0.2', port: 80 }).verdict).toBe('refuse');
    expect(verdict(chain(1), { name: null, ip: '10.0.0.2', port: 53 }).verdict).toBe('refuse');
  });

  it('reports rather than refuses, in report-only mode, what the sandbox opened and a policy refuses; never what nobody opened', () => {
    const port443 = body({ mode: 'block-all', egress: { allowed_cidrs: ['192.168.1.0/24'], allowed_ports: [443] } });
    const at22 = { name: null, ip: '192.168.1.5', port: 22 };
    for (const o of [null, tierNetwork(3), tierNetwork(1)]) {
      const chain: PolicyChain = {
        sandbox: 'sb',
        org: o === null ? null : { id: 'o', layer: compileLayer(o, settings) },
        layer: compileLayer(port443, settings),
        reportOnly: ['sandbox'],
      };
      expect(verdict(chain, at22).verdict, JSON.stringify(o)).toBe('would-refuse');
    }
    const full: PolicyChain = { ...chainFor('tier3', 'full'), reportOnly: ['global'] };
    expect(verdict(full, COLS[0]!)).toMatchObject({ verdict: 'refuse', reason: 'protected-address', rule: 'org o: protected "192.168.0.0/16"' });
  });

  it("names the organization's own rule when it refuses what the sandbox opened", () => {
    expect(verdict(chainFor('tier1', 'daytona'), COLS[0]!)).toMatchObject({
      verdict: 'refuse',
      reason: 'default-block',
      rule: 'org o: mode "block-all"',
      layer: 'org',
    });
    expect(verdict(chainFor('deniesRange', 'daytona'), COLS[3]!)).toMatchObject({ verdict: 'refuse', rule: 'org o: denied_cidrs "192.168.1.0/24"' });
    expect(verdict(chainFor('deniesName', 'daytona'), COLS[2]!)).toMatchObject({ verdict: 'refuse', rule: 'org o: denied_domains "other.test"' });
    expect(verdict(chainFor('tier3', 'daytona'), COLS[0]!)).toMatchObject({ verdict: 'allow', rule: 'allowed_cidrs "192.168.1.0/24"', layer: 'sandbox' });
  });

  it("never opens the host or protected.extra, which no policy opens, by the sandbox's grant", () => {
    const extra: LayerSettings = { ...settings, protectedRanges: compileProtected({ extra: ['192.168.1.0/24'] }) };
    const chain: PolicyChain = {
      sandbox: 'sb',
      org: { id: 'o', layer: compileLayer(tierNetwork(3), extra) },
      layer: compileLayer(SANDBOX_KINDS.daytona, extra),
    };
    expect(verdict(chain, COLS[0]!)).toMatchObject({ verdict: 'refuse', reason: 'protected-address', rule: 'org o: protected.extra "192.168.1.0/24"' });
  });
});
