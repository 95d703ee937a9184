// The Novita/E2B dialect: every policy example of Novita "Internet access" with the verdicts it states, and
// each of its rules with its error.

import { describe, expect, it } from 'vitest';
import { compileProtected } from '../../../../src/match/protected.ts';
import { SharedDomains } from '../../../../src/policy/compile.ts';
import { compileLayer, nameMatters, nameReach, verdict, type PolicyChain } from '../../../../src/policy/verdict.ts';
import { issuesOf, parsed, verdictOf } from '../../../helpers/network-body.ts';

/** An address no example names, for connections judged by name. */
const ELSEWHERE = '104.16.24.34';
const V6 = '2606:4700:4700::1111';

describe('Novita "Internet access" "Toggling internet access"', () => {
  it('allowInternetAccess true (the default) allows everything', () => {
    const v = verdictOf({ allowInternetAccess: true });
    expect(v(null, '1.1.1.1', 22)).toBe('allow');
    expect(v('example.com', ELSEWHERE)).toBe('allow');
    expect(v(null, V6)).toBe('allow');
  });

  it('allowInternetAccess false blocks every destination, IPv6 included', () => {
    const v = verdictOf({ allowInternetAccess: false });
    expect(v(null, '1.1.1.1')).toBe('refuse');
    expect(v('example.com', ELSEWHERE, 80)).toBe('refuse');
    expect(v(null, V6)).toBe('refuse');
  });

  it('allowInternetAccess false means the same as denyOut ["0.0.0.0/0"]', () => {
    expect(parsed({ allowInternetAccess: false }).policy).toEqual(parsed({ network: { denyOut: ['0.0.0.0/0'] } }).policy);
  });
});

describe('Novita "Internet access" "Allow and deny lists"', () => {
  it('denyOut 0.0.0.0/0 with allowOut 1.1.1.1 and 8.8.8.0/24 allows only those', () => {
    const v = verdictOf({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['1.1.1.1', '8.8.8.0/24'] } });
    expect(v(null, '1.1.1.1', 53)).toBe('allow');
    expect(v(null, '8.8.8.8', 53)).toBe('allow');
    expect(v(null, '8.8.8.255')).toBe('allow');
    expect(v(null, '8.8.4.4')).toBe('refuse');
    expect(v(null, '1.0.0.1')).toBe('refuse');
    expect(v(null, V6)).toBe('refuse');
  });

  it('denyOut 8.8.8.8 alone denies that address and allows everything else', () => {
    const v = verdictOf({ network: { denyOut: ['8.8.8.8'] } });
    expect(v(null, '8.8.8.8', 53)).toBe('refuse');
    expect(v(null, '8.8.4.4', 53)).toBe('allow');
    expect(v('example.com', ELSEWHERE)).toBe('allow');
    expect(parsed({ network: { denyOut: ['8.8.8.8'] } }).policy).toEqual({
      mode: 'allow-all',
      allow: { domains: [], cidrs: [], ports: [] },
      deny: { domains: [], cidrs: ['8.8.8.8/32'], ports: [] },
    });
  });
});

describe('Novita "Internet access" "Domain-based filtering"', () => {
  it('allowOut google.com with denyOut 0.0.0.0/0 allows only google.com, by name', () => {
    const body = { network: { allowOut: ['google.com'], denyOut: ['0.0.0.0/0'] } };
    const v = verdictOf(body);
    expect(v('google.com', ELSEWHERE)).toBe('allow');
    expect(v('google.com', ELSEWHERE, 80)).toBe('allow');
    expect(v('www.google.com', ELSEWHERE)).toBe('refuse');
    expect(v('example.com', ELSEWHERE)).toBe('refuse');
    expect(v(null, ELSEWHERE)).toBe('refuse');
  });

  it('allows the DNS servers whenever a domain appears ("the default nameserver 8.8.8.8 is allowed")', () => {
    expect(parsed({ network: { allowOut: ['google.com'], denyOut: ['0.0.0.0/0'] } }).dnsServersAllowed).toBe(true);
    expect(parsed({ network: { allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'] } }).dnsServersAllowed).toBe(false);
    expect(parsed({ allowInternetAccess: false }).dnsServersAllowed).toBe(false);
  });

  it('*.mydomain.com allows every subdomain, and not mydomain.com itself', () => {
    const v = verdictOf({ network: { allowOut: ['*.mydomain.com'], denyOut: ['0.0.0.0/0'] } });
    expect(v('api.mydomain.com', ELSEWHERE)).toBe('allow');
    expect(v('a.b.mydomain.com', ELSEWHERE)).toBe('allow');
    expect(v('mydomain.com', ELSEWHERE)).toBe('refuse');
    expect(v('notmydomain.com', ELSEWHERE)).toBe('refuse');
  });

  it('domains, IP addresses and CIDRs mix in one list', () => {
    const v = verdictOf({ network: { allowOut: ['api.example.com', '*.github.com', '8.8.8.8'], denyOut: ['0.0.0.0/0'] } });
    expect(v('api.example.com', ELSEWHERE)).toBe('allow');
    expect(v('api.github.com', ELSEWHERE)).toBe('allow');
    expect(v(null, '8.8.8.8', 53)).toBe('allow');
    expect(v('github.com', ELSEWHERE)).toBe('refuse');
    expect(v('example.com', ELSEWHERE)).toBe('refuse');
    expect(v(null, '1.1.1.1')).toBe('refuse');
  });

  it('takes a domain when allowInternetAccess false is what blocks the rest', () => {
    expect(parsed({ allowInternetAccess: false, network: { allowOut: ['google.com'] } }).policy.allow.domains).toEqual(['google.com']);
  });
});

describe('Novita "Internet access" "Priority rules": allow beats deny', () => {
  it('allows 1.1.1.1 and 8.8.8.8 although all traffic is denied', () => {
    const v = verdictOf({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['1.1.1.1', '8.8.8.8'] } });
    expect(v(null, '1.1.1.1')).toBe('allow');
    expect(v(null, '8.8.8.8')).toBe('allow');
    expect(v(null, '9.9.9.9')).toBe('refuse');
  });

  it('keeps an allowed address inside a denied range reachable when the rest is open', () => {
    const v = verdictOf({ network: { denyOut: ['8.8.8.0/24'], allowOut: ['8.8.8.8'] } });
    expect(v(null, '8.8.8.8')).toBe('allow');
    expect(v(null, '8.8.8.9')).toBe('refuse');
    expect(v(null, '1.1.1.1')).toBe('allow');
  });
});

describe('how ::/0 is read', () => {
  it('denyOut ::/0 alone denies IPv6 and leaves IPv4 open', () => {
    const body = { network: { denyOut: ['::/0'] } };
    const v = verdictOf(body);
    expect(v(null, V6)).toBe('refuse');
    expect(v(null, '1.1.1.1')).toBe('allow');
    expect(parsed(body).policy.mode).toBe('allow-all');
  });

  it('::/0 does not enable domain filtering: it does not block all traffic', () => {
    expect(issuesOf({ network: { allowOut: ['google.com'], denyOut: ['::/0'] } })[0]!.field).toBe('network.allowOut[0]');
  });

  it('a /0 written with host bits is the same every-destination entry', () => {
    expect(parsed({ network: { denyOut: ['10.1.2.3/0'] } }).policy.mode).toBe('block-all');
  });
});

describe('Novita "Internet access" rules and their errors', () => {
  it('refuses a domain in denyOut', () => {
    expect(issuesOf({ network: { denyOut: ['0.0.0.0/0', 'facebook.com'] } })).toEqual([
      { field: 'network.denyOut[1]', reason: 'Domain "facebook.com" cannot be denied; denyOut takes IP addresses and CIDRs only' },
    ]);
  });

  it('refuses a domain in allowOut unless all other traffic is blocked', () => {
    expect(issuesOf({ network: { allowOut: ['1.1.1.1', 'google.com'], denyOut: ['8.8.8.8'] } })).toEqual([
      {
        field: 'network.allowOut[1]',
        reason: 'Domain "google.com" needs all other traffic blocked; add "0.0.0.0/0" to denyOut or set allowInternetAccess to false',
      },
    ]);
  });

  it("refuses a malformed CIDR with the validator's reason", () => {
    expect(issuesOf({ network: { denyOut: ['10.0.0.0/33'] } })).toEqual([
      { field: 'network.denyOut[0]', reason: 'CIDR "10.0.0.0/33" has a prefix length outside 0-32' },
    ]);
  });

  it('refuses an entry that is neither an address nor a domain', () => {
    expect(issuesOf({ allowInternetAccess: false, network: { allowOut: ['exa mple.com'] } })).toEqual([
      { field: 'network.allowOut[0]', reason: 'Pattern "exa mple.com" contains " ", which is not allowed in a host name' },
    ]);
  });

  it('refuses a loose spelling of an address rather than reading it as a name', () => {
    expect(issuesOf({ allowInternetAccess: false, network: { allowOut: ['127.1'] } })[0]!.reason).toContain('is an IP address');
  });

  it('refuses a bare "*": the document has "*." wildcards only', () => {
    expect(issuesOf({ allowInternetAccess: false, network: { allowOut: ['*'] } })[0]).toEqual({
      field: 'network.allowOut[0]',
      reason: 'Pattern "*" is not a domain; name the domains, or use "*.example.com" for every name below one',
    });
  });

  it('refuses a wildcard over a public suffix', () => {
    expect(issuesOf({ allowInternetAccess: false, network: { allowOut: ['*.com'] } })[0]!.reason).toBe(
      'Pattern "*.com" is a wildcard over the public suffix "com"',
    );
  });

  it('points a client that sent the ALL_TRAFFIC identifier at its value', () => {
    expect(issuesOf({ network: { denyOut: ['ALL_TRAFFIC'] } })).toEqual([
      { field: 'network.denyOut[0]', reason: '"ALL_TRAFFIC" is the SDK\'s name for "0.0.0.0/0"; send the CIDR itself' },
    ]);
  });

  it('refuses an allowInternetAccess that is not a boolean, falsy or not', () => {
    expect(issuesOf({ allowInternetAccess: 0 })).toEqual([{ field: 'allowInternetAccess', reason: 'Expected true or false, got number "0"' }]);
    expect(issuesOf({ allowInternetAccess: null })[0]!.field).toBe('allowInternetAccess');
  });

  it('refuses a network that is not an object, and lists that are not lists', () => {
    expect(issuesOf({ network: ['0.0.0.0/0'] })).toEqual([{ field: 'network', reason: 'Expected an object with allowOut and denyOut, got an array' }]);
    expect(issuesOf({ network: { denyOut: '0.0.0.0/0' } })).toEqual([
      { field: 'network.denyOut', reason: 'Expected a list of IP addresses, CIDRs or domains, got the string "0.0.0.0/0"' },
    ]);
    expect(issuesOf({ network: { allowOut: [7] } })).toEqual([
      { field: 'network.allowOut[0]', reason: 'Expected an IP address, a CIDR or a domain, got number "7"' },
    ]);
  });

  it('refuses unknown network fields, naming the known ones', () => {
    expect(issuesOf({ network: { allow_out: [], maskRequestHost: 'localhost:${PORT}' } })).toEqual([
      { field: 'network.allow_out', reason: 'Unknown field "allow_out"; known fields are allowOut, denyOut, maskRequestHost, allowPublicTraffic' },
    ]);
  });

  it('keeps maskRequestHost and allowPublicTraffic, with a warning each, and enforces neither', () => {
    const body = {
      allowInternetAccess: true,
      network: { allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'], maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false },
    };
    const r = parsed(body);
    expect(r.ingress).toEqual({ maskRequestHost: 'localhost:${PORT}', allowPublicTraffic: false });
    expect(r.warnings?.map((w) => w.field)).toEqual(['network.maskRequestHost', 'network.allowPublicTraffic']);
    expect(r.warnings?.[0]?.reason).toMatch(/^Kept but not enforced: egressd filters outbound traffic only/);
    // The egress policy is the one the same body without them gives.
    expect(r.policy).toEqual(parsed({ allowInternetAccess: true, network: { allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'] } }).policy);
    const alone = parsed({ network: { maskRequestHost: 'app.test' } });
    expect(alone.policy.mode).toBe('allow-all');
    expect(parsed({ network: { denyOut: ['8.8.8.8'] } }).warnings).toBeUndefined();
  });

  it('refuses a maskRequestHost that is not a host and an allowPublicTraffic that is not a boolean', () => {
    expect(issuesOf({ network: { maskRequestHost: 'a b', allowPublicTraffic: 'yes' } })).toEqual([
      { field: 'network.maskRequestHost', reason: 'Expected a host such as "localhost:${PORT}", got the string "a b"' },
      { field: 'network.allowPublicTraffic', reason: 'Expected true or false, got the string "yes"' },
    ]);
    expect(issuesOf({ network: { maskRequestHost: 7 } })[0]!.field).toBe('network.maskRequestHost');
    expect(issuesOf({ network: { maskRequestHost: '' } })[0]!.field).toBe('network.maskRequestHost');
  });

  it('caps the report at 100 issues and counts the rest', () => {
    const issues = issuesOf({ network: { denyOut: Array.from({ length: 250 }, (_, i) => `bad name ${i}`) } });
    expect(issues).toHaveLength(101);
    expect(issues[100]).toEqual({ field: '', reason: '150 more problems not shown' });
  });

  it('keeps each entry once after normalization', () => {
    const p = parsed({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['1.1.1.1', '1.1.1.1/32', 'GitHub.com', 'github.com.'] } }).policy;
    expect(p.allow).toEqual({
      domains: ['github.com'],
      cidrs: ['1.1.1.1/32'],
      ports: [],
      domainPorts: [
        { from: 80, to: 80, via: 'http' },
        { from: 443, to: 443, via: 'tls' },
      ],
    });
  });
});

// Novita "Internet access": "Filtering by domain applies only to HTTP over port 80 (inspected via
// the Host header) and TLS over port 443 (inspected via SNI). Any other port falls back to
// CIDR-based matching".
describe('Novita "Internet access": domains match on ports 80 and 443 only', () => {
  const GITHUB = { network: { allowOut: ['github.com'], denyOut: ['0.0.0.0/0'] } };
  const GITHUB_IP = '140.82.112.3';

  it('allows github.com on 443 and 80, and refuses it on 22 and 8443', () => {
    const v = verdictOf(GITHUB);
    expect(v('github.com', GITHUB_IP, 443)).toBe('allow');
    expect(v('github.com', GITHUB_IP, 80)).toBe('allow');
    expect(v('github.com', GITHUB_IP, 22)).toBe('refuse');
    expect(v('github.com', GITHUB_IP, 8443)).toBe('refuse');
  });

  it('falls back to the CIDRs on other ports: an allowed CIDR holding the address allows port 22', () => {
    const v = verdictOf({ network: { allowOut: ['github.com', '140.82.112.0/20'], denyOut: ['0.0.0.0/0'] } });
    expect(v('github.com', GITHUB_IP, 22)).toBe('allow');
    expect(v(null, GITHUB_IP, 22)).toBe('allow');
    expect(v('github.com', ELSEWHERE, 22)).toBe('refuse');
    expect(v('github.com', ELSEWHERE, 443)).toBe('allow');
  });

  it('leaves a policy without domains unrestricted by port, and other dialects naming on every port', () => {
    expect(parsed({ network: { allowOut: ['1.1.1.1'], denyOut: ['0.0.0.0/0'] } }).policy.allow.domainPorts).toBeUndefined();
    expect(verdictOf({ mode: 'block-all', egress: { allowed_domains: ['github.com'] } })('github.com', GITHUB_IP, 22)).toBe('allow');
  });

  describe('through the verdict chain', () => {
    const settings = { protectedRanges: compileProtected({}), catalog: new SharedDomains([]), dnsServers: ['8.8.8.8'] };
    const chain: PolicyChain = { sandbox: 'sb', org: null, layer: compileLayer(parsed(GITHUB), settings) };

    it('matches the name Novita reads on each port only: the Host on 80, the SNI on 443', () => {
      // net/connection.ts says how it read the name (Facts.via).
      const at = (port: number, via: 'tls' | 'http' | 'dns') => verdict(chain, { name: 'github.com', ip: GITHUB_IP, port, via });
      expect(at(443, 'tls')).toMatchObject({ verdict: 'allow', rule: 'allowed_domains "github.com"', matchedBy: 'name' });
      expect(at(80, 'http')).toMatchObject({ verdict: 'allow', rule: 'allowed_domains "github.com"', matchedBy: 'name' });
      // A TLS client on 80 has no Host header, an HTTP client on 443 no SNI: Novita falls back to the CIDRs.
      expect(at(80, 'tls')).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
      expect(at(443, 'http')).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
      expect(at(22, 'tls')).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
    });

    it('refuses a nameless connection to an address the sandbox resolved github.com to (DNS memory), on 443 and 80 too', () => {
      // net/connection.ts judges such a connection with each remembered name, via 'dns': Novita
      // sees no SNI and no Host (ssh to ssh.github.com:443, any protocol on 80), so only its CIDRs apply.
      for (const port of [22, 80, 443]) {
        expect(verdict(chain, { name: 'github.com', ip: GITHUB_IP, port, via: 'dns' })).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
      }
      const withCidr: PolicyChain = {
        ...chain,
        layer: compileLayer(parsed({ network: { allowOut: ['github.com', '140.82.112.0/20'], denyOut: ['0.0.0.0/0'] } }), settings),
      };
      expect(verdict(withCidr, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'dns' })).toMatchObject({ verdict: 'allow', matchedBy: 'address' });
    });

    // Uncovered by c84fd14's tests: a Novita layer beside an organization's, and report-only mode.
    it('intersects the ports with an organization layer, either way round', () => {
      const sb0 = (body: unknown) => compileLayer(parsed(body), settings);
      // The organization allows github.com on 22 only, the Novita sandbox on 80 and 443 only: no
      // port passes both, so the DNS listener does not answer the name.
      const org22: PolicyChain = {
        ...chain,
        org: { id: 'acme', layer: sb0({ mode: 'block-all', egress: { allowed_domains: ['github.com'], allowed_ports: [22] } }) },
      };
      expect(verdict(org22, { name: 'github.com', ip: GITHUB_IP, port: 22, via: 'tls' }).verdict).toBe('refuse');
      expect(verdict(org22, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'tls' })).toMatchObject({ verdict: 'refuse', layer: 'org' });
      expect(nameReach(org22, 'github.com')).toMatchObject({ reach: false });
      // A Novita organization over an allow-all sandbox: its names bound the sandbox on 80 and 443 alone.
      const novitaOrg: PolicyChain = { sandbox: 'sb', org: { id: 'acme', layer: compileLayer(parsed(GITHUB), settings) }, layer: sb0({ mode: 'allow-all' }) };
      expect(verdict(novitaOrg, { name: 'github.com', ip: GITHUB_IP, port: 22, via: 'dns' })).toMatchObject({ verdict: 'refuse', layer: 'org' });
      expect(verdict(novitaOrg, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'dns' })).toMatchObject({ verdict: 'refuse', layer: 'org' });
      expect(verdict(novitaOrg, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'tls' })).toMatchObject({ verdict: 'allow', matchedBy: 'name' });
      expect(nameMatters(novitaOrg, { ip: GITHUB_IP, port: 22 })).toBe(false);
      expect(nameReach(novitaOrg, 'github.com')).toMatchObject({ reach: true });
    });

    it('reports, in report-only mode, what the ports refuse, and still answers the name', () => {
      const ro: PolicyChain = { ...chain, reportOnly: ['sandbox'] };
      expect(verdict(ro, { name: 'github.com', ip: GITHUB_IP, port: 22, via: 'tls' })).toMatchObject({ verdict: 'would-refuse', reason: 'default-block' });
      expect(verdict(ro, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'dns' })).toMatchObject({ verdict: 'would-refuse', reason: 'default-block' });
      expect(verdict(ro, { name: 'github.com', ip: GITHUB_IP, port: 443, via: 'tls' }).verdict).toBe('allow');
      expect(nameReach(ro, 'github.com')).toMatchObject({ reach: true, rule: 'allowed_domains "github.com"' });
    });

    it('keeps other dialects matching a name however it was read', () => {
      const sb0: PolicyChain = { ...chain, layer: compileLayer(parsed({ mode: 'block-all', egress: { allowed_domains: ['github.com'] } }), settings) };
      for (const via of ['tls', 'http', 'dns'] as const) {
        for (const port of [22, 80, 443]) expect(verdict(sb0, { name: 'github.com', ip: GITHUB_IP, port, via }).verdict).toBe('allow');
      }
    });

    it('says a name does not matter on a port where names cannot match, and does on 80 and 443', () => {
      expect(nameMatters(chain, { ip: GITHUB_IP, port: 22 })).toBe(false);
      expect(nameMatters(chain, { ip: GITHUB_IP, port: 8443 })).toBe(false);
      expect(nameMatters(chain, { ip: GITHUB_IP, port: 443 })).toBe(true);
      expect(nameMatters(chain, { ip: GITHUB_IP, port: 80 })).toBe(true);
    });

    it('still lets the DNS listener resolve the name (it reaches on 80 and 443)', () => {
      expect(nameReach(chain, 'github.com')).toMatchObject({ reach: true, rule: 'allowed_domains "github.com"' });
      expect(nameReach(chain, 'gitlab.com')).toMatchObject({ reach: false });
    });
  });
});

describe('bounds', () => {
  it('takes a list of 100,000 addresses, each kept once', () => {
    const allowOut = Array.from({ length: 100_000 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
    const p = parsed({ network: { denyOut: ['0.0.0.0/0'], allowOut: [...allowOut, ...allowOut.slice(0, 10)] } }).policy;
    expect(p.allow.cidrs).toHaveLength(100_000);
  });
});
