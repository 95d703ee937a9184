// PeekBuffer: the byte side of a peek. It must hand the parser every byte in order, keep every
// chunk for the upstream, stop at the cap, and ask the parser again only when the answer can
// change — so a client dripping bytes cannot make the daemon re-parse the buffer per byte.

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PeekBuffer } from '../../../src/net/peek-socket.ts';
import { anyStepper, httpStepper, PEEK_CAPS, tlsStep } from '../../../src/peek/peek-steps.ts';
import { MAX_HELLO_BYTES } from '../../../src/peek/tls-client-hello.ts';
import { buildHello, frame, handshake, helloBody } from '../../helpers/hello-builder.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const drip = <R>(pb: PeekBuffer<R>, bytes: Uint8Array) => {
  for (let i = 0; i < bytes.length; i++) {
    const r = pb.push(Buffer.from([bytes[i]!]));
    if (r !== null) return { r, at: i + 1 };
  }
  return { r: null, at: bytes.length };
};

describe('PeekBuffer', () => {
  it('finds the name in a hello dripped one byte at a time, at its last byte, with a handful of parses', () => {
    const hello = buildHello({ sni: ['drip.test'] }, { records: 3 });
    const pb = new PeekBuffer(tlsStep, MAX_HELLO_BYTES);
    const { r, at } = drip(pb, hello);
    expect(at).toBe(hello.length);
    expect(r).toMatchObject({ done: true, result: { kind: 'tls', result: { kind: 'hello', sni: 'drip.test' } } });
    expect(pb.parses).toBeLessThan(20);
    expect(Buffer.compare(pb.bytes(), Buffer.from(hello))).toBe(0);
  });

  it('refuses a hostile 16 KiB hello of 1000 records dripped byte by byte after a bounded number of parses', () => {
    const hostile = frame(handshake(helloBody({ padding: 12_000 })), { records: 1000 }).subarray(0, MAX_HELLO_BYTES);
    const pb = new PeekBuffer(tlsStep, MAX_HELLO_BYTES);
    const { r } = drip(pb, hostile);
    expect(r).toMatchObject({ done: true, result: { result: { kind: 'malformed', reason: 'too-large' } } });
    expect(pb.parses).toBeLessThanOrEqual(MAX_HELLO_BYTES / 1024 + 12);
  });

  it('parses an HTTP head only when a blank line may have come, or every 1 KiB', () => {
    const head = Buffer.from(`GET / HTTP/1.1\r\nHost: drip.test\r\n${'X-Pad: y\r\n'.repeat(500)}\r\n`);
    const step = httpStepper();
    const pb = new PeekBuffer(step, MAX_HELLO_BYTES);
    const { r, at } = drip(pb, head);
    expect(at).toBe(head.length);
    expect(r).toMatchObject({ done: true, result: { kind: 'http', result: { kind: 'head', host: 'drip.test' } } });
    expect(step.parses).toBeLessThan(head.length / 1024 + 5);
  });

  it('still refuses a bad line early, within 1 KiB of it', () => {
    const bad = Buffer.from(`GET / HTTP/1.1\r\nHost : drip.test\r\n${'X-Pad: y\r\n'.repeat(500)}`);
    const pb = new PeekBuffer(httpStepper(), MAX_HELLO_BYTES);
    const { r, at } = drip(pb, bad);
    expect(r).toMatchObject({ done: true, result: { kind: 'http', result: { kind: 'malformed' } } });
    expect(at).toBeLessThanOrEqual(1024 + 40);
  });

  // A client dripping its flight one byte per segment: each read is its own Buffer (a JavaScript
  // object of about 100 bytes for one byte of data), and a sandbox may hold 256 such peeks at once.
  it('keeps one copy of a dripped flight, not every chunk it was read in', async () => {
    const head = Buffer.from(`GET /${'a'.repeat(3000)}`);
    const pb = new PeekBuffer(anyStepper(), 16384);
    // Pushed in a function of its own: an async function's suspended frame keeps its registers,
    // and the loop's last chunk in one of them would outlive the await below.
    const drip = (): WeakRef<Buffer>[] => {
      const refs: WeakRef<Buffer>[] = [];
      for (let i = 0; i < head.length; i++) {
        const chunk = Buffer.alloc(1, head[i]);
        if (i > 0) refs.push(new WeakRef(chunk));
        expect(pb.push(chunk)).toBeNull();
      }
      return refs;
    };
    const chunks = drip();
    // A WeakRef's target lives until the end of the job that made it.
    await new Promise((r) => setImmediate(r));
    gc();
    expect(chunks.filter((c) => c.deref() !== undefined).length).toBe(0);
    expect(pb.bytes().equals(head)).toBe(true);
  });

  it('answers too-large when the cap fills before the parser is satisfied, keeping every byte', () => {
    const pb = new PeekBuffer(httpStepper(), 4096);
    const big = Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\n${'X: y\r\n'.repeat(2000)}`);
    let r: unknown = null;
    for (let i = 0; i < big.length && r === null; i += 100) r = pb.push(big.subarray(i, i + 100));
    expect(r).toBe('too-large');
    expect(pb.total).toBeGreaterThanOrEqual(4096);
  });

  it('sniffs on the tcp listener and hands the bytes to the right parser', () => {
    const pb = new PeekBuffer(anyStepper(), MAX_HELLO_BYTES);
    expect(pb.push(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'))).toMatchObject({ done: true, result: { kind: 'unknown' } });
    const http = new PeekBuffer(anyStepper(), MAX_HELLO_BYTES);
    expect(drip(http, Buffer.from('GET / HTTP/1.1\r\nHost: any.test\r\n\r\n')).r).toMatchObject({ result: { kind: 'http', result: { host: 'any.test' } } });
  });

  // The parser reads the first chunk itself while it is alone, and a copy once more come: any
  // cut of the same bytes into chunks gives the same answer and keeps every byte.
  it('answers the same for the bytes whole or cut anywhere into chunks, a first chunk past the cap included', () => {
    const hello = Buffer.from(buildHello({ sni: ['cut.test'] }, { records: 2 }));
    const big = Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\n${'X: y\r\n'.repeat(2000)}`);
    fc.assert(
      fc.property(fc.constantFrom(hello, big), fc.uniqueArray(fc.integer({ min: 1, max: 20_000 }), { maxLength: 4 }), (bytes, cuts) => {
        const run = (chunks: Buffer[]): { r: unknown; bytes: Buffer } => {
          const pb = new PeekBuffer(anyStepper(), 4096);
          let r: unknown = null;
          for (const c of chunks) if (r === null) r = pb.push(c);
          return { r, bytes: pb.bytes() };
        };
        const at = [0, ...cuts.filter((c) => c < bytes.length).sort((a, b) => a - b), bytes.length];
        const pieces = at.slice(1).map((end, i) => bytes.subarray(at[i], end));
        const whole = run([bytes]);
        const cut = run(pieces);
        expect(cut.r).toEqual(whole.r);
        expect(Buffer.compare(cut.bytes, bytes.subarray(0, cut.bytes.length))).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  // httpStepper skips a parse while less than 1 KiB came since the last one and no blank line
  // did: the last bytes before the cap, or before the peek ends, must still be parsed, or a bad
  // line in them is cut as too-large or timed out instead of refused as malformed.
  const badLine = (pad: number): Buffer => Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: ${'a'.repeat(pad)}\r\nBad Line\r\nX: ${'b'.repeat(2000)}`);
  const cutBefore = (b: Buffer): number => b.indexOf('Bad Line');

  it('answers at the cap as one read does: a bad line within 1 KiB of the cap is malformed, not too-large', () => {
    const b = badLine(15_600);
    const whole = new PeekBuffer(anyStepper(), PEEK_CAPS.any).push(b);
    expect(whole).toMatchObject({ done: true, result: { kind: 'http', result: { kind: 'malformed' } } });
    const pb = new PeekBuffer(anyStepper(), PEEK_CAPS.any);
    expect(pb.push(b.subarray(0, cutBefore(b)))).toBeNull();
    expect(pb.push(b.subarray(cutBefore(b)))).toEqual(whole);
  });

  it('settles on every byte when the peek ends: a bad line the parser was not asked about yet is malformed', () => {
    const b = badLine(2000).subarray(0, cutBefore(badLine(2000)) + 10);
    const whole = new PeekBuffer(anyStepper(), PEEK_CAPS.any).push(b);
    expect(whole).toMatchObject({ done: true, result: { kind: 'http', result: { kind: 'malformed' } } });
    const pb = new PeekBuffer(anyStepper(), PEEK_CAPS.any);
    expect(pb.push(b.subarray(0, cutBefore(b)))).toBeNull();
    expect(pb.push(b.subarray(cutBefore(b)))).toBeNull();
    expect(pb.settle()).toEqual(whole);
    // Bytes with no answer yet have none to settle on.
    expect(new PeekBuffer(anyStepper(), PEEK_CAPS.any).settle()).toBeNull();
    const partial = new PeekBuffer(anyStepper(), PEEK_CAPS.any);
    partial.push(Buffer.from('GET / HTTP/1.1\r\nHost: a.test\r\n'));
    expect(partial.settle()).toBeNull();
  });

  it('answers the same at the real cap for the bytes whole or cut anywhere, then settled', () => {
    const inputs = [badLine(15_600), badLine(2000), badLine(15_000), Buffer.from(`GET / HTTP/1.1\r\nHost: a.test\r\nX: ${'a'.repeat(17_000)}`)];
    fc.assert(
      fc.property(fc.constantFrom(...inputs), fc.uniqueArray(fc.integer({ min: 1, max: 18_000 }), { maxLength: 4 }), (bytes, cuts) => {
        const run = (chunks: Buffer[]): unknown => {
          const pb = new PeekBuffer(anyStepper(), PEEK_CAPS.any);
          let r: unknown = null;
          for (const c of chunks) if (r === null) r = pb.push(c);
          return r ?? pb.settle();
        };
        const at = [0, ...cuts.filter((c) => c < bytes.length).sort((a, b) => a - b), bytes.length];
        expect(run(at.slice(1).map((end, i) => bytes.subarray(at[i], end)))).toEqual(run([bytes]));
      }),
      { numRuns: 200 },
    );
  });
});
