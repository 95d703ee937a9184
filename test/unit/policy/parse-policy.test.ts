import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../../src/policy/compile.ts';
import { decide, type Facts } from '../../../src/policy/decide.ts';
import type { Policy } from '../../../src/policy/model.ts';
import type { FieldIssue } from '../../../src/util/issues.ts';
import { parsePolicyDocument } from '../../../src/policy/parse-policy.ts';
import { compileProtected } from '../../../src/match/protected.ts';

const parsed = (doc: unknown): Policy => {
  const r = parsePolicyDocument(doc);
  if (!r.ok) throw new Error(`expected a valid policy, got ${JSON.stringify(r.issues)}`);
  return r.value;
};
const issues = (doc: unknown): readonly FieldIssue[] => {
  const r = parsePolicyDocument(doc);
  if (r.ok) throw new Error('expected the policy to be refused');
  return r.issues;
};

describe('parsePolicyDocument: the sandbox0 wire format', () => {
  it('reads block-all into the allow side only', () => {
    const p = parsed({
      mode: 'block-all',
      egress: {
        allowed_domains: ['GitHub.com', '*.pypi.org'],
        allowed_cidrs: ['192.168.1.0/16'],
        allowed_ports: [443, '8000-8999'],
        denied_domains: ['facebook.com'],
        denied_cidrs: ['1.1.1.1'],
        denied_ports: [22],
      },
    });
    expect(p).toEqual({
      mode: 'block-all',
      allow: {
        domains: ['github.com', '*.pypi.org'],
        cidrs: ['192.168.0.0/16'],
        ports: [
          { from: 443, to: 443 },
          { from: 8000, to: 8999 },
        ],
      },
      deny: { domains: [], cidrs: [], ports: [] },
    });
  });

  it('reads allow-all into the deny side only', () => {
    const p = parsed({
      mode: 'allow-all',
      egress: {
        allowed_domains: ['github.com'],
        allowed_cidrs: ['10.0.0.0/8'],
        allowed_ports: [443],
        denied_domains: ['Facebook.com.'],
        denied_cidrs: ['1.1.1.1'],
        denied_ports: ['22'],
      },
    });
    expect(p).toEqual({
      mode: 'allow-all',
      allow: { domains: [], cidrs: [], ports: [] },
      deny: { domains: ['facebook.com'], cidrs: ['1.1.1.1/32'], ports: [{ from: 22, to: 22 }] },
    });
  });

  it('takes a missing or null egress, and missing or null lists, as empty', () => {
    const empty = { mode: 'block-all', allow: { domains: [], cidrs: [], ports: [] }, deny: { domains: [], cidrs: [], ports: [] } };
    expect(parsed({ mode: 'block-all' })).toEqual(empty);
    expect(parsed({ mode: 'block-all', egress: null })).toEqual(empty);
    expect(parsed({ mode: 'block-all', egress: {} })).toEqual(empty);
    expect(parsed({ mode: 'block-all', egress: { allowed_domains: null, allowed_cidrs: [] } })).toEqual(empty);
  });

  it('keeps one copy of entries that normalize to the same value', () => {
    const p = parsed({
      mode: 'block-all',
      egress: { allowed_domains: ['a.com', 'A.com.'], allowed_cidrs: ['10.1.0.0/8', '10.0.0.0/8'], allowed_ports: [443, '443'] },
    });
    expect(p.allow).toEqual({ domains: ['a.com'], cidrs: ['10.0.0.0/8'], ports: [{ from: 443, to: 443 }] });
  });

  it('returns a frozen policy', () => {
    const p = parsed({ mode: 'block-all', egress: { allowed_domains: ['a.com'] } });
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p.allow)).toBe(true);
    expect(Object.isFrozen(p.allow.domains)).toBe(true);
  });

  it('requires a mode', () => {
    expect(issues({ egress: {} })).toEqual([{ field: 'mode', reason: 'Missing field "mode"; expected allow-all or block-all' }]);
  });

  it.each([
    ['allow', '"allow"'],
    ['BLOCK-ALL', '"BLOCK-ALL"'],
    [42, '"42"'],
    [null, '"null"'],
  ])('refuses the mode %j', (mode, quoted) => {
    expect(issues({ mode })).toEqual([{ field: 'mode', reason: `Unknown mode ${quoted}; expected allow-all or block-all` }]);
  });

  it('refuses a document that is not an object', () => {
    expect(issues('block-all')).toEqual([{ field: '(root)', reason: 'Expected an object with "mode" and "egress", got the string "block-all"' }]);
    expect(issues([])).toHaveLength(1);
    expect(issues(null)).toHaveLength(1);
  });

  it('refuses unknown fields at the root and in egress', () => {
    expect(issues({ mode: 'block-all', Mode: 'x', egress: { allowed_domain: ['a.com'] } })).toEqual([
      { field: 'Mode', reason: 'Unknown field "Mode"; known fields are mode, egress' },
      {
        field: 'egress.allowed_domain',
        reason: 'Unknown field "allowed_domain"; known fields are allowed_domains, denied_domains, allowed_cidrs, denied_cidrs, allowed_ports, denied_ports',
      },
    ]);
  });

  it('reports every issue at once, each with its field path', () => {
    const got = issues({
      mode: 'block-all',
      egress: {
        allowed_domains: ['ok.com', '*.com', 'bad domain'],
        allowed_cidrs: ['10.0.0.0/8', '10.0.0.0/33', 'x'],
        allowed_ports: [443, 70000, '9000-8000'],
        // A deny wildcard over a public suffix is taken (names.ts); a broken pattern is not.
        denied_domains: ['*.co.uk', '*.*.co.uk'],
        denied_cidrs: 'nope',
        denied_ports: [0],
      },
    });
    expect(got.map((i) => i.field)).toEqual([
      'egress.allowed_domains[1]',
      'egress.allowed_domains[2]',
      'egress.allowed_cidrs[1]',
      'egress.allowed_cidrs[2]',
      'egress.allowed_ports[1]',
      'egress.allowed_ports[2]',
      'egress.denied_domains[1]',
      'egress.denied_cidrs',
      'egress.denied_ports[0]',
    ]);
    expect(got).toContainEqual({ field: 'egress.allowed_domains[1]', reason: 'Pattern "*.com" is a wildcard over the public suffix "com"' });
    expect(got).toContainEqual({ field: 'egress.allowed_ports[1]', reason: 'Port "70000" is outside 1-65535' });
    expect(got).toContainEqual({ field: 'egress.allowed_ports[2]', reason: 'Port range "9000-8000" is reversed; write the lower port first' });
    expect(got).toContainEqual({ field: 'egress.allowed_cidrs[1]', reason: 'CIDR "10.0.0.0/33" has a prefix length outside 0-32' });
    expect(got).toContainEqual({ field: 'egress.denied_cidrs', reason: 'Expected a list, got the string "nope"' });
  });

  it('validates the side the mode ignores, so a mistake there is still reported', () => {
    expect(issues({ mode: 'allow-all', egress: { allowed_ports: [70000] } })).toEqual([
      { field: 'egress.allowed_ports[0]', reason: 'Port "70000" is outside 1-65535' },
    ]);
    expect(issues({ mode: 'block-all', egress: { denied_cidrs: ['10.0.0.0/99'] } })).toEqual([
      { field: 'egress.denied_cidrs[0]', reason: 'CIDR "10.0.0.0/99" has a prefix length outside 0-32' },
    ]);
  });

  it('refuses entries of the wrong type', () => {
    const got = issues({ mode: 'block-all', egress: { allowed_domains: [42], allowed_cidrs: [null], allowed_ports: [true], denied_domains: {} } });
    expect(got).toEqual([
      { field: 'egress.allowed_domains[0]', reason: 'Expected a domain pattern, got number "42"' },
      { field: 'egress.allowed_cidrs[0]', reason: 'Expected a CIDR such as "10.0.0.0/8", got null' },
      { field: 'egress.allowed_ports[0]', reason: 'Expected a port (443) or a range ("8000-8999"), got boolean' },
      { field: 'egress.denied_domains', reason: 'Expected a list, got object "{}"' },
    ]);
  });

  it('bounds the report on a hostile document', () => {
    const got = issues({ mode: 'block-all', egress: { allowed_ports: Array.from({ length: 10_000 }, () => 0) } });
    expect(got).toHaveLength(101);
    expect(got[100]).toEqual({ field: '(root)', reason: '9900 more problems not shown' });
  });
});

describe('the policy examples of sandbox0 "Network Policy" (sandbox0), with the verdicts it states', () => {
  const protectedSet = compileProtected({});
  const verdict = (doc: unknown, f: Facts) => decide(compilePolicy(parsed(doc), protectedSet), f).verdict;
  const github: Facts = { name: 'github.com', ip: '140.82.112.3', port: 443 };

  it('Allow All Traffic: github.com is reachable', () => {
    expect(verdict({ mode: 'allow-all' }, github)).toBe('allow');
  });

  it('Block All Traffic: github.com is not', () => {
    expect(verdict({ mode: 'block-all' }, github)).toBe('refuse');
  });

  it('Test Network Connectivity: curl https://github.com works before block-all and fails after', () => {
    expect(verdict({ mode: 'allow-all' }, github)).toBe('allow');
    expect(verdict({ mode: 'block-all' }, github)).toBe('refuse');
  });

  it('Allow Specific Domains: only github.com, pypi.org, api.openai.com allowed', () => {
    const doc = { mode: 'block-all', egress: { allowed_domains: ['github.com', 'pypi.org', 'api.openai.com'] } };
    expect(verdict(doc, github)).toBe('allow');
    expect(verdict(doc, { name: 'pypi.org', ip: '151.101.0.223', port: 443 })).toBe('allow');
    expect(verdict(doc, { name: 'api.openai.com', ip: '162.159.140.245', port: 443 })).toBe('allow');
    expect(verdict(doc, { name: 'example.com', ip: '93.184.215.14', port: 443 })).toBe('refuse');
    expect(verdict(doc, { name: 'api.github.com', ip: '140.82.112.6', port: 443 })).toBe('refuse');
    expect(verdict(doc, { name: null, ip: '140.82.112.3', port: 443 })).toBe('refuse');
  });

  it('Block Specific Domains: facebook.com and twitter.com blocked, all others allowed', () => {
    const doc = { mode: 'allow-all', egress: { denied_domains: ['facebook.com', 'twitter.com'] } };
    expect(verdict(doc, { name: 'facebook.com', ip: '157.240.22.35', port: 443 })).toBe('refuse');
    expect(verdict(doc, { name: 'twitter.com', ip: '104.244.42.1', port: 443 })).toBe('refuse');
    expect(verdict(doc, github)).toBe('allow');
    expect(verdict(doc, { name: 'www.facebook.com', ip: '157.240.22.35', port: 443 })).toBe('allow');
  });

  it('ignores denied_* in block-all and allowed_* in allow-all', () => {
    const blockAll = { mode: 'block-all', egress: { allowed_domains: ['github.com'], denied_domains: ['github.com'] } };
    expect(verdict(blockAll, github)).toBe('allow');
    const allowAll = { mode: 'allow-all', egress: { allowed_ports: [443], denied_domains: ['github.com'] } };
    expect(verdict(allowAll, github)).toBe('refuse');
    // allowed_cidrs are ignored in allow-all, so they cannot unlock a protected address.
    const unlockIgnored = { mode: 'allow-all', egress: { allowed_cidrs: ['10.0.0.0/8'] } };
    expect(verdict(unlockIgnored, { name: null, ip: '10.1.2.3', port: 443 })).toBe('refuse');
  });
});
