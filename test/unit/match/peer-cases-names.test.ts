// Peers' own name and pattern cases, read against egressd's matcher: Cilium's FQDN patterns
// (pkg/fqdn/matchpattern/matchpattern_test.go: `*.cilium.io.` matches `anysub.cilium.io.` but
// not `cilium.io.`; `*.ci*.io.`, `*.*.cilium.io.`; `_foobar._tcp.cilium.io.`; `*` matches every
// name), smokescreen's (pkg/smokescreen/acl/v1/acl_test.go: a glob never matches its own apex,
// `*.*.stripe.com` is refused; pkg/smokescreen/normalize/normalize.go and hostport_test.go: names
// punycoded by UTS #46, `FOO-BAR` lowercased, an IP in a domain list is an address) and WHATWG
// URL's host parser for IDNs. Each row is a pattern as a policy writes it (sandbox0's
// allowed_domains), a name as a client sends it, and egressd's verdict. Where egressd differs from
// a peer — `*.` at any depth (Cilium: one label), no `*` inside a label — docs/dialects.md says so.

import { describe, expect, it } from 'vitest';
import { issuesOf } from '../../helpers/network-body.ts';
import { nameVerdict } from '../../helpers/peer-verdict.ts';

const CILIUM = 'Cilium matchpattern_test.go';
const SMOKE = 'smokescreen acl_test.go / normalize.go';
const WHATWG = 'WHATWG URL host parser (UTS #46)';

const allowing = (...domains: string[]) => ({ mode: 'block-all', egress: { allowed_domains: domains } });

interface Row {
  readonly peer: string;
  readonly pattern: string;
  readonly name: string;
  readonly verdict: 'allow' | 'refuse' | 'invalid-name';
  readonly why: string;
}

const ROWS: readonly Row[] = [
  { peer: CILIUM, pattern: 'allowed.test.', name: 'allowed.test', verdict: 'allow', why: 'a pattern with a trailing dot is the name' },
  { peer: CILIUM, pattern: 'allowed.test.', name: 'anysub.allowed.test', verdict: 'refuse', why: 'an exact name matches no name below it' },
  { peer: CILIUM, pattern: '*.allowed.test.', name: 'anysub.allowed.test.', verdict: 'allow', why: '`*.` matches a name below' },
  { peer: CILIUM, pattern: '*.allowed.test.', name: 'allowed.test', verdict: 'refuse', why: '`*.` never matches its own apex' },
  {
    peer: CILIUM,
    pattern: '*.allowed.test',
    name: 'a.b.allowed.test',
    verdict: 'allow',
    why: 'egressd: `*.` at any depth (Cilium: one label; `**.` for more)',
  },
  { peer: CILIUM, pattern: '*.allowed.test', name: 'anysub.allowed.testandmore', verdict: 'refuse', why: 'labels compare whole' },
  { peer: CILIUM, pattern: '*.allowed.test', name: 'allowed.test.evil.test', verdict: 'refuse', why: 'a pattern anchors at the end, never the start' },
  {
    peer: CILIUM,
    pattern: '_foobar._tcp.allowed.test',
    name: '_FOOBAR._tcp.allowed.test',
    verdict: 'allow',
    why: 'SRV and DNS-SD labels (RFC 2782, RFC 6763) carry "_"',
  },
  { peer: CILIUM, pattern: '*', name: '_foobar._tcp.allowed.test', verdict: 'allow', why: '`*` matches every name' },
  { peer: CILIUM, pattern: '*', name: '.io', verdict: 'invalid-name', why: 'a name with an empty label is no name, whatever the pattern' },
  { peer: SMOKE, pattern: '*.allowed.test', name: 'Allowed.Test', verdict: 'refuse', why: '"deny by glob missing subdomain"' },
  { peer: SMOKE, pattern: 'FOO-BAR.allowed.test', name: 'foo-bar.ALLOWED.test', verdict: 'allow', why: 'case folded on both sides' },
  { peer: SMOKE, pattern: '🔐.allowed.test', name: 'xn--jv8h.allowed.test', verdict: 'allow', why: 'a U-label pattern is its A-label, as the client sends it' },
  { peer: SMOKE, pattern: '🔐.allowed.test', name: 'XN--JV8H.allowed.test', verdict: 'allow', why: 'an A-label in upper case' },
  {
    peer: SMOKE,
    pattern: '🔐.allowed.test',
    name: '🔐.allowed.test',
    verdict: 'invalid-name',
    why: 'a U-label on the wire is bytes no server compares as the A-label',
  },
  { peer: WHATWG, pattern: 'straße.allowed.test', name: 'xn--strae-oqa.allowed.test', verdict: 'allow', why: 'nontransitional UTS #46: ß is kept' },
  { peer: WHATWG, pattern: 'straße.allowed.test', name: 'strasse.allowed.test', verdict: 'refuse', why: 'the IDNA2003 spelling is another name' },
  {
    peer: WHATWG,
    pattern: 'ＡＬＬＯＷＥＤ。test',
    name: 'allowed.test',
    verdict: 'allow',
    why: 'full-width letters and the ideographic full stop map to ASCII',
  },
];

describe('peer name and pattern cases: what egressd decides', () => {
  it.each(ROWS.map((r) => [`${r.peer}: ${JSON.stringify(r.pattern)} vs ${JSON.stringify(r.name)}: ${r.why}`, r] as const))('%s', (_, row) => {
    expect(nameVerdict(allowing(row.pattern), row.name)).toBe(row.verdict);
  });

  it.each([
    [CILIUM, '*.ci*.io', 'may use "*" only as its whole first label'],
    [CILIUM, '*.*.allowed.test', 'may use "*" only as its whole first label'],
    [CILIUM, '**.allowed.test', 'may use "*" only as its whole first label'],
    [SMOKE, '*.*.stripe.test', 'may use "*" only as its whole first label'],
    [SMOKE, '2001:DB8::1337', 'is an IP address, which never matches a name; list it as a CIDR'],
    [CILIUM, '*.com', 'is a wildcard over the public suffix "com"'],
    ['the leading-dot notation ("this name and every name below it")', '.allowed.test', 'has an empty label'],
  ])('%s: refuses the pattern %j, naming the field and why', (_, pattern, reason) => {
    expect(issuesOf(allowing(pattern))).toEqual([{ field: 'egress.allowed_domains[0]', reason: expect.stringContaining(reason) as string }]);
  });

  it('takes `*.com` in a list that denies (Cilium Sanitize keeps it as a pattern too)', () => {
    const deny = { mode: 'allow-all', egress: { denied_domains: ['*.com'] } };
    expect(nameVerdict(deny, 'example.com')).toBe('refuse');
    expect(nameVerdict(deny, 'example.org')).toBe('allow');
  });
});
