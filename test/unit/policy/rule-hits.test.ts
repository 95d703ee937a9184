import { describe, expect, it } from 'vitest';
import { compileProtected } from '../../../src/match/protected.ts';
import { SharedDomains } from '../../../src/policy/compile.ts';
import type { DialectResult } from '../../../src/policy/model.ts';
import { compileOverlays } from '../../../src/policy/overlay.ts';
import { compileLayer, countVerdict, tierNetwork, verdict, type PolicyChain } from '../../../src/policy/verdict.ts';

const settings = { protectedRanges: compileProtected({}), catalog: new SharedDomains(['registry.npmjs.org', '*.pypi.org']), dnsServers: [] };
const NONE = { domains: [], cidrs: [], ports: [] };
const sandbox: DialectResult = {
  dialect: 'sandbox0',
  policy: {
    mode: 'block-all',
    allow: { domains: ['*.allowed.test', 'unused.test'], cidrs: ['44.0.0.0/8'], ports: [{ from: 443, to: 443 }] },
    deny: { ...NONE, domains: ['bad.allowed.test'] },
  },
  essentialServices: true,
  dnsServersAllowed: false,
};

/** Decides and counts, as a connection's final verdict is counted. */
const run = (chain: PolicyChain, name: string | null, ip: string, port: number): string => {
  const v = verdict(chain, { name, ip, port });
  countVerdict(v);
  return v.verdict;
};

describe('per-rule hit counts', () => {
  it('counts the host and port rules that allowed, the deny rule, the mode, and the catalog entry hit; never a protected address', () => {
    const chain: PolicyChain = { sandbox: 'sb', org: null, layer: compileLayer(sandbox, settings) };
    expect(run(chain, 'a.allowed.test', '93.184.216.34', 443)).toBe('allow');
    expect(run(chain, 'b.allowed.test', '93.184.216.34', 443)).toBe('allow');
    expect(run(chain, null, '44.1.2.3', 443)).toBe('allow');
    expect(run(chain, 'bad.allowed.test', '93.184.216.34', 80)).toBe('refuse');
    expect(run(chain, 'files.pypi.org', '93.184.216.34', 443)).toBe('allow');
    expect(run(chain, null, '93.184.216.34', 22)).toBe('refuse');
    expect(run(chain, null, '127.0.0.1', 443)).toBe('refuse');
    expect(chain.layer.main.counts.list()).toEqual([
      { id: 'allowed_domains[0]', rule: 'allowed_domains "*.allowed.test"', hits: 2 },
      { id: 'allowed_domains[1]', rule: 'allowed_domains "unused.test"', hits: 0 },
      { id: 'allowed_cidrs[0]', rule: 'allowed_cidrs "44.0.0.0/8"', hits: 1 },
      { id: 'allowed_ports[0]', rule: 'allowed_ports "443"', hits: 4 },
      { id: 'denied_domains[0]', rule: 'denied_domains "bad.allowed.test"', hits: 1 },
      { id: 'essential_services[1]', rule: 'allowed_domains "*.pypi.org"', hits: 1 },
      { id: 'mode', rule: 'mode "block-all"', hits: 1 },
    ]);
  });

  it('counts the organization rule that allowed beside the sandbox rule that decided, and a refusing organization alone', () => {
    const org = compileLayer(tierNetwork(1), settings);
    const chain: PolicyChain = { sandbox: 'sb', org: { id: 'acme', layer: org }, layer: compileLayer(tierNetwork(4), settings) };
    expect(run(chain, 'registry.npmjs.org', '93.184.216.34', 443)).toBe('allow');
    expect(run(chain, 'other.test', '93.184.216.34', 443)).toBe('refuse');
    expect(org.main.counts.list()).toEqual([
      { id: 'essential_services[0]', rule: 'allowed_domains "registry.npmjs.org"', hits: 1 },
      { id: 'mode', rule: 'mode "block-all"', hits: 1 },
    ]);
    expect(chain.layer.main.counts.list()).toEqual([{ id: 'mode', rule: 'mode "allow-all"', hits: 1 }]);
  });

  it('counts an overlay entry by name, and a would-refuse for the rule that would have refused', () => {
    const overlays = compileOverlays(
      { alwaysAllow: [{ name: 'mirror', side: { ...NONE, domains: ['mirror.test'] } }], alwaysDeny: [] },
      settings.protectedRanges,
    );
    const chain: PolicyChain = { sandbox: 'sb', org: null, layer: compileLayer(sandbox, settings), overlays, reportOnly: ['sandbox'] };
    expect(run(chain, 'mirror.test', '93.184.216.34', 8080)).toBe('allow');
    expect(run(chain, null, '93.184.216.34', 22)).toBe('would-refuse');
    expect(overlays.alwaysAllow[0]!.counter.hits).toBe(1);
    expect(chain.layer.main.counts.list().at(-1)).toEqual({ id: 'mode', rule: 'mode "block-all"', hits: 1 });
  });
});
