// Text that someone else wrote, printed to an operator's terminal: what the admin API (or a
// proxy, a load balancer, anything answering at its address) sent back.

/**
 * Characters a terminal acts on or that change how the text around them reads, rather than
 * showing: the C0 and C1 controls and DEL (Unicode Cc: ESC starts ECMA-48 sequences that clear the
 * screen, retitle the window or move the cursor; U+009B is CSI on its own; CR rewrites the line),
 * the format characters (Cf: bidi overrides and isolates reorder what follows, as in "Trojan
 * Source", CVE-2021-42574; zero-width characters hide), and lone surrogates (Cs).
 */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Cs}]/u;
/** Line breaks and other whitespace, folded to one space: the text stays on its line. */
const SPACE = /[\s\u0085]+/gu;

/** `\xHH` for a character up to U+00FF, `\uHHHH` otherwise, `\u{H...}` above U+FFFF. */
function escaped(c: string): string {
  const cp = c.codePointAt(0)!;
  const hex = cp.toString(16).toUpperCase();
  if (cp <= 0xff) return `\\x${hex.padStart(2, '0')}`;
  return cp <= 0xffff ? `\\u${hex.padStart(4, '0')}` : `\\u{${hex}}`;
}

/**
 * `text` as one printable line: whitespace runs (line breaks included) become one space, every
 * character a terminal would act on (see UNSAFE) is written as its escape (`\x1B`, `\u202E`), and
 * the result is cut at `max` UTF-16 code units with "..." (never inside a character or an escape).
 * What reaches the terminal is then only what the reader sees.
 */
export function terminalLine(text: string, max = 500): string {
  // By code point (a surrogate pair is one character), not by grapheme: each control is escaped alone.
  const pieces: string[] = [];
  for (const c of text.replace(SPACE, ' ').trim()) pieces.push(UNSAFE.test(c) ? escaped(c) : c);
  if (pieces.reduce((n, p) => n + p.length, 0) <= max) return pieces.join('');
  let out = '';
  for (const p of pieces) {
    if (out.length + p.length > max - 3) break;
    out += p;
  }
  return `${out}...`;
}

/**
 * A JSON value serialized on one line with no character a terminal would act on: JSON.stringify
 * escapes C0 controls already (RFC 8259 §7 requires it); DEL, C1 controls, format characters and
 * line separators are valid raw in a JSON string, so they are escaped here as `\uHHHH` (each
 * UTF-16 unit), which any JSON parser reads back as the same string.
 */
export function terminalJson(value: unknown): string {
  return (JSON.stringify(value) ?? 'null').replace(/[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029]/gu, (c) =>
    [...Array(c.length).keys()].map((i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join(''),
  );
}
