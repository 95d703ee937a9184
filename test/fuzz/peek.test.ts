// Property tests for the peeking parsers (fast-check). The properties every input must keep:
// - no input makes a parser throw, and every answer is one of the closed set;
// - a verdict on a prefix is need-more or exactly the verdict on the whole, so however the
//   bytes are chunked the caller gets one answer (Envoy's tls_inspector fuzzes one-byte reads);
// - once the cap's worth of bytes is here, the answer is never need-more;
// - sniff and the parsers agree on what is TLS and HTTP.
// Inputs: random bytes, bytes that look like a record, hellos built from random parameters,
// and real hellos mutated at random.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_HELLO_BYTES, TLS_MALFORMED_REASONS, parseClientHello, type TlsPeek } from '../../src/peek/tls-client-hello.ts';
import { HTTP_MALFORMED_REASONS, MAX_HEAD_BYTES, parseHttpHead, requestShape, shapeProgress, type HttpPeek } from '../../src/peek/http-head.ts';
import { sniff } from '../../src/peek/sniff.ts';
import { mayStall, stallCheck } from '../../src/peek/peek-steps.ts';
import { buildHello, concat, type HelloSpec } from '../helpers/hello-builder.ts';

const RUNS = 300;
const ROOT = resolve(import.meta.dirname, '../..');

function realHellos(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const dir of [join(ROOT, 'test/fixtures/hellos'), resolve(ROOT, '../shared/clienthellos')]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).filter((f) => f.endsWith('.bin'))) out.push(new Uint8Array(readFileSync(join(dir, f))));
  }
  return out;
}
const REAL = realHellos();

const tlsReasons = new Set<string>(TLS_MALFORMED_REASONS);
const httpReasons = new Set<string>(HTTP_MALFORMED_REASONS);

function checkTlsShape(r: TlsPeek): void {
  if (r.kind === 'malformed') {
    expect(tlsReasons.has(r.reason), r.reason).toBe(true);
    expect(r.detail.length).toBeGreaterThan(0);
    expect(r.detail[0]).toBe(r.detail[0]!.toUpperCase());
  } else {
    expect(['need-more', 'hello', 'not-tls']).toContain(r.kind);
  }
}

function checkHttpShape(r: HttpPeek): void {
  if (r.kind === 'malformed') {
    expect(httpReasons.has(r.reason), r.reason).toBe(true);
    expect(r.detail.length).toBeGreaterThan(0);
  } else {
    expect(['need-more', 'head', 'not-http']).toContain(r.kind);
  }
}

/**
 * Feeds `bytes` cut at `cuts` (as a socket would deliver it, each call given everything so far)
 * and checks every answer before the last is need-more or the final answer; returns the last.
 */
function feed<R extends { kind: string }>(parse: (b: Uint8Array) => R, bytes: Uint8Array, cuts: readonly number[]): R {
  const whole = parse(bytes);
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  for (const k of points) {
    const r = parse(bytes.slice(0, k));
    if (r.kind !== 'need-more') expect(r, `cut at ${k} of ${bytes.length}`).toEqual(whole);
  }
  return whole;
}

/** A real hello with a few random edits: a byte set, bytes inserted, a range deleted. */
const mutatedHello = fc
  .record({
    base: fc.constantFrom(...REAL),
    edits: fc.array(
      fc.record({ op: fc.constantFrom('set', 'insert', 'delete'), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }), len: fc.integer({ min: 1, max: 8 }) }),
      { minLength: 1, maxLength: 4 },
    ),
  })
  .map(({ base, edits }) => {
    let b: Uint8Array = base.slice();
    for (const e of edits) {
      const at = e.at % (b.length + 1);
      if (e.op === 'set' && at < b.length) b[at] = e.value;
      else if (e.op === 'insert') b = concat(b.subarray(0, at), new Uint8Array(e.len).fill(e.value), b.subarray(at));
      else if (e.op === 'delete') b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + e.len)));
    }
    return b;
  });

/** Bytes that open like a TLS record, so the parser gets past its first byte. */
const recordish = fc
  .record({ version: fc.integer({ min: 0, max: 4 }), len: fc.integer({ min: 0, max: 0xffff }), rest: fc.uint8Array({ maxLength: 2000 }) })
  .map(({ version, len, rest }) => concat(Uint8Array.of(0x16, 3, version, len >> 8, len & 0xff), rest));

const hostName = fc.domain().filter((d) => d.length > 0 && d.length < 200);

const builtHello = fc.record({
  sni: fc.option(hostName, { nil: undefined }),
  alpn: fc.array(fc.constantFrom('h2', 'http/1.1', 'acme-tls/1', 'x'), { maxLength: 3 }),
  grease: fc.boolean(),
  ech: fc.boolean(),
  padding: fc.option(fc.integer({ min: 0, max: 600 }), { nil: undefined }),
  keyShare: fc.constantFrom(32, 1216),
  seed: fc.integer({ min: 1, max: 1000 }),
  records: fc.integer({ min: 1, max: 24 }),
  versions: fc.array(fc.constantFrom(0x0300, 0x0301, 0x0302, 0x0303), { minLength: 1, maxLength: 3 }),
});

describe('parseClientHello properties', () => {
  it('never throws and answers from the closed set, on random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), (b) => {
        checkTlsShape(parseClientHello(b));
      }),
      { numRuns: RUNS },
    );
  });

  it('gives one answer however record-like bytes are chunked', () => {
    fc.assert(
      fc.property(recordish, fc.array(fc.nat(), { maxLength: 8 }), (b, cuts) => {
        checkTlsShape(feed(parseClientHello, b, cuts));
      }),
      { numRuns: RUNS },
    );
  });

  it('gives one answer however a mutated real hello is chunked', () => {
    fc.assert(
      fc.property(mutatedHello, fc.array(fc.nat(), { maxLength: 8 }), (b, cuts) => {
        checkTlsShape(feed(parseClientHello, b, cuts));
      }),
      { numRuns: RUNS * 2 },
    );
  });

  it('reads the name and ALPN of a hello built from random parameters, however it is framed and chunked', () => {
    fc.assert(
      fc.property(builtHello, fc.array(fc.nat(), { maxLength: 6 }), (p, cuts) => {
        const spec: HelloSpec = {
          sni: p.sni === undefined ? null : [p.sni],
          alpn: p.alpn.length === 0 ? null : p.alpn,
          grease: p.grease,
          ech: p.ech,
          keyShare: p.keyShare,
          order: { seed: p.seed },
          ...(p.padding === undefined ? {} : { padding: p.padding }),
        };
        const bytes = buildHello(spec, { records: p.records, versions: p.versions });
        const r = feed(parseClientHello, bytes, cuts);
        expect(r).toEqual({ kind: 'hello', sni: p.sni ?? null, alpn: p.alpn, ech: p.ech, versions: [0x0304, 0x0303], sslv2: false });
        for (let k = bytes.length - 3; k < bytes.length; k++) expect(parseClientHello(bytes.subarray(0, k)).kind).toBe('need-more');
      }),
      { numRuns: RUNS },
    );
  });

  it('never answers need-more once MAX_HELLO_BYTES have arrived', () => {
    const big = fc.record({ head: fc.oneof(recordish, mutatedHello), fill: fc.integer({ min: 0, max: 255 }) }).map(({ head, fill }) => {
      const b = new Uint8Array(MAX_HELLO_BYTES).fill(fill);
      b.set(head.subarray(0, MAX_HELLO_BYTES));
      return b;
    });
    fc.assert(
      fc.property(big, (b) => {
        expect(parseClientHello(b).kind).not.toBe('need-more');
      }),
      { numRuns: 200 },
    );
  });
});

describe('parseHttpHead properties', () => {
  const methods = fc.constantFrom('GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'get', 'X-Y');
  const headerName = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}$/).filter((n) => n.toLowerCase() !== 'host');
  const headerValue = fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,40}[\x21-\x7e])?$/);
  const validHead = fc.record({
    method: methods,
    path: fc.webPath().map((p) => (p.startsWith('/') ? p : `/${p}`)),
    host: hostName,
    port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
    version: fc.constantFrom('HTTP/1.0', 'HTTP/1.1'),
    headers: fc.array(fc.tuple(headerName, headerValue), { maxLength: 8 }),
    hostAt: fc.nat(),
  });

  it('reads the host of a head built from random parameters, however it is chunked', () => {
    fc.assert(
      fc.property(validHead, fc.array(fc.nat(), { maxLength: 8 }), (h, cuts) => {
        const lines = h.headers.map(([n, v]) => `${n}: ${v}`);
        lines.splice(h.hostAt % (lines.length + 1), 0, `Host: ${h.host}${h.port === undefined ? '' : `:${h.port}`}`);
        const text = `${h.method} ${h.path} ${h.version}\r\n${lines.join('\r\n')}\r\n\r\n`;
        const r = feed(parseHttpHead, new TextEncoder().encode(text), cuts);
        expect(r).toEqual({ kind: 'head', method: h.method, target: h.path, version: h.version, host: h.host });
      }),
      { numRuns: RUNS },
    );
  });

  const mutatedHead = fc
    .record({
      base: fc.constantFrom(
        'GET / HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n',
        'GET http://a.test:8080/x HTTP/1.1\r\nHost: A.TEST\r\n\r\n',
        'POST /u HTTP/1.0\r\nHost: [::1]:80\r\nContent-Length: 3\r\n\r\nabc',
      ),
      edits: fc.array(fc.record({ at: fc.nat(), ch: fc.constantFrom('\r', '\n', ' ', '\t', ':', '@', '\u0000', 'Host: b\r\n', 'x', '/', '\u00ff') }), {
        minLength: 1,
        maxLength: 3,
      }),
    })
    .map(({ base, edits }) => {
      let s = base;
      for (const e of edits) {
        const at = e.at % (s.length + 1);
        s = s.slice(0, at) + e.ch + s.slice(at);
      }
      return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
    });

  it('never throws and gives one answer however random or mutated bytes are chunked', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), mutatedHead), fc.array(fc.nat(), { maxLength: 8 }), (b, cuts) => {
        checkHttpShape(feed(parseHttpHead, b, cuts));
      }),
      { numRuns: RUNS * 2 },
    );
  });

  it('never answers need-more once MAX_HEAD_BYTES have arrived', () => {
    fc.assert(
      fc.property(mutatedHead, fc.constantFrom(0x61, 0x0d, 0x20, 0x0a), (head, fill) => {
        const b = new Uint8Array(MAX_HEAD_BYTES).fill(fill);
        b.set(head.subarray(0, MAX_HEAD_BYTES));
        expect(parseHttpHead(b).kind).not.toBe('need-more');
      }),
      { numRuns: 200 },
    );
  });
});

describe('sniff agrees with the parsers', () => {
  const anyStart = fc.oneof(
    fc.uint8Array({ maxLength: 12 }),
    recordish.map((b) => b.subarray(0, 12)),
    fc.constantFrom('GET ', 'POST /', 'PRI *', 'OPTIONS', 'get /').map((s) => new TextEncoder().encode(s)),
    fc.tuple(fc.integer({ min: 0x80, max: 0xff }), fc.uint8Array({ maxLength: 6 })).map(([b0, rest]) => concat(Uint8Array.of(b0), rest)),
  );

  it('never calls not-TLS bytes TLS, nor TLS-looking bytes anything else', () => {
    fc.assert(
      fc.property(anyStart, (b) => {
        const s = sniff(b);
        const t = parseClientHello(b);
        if (s === 'tls') expect(t.kind).not.toBe('not-tls');
        if (t.kind === 'not-tls') expect(s).not.toBe('tls');
        if (s === 'unknown' && b.length > 0 && (b[0] === 0x16 || b[0]! >= 0x80)) expect(t.kind).toBe('not-tls');
        if (s === 'http') expect(parseHttpHead(b).kind).not.toBe('not-http');
      }),
      { numRuns: RUNS * 2 },
    );
  });

  it('answers alike resumed on a growing stream (ShapeProgress, stallCheck) and asked afresh, however it is chunked', () => {
    const line = fc
      .tuple(
        fc.array(fc.constantFrom('\r\n', '\n', '\r'), { maxLength: 10 }),
        fc.constantFrom('GET', 'get', 'MKACTIVITY', 'PRI', '', 'G\u00e9T'),
        fc.constantFrom(' ', '\t', '  ', ''),
        fc.constantFrom('/', '/a/b?c', 'http://a.test/', '', '*'),
        fc.constantFrom(' ', '\t ', '\r\n', ''),
        fc.constantFrom('HTTP/1.1\r\n', 'http/1.0', 'HTTP', 'HTTPS', 'HTTP/2.0\r\n\r\n', 'X'),
      )
      .map(([lead, m, s1, t, s2, v]) => new Uint8Array(Buffer.from(lead.join('') + m + s1 + t + s2 + v, 'latin1')));
    const stream = fc.oneof(line, anyStart, fc.uint8Array({ maxLength: 40 }));
    fc.assert(
      fc.property(stream, fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 40 }), (b, cuts) => {
        const shape = shapeProgress();
        const sniffShape = shapeProgress();
        const stall = stallCheck();
        let at = 0;
        for (let i = 0; at < b.length; i++) {
          at = Math.min(b.length, at + cuts[i % cuts.length]!);
          const prefix = Buffer.from(b.subarray(0, at));
          expect(requestShape(prefix, shape)).toEqual(requestShape(prefix));
          expect(sniff(prefix, sniffShape)).toBe(sniff(prefix));
          expect(stall(prefix)).toBe(mayStall(prefix));
        }
      }),
      { numRuns: RUNS * 3 },
    );
  });

  it('is stable: once it decides, more bytes do not change the decision', () => {
    fc.assert(
      fc.property(anyStart, fc.uint8Array({ maxLength: 8 }), (b, more) => {
        const s = sniff(b);
        if (s !== 'need-more') expect(sniff(concat(b, more))).toBe(s);
      }),
      { numRuns: RUNS },
    );
  });
});
