import { describe, expect, it } from 'vitest';
import { MAX_HELLO_BYTES, parseClientHello, type TlsPeek } from '../../../src/peek/tls-client-hello.ts';
import {
  GREASE,
  buildHello,
  concat,
  ext,
  frame,
  handshake,
  helloBody,
  record,
  sslv2Hello,
  u16,
  u8,
  vec16,
  type HelloSpec,
} from '../../helpers/hello-builder.ts';

const hello = (spec?: HelloSpec, framing?: Parameters<typeof buildHello>[1]): TlsPeek => parseClientHello(buildHello(spec, framing));
const reasonOf = (r: TlsPeek): string => (r.kind === 'malformed' ? r.reason : `(${r.kind})`);

/** Every strict prefix must be need-more, the whole must give `expected`. */
function expectOnlyWhenComplete(bytes: Uint8Array, expected: TlsPeek): void {
  for (let i = 0; i < bytes.length; i++) {
    const r = parseClientHello(bytes.subarray(0, i));
    if (r.kind !== 'need-more') expect.fail(`prefix of ${i}/${bytes.length} bytes gave ${JSON.stringify(r)}`);
  }
  expect(parseClientHello(bytes)).toEqual(expected);
}

describe('parseClientHello: what a hello says', () => {
  it('reads the host_name, ALPN list and offered versions', () => {
    expect(hello()).toEqual({ kind: 'hello', sni: 'example.test', alpn: ['h2', 'http/1.1'], ech: false, versions: [0x0304, 0x0303], sslv2: false });
  });

  it('returns the host_name exactly as sent, case and trailing dot included', () => {
    expect(hello({ sni: ['Example.TEST.'] })).toMatchObject({ kind: 'hello', sni: 'Example.TEST.' });
  });

  it('keeps non-ASCII bytes of a host_name one character per byte', () => {
    expect(hello({ sni: [Uint8Array.of(0x61, 0xc3, 0xbc, 0x00)] })).toMatchObject({ sni: 'a\u00c3\u00bc\u0000' });
  });

  it('gives sni null for a hello without server_name', () => {
    expect(hello({ sni: null })).toMatchObject({ kind: 'hello', sni: null });
  });

  it('gives an empty ALPN list when the extension is absent', () => {
    expect(hello({ alpn: null })).toMatchObject({ kind: 'hello', alpn: [] });
  });

  it('reports encrypted_client_hello (0xfe0d) by its presence', () => {
    expect(hello({ ech: true })).toMatchObject({ kind: 'hello', ech: true, sni: 'example.test' });
  });

  it('takes the versions from supported_versions, else from legacy_version', () => {
    expect(hello({ versions: [0x0304] })).toMatchObject({ versions: [0x0304] });
    expect(hello({ versions: null, legacyVersion: 0x0302 })).toMatchObject({ versions: [0x0302] });
  });

  it('accepts a TLS 1.3-only hello: legacy_version 0x0303 with supported_versions [0x0304]', () => {
    expect(hello({ legacyVersion: 0x0303, versions: [0x0304] })).toMatchObject({ kind: 'hello', versions: [0x0304] });
  });

  it('accepts a hello with no extensions block at all (TLS 1.2 and before)', () => {
    expect(hello({ omitExtensions: true, legacyVersion: 0x0301 })).toEqual({
      kind: 'hello',
      sni: null,
      alpn: [],
      ech: false,
      versions: [0x0301],
      sslv2: false,
    });
  });

  it('accepts GREASE everywhere and leaves GREASE out of the versions', () => {
    const r = hello({ grease: true, extra: [ext(GREASE[7], u8(1))] });
    expect(r).toEqual({ kind: 'hello', sni: 'example.test', alpn: ['h2', 'http/1.1'], ech: false, versions: [0x0304, 0x0303], sslv2: false });
  });

  it('accepts a padding extension, however long', () => {
    expect(hello({ padding: 0 })).toMatchObject({ kind: 'hello', sni: 'example.test' });
    expect(hello({ padding: 4000 })).toMatchObject({ kind: 'hello', sni: 'example.test' });
  });

  it('reads the same hello whatever the extension order', () => {
    const expected = hello({ ech: true, grease: true });
    expect(hello({ ech: true, grease: true, order: 'reversed' })).toEqual(expected);
    for (let seed = 1; seed <= 20; seed++) expect(hello({ ech: true, grease: true, order: { seed } })).toEqual(expected);
  });

  it('accepts every record version 0x0300–0x0303', () => {
    for (const v of [0x0300, 0x0301, 0x0302, 0x0303]) {
      expect(hello({}, { versions: [v] })).toMatchObject({ kind: 'hello', sni: 'example.test' });
      expect(hello({}, { records: 3, versions: [0x0301, v] })).toMatchObject({ kind: 'hello', sni: 'example.test' });
    }
  });

  it('accepts a post-quantum-sized hello (1.7 KB) in one record', () => {
    const bytes = buildHello({ keyShare: 1216, grease: true, ech: true });
    expect(bytes.length).toBeGreaterThan(1400);
    expect(parseClientHello(bytes)).toMatchObject({ kind: 'hello', sni: 'example.test', ech: true });
  });
});

describe('parseClientHello: reassembly (RFC 8446 §5.1)', () => {
  const spec: HelloSpec = { keyShare: 1216, grease: true, padding: 100 };
  const expected = hello(spec);

  it('reassembles a handshake message spread over several records', () => {
    for (const records of [2, 3, 7, 16]) expect(hello(spec, { records })).toEqual(expected);
  });

  it('reassembles a handshake header split over one-byte records', () => {
    const message = handshake(helloBody(spec));
    const sizes = [1, 1, 1, 1, 1, message.length - 5];
    expect(parseClientHello(frame(message, { records: sizes }))).toEqual(expected);
  });

  it('reassembles a handshake message cut into one record per byte while it fits the cap', () => {
    const message = handshake(helloBody({ alpn: null }));
    const bytes = frame(message, { records: message.length });
    expect(bytes.length).toBe(message.length * 6);
    expect(parseClientHello(bytes)).toEqual(hello({ alpn: null }));
  });

  it('answers need-more for every prefix and the hello only once complete, however it is framed', () => {
    expectOnlyWhenComplete(buildHello(spec), expected);
    expectOnlyWhenComplete(buildHello(spec, { records: 5, versions: [0x0301, 0x0303] }), expected);
  });

  it('returns the hello as soon as it is complete and ignores every byte after it', () => {
    const bytes = buildHello(spec);
    const ccs = record(20, 0x0303, u8(1));
    const data = record(23, 0x0303, new Uint8Array(40).fill(7));
    expect(parseClientHello(concat(bytes, ccs, data))).toEqual(expected);
    expect(parseClientHello(concat(bytes, Uint8Array.of(0xff, 0, 0)))).toEqual(expected);
    // The rest of the record that ends the hello: never waited for, never read.
    const message = handshake(helloBody(spec));
    const longer = record(22, 0x0301, concat(message, Uint8Array.of(2, 0, 0, 9)));
    expect(parseClientHello(longer.subarray(0, 5 + message.length))).toEqual(expected);
    expect(parseClientHello(longer)).toEqual(expected);
  });
});

describe('parseClientHello: the SSLv2-format hello (RFC 5246 Appendix E.2)', () => {
  it('is a hello with no name', () => {
    expect(parseClientHello(sslv2Hello())).toEqual({ kind: 'hello', sni: null, alpn: [], ech: false, versions: [0x0301], sslv2: true });
    expect(parseClientHello(sslv2Hello({ version: 0x0002, sessionId: 16, challenge: 32 }))).toMatchObject({ sslv2: true, versions: [0x0002] });
  });

  it('is need-more until complete', () => {
    expectOnlyWhenComplete(sslv2Hello(), parseClientHello(sslv2Hello()));
  });

  it('is malformed when its lengths do not add up', () => {
    expect(reasonOf(parseClientHello(sslv2Hello({ challenge: 8 })))).toBe('bad-handshake');
    expect(reasonOf(parseClientHello(sslv2Hello({ specs: 20 })))).toBe('bad-handshake');
    expect(reasonOf(parseClientHello(sslv2Hello({ sessionId: 5 })))).toBe('bad-handshake');
    const h = sslv2Hello();
    expect(reasonOf(parseClientHello(sslv2Hello({ declared: h.length - 2 + 3 })))).toBe('trailing-bytes');
    expect(reasonOf(parseClientHello(sslv2Hello({ declared: h.length - 2 - 3 })))).toBe('bad-handshake');
  });

  it('is not TLS with another message type or version', () => {
    expect(parseClientHello(Uint8Array.of(0x80, 0x2e, 0x02, 0x03, 0x01))).toEqual({ kind: 'not-tls' });
    expect(parseClientHello(Uint8Array.of(0x80, 0x2e, 0x01, 0x04, 0x01))).toEqual({ kind: 'not-tls' });
    expect(parseClientHello(Uint8Array.of(0x80, 0x2e, 0x01, 0x00, 0x03))).toEqual({ kind: 'not-tls' });
  });

  it('is too-large when its length passes the cap', () => {
    const bytes = Uint8Array.of(0xff, 0xff, 0x01, 0x03, 0x01);
    expect(reasonOf(parseClientHello(bytes))).toBe('too-large');
  });
});

describe('parseClientHello: not TLS', () => {
  it('is need-more on no bytes and on a lone handshake byte', () => {
    expect(parseClientHello(new Uint8Array(0))).toMatchObject({ kind: 'need-more' });
    expect(parseClientHello(Uint8Array.of(0x16))).toMatchObject({ kind: 'need-more' });
  });

  it('is not-tls when the first record is an alert, application data or ChangeCipherSpec', () => {
    for (const type of [0x14, 0x15, 0x17]) {
      expect(parseClientHello(concat(record(type, 0x0303, u8(1)), buildHello()))).toEqual({ kind: 'not-tls' });
    }
  });

  it('is not-tls for a handshake byte followed by a non-TLS version, and for text', () => {
    expect(parseClientHello(Uint8Array.of(0x16, 0x02, 0x00))).toEqual({ kind: 'not-tls' });
    expect(parseClientHello(new TextEncoder().encode('GET / HTTP/1.1\r\n'))).toEqual({ kind: 'not-tls' });
    expect(parseClientHello(Uint8Array.of(0))).toEqual({ kind: 'not-tls' });
  });
});

describe('parseClientHello: malformed', () => {
  it('refuses two server_name extensions, quoting the first name', () => {
    const r = hello({ sni: ['a.test'], sniExtensions: 2 });
    expect(r).toMatchObject({ kind: 'malformed', reason: 'duplicate-sni' });
    expect(r.kind === 'malformed' && r.detail).toContain('"a.test"');
  });

  it('refuses two host_names in one server_name list', () => {
    expect(reasonOf(hello({ sni: ['a.test', 'b.test'] }))).toBe('duplicate-sni');
  });

  it('refuses an empty host_name and an empty server_name list', () => {
    expect(reasonOf(hello({ sni: [''] }))).toBe('empty-sni');
    expect(reasonOf(hello({ sni: [] }))).toBe('empty-sni');
  });

  it('refuses a server_name entry of a type other than host_name', () => {
    expect(reasonOf(hello({ serverNames: [{ type: 1, name: 'a.test' }] }))).toBe('bad-extension');
  });

  it('refuses a record of another content type before the hello is complete', () => {
    const message = handshake(helloBody());
    const half = message.length >> 1;
    for (const type of [0x14, 0x15, 0x17, 0x18]) {
      const bytes = concat(record(22, 0x0301, message.subarray(0, half)), record(type, 0x0303, u8(1)), record(22, 0x0303, message.subarray(half)));
      expect(reasonOf(parseClientHello(bytes))).toBe('unexpected-record');
      // Decided from the stray record's first byte.
      expect(reasonOf(parseClientHello(bytes.subarray(0, 5 + half + 1)))).toBe('unexpected-record');
    }
  });

  it('refuses a zero-length handshake record, first or later', () => {
    expect(reasonOf(parseClientHello(record(22, 0x0301, new Uint8Array(0))))).toBe('bad-record');
    const message = handshake(helloBody());
    const bytes = concat(record(22, 0x0301, message.subarray(0, 10)), record(22, 0x0301, new Uint8Array(0)), record(22, 0x0301, message.subarray(10)));
    expect(reasonOf(parseClientHello(bytes))).toBe('bad-record');
  });

  it('refuses a continuation record that is not TLS 1.x', () => {
    const message = handshake(helloBody());
    const bytes = concat(record(22, 0x0301, message.subarray(0, 10)), record(22, 0x0201, message.subarray(10)));
    expect(reasonOf(parseClientHello(bytes))).toBe('bad-record');
  });

  it('refuses a first handshake message that is not a ClientHello', () => {
    expect(reasonOf(parseClientHello(frame(handshake(helloBody(), 2))))).toBe('not-client-hello');
  });

  it('refuses every inner length that overruns its parent', () => {
    const cases: [HelloSpec, string][] = [
      [{ lengths: { sessionId: 200 }, omitExtensions: true }, 'bad-handshake'],
      [{ lengths: { cipherSuites: 0xfffe } }, 'bad-handshake'],
      [{ lengths: { compression: 0xff }, omitExtensions: true }, 'bad-handshake'],
      [{ lengths: { extensions: 0xffff } }, 'bad-handshake'],
      [{ lengths: { serverNameList: 0x7fff } }, 'bad-extension'],
      [{ lengths: { hostName: 0x7fff } }, 'bad-extension'],
      [{ lengths: { alpnList: 0x7fff } }, 'bad-extension'],
    ];
    for (const [spec, reason] of cases) expect(reasonOf(hello(spec)), JSON.stringify(spec)).toBe(reason);
  });

  it('refuses an extension whose length overruns the extensions block', () => {
    const block = concat(u16(0x1234), u16(100));
    const body = concat(helloBody({ omitExtensions: true }), vec16(block));
    expect(reasonOf(parseClientHello(frame(handshake(body))))).toBe('bad-extension');
  });

  it('refuses fields the RFC bounds: a 33-byte session id, odd or empty cipher suites, no compression', () => {
    const r = hello({ sessionIdLength: 33 });
    expect(r).toMatchObject({ kind: 'malformed', reason: 'bad-handshake' });
    expect(r.kind === 'malformed' && r.detail).toContain('33');
    expect(reasonOf(hello({ cipherSuites: [], grease: false }))).toBe('bad-handshake');
    expect(reasonOf(hello({ lengths: { cipherSuites: 13 } }))).toBe('bad-handshake');
    expect(reasonOf(hello({ compression: [] }))).toBe('bad-handshake');
    expect(reasonOf(hello({ legacyVersion: 0x0202 }))).toBe('bad-handshake');
  });

  it('refuses inner ALPN and supported_versions errors', () => {
    expect(reasonOf(hello({ alpn: [] }))).toBe('bad-extension');
    expect(reasonOf(hello({ alpn: ['h2', ''] }))).toBe('bad-extension');
    expect(reasonOf(hello({ versions: null, extra: [ext(0x002b, Uint8Array.of(3, 3, 4, 3))] }))).toBe('bad-extension');
    expect(reasonOf(hello({ versions: null, extra: [ext(0x002b, Uint8Array.of(2, 3, 4, 9))] }))).toBe('bad-extension');
  });

  it('refuses bytes left over inside an extension it reads', () => {
    expect(reasonOf(hello({ sni: null, extra: [ext(0, concat(vec16(concat(u8(0), vec16(new TextEncoder().encode('a.test')))), u8(0)))] }))).toBe(
      'bad-extension',
    );
  });

  it('refuses an extension type sent twice', () => {
    expect(reasonOf(hello({ extra: [ext(0x0017)] }))).toBe('duplicate-extension');
  });

  it('refuses an extension after pre_shared_key, which must be last (RFC 8446 §4.2.11)', () => {
    expect(reasonOf(hello({ extra: [ext(0x0029, new Uint8Array(10)), ext(0x0015, new Uint8Array(3))] }))).toBe('bad-extension');
    expect(hello({ extra: [ext(0x0029, new Uint8Array(10))] })).toMatchObject({ kind: 'hello' });
  });

  it('refuses bytes after the extensions inside the handshake length', () => {
    expect(reasonOf(hello({ trailing: 1 }))).toBe('trailing-bytes');
    expect(reasonOf(hello({ trailing: 3, omitExtensions: true }))).toBe('bad-handshake');
  });

  it('refuses a bad extension among the first 64 before the hello is complete, and any later one once it is', () => {
    const early = buildHello({ sni: null, extra: [ext(0x0017), ...Array.from({ length: 100 }, (_, i) => ext(0x3000 + i))] });
    // Cut just after the duplicate's header: the verdict does not wait for the other 100.
    const dupEnd = early.length - 100 * 4;
    expect(reasonOf(parseClientHello(early.subarray(0, dupEnd)))).toBe('duplicate-extension');

    const late = buildHello({ sni: null, extra: [...Array.from({ length: 100 }, (_, i) => ext(0x3000 + i)), ext(0x3001), ext(0x0015, new Uint8Array(50))] });
    expect(parseClientHello(late.subarray(0, late.length - 10))).toMatchObject({ kind: 'need-more' });
    expect(reasonOf(parseClientHello(late))).toBe('duplicate-extension');
  });

  it('tells each hello its own extensions across any number of parses (the seen-types table wraps)', () => {
    const distinct = buildHello({ extra: [ext(0x3000), ext(0x3001)] });
    const twice = buildHello({ extra: [ext(0x3000), ext(0x3000)] });
    // Past 65,535 parses the table's generation wraps: no type seen before counts as seen again.
    for (let i = 0; i < 0x10000 + 3; i++) {
      if (parseClientHello(distinct).kind !== 'hello') throw new Error(`parse ${i} took a distinct hello for a duplicate`);
    }
    expect(reasonOf(parseClientHello(twice))).toBe('duplicate-extension');
    expect(parseClientHello(distinct)).toMatchObject({ kind: 'hello' });
  });

  it('reads a whole hello of thousands of extensions', () => {
    const many = buildHello({ extra: Array.from({ length: 3000 }, (_, i) => ext(0x3000 + i)) });
    expect(parseClientHello(many)).toMatchObject({ kind: 'hello', sni: 'example.test' });
  });

  it('refuses an inner overrun from the declared lengths, before the rest arrives', () => {
    const bytes = buildHello({ lengths: { extensions: 0xffff } });
    const fixedEnd = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 7 * 2 + 1 + 1 + 2;
    expect(reasonOf(parseClientHello(bytes.subarray(0, fixedEnd)))).toBe('bad-handshake');
    expect(parseClientHello(bytes.subarray(0, fixedEnd - 1))).toMatchObject({ kind: 'need-more' });
  });
});

describe('parseClientHello: the 16 KiB cap', () => {
  /** A hello of exactly `wire` bytes in one record, grown with padding. */
  const sized = (wire: number): Uint8Array => {
    const base = buildHello({ padding: 0 }).length;
    return buildHello({ padding: wire - base });
  };

  it('accepts a hello that ends exactly at the cap and refuses one a byte longer', () => {
    expect(sized(MAX_HELLO_BYTES).length).toBe(MAX_HELLO_BYTES);
    expect(parseClientHello(sized(MAX_HELLO_BYTES))).toMatchObject({ kind: 'hello' });
    expect(reasonOf(parseClientHello(sized(MAX_HELLO_BYTES + 1)))).toBe('too-large');
  });

  it('refuses a declared handshake length past the cap from its first nine bytes', () => {
    const bytes = concat(Uint8Array.of(22, 3, 1, 0x40, 0x00), u8(1), Uint8Array.of(0x00, 0x40, 0x00));
    expect(reasonOf(parseClientHello(bytes))).toBe('too-large');
    expect(reasonOf(parseClientHello(concat(Uint8Array.of(22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff))))).toBe('too-large');
  });

  it('refuses a record longer than 2^14 bytes', () => {
    expect(reasonOf(parseClientHello(Uint8Array.of(22, 3, 1, 0x40, 0x01)))).toBe('too-large');
  });

  it('refuses a hello whose record headers push its end past the cap', () => {
    // The message alone fits in 16 KiB, but cut into 50-byte records it cannot end in time.
    const message = handshake(helloBody({ padding: 15_000 }));
    const bytes = frame(message, { records: Math.ceil(message.length / 50) });
    expect(message.length).toBeLessThan(MAX_HELLO_BYTES - 5);
    const r = parseClientHello(bytes);
    expect(reasonOf(r)).toBe('too-large');
    // …and says so before the cap's worth of bytes has arrived.
    expect(reasonOf(parseClientHello(bytes.subarray(0, 15_000)))).toBe('too-large');
  });
});

describe('parseClientHello: the length hint for callers fed one byte at a time', () => {
  it('names the stream length at which a one-record hello can first be whole', () => {
    const bytes = buildHello({ sni: ['hint.test'] }, {});
    for (const cut of [9, 100, bytes.length - 1]) {
      expect(parseClientHello(bytes.subarray(0, cut))).toEqual({ kind: 'need-more', atLeast: bytes.length });
    }
    expect(parseClientHello(bytes)).toMatchObject({ kind: 'hello', sni: 'hint.test' });
  });

  it('names the end an SSLv2-format hello declares, once its header is in', () => {
    const bytes = sslv2Hello({ specs: 3 * 180 });
    for (const cut of [5, 6, 100, bytes.length - 1]) {
      expect(parseClientHello(bytes.subarray(0, cut))).toEqual({ kind: 'need-more', atLeast: bytes.length });
    }
    expect(parseClientHello(bytes)).toMatchObject({ kind: 'hello', sslv2: true });
  });

  it('never names a length past the point where the answer changes', () => {
    const bytes = buildHello({ sni: ['hint.test'] }, { records: 4 });
    for (let cut = 1; cut < bytes.length; cut++) {
      const r = parseClientHello(bytes.subarray(0, cut));
      if (r.kind === 'need-more' && r.atLeast !== undefined) expect(r.atLeast).toBeLessThanOrEqual(bytes.length);
    }
  });
});
