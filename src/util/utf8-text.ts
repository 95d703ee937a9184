// Bytes read as UTF-8 text, or refused where they stop being UTF-8: Buffer#toString('utf8')
// and readFile(file, 'utf8') put U+FFFD in place of bytes that are not, without a word, so a
// Latin-1 or UTF-16 file was read as some other text than its writer's.

import { isUtf8 } from 'node:buffer';
import { lineColumn } from './text-position.ts';

export type Utf8Text =
  | { readonly ok: true; readonly text: string }
  | {
      readonly ok: false;
      /** The first byte that no UTF-8 character can start or continue with, in hex (`0xFF`). */
      readonly byte: string;
      /** Its offset in bytes. */
      readonly offset: number;
      /** Where it is in the text before it, 1-based, as an editor counts. */
      readonly position: { readonly line: number; readonly column: number };
    };

/**
 * `bytes` as text when they are UTF-8 (RFC 3629: no overlong form, surrogate or code point past
 * U+10FFFF), which JSON exchanged between systems must be (RFC 8259 §8.1) and which every YAML
 * file egressd reads is (YAML 1.2 §5.2 allows UTF-16 and UTF-32 too: refused here, by their first
 * byte that is not UTF-8). A byte order mark is kept, for the reader to drop.
 */
export function utf8Text(bytes: Uint8Array): Utf8Text {
  if (isUtf8(bytes)) return { ok: true, text: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8') };
  const offset = invalidOffset(bytes);
  const before = Buffer.from(bytes.buffer, bytes.byteOffset, offset).toString('utf8');
  return {
    ok: false,
    byte: `0x${(bytes[offset] ?? 0).toString(16).toUpperCase().padStart(2, '0')}`,
    offset,
    position: lineColumn(before, before.length),
  };
}

/** The offset of the first byte at which `bytes` stop being UTF-8 (RFC 3629 §4's table): a character's lead byte when it is cut short. */
function invalidOffset(bytes: Uint8Array): number {
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    const more = b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;
    if (more === 0) return i;
    // The second byte's range is narrower after these leads: no overlong form, no surrogate, nothing past U+10FFFF.
    const lo = b === 0xe0 ? 0xa0 : b === 0xf0 ? 0x90 : 0x80;
    const hi = b === 0xed ? 0x9f : b === 0xf4 ? 0x8f : 0xbf;
    const second = bytes[i + 1];
    if (second === undefined || second < lo || second > hi) return i;
    for (let k = 2; k <= more; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
    }
    i += more + 1;
  }
  return n;
}
