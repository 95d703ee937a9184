// An organization and its sandbox, drawn at random, against what the sandbox decides alone: a
// protected address is opened by the sandbox's own policy and lent to its organization's layer
// (verdict.ts, decide.ts `lent`), which may then refuse it but never opens more. Rules and
// addresses come from small pools so that CIDRs nest in, straddle and sit beside the protected
// ranges and their NAT64, SIIT, IPv4-compatible, 6to4 and Teredo forms.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compileProtected } from '../../src/match/protected.ts';
import { SharedDomains } from '../../src/policy/compile.ts';
import type { DialectResult, Side } from '../../src/policy/model.ts';
import { compileOverlays } from '../../src/policy/overlay.ts';
import { compileLayer, tierNetwork, verdict, type Facts, type LayerSettings, type PolicyChain } from '../../src/policy/verdict.ts';

const CIDRS = [
  '10.0.0.0/8',
  '10.0.0.0/7',
  '10.0.0.5/32',
  '0.0.0.0/0',
  '0.0.0.0/8',
  '::/0',
  '192.168.0.0/16',
  '169.254.169.254/32',
  '1.2.3.0/24',
  '127.0.0.0/8',
  '::1/128',
  'fd00::/8',
  '64:ff9b::/96',
  '64:ff9b::a00:0/104',
  '::ffff:10.0.0.0/104',
  '::/96',
  '::ffff:0:0:0/96',
  '2002::/16',
  '2002:a00::/24',
  '2001::/32',
];
const IPS = [
  '10.0.0.5',
  '10.0.0.2',
  '192.168.1.5',
  '169.254.169.254',
  '1.2.3.4',
  '127.0.0.1',
  '0.0.0.0',
  '::',
  '::1',
  '::2',
  'fd00::1',
  '::ffff:10.0.0.5',
  '::ffff:0:a00:5',
  '::a00:5',
  '::a9fe:a9fe',
  '64:ff9b::a00:5',
  '64:ff9b::a9fe:a9fe',
  '64:ff9b::102:304',
  '2002:a00:5::1',
  '2002:a9fe:a9fe::1',
  // Teredo: server 10.0.0.5 and client 10.0.0.5; server public, client 10.0.0.5; the reverse.
  '2001:0:a00:5::f5ff:fffa',
  '2001:0:102:304::f5ff:fffa',
  '2001:0:a00:5::fefd:fcfb',
];
const FACTS: readonly Facts[] = IPS.flatMap((ip) => [53, 443].flatMap((port) => [null, 'a.test', 'registry.npmjs.org'].map((name) => ({ name, ip, port }))));

const side = fc.record({
  domains: fc.subarray(['a.test', 'b.test']),
  cidrs: fc.subarray(CIDRS, { maxLength: 4 }),
  ports: fc.subarray([
    { from: 53, to: 53 },
    { from: 443, to: 443 },
  ]),
});
const network = fc.record({
  dialect: fc.constant('sandbox0' as const),
  policy: fc.record({ mode: fc.constantFrom('allow-all' as const, 'block-all' as const), allow: side, deny: side }),
  essentialServices: fc.boolean(),
  dnsServersAllowed: fc.boolean(),
});
const SETTINGS = [{}, { except: ['64:ff9b::/96', '2002::/16'] }, { extra: ['10.0.0.0/24'] }].flatMap((p) =>
  ['10.0.0.2', '9.9.9.9'].map((dns): LayerSettings => ({
    protectedRanges: compileProtected(p),
    catalog: new SharedDomains(['registry.npmjs.org']),
    dnsServers: [dns],
  })),
);
const NONE: Side = { domains: [], cidrs: [], ports: [] };
const OPEN: DialectResult = { dialect: 'sandbox0', policy: { mode: 'allow-all', allow: NONE, deny: NONE }, essentialServices: false, dnsServersAllowed: false };

const layerOf = (r: DialectResult, s: LayerSettings) => compileLayer(r, s);
const orgChain = (org: DialectResult, sandbox: DialectResult, s: LayerSettings, extra: Partial<PolicyChain> = {}): PolicyChain => ({
  sandbox: 'sb',
  org: { id: 'o', layer: layerOf(org, s) },
  layer: layerOf(sandbox, s),
  ...extra,
});
const alone = (sandbox: DialectResult, s: LayerSettings, extra: Partial<PolicyChain> = {}): PolicyChain => ({
  sandbox: 'sb',
  org: null,
  layer: layerOf(sandbox, s),
  ...extra,
});
const settings = fc.constantFrom(...SETTINGS);
const RUNS = { numRuns: 150 };

describe('lending a protected address to the organization (verdict.ts)', () => {
  it('never lets through what the sandbox alone refuses, nor, in report-only mode, what it refuses as protected', () => {
    fc.assert(
      fc.property(network, network, settings, fc.boolean(), (org, sandbox, s, reportOnly) => {
        const ro: Partial<PolicyChain> = reportOnly ? { reportOnly: ['sandbox'] } : {};
        const both = orgChain(org, sandbox, s, ro);
        const own = alone(sandbox, s, ro);
        for (const f of FACTS) {
          const a = verdict(own, f);
          if (a.verdict === 'refuse') expect(verdict(both, f).verdict, JSON.stringify(f)).toBe('refuse');
        }
      }),
      RUNS,
    );
  });

  it('leaves the decision to the sandbox under an organization on tier 3 or 4', () => {
    fc.assert(
      fc.property(network, settings, fc.constantFrom(3 as const, 4 as const), (sandbox, s, tier) => {
        const both = orgChain(tierNetwork(tier), sandbox, s);
        const own = alone(sandbox, s);
        for (const f of FACTS) expect(verdict(both, f).verdict, JSON.stringify(f)).toBe(verdict(own, f).verdict);
      }),
      RUNS,
    );
  });

  it('lets the organization allow an address only its sandbox opened by address, port or mode, never by a name', () => {
    fc.assert(
      fc.property(network, network, settings, (org, sandbox, s) => {
        const both = orgChain(org, sandbox, s);
        const orgOwn = alone(org, s);
        const open = alone(OPEN, s);
        // The organization's policy with no address protected, asked with no name.
        const orgPolicy = alone(org, { ...s, protectedRanges: compileProtected({ except: ['0.0.0.0/0', '::/0'] }) });
        for (const f of FACTS) {
          if (verdict(both, f).verdict !== 'allow') continue;
          if (verdict(open, f).reason !== 'protected-address' || verdict(orgOwn, f).reason !== 'protected-address') continue;
          expect(verdict(orgPolicy, { ...f, name: null }).verdict, JSON.stringify(f)).toBe('allow');
        }
      }),
      RUNS,
    );
  });

  it("opens nothing protected by the operator's always-allow entry beyond what the entry itself unlocks", () => {
    fc.assert(
      fc.property(network, network, side, side, settings, (org, sandbox, allowEntry, denyEntry, s) => {
        const overlays = compileOverlays({ alwaysAllow: [{ name: 'aa', side: allowEntry }], alwaysDeny: [{ name: 'ad', side: denyEntry }] }, s.protectedRanges);
        const both = orgChain(org, sandbox, s, { overlays, reportOnly: ['org'] });
        const entry = alone({ ...OPEN, policy: { mode: 'block-all', allow: allowEntry, deny: NONE } }, s);
        const own = alone(sandbox, s);
        for (const f of FACTS) {
          const v = verdict(both, f);
          if (v.verdict === 'refuse') continue;
          // Through the entry: the entry alone, protection included, allows it. Else the sandbox opened it.
          if (v.layer === 'always-allow') expect(verdict(entry, f).verdict, JSON.stringify(f)).toBe('allow');
          else expect(verdict(own, f).reason, JSON.stringify(f)).not.toBe('protected-address');
        }
      }),
      RUNS,
    );
  });
});
