// The Daytona dialect: every policy example of the three Daytona network documents (docs/sources.md) with the verdicts the
// documents state, and each rule of Daytona "Network Limits (Firewall)"'s "Network allow list format" with its error.

import { describe, expect, it } from 'vitest';
import { loadCatalog } from '../../../../src/policy/catalog/catalog.ts';
import { SharedDomains } from '../../../../src/policy/compile.ts';
import { issuesOf, parsed, verdictOf as verdictUnder } from '../../../helpers/network-body.ts';

const catalog = loadCatalog();
if (!catalog.ok) throw new Error(JSON.stringify(catalog.issues));
const CATALOG = new SharedDomains(catalog.domains);

/** The verdict for one connection under a body, with the catalog joined as the store joins it. */
const verdictOf = (body: unknown) => verdictUnder(body, CATALOG);

/** An unrelated public address, for connections that are judged by name. */
const SOME_PUBLIC_IP = '104.16.24.34';

describe('Daytona "Network Limits (Firewall)": network_allow_list "208.80.154.232/32,199.16.156.103/32,192.168.1.0/24"', () => {
  const body = { networkAllowList: '208.80.154.232/32,199.16.156.103/32,192.168.1.0/24' };
  const v = verdictOf(body);

  it('allows Wikipedia, X/Twitter and the private network, on any port', () => {
    expect(v(null, '208.80.154.232')).toBe('allow');
    expect(v(null, '199.16.156.103', 80)).toBe('allow');
    expect(v(null, '192.168.1.77', 5432)).toBe('allow');
  });

  it('refuses every other address', () => {
    expect(v(null, '208.80.154.233')).toBe('refuse');
    expect(v(null, '1.1.1.1')).toBe('refuse');
    expect(v(null, '192.168.2.1')).toBe('refuse');
    expect(v('example.com', SOME_PUBLIC_IP)).toBe('refuse');
  });

  it('keeps the essential services reachable ("available on all tiers")', () => {
    expect(parsed(body).essentialServices).toBe(true);
    // Daytona "Network Limits (Firewall)" "Test network access": apt update, npm ping, pip install.
    for (const host of ['archive.ubuntu.com', 'registry.npmjs.org', 'pypi.org', 'files.pythonhosted.org', 'github.com', 'api.anthropic.com']) {
      expect(v(host, SOME_PUBLIC_IP), host).toBe('allow');
    }
  });

  it('is block-all with exactly those CIDRs', () => {
    expect(parsed(body)).toEqual({
      dialect: 'daytona',
      policy: {
        mode: 'block-all',
        allow: { domains: [], cidrs: ['208.80.154.232/32', '199.16.156.103/32', '192.168.1.0/24'], ports: [] },
        deny: { domains: [], cidrs: [], ports: [] },
      },
      essentialServices: true,
      dnsServersAllowed: false,
    });
  });
});

describe('Daytona "Network Limits (Firewall)" and Daytona "Network Configuration": networkBlockAll true', () => {
  const v = verdictOf({ networkBlockAll: true });

  it('refuses everything, the essential services included', () => {
    expect(parsed({ networkBlockAll: true }).essentialServices).toBe(false);
    expect(v(null, '208.80.154.232')).toBe('refuse');
    expect(v('registry.npmjs.org', SOME_PUBLIC_IP)).toBe('refuse');
    expect(v('app.daytona.io', SOME_PUBLIC_IP)).toBe('refuse');
    expect(v(null, '2606:4700::1111')).toBe('refuse');
  });
});

describe('Daytona "Network Limits (Firewall)" "The following examples are valid"', () => {
  it.each([
    ['208.80.154.232/32', ['208.80.154.232/32']],
    ['192.168.1.0/24', ['192.168.1.0/24']],
    ['208.80.154.232/32,199.16.156.103/32,10.0.0.0/8', ['208.80.154.232/32', '199.16.156.103/32', '10.0.0.0/8']],
  ])('accepts %s', (list, cidrs) => {
    expect(parsed({ networkAllowList: list }).policy.allow.cidrs).toEqual(cidrs);
  });

  it('allows 10.0.0.0/8 in the multiple-networks example', () => {
    const v = verdictOf({ networkAllowList: '208.80.154.232/32,199.16.156.103/32,10.0.0.0/8' });
    expect(v(null, '10.200.3.4')).toBe('allow');
    expect(v(null, '11.0.0.1')).toBe('refuse');
  });
});

describe('the older Daytona "Network Limits" summary: networkBlockAll takes precedence over networkAllowList', () => {
  it('refuses the listed addresses and the essential services when both are given', () => {
    const body = { networkBlockAll: true, networkAllowList: '208.80.154.232/32,199.16.156.103/32,192.168.1.0/24' };
    const v = verdictOf(body);
    expect(v(null, '208.80.154.232')).toBe('refuse');
    expect(v('registry.npmjs.org', SOME_PUBLIC_IP)).toBe('refuse');
    expect(parsed(body).policy).toEqual({ mode: 'block-all', allow: { domains: [], cidrs: [], ports: [] }, deny: { domains: [], cidrs: [], ports: [] } });
  });

  it('still reports a malformed list that networkBlockAll overrides', () => {
    expect(issuesOf({ networkBlockAll: true, networkAllowList: 'example.com' })).toHaveLength(1);
  });
});

describe('Daytona "Network Configuration" examples', () => {
  it('"Default Network Behavior": no keys is full network access', () => {
    const v = verdictOf({});
    expect(v(null, '1.1.1.1', 22)).toBe('allow');
    expect(v('example.com', SOME_PUBLIC_IP)).toBe('allow');
    expect(parsed({})).toMatchObject({ dialect: 'daytona', policy: { mode: 'allow-all' }, essentialServices: false });
  });

  it('networkBlockAll false without a list is full access too (the reference table default)', () => {
    expect(verdictOf({ networkBlockAll: false })(null, '1.1.1.1')).toBe('allow');
  });

  it('"Network Allow List": 192.168.1.0/16 is read as the network it names, 192.168.0.0/16', () => {
    const body = { networkAllowList: '192.168.1.0/16,10.0.0.0/24' };
    expect(parsed(body).policy.allow.cidrs).toEqual(['192.168.0.0/16', '10.0.0.0/24']);
    const v = verdictOf(body);
    expect(v(null, '192.168.77.1')).toBe('allow');
    expect(v(null, '10.0.0.9')).toBe('allow');
    expect(v(null, '10.0.1.1')).toBe('refuse');
    expect(v(null, '8.8.8.8')).toBe('refuse');
  });

  it('"Isolated Development Environment": cannot access external networks', () => {
    const v = verdictOf({ networkBlockAll: true });
    expect(v(null, '8.8.8.8', 53)).toBe('refuse');
    expect(v('github.com', SOME_PUBLIC_IP)).toBe('refuse');
  });

  it('"Internal API Access": 10.0.0.0/8 and 172.16.0.0/12 only, plus the essential services', () => {
    const v = verdictOf({ networkAllowList: '10.0.0.0/8,172.16.0.0/12' });
    expect(v(null, '10.1.2.3', 8080)).toBe('allow');
    expect(v(null, '172.31.255.254')).toBe('allow');
    expect(v(null, '172.32.0.1')).toBe('refuse');
    expect(v(null, '8.8.8.8')).toBe('refuse');
    expect(v('pypi.org', SOME_PUBLIC_IP)).toBe('allow');
  });
});

describe('Daytona "Network Limits (Firewall)" "Network allow list format": each rule and its error', () => {
  it('ignores whitespace around entries', () => {
    expect(parsed({ networkAllowList: '  208.80.154.232/32 ,\t10.0.0.0/8  ' }).policy.allow.cidrs).toEqual(['208.80.154.232/32', '10.0.0.0/8']);
  });

  it('accepts 10 entries (Daytona "Network Limits (Firewall)"; the older Daytona "Network Limits" summary said 5)', () => {
    const list = Array.from({ length: 10 }, (_, i) => `198.51.100.${i}/32`).join(',');
    expect(parsed({ networkAllowList: list }).policy.allow.cidrs).toHaveLength(10);
  });

  it('refuses an 11th entry', () => {
    const list = Array.from({ length: 11 }, (_, i) => `198.51.100.${i}/32`).join(',');
    expect(issuesOf({ networkAllowList: list })).toEqual([{ field: 'networkAllowList', reason: 'The allow list has 11 entries; at most 10 are allowed' }]);
  });

  it('counts a megabyte of commas without splitting it', () => {
    expect(issuesOf({ networkAllowList: ','.repeat(1 << 20) })[0]!.reason).toBe(`The allow list has ${(1 << 20) + 1} entries; at most 10 are allowed`);
  });

  it('requires a prefix length: a bare address is refused', () => {
    expect(issuesOf({ networkAllowList: '208.80.154.232' })).toEqual([
      { field: 'networkAllowList', reason: 'Entry "208.80.154.232" has no prefix length; write "208.80.154.232/32" for a single address' },
    ]);
  });

  it.each(['33', '-1', '3.5', '', 'abc', '032'])('refuses prefix length "%s"', (p) => {
    expect(issuesOf({ networkAllowList: `10.0.0.0/${p}` })).toEqual([
      { field: 'networkAllowList', reason: `Entry "10.0.0.0/${p}" has prefix length "${p}"; expected an integer from 0 to 32` },
    ]);
  });

  it('accepts the prefix lengths 0 and 32 at the ends of the range', () => {
    expect(parsed({ networkAllowList: '0.0.0.0/0,1.2.3.4/32' }).policy.allow.cidrs).toEqual(['0.0.0.0/0', '1.2.3.4/32']);
  });

  it('refuses extra "/" segments', () => {
    expect(issuesOf({ networkAllowList: '10.0.0.0/8/16' })).toEqual([{ field: 'networkAllowList', reason: 'Entry "10.0.0.0/8/16" has more than one "/"' }]);
  });

  it.each(['example.com', 'wikipedia.org/32'])('refuses the hostname %s', (entry) => {
    expect(issuesOf({ networkAllowList: entry })).toEqual([
      { field: 'networkAllowList', reason: `Entry "${entry}" is not an IPv4 address; hostnames and domains are not supported` },
    ]);
  });

  it.each(['2001:db8::/32', '::1'])('refuses the IPv6 entry %s', (entry) => {
    expect(issuesOf({ networkAllowList: entry })).toEqual([
      { field: 'networkAllowList', reason: `Entry "${entry}" is IPv6; the allow list takes IPv4 CIDRs only` },
    ]);
  });

  it.each(['256.0.0.0/8', '10.0.0/8', '010.0.0.0/8'])('refuses %s, which is not A.B.C.D with parts 0-255', (entry) => {
    const [issue] = issuesOf({ networkAllowList: entry });
    expect(issue!.field).toBe('networkAllowList');
    expect(issue!.reason).toContain(JSON.stringify(entry));
  });

  it('refuses an empty entry between commas, naming its position', () => {
    expect(issuesOf({ networkAllowList: '10.0.0.0/8,,1.2.3.4/32' })).toEqual([
      { field: 'networkAllowList', reason: 'Entry 2 of "10.0.0.0/8,,1.2.3.4/32" is empty' },
    ]);
  });

  it('refuses an empty list rather than guessing between full access and essentials only', () => {
    expect(issuesOf({ networkAllowList: ' ' })).toEqual([
      {
        field: 'networkAllowList',
        reason: 'The allow list " " is empty; leave networkAllowList out for full access, or set networkBlockAll to true to block everything',
      },
    ]);
  });

  it('reports every bad entry at once', () => {
    expect(issuesOf({ networkAllowList: 'example.com,10.0.0.0/8,1.2.3.4' }).map((i) => i.reason)).toEqual([
      'Entry "example.com" is not an IPv4 address; hostnames and domains are not supported',
      'Entry "1.2.3.4" has no prefix length; write "1.2.3.4/32" for a single address',
    ]);
  });

  it('refuses a list that is not a string (the API takes one comma-separated string)', () => {
    expect(issuesOf({ networkAllowList: ['10.0.0.0/8'] })).toEqual([
      { field: 'networkAllowList', reason: 'Expected a comma-separated list of IPv4 CIDRs such as "10.0.0.0/8,192.168.1.0/24", got an array' },
    ]);
  });

  it('refuses a networkBlockAll that is not a boolean', () => {
    expect(issuesOf({ networkBlockAll: 'true' })).toEqual([{ field: 'networkBlockAll', reason: 'Expected true or false, got the string "true"' }]);
  });

  it('treats null as unset, as an SDK serializing an unset field sends it', () => {
    expect(parsed({ networkBlockAll: null, networkAllowList: null }).policy.mode).toBe('allow-all');
  });
});

describe('domainAllowList (Daytona API: comma-separated names, "*." for subdomains, at most 10)', () => {
  it('makes the sandbox block-all plus those names plus the essential services', () => {
    const r = parsed({ domainAllowList: 'pypi.org, *.GitHub.com ,api.example.test.' });
    expect(r.policy).toEqual({
      mode: 'block-all',
      allow: { domains: ['pypi.org', '*.github.com', 'api.example.test'], cidrs: [], ports: [] },
      deny: { domains: [], cidrs: [], ports: [] },
    });
    expect(r.essentialServices).toBe(true);
    const v = verdictOf({ domainAllowList: 'api.example.test,*.github.com' });
    expect(v('api.example.test', '104.16.24.34')).toBe('allow');
    expect(v('raw.github.com', '104.16.24.34')).toBe('allow');
    expect(v('github.com', '104.16.24.34')).toBe('allow'); // github.com is an essential service
    expect(v('other.example.test', '104.16.24.34')).toBe('refuse');
    expect(v(null, '104.16.24.34')).toBe('refuse');
  });

  it('allows the union with networkAllowList', () => {
    const r = parsed({ networkAllowList: '198.18.0.0/24', domainAllowList: 'api.example.test' });
    expect(r.policy.allow).toEqual({ domains: ['api.example.test'], cidrs: ['198.18.0.0/24'], ports: [] });
    const v = verdictOf({ networkAllowList: '198.18.0.0/24', domainAllowList: 'api.example.test' });
    expect(v(null, '198.18.0.7')).toBe('allow');
    expect(v('api.example.test', '104.16.24.34')).toBe('allow');
    expect(v('x.example.test', '104.16.24.34')).toBe('refuse');
  });

  it('yields to networkBlockAll, and is still validated then', () => {
    expect(parsed({ networkBlockAll: true, domainAllowList: 'pypi.org' }).policy.allow.domains).toEqual([]);
    expect(issuesOf({ networkBlockAll: true, domainAllowList: 'https://pypi.org' })).toHaveLength(1);
  });

  it('takes 10 entries and refuses 11', () => {
    const ten = Array.from({ length: 10 }, (_, i) => `h${i}.example.test`).join(',');
    expect(parsed({ domainAllowList: ten }).policy.allow.domains).toHaveLength(10);
    expect(issuesOf({ domainAllowList: `${ten},h10.example.test` })).toEqual([
      { field: 'domainAllowList', reason: 'The domain allow list has 11 entries; at most 10 are allowed' },
    ]);
  });

  it.each([
    ['*', 'Entry "*" is not a domain; name the domains, or use "*.example.com" for every name below one'],
    ['https://pypi.org', 'Entry "https://pypi.org" is not a domain name; write the name alone, without a scheme, port, path or CIDR'],
    ['pypi.org:443', 'Entry "pypi.org:443" is not a domain name; write the name alone, without a scheme, port, path or CIDR'],
    ['10.0.0.0/8', 'Entry "10.0.0.0/8" is not a domain name; write the name alone, without a scheme, port, path or CIDR'],
    ['10.0.0.1', 'Entry "10.0.0.1" is an IP address; put addresses in networkAllowList as CIDRs'],
    ['*.com', 'Pattern "*.com" is a wildcard over the public suffix "com"'],
    ['a,,b.test', 'Entry 2 of "a,,b.test" is empty'],
  ])('refuses %j', (entry, reason) => {
    expect(issuesOf({ domainAllowList: entry })).toContainEqual({ field: 'domainAllowList', reason });
  });

  it('refuses an empty string and a non-string', () => {
    expect(issuesOf({ domainAllowList: ' ' })[0]!.reason).toMatch(/^The domain allow list " " is empty/);
    expect(issuesOf({ domainAllowList: ['pypi.org'] })).toEqual([
      { field: 'domainAllowList', reason: 'Expected a comma-separated list of domains such as "pypi.org,*.github.com", got an array' },
    ]);
  });
});
