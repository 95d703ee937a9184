import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_HEAD_BYTES, MAX_LEADING_EMPTY_LINES, parseHttpHead, requestShape, shapeProgress, type HttpPeek } from '../../../src/peek/http-head.ts';
import { sniff } from '../../../src/peek/sniff.ts';

const enc = new TextEncoder();
const parse = (s: string): HttpPeek => parseHttpHead(enc.encode(s));
const reasonOf = (r: HttpPeek): string => (r.kind === 'malformed' ? r.reason : `(${r.kind})`);
const reason = (s: string): string => reasonOf(parse(s));

/** Every strict prefix is need-more; the whole gives `expected`. */
function expectOnlyWhenComplete(s: string, expected: HttpPeek): void {
  const bytes = enc.encode(s);
  for (let i = 0; i < bytes.length; i++) {
    const r = parseHttpHead(bytes.subarray(0, i));
    if (r.kind !== 'need-more') expect.fail(`prefix of ${i} bytes gave ${JSON.stringify(r)}`);
  }
  expect(parseHttpHead(bytes)).toEqual(expected);
}

describe('parseHttpHead: the name a request is for', () => {
  it('reads method, target, version and the Host with its port removed', () => {
    expect(parse('GET /x?y HTTP/1.1\r\nUser-Agent: t\r\nHost: Example.TEST:8080\r\nAccept: */*\r\n\r\n')).toEqual({
      kind: 'head',
      method: 'GET',
      target: '/x?y',
      version: 'HTTP/1.1',
      host: 'Example.TEST',
    });
  });

  it('trims optional whitespace around the Host value and matches the name case-insensitively', () => {
    expect(parse('GET / HTTP/1.1\r\nhOsT:\t a.test \t\r\n\r\n')).toMatchObject({ kind: 'head', host: 'a.test' });
  });

  it('keeps the brackets of an IPv6 literal and removes its port', () => {
    expect(parse('GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n')).toMatchObject({ host: '[2001:db8::1]' });
    expect(parse('GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n')).toMatchObject({ host: '[::1]' });
  });

  it('takes the name from an absolute-form target when there is no Host', () => {
    expect(parse('GET http://a.test:81/p HTTP/1.1\r\n\r\n')).toMatchObject({ kind: 'head', host: 'a.test', target: 'http://a.test:81/p' });
    expect(parse('GET HTTPS://a.test?q HTTP/1.0\r\n\r\n')).toMatchObject({ kind: 'head', host: 'a.test' });
  });

  it('accepts a Host that agrees with the absolute-form authority, ignoring case and port', () => {
    expect(parse('GET http://A.test:8080/ HTTP/1.1\r\nHost: a.TEST\r\n\r\n')).toMatchObject({ kind: 'head', host: 'A.test' });
  });

  it('accepts HTTP/1.0 with a Host header', () => {
    expect(parse('GET / HTTP/1.0\r\nHost: a.test\r\n\r\n')).toMatchObject({ kind: 'head', version: 'HTTP/1.0', host: 'a.test' });
  });

  it('accepts any method token, and "*" for OPTIONS', () => {
    expect(parse('PROPFIND /d HTTP/1.1\r\nHost: a.test\r\n\r\n')).toMatchObject({ method: 'PROPFIND' });
    expect(parse('OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n')).toMatchObject({ kind: 'head', target: '*' });
  });

  it('is need-more until the blank line, then ignores the body and what follows', () => {
    const headText = 'POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\n';
    expectOnlyWhenComplete(headText, parse(headText));
    expect(parse(`${headText}hello GET / HTTP/1.1\r\nHost: other.test\r\n\r\n`)).toEqual(parse(headText));
  });
});

describe('parseHttpHead: not HTTP', () => {
  it('is not-http when the first byte cannot start a method token', () => {
    for (const first of [0x16, 0x00, 0x80, 0xff, 0x7f, 0x3a, 0x2f]) {
      expect(parseHttpHead(Uint8Array.of(first, 0x03, 0x01))).toEqual({ kind: 'not-http' });
    }
  });

  it('is need-more on no bytes', () => {
    expect(parseHttpHead(new Uint8Array(0))).toMatchObject({ kind: 'need-more' });
  });
});

describe('parseHttpHead: malformed', () => {
  it('refuses a request with no name: HTTP/1.1 or HTTP/1.0 without Host or absolute-form, or an empty Host', () => {
    expect(reason('GET / HTTP/1.1\r\nAccept: */*\r\n\r\n')).toBe('missing-host');
    expect(reason('GET / HTTP/1.0\r\n\r\n')).toBe('missing-host');
    expect(reason('GET / HTTP/1.1\r\nHost:\r\n\r\n')).toBe('missing-host');
  });

  it('refuses two Host headers, quoting the first, as soon as the second name is read', () => {
    const r = parse('GET / HTTP/1.1\r\nHost: a.test\r\nhost:');
    expect(r).toMatchObject({ kind: 'malformed', reason: 'duplicate-host' });
    expect(r.kind === 'malformed' && r.detail).toContain('"a.test"');
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n')).toBe('duplicate-host');
  });

  it('refuses a Host that disagrees with the absolute-form authority', () => {
    expect(reason('GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n')).toBe('host-mismatch');
    expect(reason('GET http://a.test/ HTTP/1.1\r\nHost: \r\n\r\n')).toBe('host-mismatch');
  });

  it('refuses userinfo in an absolute-form target, and "@" in a Host', () => {
    expect(reason('GET http://user@a.test/ HTTP/1.1\r\n\r\n')).toBe('bad-host');
    expect(reason('GET http://a.test\\@b.test/ HTTP/1.1\r\n\r\n')).toBe('bad-host');
    expect(reason('GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n')).toBe('bad-host');
  });

  it('refuses a Host or authority that is not host[:port]', () => {
    for (const h of ['a.test:http', 'a.test:99999', 'a b', '[::1', '[::1]x', 'a.test/x', ':80', 'caf\u00e9.test']) {
      expect(reason(`GET / HTTP/1.1\r\nHost: ${h}\r\n\r\n`), h).toBe('bad-host');
    }
    expect(reason('GET http:///p HTTP/1.1\r\n\r\n')).toBe('bad-host');
  });

  it('refuses whitespace before a colon', () => {
    expect(reason('GET / HTTP/1.1\r\nHost : a.test\r\n\r\n')).toBe('bad-header');
    expect(reason('GET / HTTP/1.1\r\nHost\t: a.test\r\n\r\n')).toBe('bad-header');
  });

  it('refuses obsolete line folding, and whitespace before the first header', () => {
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n 2\r\n\r\n')).toBe('obs-fold');
    expect(reason('GET / HTTP/1.1\r\n Host: a.test\r\n\r\n')).toBe('obs-fold');
  });

  it('refuses a bare CR or a bare LF anywhere in the head', () => {
    expect(reason('GET / HTTP/1.1\nHost: a.test\r\n\r\n')).toBe('bad-line-ending');
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\n\r\n')).toBe('bad-line-ending');
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\r\n\n')).toBe('bad-line-ending');
    expect(reason('GET / HTTP/1.1\r\nX: a\rb\r\nHost: a.test\r\n\r\n')).toBe('bad-line-ending');
  });

  it('refuses an empty header name and invalid token characters in names and methods', () => {
    expect(reason('GET / HTTP/1.1\r\n: x\r\nHost: a.test\r\n\r\n')).toBe('bad-header');
    expect(reason('GET / HTTP/1.1\r\nX(y): 1\r\nHost: a.test\r\n\r\n')).toBe('bad-header');
    expect(reason('GET / HTTP/1.1\r\nNo-Colon\r\nHost: a.test\r\n\r\n')).toBe('bad-header');
    // Not a token at all: not the shape of a request line, so not HTTP (judged by address).
    expect(reason('G(T / HTTP/1.1\r\nHost: a.test\r\n\r\n')).toBe('(not-http)');
    expect(reason('GET\t/ HTTP/1.1\r\nHost: a.test\r\n\r\n')).toBe('bad-request-line');
  });

  it('refuses control bytes in a header value', () => {
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\r\nX: a\u0000b\r\n\r\n')).toBe('bad-header');
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\u007f\r\n\r\n')).toBe('bad-header');
  });

  it('refuses CONNECT', () => {
    expect(reason('CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n')).toBe('unsupported-method');
  });

  it('refuses the HTTP/2 preface as soon as its request line has the shape of one', () => {
    expect(reason('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')).toBe('http2-preface');
    expect(reason('PRI * HTTP/')).toBe('http2-preface');
    expect(reason('PRI * HTT')).toBe('(need-more)');
  });

  it('refuses a request line that is not METHOD SP target SP HTTP/1.x', () => {
    const lines = [
      'GET / HTTP/2.0',
      'GET / HTTP/1.1 extra',
      'GET / http/1.1',
      'GET /  HTTP/1.1',
      'GET  / HTTP/1.1',
      'GET / HTTP/1.',
      'GET /\u00e9 HTTP/1.1',
      'GET a.test/ HTTP/1.1',
      'GET ftp://a.test/ HTTP/1.1',
      'GET http:a.test HTTP/1.1',
      'GET * HTTP/1.1',
    ];
    for (const l of lines) expect(reason(`${l}\r\nHost: a.test\r\n\r\n`), l).toBe('bad-request-line');
    // No version at all (HTTP/0.9's shape) is not an HTTP/1.x request: judged by address.
    for (const l of ['GET /', 'GET']) expect(reason(`${l}\r\nHost: a.test\r\n\r\n`), l).toBe('(not-http)');
  });

  it('refuses more than MAX_LEADING_EMPTY_LINES empty lines, and a bare LF among them', () => {
    expect(reason(`${'\r\n'.repeat(MAX_LEADING_EMPTY_LINES + 1)}GET / HTTP/1.1\r\nHost: a.test\r\n\r\n`)).toBe('bad-request-line');
    expect(reason('\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n')).toBe('bad-line-ending');
    expect(reason('\r\n\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n')).toBe('bad-line-ending');
  });

  it('decides from the bytes seen: a bad version is refused before the line ends', () => {
    expect(reason('GET / HTTP/2')).toBe('bad-request-line');
    expect(reason('GET / HTTP/')).toBe('(need-more)');
  });

  it('quotes the offending value in its detail', () => {
    const r = parse('GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n');
    expect(r.kind === 'malformed' && r.detail).toMatch(/"b\.test".*"a\.test"/);
  });
});

describe('parseHttpHead: the 16 KiB cap', () => {
  const withPadding = (total: number): string => {
    const base = 'GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: \r\n\r\n';
    return base.replace('X-Pad: ', `X-Pad: ${'p'.repeat(total - base.length)}`);
  };

  it('accepts a head that ends exactly at the cap', () => {
    const s = withPadding(MAX_HEAD_BYTES);
    expect(s.length).toBe(MAX_HEAD_BYTES);
    expect(parse(s)).toMatchObject({ kind: 'head', host: 'a.test' });
  });

  it('refuses a head a byte longer, once the cap has arrived, and never waits past it', () => {
    const s = withPadding(MAX_HEAD_BYTES + 1);
    expect(reason(s)).toBe('too-large');
    expect(reason(s.slice(0, MAX_HEAD_BYTES))).toBe('too-large');
    expect(reason(s.slice(0, MAX_HEAD_BYTES - 1))).toBe('(need-more)');
  });
});

describe('parseHttpHead: any token is a method (RFC 9110 §9.1)', () => {
  const TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  const token = fc
    .array(fc.constantFrom(...TCHARS.split('')), { minLength: 1, maxLength: 24 })
    .map((cs) => cs.join(''))
    .filter((m) => m !== 'CONNECT' && m !== 'PRI');

  it('reads the Host of a request with a generated token method, and sniff calls it HTTP', () => {
    fc.assert(
      fc.property(token, (method) => {
        const text = `${method} /x HTTP/1.1\r\nHost: blocked.test\r\n\r\n`;
        expect(parse(text)).toEqual({ kind: 'head', method, target: '/x', version: 'HTTP/1.1', host: 'blocked.test' });
        expect(sniff(enc.encode(text))).toBe('http');
      }),
      { numRuns: 500 },
    );
  });

  it('reads the examples: Subversion, WebDAV, caches, SSDP', () => {
    for (const m of ['MKACTIVITY', 'CHECKOUT', 'MERGE', 'BASELINE-CONTROL', 'PURGE', 'BAN', 'M-SEARCH', 'LINK']) {
      expect(parse(`${m} / HTTP/1.1\r\nHost: blocked.test\r\n\r\n`), m).toMatchObject({ kind: 'head', method: m, host: 'blocked.test' });
    }
  });
});

describe('parseHttpHead: leading empty lines (RFC 9112 §2.2)', () => {
  it('gives the same answer as without them, up to MAX_LEADING_EMPTY_LINES', () => {
    const h = 'GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n';
    for (let k = 1; k <= MAX_LEADING_EMPTY_LINES; k++) expect(parse(`${'\r\n'.repeat(k)}${h}`), String(k)).toEqual(parse(h));
    expect(parse(`\r\nPOST /a HTTP/1.0\r\nHost: x.test:81\r\n\r\n`)).toMatchObject({ kind: 'head', method: 'POST', host: 'x.test' });
  });

  it('is need-more through the empty lines and the request line, then decides', () => {
    expectOnlyWhenComplete('\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n', { kind: 'head', method: 'GET', target: '/', version: 'HTTP/1.1', host: 'a.test' });
  });

  it('keeps the strict grammar after them: obs-fold and two Hosts stay malformed', () => {
    expect(reason('\r\nGET / HTTP/1.1\r\nHost: a.test\r\n folded\r\n\r\n')).toBe('obs-fold');
    expect(reason('\r\nGET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n')).toBe('duplicate-host');
  });
});

describe('parseHttpHead: not HTTP versus bad HTTP', () => {
  it('is not-http for bytes without the shape of a request line', () => {
    for (const s of [
      'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n',
      'EHLO client.test\r\n',
      'PING\r\n',
      'GET /\r\n',
      ' GET / HTTP/1.1\r\n',
      'GET / FTP/1.1\r\n',
    ]) {
      expect(parse(s), JSON.stringify(s)).toEqual({ kind: 'not-http' });
    }
  });

  it('is malformed for bytes with the shape that break the grammar', () => {
    expect(reason('GET / HTTP/1.1\nHost: a.test\r\n\r\n')).toBe('bad-line-ending');
    expect(reason('GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n')).toBe('duplicate-host');
    expect(reason('GET / HTTP/2.0\r\n\r\n')).toBe('bad-request-line');
    expect(reason('GET\t/ HTTP/1.1\r\nHost: a.test\r\n\r\n')).toBe('bad-request-line');
  });
});

describe('requestShape resumed on a growing stream (ShapeProgress)', () => {
  // A client dripping its request line one byte per segment: the peek asks after every read, and
  // asked afresh each time the walk over a 16 KiB line cost the main thread seconds.
  it.each([
    ['a 16 KiB request target', `GET /${'a'.repeat(MAX_HEAD_BYTES - 5)}`],
    ['a 16 KiB method', 'G'.repeat(MAX_HEAD_BYTES)],
    ['spaces after the method', `GET${' '.repeat(MAX_HEAD_BYTES - 3)}`],
    ['a whole request line', `\r\n\nPOST /x${'y'.repeat(8000)} HTTP/1.1\r\n`],
  ])('looks at each byte of %s once over a one-byte drip, and answers as asked afresh', (_what, text) => {
    const b = Buffer.from(text, 'latin1');
    const p = shapeProgress();
    let last: ReturnType<typeof requestShape> = 'need-more';
    for (let n = 1; n <= b.length; n++) last = requestShape(b.subarray(0, n), p);
    expect(last).toEqual(requestShape(b));
    expect(p.examined).toBeLessThanOrEqual(b.length);
  });
});
