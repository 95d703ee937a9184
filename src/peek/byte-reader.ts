// Bounds-checked reads over a client's first bytes (BoringSSL's CBS idea): every length a
// peer declares opens a window that the reads inside it can never leave.
//
// A peeking parser sees a prefix of the stream, so a failed read has two meanings that must
// not be confused: the bytes have not arrived yet (SHORT — ask for more), or the read would
// cross the end its enclosing length declared (OVERRUN — no byte that arrives can fix it).
// Reads return the value (never negative) or one of those two codes; nothing here throws.

/** The bytes have not arrived yet: more may make the read succeed. */
export const SHORT = -1;
/** The read crosses the end its enclosing length declared: the input is malformed. */
export const OVERRUN = -2;

export class ByteReader {
  readonly #bytes: Uint8Array;
  #pos: number;
  /** The end the enclosing length declared. */
  readonly #end: number;
  /** The end of what has arrived inside this window: never past #end. */
  readonly #avail: number;

  /**
   * A window over `bytes[start, end)` of which the bytes before `arrived` are here. `end` may
   * lie past them: a declared length whose bytes are still on their way.
   */
  constructor(bytes: Uint8Array, start = 0, end: number = bytes.length, arrived: number = bytes.length) {
    this.#bytes = bytes;
    this.#pos = start;
    this.#end = end;
    this.#avail = Math.max(start, Math.min(end, arrived, bytes.length));
  }

  /** Offset of the next read in the underlying bytes. */
  get offset(): number {
    return this.#pos;
  }

  /** Declared bytes left in this window, whether or not they have arrived. */
  get remaining(): number {
    return this.#end - this.#pos;
  }

  /** Whether every declared byte of this window has arrived. */
  get complete(): boolean {
    return this.#avail === this.#end;
  }

  #check(n: number): number {
    if (this.#pos + n > this.#end) return OVERRUN;
    if (this.#pos + n > this.#avail) return SHORT;
    return 0;
  }

  u8(): number {
    const c = this.#check(1);
    if (c !== 0) return c;
    return this.#bytes[this.#pos++]!;
  }

  u16(): number {
    const c = this.#check(2);
    if (c !== 0) return c;
    const b = this.#bytes;
    const p = this.#pos;
    this.#pos = p + 2;
    return (b[p]! << 8) | b[p + 1]!;
  }

  u24(): number {
    const c = this.#check(3);
    if (c !== 0) return c;
    const b = this.#bytes;
    const p = this.#pos;
    this.#pos = p + 3;
    return (b[p]! << 16) | (b[p + 1]! << 8) | b[p + 2]!;
  }

  /** Skips `n` bytes: 0, or SHORT / OVERRUN (and then does not move). */
  skip(n: number): number {
    const c = this.#check(n);
    if (c !== 0) return c;
    this.#pos += n;
    return 0;
  }

  /** The next `n` bytes as a view (no copy), or SHORT / OVERRUN. */
  take(n: number): Uint8Array | number {
    const c = this.#check(n);
    if (c !== 0) return c;
    const p = this.#pos;
    this.#pos = p + n;
    return this.#bytes.subarray(p, p + n);
  }

  /**
   * A child window over the next `n` declared bytes, moving past them even when they have not
   * all arrived (reads here after it are then SHORT). Null when `n` crosses this window's end:
   * that is decided by the declared lengths alone, before any of the bytes arrive.
   */
  window(n: number): ByteReader | null {
    if (n < 0 || this.#pos + n > this.#end) return null;
    const start = this.#pos;
    this.#pos = start + n;
    return new ByteReader(this.#bytes, start, start + n, this.#avail);
  }
}

/**
 * Bytes as text, one UTF-16 code unit per byte (ISO-8859-1). Lossless: a non-ASCII byte stays
 * visible to the name normalizer instead of being merged into U+FFFD by a UTF-8 decoder.
 * (TextDecoder('latin1') is windows-1252 per the WHATWG Encoding Standard, so not used.)
 */
export function latin1(bytes: Uint8Array, start = 0, end: number = bytes.length): string {
  // Node's latin1 decoder makes the string in one step, without a view and an argument list
  // per call (issue 12: names and ALPN protocols are read per connection); any byte view will do.
  if (bufferLatin1 !== null && start >= 0 && start <= end && end <= bytes.length) return bufferLatin1.call(bytes, start, end);
  let s = '';
  // fromCharCode.apply takes its arguments on the stack: feed it bounded slices.
  for (let i = start; i < end; i += 4096) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(end, i + 4096)) as unknown as number[]);
  }
  return s;
}

/** Buffer's own latin1 decoder (Node), or null elsewhere (the parsers run on plain bytes too). */
const bufferLatin1: ((this: Uint8Array, start: number, end: number) => string) | null = (() => {
  const f = (globalThis as { Buffer?: { prototype?: { latin1Slice?: unknown } } }).Buffer?.prototype?.latin1Slice;
  return typeof f === 'function' ? (f as (this: Uint8Array, start: number, end: number) => string) : null;
})();
