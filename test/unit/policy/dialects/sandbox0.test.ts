// The sandbox0 dialect: every policy example of sandbox0 "Network Policy" with the verdicts it states, and what
// the wrapper adds to parsePolicyDocument (the two flags, and issue paths relative to the body).

import { describe, expect, it } from 'vitest';
import { issuesOf, parsed, verdictOf } from '../../../helpers/network-body.ts';

const GITHUB_IP = '140.82.112.3';
const ELSEWHERE = '104.16.24.34';

describe('sandbox0 "Network Policy" examples', () => {
  it('"Allow All Traffic": everything is allowed', () => {
    const v = verdictOf({ mode: 'allow-all' });
    expect(v('github.com', GITHUB_IP)).toBe('allow');
    expect(v(null, '1.1.1.1', 22)).toBe('allow');
  });

  it('"Block All Traffic": everything is refused', () => {
    const v = verdictOf({ mode: 'block-all' });
    expect(v('github.com', GITHUB_IP)).toBe('refuse');
    expect(v(null, '1.1.1.1', 53)).toBe('refuse');
  });

  it('"Allow Specific Domains": only github.com, pypi.org and api.openai.com', () => {
    const v = verdictOf({ mode: 'block-all', egress: { allowed_domains: ['github.com', 'pypi.org', 'api.openai.com'] } });
    for (const host of ['github.com', 'pypi.org', 'api.openai.com']) expect(v(host, ELSEWHERE), host).toBe('allow');
    expect(v('api.github.com', ELSEWHERE)).toBe('refuse');
    expect(v('openai.com', ELSEWHERE)).toBe('refuse');
    expect(v('example.com', ELSEWHERE)).toBe('refuse');
    expect(v(null, GITHUB_IP)).toBe('refuse');
  });

  it('"Block Specific Domains": facebook.com and twitter.com refused, all others allowed', () => {
    const v = verdictOf({ mode: 'allow-all', egress: { denied_domains: ['facebook.com', 'twitter.com'] } });
    expect(v('facebook.com', ELSEWHERE)).toBe('refuse');
    expect(v('twitter.com', ELSEWHERE)).toBe('refuse');
    expect(v('github.com', GITHUB_IP)).toBe('allow');
    expect(v(null, ELSEWHERE)).toBe('allow');
  });

  it('"Test Network Connectivity": github.com answers before block-all and not after', () => {
    expect(verdictOf({ mode: 'allow-all' })('github.com', GITHUB_IP)).toBe('allow');
    expect(verdictOf({ mode: 'block-all' })('github.com', GITHUB_IP)).toBe('refuse');
  });

  it('"Set Network Policy at Creation" with allow-all is the default, unrestricted access', () => {
    expect(parsed({ mode: 'allow-all' }).policy).toEqual({
      mode: 'allow-all',
      allow: { domains: [], cidrs: [], ports: [] },
      deny: { domains: [], cidrs: [], ports: [] },
    });
  });
});

describe('the sandbox0 wrapper', () => {
  it('carries neither the essential services nor the DNS servers, even with domains', () => {
    expect(parsed({ mode: 'block-all', egress: { allowed_domains: ['github.com'] } })).toMatchObject({
      dialect: 'sandbox0',
      essentialServices: false,
      dnsServersAllowed: false,
    });
  });

  it("passes parsePolicyDocument's issues through with their paths", () => {
    expect(issuesOf({ mode: 'block-all', egress: { allowed_cidrs: ['10.0.0.0/8', 'nope'] } })).toEqual([
      { field: 'egress.allowed_cidrs[1]', reason: 'CIDR "nope" does not start with an IPv4 or IPv6 address' },
    ]);
  });

  it('names the body itself "" rather than "(root)", so it nests under the caller\'s path', () => {
    const issues = issuesOf({ mode: 'block-all', egress: { allowed_cidrs: Array.from({ length: 101 }, () => 'nope') } });
    expect(issues).toHaveLength(101);
    expect(issues[100]).toEqual({ field: '', reason: '1 more problems not shown' });
  });
});
