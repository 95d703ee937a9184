import { describe, expect, it } from 'vitest';
import { ByteReader, OVERRUN, SHORT, latin1 } from '../../../src/peek/byte-reader.ts';

describe('ByteReader', () => {
  it('reads big-endian integers and moves past them', () => {
    const r = new ByteReader(Uint8Array.of(1, 2, 3, 4, 5, 6));
    expect(r.u8()).toBe(1);
    expect(r.u16()).toBe(0x0203);
    expect(r.u24()).toBe(0x040506);
    expect(r.remaining).toBe(0);
    expect(r.offset).toBe(6);
  });

  it('answers SHORT for bytes that may still arrive and OVERRUN past the declared end', () => {
    const bytes = Uint8Array.of(1, 2, 3);
    // Declared 5 bytes, 3 here.
    const r = new ByteReader(bytes, 0, 5);
    expect(r.complete).toBe(false);
    expect(r.u16()).toBe(0x0102);
    expect(r.u16()).toBe(SHORT);
    expect(r.u24()).toBe(SHORT);
    expect(r.u8()).toBe(3);
    expect(r.skip(3)).toBe(OVERRUN);
    expect(r.offset).toBe(3);
  });

  it('does not move on a failed read', () => {
    const r = new ByteReader(Uint8Array.of(9), 0, 4);
    expect(r.take(2)).toBe(SHORT);
    expect(r.offset).toBe(0);
    expect(r.u8()).toBe(9);
  });

  it('opens a window by its declared length alone, before the bytes arrive', () => {
    const r = new ByteReader(Uint8Array.of(0xaa, 0xbb), 0, 10);
    const w = r.window(6);
    expect(w).not.toBeNull();
    expect(r.offset).toBe(6);
    expect(r.u8()).toBe(SHORT);
    expect(w!.u16()).toBe(0xaabb);
    expect(w!.u8()).toBe(SHORT);
    expect(w!.skip(5)).toBe(OVERRUN);
  });

  it('refuses a window that crosses its parent end', () => {
    const r = new ByteReader(new Uint8Array(10), 2, 6);
    expect(r.window(5)).toBeNull();
    expect(r.window(-1)).toBeNull();
    expect(r.window(4)?.remaining).toBe(4);
  });

  it('keeps reads inside a window even when the underlying bytes go on', () => {
    const r = new ByteReader(Uint8Array.of(1, 2, 3, 4));
    const w = r.window(2)!;
    expect(w.u16()).toBe(0x0102);
    expect(w.u8()).toBe(OVERRUN);
    expect(r.u16()).toBe(0x0304);
  });

  it('takes a view of the bytes', () => {
    const bytes = Uint8Array.of(5, 6, 7);
    const t = new ByteReader(bytes).take(2);
    expect(t).toEqual(Uint8Array.of(5, 6));
  });
});

describe('latin1', () => {
  it('maps each byte to one character, losslessly, including NUL and non-ASCII', () => {
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
    const s = latin1(bytes);
    expect(s.length).toBe(256);
    for (let i = 0; i < 256; i++) expect(s.charCodeAt(i)).toBe(i);
  });

  it('reads the range asked of a view into larger bytes (a Buffer or a plain Uint8Array)', () => {
    const all = Uint8Array.from({ length: 64 }, (_, i) => 0x40 + i);
    for (const view of [all.subarray(8, 40), Buffer.from(all.buffer, 8, 32)]) {
      expect(latin1(view, 2, 5)).toBe(String.fromCharCode(0x4a, 0x4b, 0x4c));
      expect(latin1(view)).toBe(String.fromCharCode(...all.subarray(8, 40)));
      expect(latin1(view, 3, 3)).toBe('');
    }
  });

  it('decodes long inputs in slices', () => {
    const bytes = new Uint8Array(10_000).fill(0x61);
    expect(latin1(bytes, 1, 9_999)).toBe('a'.repeat(9_998));
  });
});
