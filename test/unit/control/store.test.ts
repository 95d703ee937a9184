// The policy store's compiled layers: the essential-services catalog compiled once and shared
// by every layer that has it on, and sandbox layers compiled on first use (issue 11).

import { describe, expect, it } from 'vitest';
import { PolicyStore } from '../../../src/control/store.ts';
import type { DialectResult } from '../../../src/policy/model.ts';
import { parseNetworkBody } from '../../../src/policy/network-body.ts';
import { verdict } from '../../../src/policy/verdict.ts';

const network = (body: unknown): DialectResult => {
  const r = parseNetworkBody(body);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.value;
};
const store = (): PolicyStore =>
  new PolicyStore({ protected: { extra: [], except: [], nat64Prefixes: [] }, catalog: ['registry.npmjs.org', '*.pypi.org'], dnsServers: [] }, network({}));
const at = { ip: '93.184.216.34', port: 443 };

describe('PolicyStore', () => {
  it('compiles the catalog once: every sandbox and organization that has it on shares the same trie', () => {
    const s = store();
    s.putSandbox({ id: 'a', sources: ['198.18.0.1'], org: null, network: network({ domainAllowList: 'a.test' }) });
    s.putSandbox({ id: 'b', sources: ['198.18.0.2'], org: 'tier1', network: network({ networkAllowList: '44.0.0.0/8' }) });
    s.putSandbox({ id: 'c', sources: ['198.18.0.3'], org: null, network: network({ mode: 'block-all', egress: { allowed_domains: ['c.test'] } }) });
    s.putOrg({ id: 'tier1', tier: 1, network: null });
    const shared = s.policyOf('a')!.layer.main.allow.joined;
    expect(shared?.patterns).toEqual(['registry.npmjs.org', '*.pypi.org']);
    expect(s.policyOf('b')!.layer.main.allow.joined).toBe(shared);
    expect(s.policyOf('b')!.org!.layer!.main.allow.joined).toBe(shared);
    // sandbox0 has no catalog: nothing joined.
    expect(s.policyOf('c')!.layer.main.allow.joined).toBeNull();
    // The shared catalog allows under each, with the rule naming the catalog entry.
    expect(verdict(s.lookup('198.18.0.1'), { name: 'files.pypi.org', ...at })).toMatchObject({ verdict: 'allow', rule: 'allowed_domains "*.pypi.org"' });
    expect(verdict(s.lookup('198.18.0.2'), { name: 'registry.npmjs.org', ...at })).toMatchObject({ verdict: 'allow', layer: 'sandbox' });
    expect(verdict(s.lookup('198.18.0.3'), { name: 'files.pypi.org', ...at })).toMatchObject({ verdict: 'refuse' });
  });

  it('compiles a sandbox on its first lookup, and links it to its organization as it is then', () => {
    const s = store();
    for (let i = 0; i < 100; i++) s.putSandbox({ id: `sb-${i}`, sources: [`198.18.1.${i}`], org: 'acme', network: network({ domainAllowList: `s${i}.test` }) });
    expect(s.compiledCount).toBe(0);
    // An unknown organization refuses everything (fail closed), compiled or not.
    expect(verdict(s.lookup('198.18.1.7'), { name: 's7.test', ...at })).toMatchObject({ verdict: 'refuse', rule: 'org acme: unknown organization' });
    expect(s.compiledCount).toBe(1);
    s.putOrg({ id: 'acme', tier: 4, network: null });
    expect(verdict(s.lookup('198.18.1.7'), { name: 's7.test', ...at })).toMatchObject({ verdict: 'allow' });
    expect(verdict(s.lookup('198.18.1.8'), { name: 's7.test', ...at })).toMatchObject({ verdict: 'refuse' });
    expect(s.compiledCount).toBe(2);
    // A change replaces the compiled layer: the next lookup sees the new policy.
    s.putSandbox({ id: 'sb-7', sources: ['198.18.1.7'], org: 'acme', network: network({ networkBlockAll: true }) });
    expect(verdict(s.lookup('198.18.1.7'), { name: 's7.test', ...at })).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
    s.removeOrg('acme');
    expect(verdict(s.lookup('198.18.1.8'), { name: 's8.test', ...at })).toMatchObject({ verdict: 'refuse', rule: 'org acme: unknown organization' });
  });
});
