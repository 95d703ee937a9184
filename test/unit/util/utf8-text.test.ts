import { describe, expect, it } from 'vitest';
import { utf8Text } from '../../../src/util/utf8-text.ts';

const bytes = (...parts: (string | number[])[]): Uint8Array =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));

describe('utf8Text', () => {
  it('reads UTF-8, a byte order mark kept', () => {
    expect(utf8Text(bytes('a: bücher.test\n'))).toEqual({ ok: true, text: 'a: bücher.test\n' });
    expect(utf8Text(bytes([0xef, 0xbb, 0xbf], 'a: 1'))).toEqual({ ok: true, text: '\ufeffa: 1' });
  });

  it.each([
    ['Latin-1 ü on line 2', bytes('a: 1\nb: b', [0xfc], 'cher\n'), '0xFC', 9, { line: 2, column: 5 }],
    ['a UTF-16LE byte order mark', bytes([0xff, 0xfe, 0x61, 0x00]), '0xFF', 0, { line: 1, column: 1 }],
    ['an overlong "/"', bytes('x', [0xc0, 0xaf]), '0xC0', 1, { line: 1, column: 2 }],
    ['a surrogate', bytes('é', [0xed, 0xa0, 0x80]), '0xED', 2, { line: 1, column: 2 }],
    ['a code point past U+10FFFF', bytes([0xf4, 0x90, 0x80, 0x80]), '0xF4', 0, { line: 1, column: 1 }],
    ['a lone continuation byte', bytes('ab', [0x80]), '0x80', 2, { line: 1, column: 3 }],
    ['a character cut short by another', bytes([0xe2, 0x82], 'x'), '0xE2', 0, { line: 1, column: 1 }],
  ])('refuses %s at its first byte that is not UTF-8', (_what, b, byte, offset, position) => {
    expect(utf8Text(b)).toEqual({ ok: false, byte, offset, position });
  });

  it('refuses text that ends inside a character, at the character', () => {
    expect(utf8Text(bytes('ab', [0xe2, 0x82]))).toEqual({ ok: false, byte: '0xE2', offset: 2, position: { line: 1, column: 3 } });
  });
});
