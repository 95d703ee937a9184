// Microbenchmark of the peeking parsers: µs per parsed ClientHello (a 517-byte classic hello
// and a 1.7 KB post-quantum one, whole, re-framed, and fed one byte at a time — the worst a
// drip-feeding client can make the data path do), per HTTP request head, per sniff, and the
// total re-parsing cost of a hostile 16 KiB input dripped one byte per read.
//
//   node bench/parsers.ts
//
// Each case runs for a fixed time budget after a warm-up, ~5 s in all.

import { parseClientHello } from '../src/peek/tls-client-hello.ts';
import { parseHttpHead } from '../src/peek/http-head.ts';
import { sniff } from '../src/peek/sniff.ts';
import { MAX_HELLO_BYTES } from '../src/peek/tls-client-hello.ts';
import { buildHello, frame, handshake, helloBody } from '../test/helpers/hello-builder.ts';
import { PeekBuffer } from '../src/net/peek-socket.ts';
import { httpStepper, tlsStep } from '../src/peek/peek-steps.ts';

const WARMUP_MS = 100;
const BUDGET_MS = 300;

/** A hello of exactly `size` bytes in one record, grown with padding (then framed as asked). */
function helloOfSize(size: number, pq: boolean, records = 1): Uint8Array {
  const spec = { grease: true, ech: pq, keyShare: pq ? 1216 : 32 };
  const base = buildHello({ ...spec, padding: 0 }).length;
  if (base > size) throw new Error(`A base hello of ${base} bytes is already larger than ${size}`);
  return buildHello({ ...spec, padding: size - base }, { records });
}

/** Every prefix, as a client sending one byte per segment makes the data path parse. */
function byteByByte(parse: (b: Uint8Array) => { kind: string }, bytes: Uint8Array): () => number {
  return () => {
    let n = 0;
    for (let i = 1; i <= bytes.length; i++) n += parse(bytes.subarray(0, i)).kind.length;
    return n;
  };
}

/**
 * The same drip through the data path's PeekBuffer, which asks the parser again only when its
 * answer can change (the TLS length hint, a blank line, or every 1 KiB).
 */
function dataPathDrip(makeStep: () => ConstructorParameters<typeof PeekBuffer<unknown>>[0], bytes: Uint8Array): () => number {
  const chunks = Array.from(bytes, (b) => Buffer.from([b]));
  return () => {
    const pb = new PeekBuffer(makeStep(), MAX_HELLO_BYTES);
    // The data path stops at the first answer (a hello, or a refusal).
    for (const c of chunks) if (pb.push(c) !== null) break;
    return pb.parses;
  };
}

interface Row {
  readonly name: string;
  readonly bytes: number;
  readonly usPerOp: number;
  readonly ops: number;
}

function measure(name: string, bytes: number, fn: () => number): Row {
  let sink = 0;
  let warmOps = 0;
  const warmStart = performance.now();
  // At least one call, however slow; bounded by the warm-up time otherwise.
  do {
    sink += fn();
    warmOps++;
  } while (performance.now() - warmStart < WARMUP_MS);
  const estimateUs = ((performance.now() - warmStart) * 1000) / warmOps;
  // Read the clock about every 50 µs of work, so reading it stays off the profile.
  const batch = Math.max(1, Math.min(4096, Math.ceil(50 / estimateUs)));
  let ops = 0;
  const start = performance.now();
  let now = start;
  while (now - start < BUDGET_MS) {
    for (let i = 0; i < batch; i++) sink += fn();
    ops += batch;
    now = performance.now();
  }
  if (sink === -1) console.log('unreachable');
  return { name, bytes, ops, usPerOp: ((now - start) * 1000) / ops };
}

const small = helloOfSize(517, false);
const pq = helloOfSize(1700, true);
const pqFramed = helloOfSize(1700, true, 5);
const head = new TextEncoder().encode(
  'GET /v1/models?limit=20 HTTP/1.1\r\nHost: api.example.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nAuthorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789\r\nConnection: keep-alive\r\n\r\n',
);

for (const [label, b] of [
  ['517-byte hello', small],
  ['1.7 KB hello', pq],
  ['1.7 KB hello in 5 records', pqFramed],
] as const) {
  const r = parseClientHello(b);
  if (r.kind !== 'hello') throw new Error(`The ${label} does not parse: ${JSON.stringify(r)}`);
}
if (parseHttpHead(head).kind !== 'head') throw new Error('The HTTP head does not parse');

// Hostile inputs at the cap: the most re-parsing work a client dripping one byte per read can
// cause before the verdict (every call re-walks the records / lines that have arrived).
const hostileTls = frame(handshake(helloBody({ padding: 12_000 })), { records: 1000 }).subarray(0, MAX_HELLO_BYTES);
const hostileHttp = new TextEncoder().encode(`GET / HTTP/1.1\r\nHost: a.test\r\n${'X: y\r\n'.repeat(2700)}\r\n`);

const rows: Row[] = [
  measure('TLS hello, whole', small.length, () => parseClientHello(small).kind.length),
  measure('TLS hello, byte by byte (all prefixes)', small.length, byteByByte(parseClientHello, small)),
  measure('TLS PQ hello, whole', pq.length, () => parseClientHello(pq).kind.length),
  measure('TLS PQ hello, 5 records, whole', pqFramed.length, () => parseClientHello(pqFramed).kind.length),
  measure('TLS PQ hello, byte by byte (all prefixes)', pq.length, byteByByte(parseClientHello, pq)),
  measure('HTTP head, whole', head.length, () => parseHttpHead(head).kind.length),
  measure('HTTP head, byte by byte (all prefixes)', head.length, byteByByte(parseHttpHead, head)),
  measure('sniff, TLS hello', small.length, () => sniff(small).length),
  measure('hostile: hello in 1000 records, byte by byte', hostileTls.length, byteByByte(parseClientHello, hostileTls)),
  measure('hostile: head of 2700 headers, byte by byte', hostileHttp.length, byteByByte(parseHttpHead, hostileHttp)),
  measure(
    'hostile hello, byte by byte via PeekBuffer',
    hostileTls.length,
    dataPathDrip(() => tlsStep, hostileTls),
  ),
  measure(
    'hostile head, byte by byte via PeekBuffer',
    hostileHttp.length,
    dataPathDrip(() => httpStepper(), hostileHttp),
  ),
  measure(
    'PQ hello, byte by byte via PeekBuffer',
    pq.length,
    dataPathDrip(() => tlsStep, pq),
  ),
];

const width = Math.max(...rows.map((r) => r.name.length));
console.log(`${'case'.padEnd(width)}  bytes       µs/op   µs/byte        ops`);
for (const r of rows) {
  console.log(
    `${r.name.padEnd(width)}  ${String(r.bytes).padStart(5)}  ${r.usPerOp.toFixed(r.usPerOp < 10 ? 3 : 1).padStart(10)}  ${(r.usPerOp / r.bytes).toFixed(4).padStart(8)}  ${String(r.ops).padStart(9)}`,
  );
}
const ratio = (a: string, b: string): string => {
  const x = rows.find((r) => r.name === a)!;
  const y = rows.find((r) => r.name === b)!;
  return `${(x.usPerOp / y.usPerOp).toFixed(0)}x`;
};
console.log(
  `\nre-parse on every byte / PeekBuffer, same run: hostile hello ${ratio('hostile: hello in 1000 records, byte by byte', 'hostile hello, byte by byte via PeekBuffer')}, hostile head ${ratio('hostile: head of 2700 headers, byte by byte', 'hostile head, byte by byte via PeekBuffer')}, PQ hello ${ratio('TLS PQ hello, byte by byte (all prefixes)', 'PQ hello, byte by byte via PeekBuffer')}`,
);
console.log(`\nnode ${process.version}, ${process.arch}; ${BUDGET_MS} ms per case after ${WARMUP_MS} ms of warm-up`);
