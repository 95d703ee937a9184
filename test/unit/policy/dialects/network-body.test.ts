// Recognizing a body's dialect by its keys, and the one error shape every dialect reports in.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseNetworkBody } from '../../../../src/policy/network-body.ts';

const KNOWN = 'mode, egress (sandbox0); networkBlockAll, networkAllowList, domainAllowList (Daytona); allowInternetAccess, network (Novita)';

describe('parseNetworkBody', () => {
  it.each([
    [{ mode: 'block-all' }, 'sandbox0'],
    [{ egress: {}, mode: 'allow-all' }, 'sandbox0'],
    [{ networkBlockAll: true }, 'daytona'],
    [{ networkAllowList: '10.0.0.0/8' }, 'daytona'],
    [{ allowInternetAccess: false }, 'novita'],
    [{ network: { denyOut: ['8.8.8.8'] } }, 'novita'],
  ])('recognizes %j as %s', (body, dialect) => {
    const r = parseNetworkBody(body);
    expect(r.ok && r.value.dialect).toBe(dialect);
  });

  it('reads an empty body as full access, as every dialect does', () => {
    expect(parseNetworkBody({})).toEqual({
      ok: true,
      value: {
        dialect: 'daytona',
        policy: { mode: 'allow-all', allow: { domains: [], cidrs: [], ports: [] }, deny: { domains: [], cidrs: [], ports: [] } },
        essentialServices: false,
        dnsServersAllowed: false,
      },
    });
  });

  it('refuses keys of two dialects in one body, on the key of the second', () => {
    expect(parseNetworkBody({ mode: 'block-all', networkAllowList: '10.0.0.0/8' })).toEqual({
      ok: false,
      issues: [
        {
          field: 'networkAllowList',
          reason: 'Field "networkAllowList" belongs to the Daytona dialect but "mode" to the sandbox0 dialect; a policy uses one dialect',
        },
      ],
    });
  });

  it('refuses a Novita key beside Daytona keys', () => {
    const r = parseNetworkBody({ networkBlockAll: true, allowInternetAccess: false, network: {} });
    expect(r.ok || r.issues.map((i) => i.field)).toEqual(['allowInternetAccess', 'network']);
  });

  it("refuses unknown keys, listing every dialect's", () => {
    expect(parseNetworkBody({ networkBlockAll: true, public: false })).toEqual({
      ok: false,
      issues: [{ field: 'public', reason: `Unknown field "public"; known fields are ${KNOWN}` }],
    });
  });

  it("reports key problems and the chosen dialect's own problems together", () => {
    const r = parseNetworkBody({ networkAllowList: 'example.com', labels: {}, mode: 'block-all' });
    expect(r.ok || r.issues.map((i) => i.field)).toEqual(['labels', 'mode', 'networkAllowList']);
  });

  it.each([
    [null, 'null'],
    [[], 'an array'],
    ['block-all', 'the string "block-all"'],
    [1, 'number "1"'],
  ])('refuses a body that is not an object: %j', (body, got) => {
    expect(parseNetworkBody(body)).toEqual({
      ok: false,
      issues: [{ field: '', reason: `Expected an object with the keys of one dialect (${KNOWN}), got ${got}` }],
    });
  });

  it('reports at most 20 key problems and counts the rest', () => {
    const body: Record<string, unknown> = {};
    for (let i = 0; i < 10_000; i++) body[`k${i}`] = i;
    const r = parseNetworkBody(body);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toHaveLength(21);
    expect(r.issues[20]).toEqual({ field: '', reason: '9980 more unknown or mixed fields not shown' });
  });

  it('treats "__proto__" in a parsed JSON body as an unknown key, not as a prototype', () => {
    const r = parseNetworkBody(JSON.parse('{"__proto__": {"networkBlockAll": true}}'));
    expect(r.ok || r.issues[0]!.field).toBe('__proto__');
  });

  it('never throws, and always answers with a policy or sentence-case issues, whatever the body', () => {
    const dialectish = fc.record(
      {
        mode: fc.oneof(fc.constantFrom('allow-all', 'block-all'), fc.jsonValue()),
        egress: fc.oneof(fc.dictionary(fc.constantFrom('allowed_domains', 'denied_cidrs', 'allowed_ports', 'x'), fc.jsonValue()), fc.jsonValue()),
        networkBlockAll: fc.jsonValue(),
        networkAllowList: fc.oneof(
          fc.string(),
          fc.array(fc.constantFrom('10.0.0.0/8', ' 1.2.3.4/32', 'a.b', '::/0', ',', '/')).map((a) => a.join(',')),
        ),
        allowInternetAccess: fc.jsonValue(),
        network: fc.oneof(
          fc.record(
            {
              allowOut: fc.array(fc.oneof(fc.string(), fc.constantFrom('0.0.0.0/0', '*.github.com', '1.1.1.1', '::/0'))),
              denyOut: fc.array(fc.oneof(fc.string(), fc.constantFrom('0.0.0.0/0', 'a.com'))),
            },
            { requiredKeys: [] },
          ),
          fc.jsonValue(),
        ),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), dialectish), (body) => {
        const r = parseNetworkBody(body);
        if (r.ok) {
          expect(['sandbox0', 'daytona', 'novita']).toContain(r.value.dialect);
          expect(['allow-all', 'block-all']).toContain(r.value.policy.mode);
        } else {
          expect(r.issues.length).toBeGreaterThan(0);
          for (const i of r.issues) {
            expect(typeof i.field).toBe('string');
            expect(i.reason).toMatch(/^[A-Z"0-9]/);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});
