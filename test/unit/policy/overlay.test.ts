import { describe, expect, it } from 'vitest';
import { parseOverlays } from '../../../src/policy/overlay.ts';
import { validateConfig } from '../../../src/config/schema.ts';

describe('parseOverlays: the operator lists, in the policies own grammar', () => {
  it('reads named entries of domains, CIDRs and ports, normalized as policies are', () => {
    const r = parseOverlays({
      alwaysAllow: [
        { name: 'platform-api', domains: ['API.Platform.test.'], ports: [443] },
        { name: 'otel', cidrs: ['198.18.5.7'], ports: ['4317-4318'] },
      ],
      alwaysDeny: [{ name: 'smtp', ports: [25, '465'] }],
    });
    expect(r).toEqual({
      ok: true,
      value: {
        alwaysAllow: [
          { name: 'platform-api', side: { domains: ['api.platform.test'], cidrs: [], ports: [{ from: 443, to: 443 }] } },
          { name: 'otel', side: { domains: [], cidrs: ['198.18.5.7/32'], ports: [{ from: 4317, to: 4318 }] } },
        ],
        alwaysDeny: [
          {
            name: 'smtp',
            side: {
              domains: [],
              cidrs: [],
              ports: [
                { from: 25, to: 25 },
                { from: 465, to: 465 },
              ],
            },
          },
        ],
      },
    });
    expect(parseOverlays(undefined)).toEqual({ ok: true, value: { alwaysAllow: [], alwaysDeny: [] } });
  });

  it.each([
    [{ alwaysAllow: {} }, 'overlays.alwaysAllow', 'Expected a list'],
    [{ sometimes: [] }, 'overlays.sometimes', 'Unknown key "sometimes"'],
    [{ alwaysDeny: [{ ports: [25] }] }, 'overlays.alwaysDeny[0].name', 'Missing required field "name"'],
    [{ alwaysDeny: [{ name: 'has space', ports: [25] }] }, 'overlays.alwaysDeny[0].name', 'Expected letters, digits'],
    [{ alwaysDeny: [{ name: 'a' }] }, 'overlays.alwaysDeny[0]', 'lists no domains, cidrs or ports'],
    [{ alwaysDeny: [{ name: 'a', ports: [0] }] }, 'overlays.alwaysDeny[0].ports[0]', 'outside 1-65535'],
    [{ alwaysDeny: [{ name: 'a', ports: ['90-80'] }] }, 'overlays.alwaysDeny[0].ports[0]', 'reversed'],
    [{ alwaysDeny: [{ name: 'a', cidrs: ['10.0.0.0/33'] }] }, 'overlays.alwaysDeny[0].cidrs[0]', ''],
    [{ alwaysAllow: [{ name: 'a', domains: ['*.com'] }] }, 'overlays.alwaysAllow[0].domains[0]', 'public suffix'],
    [{ alwaysDeny: [{ name: 'a', domains: ['a.*.com'] }] }, 'overlays.alwaysDeny[0].domains[0]', 'whole first label'],
    [{ alwaysDeny: [{ name: 'a', ports: [25], proto: 'tcp' }] }, 'overlays.alwaysDeny[0].proto', 'Unknown key "proto"'],
    [{ alwaysAllow: [{ name: 'a', domains: ['*'] }] }, 'overlays.alwaysAllow[0].domains[0]', 'every name'],
    [{ alwaysAllow: [{ name: 'a', cidrs: ['0.0.0.0/0'] }] }, 'overlays.alwaysAllow[0].cidrs[0]', 'every address'],
    [{ alwaysAllow: [{ name: 'a', cidrs: ['::/0'] }] }, 'overlays.alwaysAllow[0].cidrs[0]', 'every address'],
    [
      {
        alwaysAllow: [
          { name: 'a', cidrs: ['198.18.0.1'], ports: [1] },
          { name: 'a', cidrs: ['198.18.0.1'], ports: [2] },
        ],
      },
      'overlays.alwaysAllow[1].name',
      'Duplicate name "a"',
    ],
    // CIDRs that together cover a family are a /0.
    [{ alwaysAllow: [{ name: 'a', cidrs: ['0.0.0.0/1', '128.0.0.0/1'] }] }, 'overlays.alwaysAllow[0].cidrs', 'every IPv4 address'],
    [{ alwaysAllow: [{ name: 'a', cidrs: ['8000::/1', '::/2', '4000::/2'], ports: [443] }] }, 'overlays.alwaysAllow[0].cidrs', 'every IPv6 address'],
    // Ports alone match every host: "*" on those ports, to every sandbox.
    [{ alwaysAllow: [{ name: 'web', ports: [443] }] }, 'overlays.alwaysAllow[0]', 'must name its hosts'],
    [{ alwaysAllow: [{ name: 'all', ports: ['1-65535'] }] }, 'overlays.alwaysAllow[0]', 'must name its hosts'],
  ])('refuses %j at %s', (v, field, reason) => {
    const r = parseOverlays(v);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toContainEqual({ field, reason: expect.stringContaining(reason) });
  });

  it('refuses the whole config for one bad entry, naming its field, beside every other problem', () => {
    const r = validateConfig({
      overlays: {
        alwaysAllow: [
          { name: 'ok', domains: ['mirror.test'] },
          { name: 'bad', cidrs: ['nope'] },
        ],
        alwaysDeny: [{ name: 'smtp', ports: [70000] }],
      },
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.map((i) => i.field)).toEqual(['overlays.alwaysAllow[1].cidrs[0]', 'overlays.alwaysDeny[0].ports[0]']);
  });

  it('takes a wildcard over a public suffix in always-deny, never in always-allow', () => {
    const deny = parseOverlays({ alwaysDeny: [{ name: 'no-ru', domains: ['*.RU'] }] });
    expect(deny).toEqual({ ok: true, value: { alwaysAllow: [], alwaysDeny: [{ name: 'no-ru', side: { domains: ['*.ru'], cidrs: [], ports: [] } }] } });
    expect(parseOverlays({ alwaysAllow: [{ name: 'all-ru', domains: ['*.ru'] }] })).toEqual({
      ok: false,
      issues: [{ field: 'overlays.alwaysAllow[0].domains[0]', reason: 'Pattern "*.ru" is a wildcard over the public suffix "ru"' }],
    });
  });

  it('keeps always-allow CIDRs that leave part of the space uncovered', () => {
    expect(parseOverlays({ alwaysAllow: [{ name: 'a', cidrs: ['0.0.0.0/1', '128.0.0.0/2', '::/1'] }] }).ok).toBe(true);
  });

  it('keeps the overlays in the validated config', () => {
    const r = validateConfig({ overlays: { alwaysDeny: [{ name: 'smtp', ports: [25] }] } });
    expect(r.ok && r.config.overlays.alwaysDeny[0]!.name).toBe('smtp');
    expect(r.ok && r.config.overlays.alwaysAllow).toEqual([]);
  });
});
