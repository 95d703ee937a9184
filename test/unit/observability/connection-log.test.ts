// The connection line built from CONNECTION_FIELDS: nested ECS objects, every declared field
// reachable, absent values left out, durations in nanoseconds, and docs/logs.md's example made
// only of declared fields.

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { ConnectionOutcome } from '../../../src/net/outcome.ts';
import { pino } from 'pino';
import fc from 'fast-check';
import { CONNECTION_FIELDS, connectionLine, connectionLogger, logConnection } from '../../../src/observability/connection-log.ts';
import { loggerOptions } from '../../../src/observability/logger.ts';
import { walkingBuilder } from '../../../src/observability/ecs-line.ts';
import type { LogLine } from '../../helpers/log-line.ts';

function outcome(over: Partial<ConnectionOutcome> = {}): ConnectionOutcome {
  return {
    listener: 'tls',
    sandbox: 'sb-1',
    source: '2001:db8:1::7',
    sourcePort: 40312,
    destination: '2001:db8:2::2',
    destinationPort: 443,
    name: 'files.pythonhosted.org',
    rawName: 'FILES.pythonhosted.org.',
    dnsNames: ['a.test'],
    matchedBy: 'dns',
    protocol: 'tls',
    alpn: ['h2'],
    ech: false,
    verdict: 'allow',
    reason: 'allow-rule',
    endedBy: 'client',
    rule: 'allowed_domains "*.pythonhosted.org"',
    decided: { verdict: 'allow', reason: 'allow-rule', rule: 'allowed_domains "*.pythonhosted.org"', matchedBy: 'name', layer: 'sandbox' },
    dialed: '2001:db8:2::2',
    tried: ['2001:db8:2::3 refused', '2001:db8:2::2 ok'],
    dialFailure: 'refused',
    bytesUp: 517,
    bytesDown: 4096,
    end: 'closed',
    startedAt: 0,
    durationMs: 41.5,
    peekMs: 1,
    connectMs: 2,
    ...over,
  };
}

const BASE = ['@timestamp', 'log.level', 'message', 'ecs.version', 'process.pid'];
const names = (l: LogLine, prefix = ''): string[] =>
  Object.entries(l).flatMap(([k, v]) => (typeof v === 'object' && v !== null && !Array.isArray(v) ? names(v as LogLine, `${prefix}${k}.`) : [`${prefix}${k}`]));

describe('CONNECTION_FIELDS', () => {
  it('declares each name once, in ECS or under egressd.', () => {
    const all = CONNECTION_FIELDS.map((f) => f.name);
    expect(new Set(all).size).toBe(all.length);
    for (const n of all) expect(n).toMatch(/^(?:event|source|destination|network|tls|url|rule|observer|egressd)\.[a-z_.]+$/);
  });

  it('builds every declared field, nested, from a TLS and an HTTP connection', () => {
    const tls = connectionLine(outcome());
    // A link-local one, for the interface it came in on.
    const http = connectionLine(outcome({ listener: 'http', protocol: 'http', destinationPort: 80, source: 'fe80::b1%eth1' }));
    expect(new Set([...names(tls), ...names(http)])).toEqual(new Set(CONNECTION_FIELDS.map((f) => f.name)));
    expect(tls).toMatchObject({ source: { ip: '2001:db8:1::7', port: 40312 }, tls: { client: { server_name: 'files.pythonhosted.org' } } });
    expect(http).toMatchObject({ url: { domain: 'files.pythonhosted.org' } });
    expect('url' in tls || 'tls' in http).toBe(false);
    expect(tls).toMatchObject({ rule: { name: 'allowed_domains "*.pythonhosted.org"', ruleset: 'sandbox' } });
  });

  it('names the layer that decided in rule.ruleset: an overlay, a protected address, a would-refuse', () => {
    const line = (decided: NonNullable<ConnectionOutcome['decided']>) => connectionLine(outcome({ decided }));
    const counter = { hits: 0 };
    expect(
      line({
        verdict: 'refuse',
        reason: 'deny-rule',
        rule: 'always-deny "smtp": denied_ports "25"',
        matchedBy: 'port',
        layer: 'always-deny',
        overlay: { name: 'smtp', counter },
      }),
    ).toMatchObject({ rule: { ruleset: 'always-deny' } });
    expect(line({ verdict: 'refuse', reason: 'protected-address', rule: 'protected "10.0.0.0/8"', matchedBy: 'protected', layer: 'org' })).toMatchObject({
      rule: { ruleset: 'protected' },
    });
    expect(
      connectionLine(
        outcome({
          verdict: 'would-refuse',
          reason: 'deny-rule',
          decided: { verdict: 'would-refuse', reason: 'deny-rule', rule: 'org acme: denied_domains "x.test"', matchedBy: 'name', layer: 'org' },
        }),
      ),
    ).toMatchObject({ event: { outcome: 'success' }, rule: { ruleset: 'org' }, egressd: { verdict: 'would-refuse' } });
  });

  it('leaves out what a connection does not have, never writing null', () => {
    const l = connectionLine(
      outcome({
        sandbox: null,
        destination: null,
        destinationPort: null,
        name: null,
        rule: null,
        dialed: null,
        protocol: 'none',
        verdict: 'refuse',
        reason: 'not-redirected',
      }),
    );
    expect(JSON.stringify(l)).not.toContain('null');
    expect(l['destination']).toEqual({ bytes: 4096 });
    expect(l).not.toHaveProperty('tls');
    expect(l['event']).toMatchObject({ type: ['connection', 'denied'], outcome: 'failure', reason: 'not-redirected' });
  });

  it('writes a link-local address in every ip field without its zone, and its interface apart', () => {
    // An ip field with a zone is refused by an ECS index (Elasticsearch: "is not an IP string
    // literal"), and with it the whole line.
    const zoned = outcome({ source: 'fe80::b1%eth1', destination: 'fe80::1%eth1', dialed: 'fe80::1%eth1' });
    const l = connectionLine(zoned);
    for (const f of CONNECTION_FIELDS.filter((f) => f.type.startsWith('ip'))) {
      const v = f.value(zoned);
      expect([f.name, isIP(String(v))], f.name).toEqual([f.name, 6]);
    }
    expect(l).toMatchObject({ source: { ip: 'fe80::b1' }, destination: { ip: 'fe80::1' }, egressd: { upstream: { ip: 'fe80::1' } } });
    expect(l['observer']).toEqual({ ingress: { interface: { name: 'eth1' } } });
    // A global source to a link-local destination: the destination's interface.
    expect(connectionLine(outcome({ source: '2001:db8::7', destination: 'fe80::1%eth2' }))['observer']).toEqual({ ingress: { interface: { name: 'eth2' } } });
    expect(connectionLine(outcome())).not.toHaveProperty('observer');
  });

  it('writes durations in whole nanoseconds (ECS event.duration)', () => {
    const l = connectionLine(outcome({ durationMs: 41.5, peekMs: 0.25, connectMs: 2 }));
    expect(l).toMatchObject({ event: { duration: 41_500_000 }, egressd: { peek_duration: 250_000, upstream: { connect_duration: 2_000_000 } } });
  });

  it('marks an error as an error event', () => {
    expect(connectionLine(outcome({ verdict: 'error', reason: 'upstream-failed' }))['event']).toMatchObject({
      type: ['connection', 'error'],
      outcome: 'failure',
    });
  });

  it('docs/logs.md shows a line made only of declared fields', () => {
    const doc = readFileSync(new URL('../../../docs/logs.md', import.meta.url), 'utf8');
    const example = JSON.parse(/```json\n([\s\S]*?)\n```/.exec(doc)![1]!) as LogLine;
    const declared = new Set([...BASE, ...CONNECTION_FIELDS.map((f) => f.name)]);
    expect(names(example).filter((n) => !declared.has(n))).toEqual([]);
  });

  // A reader checks a real line against the example: it lacked rule.ruleset, which every line
  // with a verdict carries. The example is an allowed TLS connection whose name decided, dialed
  // at its first address: exactly the fields egressd writes for that connection.
  it("docs/logs.md's example has every field egressd writes for the connection it shows", () => {
    const doc = readFileSync(new URL('../../../docs/logs.md', import.meta.url), 'utf8');
    const example = JSON.parse(/```json\n([\s\S]*?)\n```/.exec(doc)![1]!) as LogLine;
    const { rawName: _raw, dnsNames: _dns, matchedBy: _by, tried: _tried, dialFailure: _failure, ...shown } = outcome();
    const line = connectionLine({ ...shown, alpn: ['h2', 'http/1.1'] });
    expect(names(example).sort()).toEqual([...BASE, ...names(line)].sort());
  });

  // The line is written as text, not through pino's object walk: it must be
  // byte for byte what pino wrote from connectionLine, for any record, absent fields and awkward
  // strings included.
  const anyOutcome = fc
    .record(
      {
        verdict: fc.constantFrom('allow', 'refuse', 'would-refuse', 'error'),
        sandbox: fc.option(fc.string(), { nil: null }),
        name: fc.option(fc.string(), { nil: null }),
        rawName: fc.option(fc.string(), { nil: undefined }),
        protocol: fc.constantFrom('tls', 'http', 'unknown', 'none'),
        source: fc.constantFrom('198.18.0.2', '2001:db8::7'),
        destination: fc.option(fc.constant('198.18.1.2'), { nil: null }),
        destinationPort: fc.option(fc.integer({ min: 0, max: 65535 }), { nil: null }),
        rule: fc.option(fc.string(), { nil: null }),
        dialed: fc.option(fc.constant('198.18.1.2'), { nil: null }),
        alpn: fc.option(fc.array(fc.string(), { maxLength: 3 }), { nil: undefined }),
        ech: fc.option(fc.boolean(), { nil: undefined }),
        tried: fc.option(fc.array(fc.string(), { maxLength: 3 }), { nil: undefined }),
        bytesUp: fc.nat(),
        bytesDown: fc.nat(),
        durationMs: fc.double({ min: 0, max: 1e7, noNaN: true }),
        peekMs: fc.option(fc.double({ min: 0, max: 1e4, noNaN: true }), { nil: undefined }),
        end: fc.option(fc.string(), { nil: undefined }),
        decided: fc.option(fc.constant(outcome().decided), { nil: undefined }),
      },
      { requiredKeys: ['verdict', 'source', 'bytesUp', 'bytesDown', 'durationMs'] },
    )
    .map((over) => {
      const o: Record<string, unknown> = { ...outcome(), ...over };
      // Optional fields the record drew as absent, and the rarer ones, are left out.
      for (const k of ['dnsNames', 'matchedBy', 'tried', 'dialFailure', 'connectMs', ...Object.keys(over)]) if (o[k] === undefined) delete o[k];
      return o as unknown as ConnectionOutcome;
    });

  it('builds the same line with the generated builder and by walking the table', () => {
    const walk = walkingBuilder(CONNECTION_FIELDS);
    fc.assert(
      fc.property(anyOutcome, (o) => {
        expect(JSON.stringify(connectionLine(o))).toBe(JSON.stringify(walk(o)));
      }),
      { numRuns: 300 },
    );
  });

  it('writes through connectionLogger the very line pino writes, with its level, time and bindings', () => {
    fc.assert(
      fc.property(anyOutcome, (o) => {
        const direct: string[] = [];
        const viaPino: string[] = [];
        logConnection(connectionLogger(pino(loggerOptions('info'), { write: (l: string) => void direct.push(l) })), o);
        pino(loggerOptions('info'), { write: (l: string) => void viaPino.push(l) })
          .child({}, { redact: [] })
          [o.verdict === 'error' ? 'warn' : 'info'](connectionLine(o), 'connection');
        const noTime = (l: string): string => l.replace(/"@timestamp":"[^"]*"/, '"@timestamp":""');
        expect(direct.map(noTime)).toEqual(viaPino.map(noTime));
      }),
      { numRuns: 200 },
    );
  });

  it("writes nothing below the logger's level, and errors at warn", () => {
    const lines: LogLine[] = [];
    const log = connectionLogger(pino(loggerOptions('warn'), { write: (l: string) => void lines.push(JSON.parse(l) as LogLine) }));
    logConnection(log, outcome());
    logConnection(log, outcome({ verdict: 'error', reason: 'upstream-failed' }));
    expect(lines.map((l) => [l['log.level'], (l['egressd'] as LogLine)['verdict']])).toEqual([['warn', 'error']]);
  });

  it('writes the line whole through connectionLogger, while the process logger still redacts its other lines', () => {
    const lines: LogLine[] = [];
    const log = pino(loggerOptions('info'), { write: (l: string) => void lines.push(JSON.parse(l) as LogLine) });
    logConnection(connectionLogger(log), outcome({ verdict: 'error', reason: 'upstream-failed' }));
    log.info({ event: { action: 'x' }, token: 'secret', headers: { authorization: 'Bearer secret' } }, 'other');
    expect(lines[0]).toMatchObject({ 'log.level': 'warn', message: 'connection', ...connectionLine(outcome({ verdict: 'error', reason: 'upstream-failed' })) });
    expect(JSON.stringify(lines[1])).not.toContain('secret');
  });
});
