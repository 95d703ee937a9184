// nameReach (what the DNS listener forwards and the effective view lists) against verdict() itself:
// for random chains — overlays, an organization, a sandbox, report-only — and names, a name
// reaches iff some port lets verdict() allow it (or, in report-only mode, would refuse it) at an
// address no rule names. The port universe is every port the chain's rules start or end at, the
// port past each range, 1, 65535 and a port no rule mentions: every segment on which the rules
// answer alike holds one of them.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compileProtected } from '../../src/match/protected.ts';
import { SharedDomains } from '../../src/policy/compile.ts';
import type { DialectResult, PortRange, Side } from '../../src/policy/model.ts';
import { compileOverlays } from '../../src/policy/overlay.ts';
import { compileLayer, nameReach, verdict, type LayerSettings, type PolicyChain } from '../../src/policy/verdict.ts';

const DOMAINS = ['a.test', '*.a.test', 'b.test', '*.test', 'registry.npmjs.org'];
const NAMES = ['a.test', 'x.a.test', 'b.test', 'c.test', 'registry.npmjs.org', 'other.example'];
const PORTS: readonly PortRange[] = [
  { from: 22, to: 22 },
  { from: 443, to: 443 },
  { from: 400, to: 500 },
  { from: 1, to: 442 },
  { from: 444, to: 65535 },
];
// Public and outside every CIDR below: the address "no rule names".
const IP = '93.184.216.34';
const UNMENTIONED = 9999;

const side = fc.record({
  domains: fc.subarray(DOMAINS, { maxLength: 2 }),
  // A CIDR never holds IP: address rules grant no name.
  cidrs: fc.subarray(['44.0.0.0/8', '10.0.0.0/8'], { maxLength: 1 }),
  ports: fc.subarray([...PORTS], { maxLength: 2 }),
});
const network = fc.record({
  dialect: fc.constant('sandbox0' as const),
  policy: fc.record({ mode: fc.constantFrom('allow-all' as const, 'block-all' as const), allow: side, deny: side }),
  essentialServices: fc.boolean(),
  dnsServersAllowed: fc.boolean(),
});
const SETTINGS: LayerSettings = {
  protectedRanges: compileProtected({}),
  catalog: new SharedDomains(['registry.npmjs.org', '*.a.test']),
  dnsServers: ['9.9.9.9'],
};

const chain = fc.record({
  org: fc.option(fc.option(network, { nil: null }), { nil: undefined }),
  sandbox: network,
  alwaysAllow: fc.array(side, { maxLength: 1 }),
  alwaysDeny: fc.array(side, { maxLength: 1 }),
  reportOnly: fc.boolean(),
});

function build(c: {
  org: DialectResult | null | undefined;
  sandbox: DialectResult;
  alwaysAllow: Side[];
  alwaysDeny: Side[];
  reportOnly: boolean;
}): PolicyChain {
  return {
    sandbox: 'sb',
    // undefined: no organization; null: an unknown one.
    org: c.org === undefined ? null : { id: 'o', layer: c.org === null ? null : compileLayer(c.org, SETTINGS) },
    layer: compileLayer(c.sandbox, SETTINGS),
    overlays: compileOverlays(
      {
        alwaysAllow: c.alwaysAllow.map((s, i) => ({ name: `aa${i}`, side: s })),
        alwaysDeny: c.alwaysDeny.map((s, i) => ({ name: `ad${i}`, side: s })),
      },
      SETTINGS.protectedRanges,
    ),
    reportOnly: c.reportOnly ? ['sandbox'] : [],
  };
}

const universe = (): number[] => {
  const ports = new Set([1, 53, 65535, UNMENTIONED]);
  for (const r of PORTS) for (const p of [r.from - 1, r.from, r.to, r.to + 1]) if (p >= 1 && p <= 65535) ports.add(p);
  return [...ports];
};

describe('nameReach against verdict()', () => {
  it('reaches a name iff some port passes every layer, the overlays and report-only included', () => {
    const ports = universe();
    fc.assert(
      fc.property(chain, fc.constantFrom(...NAMES), (c, name) => {
        const ch = build(c);
        const passing = ports.filter((port) => verdict(ch, { name, ip: IP, port }).verdict !== 'refuse');
        const r = nameReach(ch, name);
        expect(r.reach, `${name} passes on ${JSON.stringify(passing)}`).toBe(passing.length > 0);
        // Forwarded only by report-only: no port is allowed outright.
        if (r.reach) expect(r.wouldRefuse === true).toBe(passing.every((port) => verdict(ch, { name, ip: IP, port }).verdict === 'would-refuse'));
      }),
      { numRuns: 400 },
    );
  });
});
