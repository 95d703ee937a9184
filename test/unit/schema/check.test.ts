// The one validator: the config file, the admin API and the state all check a body against the
// schema in src/schema/ and answer every problem with its field and reason. Its reading of the
// schema agrees with Ajv's on generated documents, so the JSON Schema that editors and clients
// get says exactly what egressd accepts (for the shape; the dialects and addresses are checked
// in code on top).

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../../src/config/schema.ts';
import { check } from '../../../src/schema/check.ts';
import { ConfigFile } from '../../../src/schema/define/config-file.ts';
import { CheckRequest, LimitsBody, OrgBody, SandboxBody } from '../../../src/schema/define/bodies.ts';
import { CappedIssues } from '../../../src/util/issues.ts';
import { ajv } from '../../helpers/ajv.ts';

const issuesOf = (doc: unknown) => {
  const r = validateConfig(doc);
  return r.ok ? [] : r.issues;
};

describe('validateConfig: every problem at once, each with its key and reason', () => {
  it('names unknown keys, values out of range, enums, types and missing fields', () => {
    expect(
      issuesOf({
        listne: {},
        dns: { timeoutMs: 0, refusal: 'drop', zones: 'x', stripEch: 'yes' },
        admin: { token: '' },
        sandboxes: [
          { id: 'a', sources: ['10.0.0.1'], limits: { burst: 1.5, rate: 2 } },
          { sources: 'x', org: 'bad org' },
        ],
      }),
    ).toEqual([
      { field: 'listne', reason: expect.stringMatching(/^Unknown field "listne"; known fields are listen, admin, dns, /) },
      { field: 'admin.token', reason: 'Expected a non-empty string, got the string ""' },
      { field: 'dns.timeoutMs', reason: 'Expected an integer from 1 to 60000, got number "0"' },
      { field: 'dns.refusal', reason: 'Expected one of nxdomain, refused, got the string "drop"' },
      { field: 'dns.zones', reason: 'Expected a list of strings, got the string "x"' },
      { field: 'dns.stripEch', reason: 'Expected true or false, got the string "yes"' },
      { field: 'sandboxes[0].limits.rate', reason: 'Unknown field "rate"; known fields are connections, undecided, perSecond, burst' },
      { field: 'sandboxes[0].limits.burst', reason: 'Expected an integer from 1 to 10000000, got number "1.5"' },
      { field: 'sandboxes[1].id', reason: 'Missing required field "id"' },
      { field: 'sandboxes[1].sources', reason: 'Expected a list of IPv4 or IPv6 addresses, got the string "x"' },
      {
        field: 'sandboxes[1].org',
        reason: 'Expected an organization id: letters, digits, ".", "_" or "-", starting with a letter or digit (at most 128), got "bad org"',
      },
    ]);
  });

  it('checks what a shape cannot say: endpoints, addresses, CIDRs, repeated ids and sources, the policy, timeouts', () => {
    expect(
      issuesOf({
        listen: { http: ['127.0.0.1:99999'], tls: [] },
        admin: { listen: ['127.0.0.1:1', '127.0.0.1:2'] },
        peek: { timeoutMs: 100, firstByteTimeoutMs: 200 },
        protected: { extra: ['10.0.0.0/33'] },
        sandboxes: [
          { id: 'a', sources: ['10.0.0.1'], network: { mode: 'open' } },
          { id: 'a', sources: ['10.0.0.1', 'nope'] },
          { id: 'b', sources: ['10.0.0.2', '::ffff:10.0.0.2'] },
        ],
      }),
    ).toEqual([
      // The schema's own problems first (an empty listener list: minItems), then what it cannot say.
      { field: 'listen.tls', reason: 'Expected at least one "address:port"' },
      { field: 'listen.http[0]', reason: 'Port 99999 is outside 0-65535 in "127.0.0.1:99999"' },
      { field: 'admin.listen', reason: 'Expected a single "address:port"' },
      { field: 'peek.firstByteTimeoutMs', reason: 'Must not exceed peek.timeoutMs (100), got 200' },
      { field: 'protected.extra[0]', reason: expect.stringContaining('10.0.0.0/33') },
      { field: 'sandboxes[0].network.mode', reason: expect.stringContaining('"open"') },
      { field: 'sandboxes[1].id', reason: 'Duplicate sandbox id "a" (also sandboxes[0])' },
      { field: 'sandboxes[1].sources[0]', reason: 'Source "10.0.0.1" already belongs to sandbox "a"' },
      { field: 'sandboxes[1].sources[1]', reason: 'Expected an IPv4 or IPv6 address, got "nope"' },
      { field: 'sandboxes[2].sources[1]', reason: 'Duplicate source "::ffff:10.0.0.2"' },
    ]);
  });

  it('refuses a NAT64 prefix outside the RFC 6052 §2.2 formats, naming the entry and the reason, and takes the valid ones', () => {
    expect(
      issuesOf({ protected: { nat64Prefixes: ['64:ff9b:1::/48', '2001:db8::/33', '10.0.0.0/8', '2001:db8:122:344::/48', '2001:db8:122:344:100::/96'] } }),
    ).toEqual([
      { field: 'protected.nat64Prefixes[1]', reason: expect.stringContaining('has a length other than 32, 40, 48, 56, 64 or 96') },
      { field: 'protected.nat64Prefixes[2]', reason: 'NAT64 prefix "10.0.0.0/8" is not an IPv6 prefix' },
      { field: 'protected.nat64Prefixes[3]', reason: expect.stringContaining('sets bits past its length') },
      { field: 'protected.nat64Prefixes[4]', reason: expect.stringContaining('sets bits 64-71') },
    ]);
    expect(issuesOf({ protected: { nat64Prefixes: [42] } })).toEqual([{ field: 'protected.nat64Prefixes[0]', reason: expect.any(String) }]);
    const r = validateConfig({ protected: { nat64Prefixes: ['64:ff9b:1::/48', '2001:db8:122:344::/64'] } });
    expect(r.ok && r.config.protected.nat64Prefixes).toEqual(['64:ff9b:1::/48', '2001:db8:122:344::/64']);
  });

  it('refuses DNS bounds where one sandbox may hold more than all together, naming the field, and a total out of range', () => {
    expect(issuesOf({ dns: { limits: { tcpPerSandbox: 32, tcpTotal: 16 } } })).toEqual([
      { field: 'dns.limits.tcpPerSandbox', reason: 'Must not exceed dns.limits.tcpTotal (16), got 32' },
    ]);
    expect(issuesOf({ dns: { limits: { tcpTotal: 8 } } })).toEqual([
      { field: 'dns.limits.tcpPerSandbox', reason: 'Must not exceed dns.limits.tcpTotal (8), got 16' },
    ]);
    expect(issuesOf({ dns: { limits: { tcpTotal: 0 } } })).toEqual([{ field: 'dns.limits.tcpTotal', reason: expect.stringContaining('0') }]);
    expect(issuesOf({ dns: { limits: { tcpTotal: 16 } } })).toEqual([]);
    expect(issuesOf({ dns: { limits: { inflightPerSandbox: 64, inflightTotal: 32 } } })).toEqual([
      { field: 'dns.limits.inflightPerSandbox', reason: 'Must not exceed dns.limits.inflightTotal (32), got 64' },
    ]);
  });

  it('takes the prefix sources of no sandbox are counted by, /32 and /64 by default, and refuses one past its family, naming the field', () => {
    const d = validateConfig({});
    expect(d.ok && d.config.limits.unknownSourcePrefix).toEqual({ ipv4: 32, ipv6: 64 });
    const r = validateConfig({ limits: { unknownSourcePrefix: { ipv6: 56 } } });
    expect(r.ok && r.config.limits.unknownSourcePrefix).toEqual({ ipv4: 32, ipv6: 56 });
    expect(issuesOf({ limits: { unknownSourcePrefix: { ipv4: 33, ipv6: 129 } } })).toEqual([
      { field: 'limits.unknownSourcePrefix.ipv4', reason: expect.stringContaining('32') },
      { field: 'limits.unknownSourcePrefix.ipv6', reason: expect.stringContaining('128') },
    ]);
    expect(issuesOf({ limits: { unknownSourcePrefix: { ipv6: 64.5 } } })).toEqual([{ field: 'limits.unknownSourcePrefix.ipv6', reason: expect.any(String) }]);
  });

  it('refuses a document that is not an object, naming the root', () => {
    expect(issuesOf([1])).toEqual([{ field: '(root)', reason: 'Expected an object, got an array' }]);
  });

  it('gives a sandbox without a network block-all, as the API does', () => {
    const r = validateConfig({ sandboxes: [{ id: 'a', sources: ['10.0.0.1'] }] });
    expect(r.ok && r.config.sandboxes[0]!.network.policy.mode).toBe('block-all');
  });

  it('takes every default from the schema when the document is empty', () => {
    const r = validateConfig({});
    expect(r.ok && r.config.admin).toEqual({
      listen: { host: '127.0.0.1', port: 9901, text: '127.0.0.1:9901' },
      token: null,
      previousToken: null,
      maxBodyBytes: 1_048_576,
    });
  });
});

describe('CheckRequest', () => {
  const problems = (body: unknown) => {
    const issues = new CappedIssues();
    check(CheckRequest, body, '', issues);
    return issues.result();
  };
  const base = { sandbox: 'sb', host: 'api.example.test', ip: '198.18.0.1', port: 443 };

  it('takes via tls or http, or none', () => {
    for (const via of ['tls', 'http', undefined]) expect(problems({ ...base, ...(via !== undefined ? { via } : {}) })).toEqual([]);
  });

  it('refuses any other via, naming the field, what it takes and the value', () => {
    for (const [via, got] of [
      ['dns', 'the string "dns"'],
      ['TLS', 'the string "TLS"'],
      [null, 'null'],
      [443, 'number "443"'],
    ] as const) {
      expect(problems({ ...base, via })).toEqual([{ field: 'via', reason: `Expected tls (the name is a TLS SNI) or http (an HTTP Host), got ${got}` }]);
    }
  });
});

describe('src/schema/check.ts reads the schema as Ajv does', () => {
  // Values that are near the edges of each keyword: wrong types, bounds, unknown keys, nulls.
  const scalar = fc.oneof(
    fc.constantFrom(0, 1, 4, 5, 1.5, -1, 10_000_000, 10_000_001, 65535, 65536, '', 'a', '10.0.0.1', '-x', 'all', 'nxdomain', 'tls', 'http', true, false, null),
    fc.string({ maxLength: 4 }),
    fc.integer(),
  );
  const value = fc.letrec<{ v: unknown }>((tie) => ({
    v: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      scalar,
      fc.array(tie('v'), { maxLength: 3 }),
      fc.dictionary(fc.constantFrom('connections', 'burst', 'sources', 'org', 'tier', 'limits', 'id', 'x'), tie('v'), { maxKeys: 3 }),
    ),
  })).v;
  const limits = fc.dictionary(fc.constantFrom('connections', 'undecided', 'perSecond', 'burst', 'rate'), scalar, { maxKeys: 4 });
  const sandbox = fc.record(
    { sources: fc.oneof(fc.array(scalar, { maxLength: 3 }), scalar), org: scalar, limits: fc.oneof(limits, value), extra: scalar },
    { requiredKeys: [] },
  );
  const org = fc.record({ tier: scalar, limits: fc.oneof(limits, scalar), other: scalar }, { requiredKeys: [] });
  const config = fc.record(
    {
      dns: fc.record(
        {
          timeoutMs: scalar,
          refusal: scalar,
          zones: fc.oneof(fc.array(scalar, { maxLength: 2 }), scalar),
          limits: fc.dictionary(fc.constantFrom('burst', 'perSecond', 'x'), scalar),
        },
        { requiredKeys: [] },
      ),
      listen: fc.record({ http: fc.oneof(scalar, fc.array(scalar, { maxLength: 2 })), dns: scalar }, { requiredKeys: [] }),
      catalog: fc.record({ categories: fc.oneof(scalar, fc.array(scalar, { maxLength: 2 })), file: scalar }, { requiredKeys: [] }),
      limits: fc.record(
        { sandbox: fc.oneof(limits, scalar), global: fc.record({ connections: scalar, sandboxShare: scalar }, { requiredKeys: [] }) },
        { requiredKeys: [] },
      ),
      block: scalar,
      sandboxes: fc.array(fc.record({ id: scalar, sources: fc.array(scalar, { maxLength: 2 }), limits }, { requiredKeys: [] }), { maxLength: 2 }),
      other: scalar,
    },
    { requiredKeys: [] },
  );
  const a = ajv();
  it.each([
    ['LimitsBody', LimitsBody, fc.oneof(limits, value)],
    ['SandboxBody', SandboxBody, fc.oneof(sandbox, value)],
    ['OrgBody', OrgBody, fc.oneof(org, value)],
    ['ConfigFile', ConfigFile, fc.oneof(config, value)],
    [
      'CheckRequest',
      CheckRequest,
      fc.oneof(fc.record({ sandbox: scalar, host: scalar, ip: scalar, port: scalar, via: scalar, x: scalar }, { requiredKeys: [] }), value),
    ],
  ] as const)('%s: the same verdict on 2,000 generated documents', (_name, schema, arb) => {
    const ajvCheck = a.compile(schema);
    fc.assert(
      fc.property(arb, (doc) => {
        const ours = check(schema, doc, '', new CappedIssues());
        expect(ours).toBe(ajvCheck(doc));
      }),
      { numRuns: 2000 },
    );
  });
});
