// Where an offset into a text is, as editors and compilers say it: `file:line:column`.

/**
 * The 1-based line and column of UTF-16 offset `offset` in `text` (clamped to its length). A line
 * ends at "\n", "\r\n" or a lone "\r", as the yaml package counts them; a column counts UTF-16
 * code units, as V8's JSON.parse positions and the yaml package's `linePos` do.
 */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  const end = Math.max(0, Math.min(offset, text.length));
  let line = 1;
  let start = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a || (c === 0x0d && text.charCodeAt(i + 1) !== 0x0a)) {
      line++;
      start = i + 1;
    }
  }
  return { line, column: end - start + 1 };
}
