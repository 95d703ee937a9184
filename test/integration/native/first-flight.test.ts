// native/first_flight.c against hostile bytes and against the TypeScript parsers it must agree
// with. Both build native/test/first_flight_fuzz.c under AddressSanitizer and UBSan:
// - the fuzzer itself, seeded, for a few seconds: generated and mutated flights, the recorded
//   hellos (test/fixtures/hellos, ../shared/clienthellos when present) and the builder's, at every
//   prefix and split, each in a heap block of exactly its length;
// - a differential: for every input, the first prefix first_flight.c calls whole (the loop's one
//   report) against the first prefix at which the parsers answer (sniff, then parseClientHello or
//   parseHttpHead, the `tcp` listener's steps). A report before the parsers can answer costs a
//   round trip; a report after they could have answered holds the client until a deadline.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, it, onTestFinished } from 'vitest';
import { C_FLAGS, CC } from '../../../scripts/native-flags.ts';
import { parseHttpHead, type HttpPeek } from '../../../src/peek/http-head.ts';
import { sniff } from '../../../src/peek/sniff.ts';
import { MAX_HELLO_BYTES, parseClientHello, type TlsPeek } from '../../../src/peek/tls-client-hello.ts';
import { buildHello, concat, handshake, helloBody, record, sslv2Hello } from '../../helpers/hello-builder.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const NATIVE = join(ROOT, 'native');
const SANITIZE = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer', '-g'];

function build(): { dir: string; bin: string } {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-first-flight-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'first_flight_fuzz');
  const sources = ['test/first_flight_fuzz.c', 'first_flight.c'].map((f) => join(NATIVE, f));
  execFileSync(CC, [...C_FLAGS, ...SANITIZE, `-I${NATIVE}`, ...sources, '-o', bin], { stdio: 'pipe' });
  return { dir, bin };
}

function recordedHellos(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const dir of [join(ROOT, 'test/fixtures/hellos'), resolve(ROOT, '../shared/clienthellos')]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).filter((f) => f.endsWith('.bin'))) out.push(new Uint8Array(readFileSync(join(dir, f))));
  }
  return out;
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Hellos from the builder: small, post-quantum sized, near the cap, in records of every kind of size. */
function builtHellos(): Uint8Array[] {
  const big = { keyShare: 1216, padding: 200 };
  const nearCap = { padding: MAX_HELLO_BYTES - 5 - 4 - helloBody({ padding: 0 }).length };
  return [
    buildHello(),
    buildHello({ grease: true, ech: true }, { records: 2 }),
    buildHello(big, { records: 3 }),
    buildHello(big, { records: [1, 1, 1, 1, 2000] }),
    buildHello({}, { records: [3, 5000] }),
    buildHello({ omitExtensions: true, sni: null }),
    buildHello({ trailing: 3 }),
    buildHello({ lengths: { extensions: 9 } }),
    buildHello(nearCap),
    buildHello({ padding: nearCap.padding + 1 }),
    buildHello({ padding: 4000 }, { records: 4 }),
    concat(buildHello({}, { records: [10, 1000] }).subarray(0, 20), record(0x17, 0x0303, new Uint8Array(10))),
    frame2(handshake(helloBody(), 1, 0xffffff)),
    frame2(handshake(helloBody(), 2)),
    sslv2Hello(),
    sslv2Hello({ declared: 0x7fff }),
  ];
}

function frame2(message: Uint8Array): Uint8Array {
  return concat(record(22, 0x0301, message.subarray(0, 7)), record(22, 0x0301, message.subarray(7)));
}

const HEADS = [
  'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: a.test\r\n\r\nbody',
  '\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n',
  'GET http://a.test/ HTTP/1.0\r\n\r\n',
  'BREW /pot HTTP/1.1\r\nHost: a.test\r\nX: y\r\n\r\n',
  'GET / HTTP/1.1\nHost: a.test\n\n',
  'GET / HTTP/1.1\r\nHost: a.test\rX\r\n\r\n',
  'GET / HTTP/1.1\r\n Host: a.test\r\n\r\n',
  'CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n',
  'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  'GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n',
  `GET /${'a'.repeat(16_000)} HTTP/1.1\r\nHost: a.test\r\n\r\n`,
  'SSH-2.0-OpenSSH_9.2\r\n',
  'ping\r\n',
  '\x17\x03\x03\x00\x05hello',
  '\x16\x02\x00',
].map(text);

/** Seeded mutations (flips, edge values, cuts, a slice repeated) of the inputs above. */
function mutants(seeds: readonly Uint8Array[], count: number): Uint8Array[] {
  let s = 0x2545f491;
  const rnd = (n: number): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % Math.max(1, n);
  };
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    let b: Uint8Array = Uint8Array.from(seeds[rnd(seeds.length)]!);
    for (let k = 1 + rnd(3); k > 0; k--) {
      const at = rnd(b.length);
      switch (rnd(4)) {
        case 0:
          b[at] = [0, 1, 3, 0x0a, 0x0d, 0x16, 0x20, 0x7f, 0x80, 0xff][rnd(10)]!;
          break;
        case 1:
          b[at] = b[at]! ^ (1 << rnd(8));
          break;
        case 2:
          b = b.subarray(0, rnd(b.length + 1));
          break;
        default:
          b = concat(b.subarray(0, at), b.subarray(at, at + rnd(64)), b.subarray(at));
      }
    }
    out.push(b);
  }
  return out;
}

type Verdict = TlsPeek | HttpPeek | { kind: 'unknown' } | { kind: 'too-large' };

/** The `tcp` listener's answer to the first k bytes (peek-steps.ts anyStepper, stateless), or null: need more. */
function answer(b: Uint8Array, k: number): Verdict | null {
  const p = b.subarray(0, k);
  const s = sniff(p);
  let r: Verdict | null = null;
  if (s === 'unknown') r = { kind: 'unknown' };
  else if (s === 'tls') r = parseClientHello(p);
  else if (s === 'http') r = parseHttpHead(p);
  if (r !== null && r.kind !== 'need-more') return r;
  // PeekBuffer: at the cap, need-more is too-large.
  return k >= MAX_HELLO_BYTES ? { kind: 'too-large' } : null;
}

it.skipIf(process.platform !== 'linux')(
  'first_flight.c survives the seeded fuzzer under AddressSanitizer and UBSan (every prefix, random splits, exact-size buffers, caps at and one past the flight)',
  () => {
    const { dir, bin } = build();
    const files = [...recordedHellos(), ...builtHellos()].map((b, i) => {
      const f = join(dir, `corpus-${i}.bin`);
      writeFileSync(f, b);
      return f;
    });
    // 60 files at most (the fuzzer's corpus table holds 64).
    const r = spawnSync(bin, ['1', '3000', '8', ...files.slice(0, 60)], { encoding: 'utf8', timeout: 60_000 });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toContain('all checks passed');
  },
  90_000,
);

it.skipIf(process.platform !== 'linux')(
  'first_flight.c reports a first flight exactly when the parsers can answer it, never on a prefix they cannot',
  () => {
    const { bin } = build();
    const seeds = [...recordedHellos(), ...builtHellos(), ...HEADS];
    const inputs = [...seeds, ...mutants(seeds, 400)];
    const framed = concat(
      ...inputs.flatMap((b) => {
        const len = new Uint8Array(4);
        new DataView(len.buffer).setUint32(0, b.length, true);
        return [len, b];
      }),
    );
    const r = spawnSync(bin, ['--first-complete'], { input: framed, encoding: 'utf8', timeout: 60_000, maxBuffer: 1 << 20 });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    const native = r.stdout.trim().split('\n').map(Number);
    expect(native).toHaveLength(inputs.length);

    const early: string[] = [];
    const late: string[] = [];
    const onPrefix: string[] = [];
    inputs.forEach((b, i) => {
      const c = native[i]!;
      let ts = -1;
      let verdict: Verdict | null = null;
      for (let k = 0; k <= b.length && ts < 0; k++) {
        verdict = answer(b, k);
        if (verdict !== null) ts = k;
      }
      const what = `input ${i} (${b.length} bytes, starts ${Buffer.from(b.subarray(0, 6)).toString('hex')}): C at ${c}, TS at ${ts} (${verdict?.kind ?? 'need-more'})`;
      const sslv2 = b.length > 0 && (b[0]! & 0x80) !== 0;
      // SSLv2-format: first_flight.c leaves the framing to the parser (its own atLeast).
      if (c >= 0 && (ts < 0 || c < ts) && !sslv2) early.push(what);
      // Later than the parsers: only where they refuse a malformed flight before its end (the
      // framing does not judge the grammar); the verdict is then the same, made at the deadline.
      if (ts >= 0 && (c < 0 || c > ts) && verdict?.kind !== 'malformed') late.push(what);
      // The verdict on the bytes of the report is the verdict on the whole flight.
      if (c >= 0 && c <= b.length) {
        const at = answer(b, c);
        const whole = answer(b, b.length);
        if (at !== null && whole !== null && JSON.stringify(at) !== JSON.stringify(whole))
          onPrefix.push(`${what}: ${at.kind} on the report, ${whole.kind} on the whole`);
      }
    });
    expect({ early, late, onPrefix }).toEqual({ early: [], late: [], onPrefix: [] });
  },
  90_000,
);
