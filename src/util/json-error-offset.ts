// Where a text stops being JSON: V8's JSON.parse names the position of some errors ("Expected
// ',' or ']' after array element in JSON at position 4") but not of an unexpected token, which it
// words `Unexpected token 'x', "...text..." is not valid JSON`, quoting the text around it.

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);
const SIMPLE_ESCAPES = '"\\/bfnrt';
const HEX = /^[0-9a-fA-F]$/;
const isDigit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';

/**
 * The UTF-16 offset of the first character at which `text` cannot continue as a JSON text (RFC
 * 8259 §2-§7), or `text.length` when it ends early; null when it is JSON. One pass, no values
 * built, nesting on an explicit stack (any depth). A leading byte order mark is an error here, as
 * it is to JSON.parse.
 */
export function jsonErrorOffset(text: string): number | null {
  const n = text.length;
  const open: number[] = []; // the closing character of each container open, `}` or `]`
  let i = 0;
  let state: 'value' | 'key' | 'after' = 'value';
  const skipWs = (): void => {
    while (i < n && WS.has(text.charCodeAt(i))) i++;
  };
  /** Past a string starting at i (a `"`), or false with i at the fault. */
  const string = (): boolean => {
    i++;
    for (;;) {
      if (i >= n) return false;
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return true;
      }
      if (c < 0x20) return false;
      if (c === 0x5c) {
        // At the character that breaks the escape, as V8 places it.
        i++;
        if (text[i] === 'u') {
          for (let k = 0; k < 4; k++) if (!HEX.test(text[++i] ?? '')) return false;
        } else if (i >= n || !SIMPLE_ESCAPES.includes(text[i]!)) return false;
        i++;
      } else i++;
    }
  };
  /** Past a number starting at i (RFC 8259 §6), or false with i at the character that breaks it. */
  const number = (): boolean => {
    if (text[i] === '-') i++;
    if (text[i] === '0') i++;
    else if (isDigit(text[i])) while (isDigit(text[i])) i++;
    else return false;
    if (text[i] === '.') {
      i++;
      if (!isDigit(text[i])) return false;
      while (isDigit(text[i])) i++;
    }
    if (text[i] === 'e' || text[i] === 'E') {
      i++;
      if (text[i] === '+' || text[i] === '-') i++;
      if (!isDigit(text[i])) return false;
      while (isDigit(text[i])) i++;
    }
    return true;
  };
  for (;;) {
    skipWs();
    if (state === 'value') {
      const c = text[i];
      if (c === '{' || c === '[') {
        i++;
        skipWs();
        if (text[i] === (c === '{' ? '}' : ']')) {
          i++;
          state = 'after';
        } else {
          open.push(c === '{' ? 0x7d : 0x5d);
          state = c === '{' ? 'key' : 'value';
        }
        continue;
      }
      if (c === '"') {
        if (!string()) return Math.min(i, n);
      } else if (c === 't' || c === 'f' || c === 'n') {
        const literal = c === 't' ? 'true' : c === 'f' ? 'false' : 'null';
        let k = 0;
        while (k < literal.length && text[i + k] === literal[k]) k++;
        i += k;
        if (k < literal.length) return i;
      } else if (!number()) return i;
      state = 'after';
    } else if (state === 'key') {
      if (text[i] !== '"' || !string()) return Math.min(i, n);
      skipWs();
      if (text[i] !== ':') return i;
      i++;
      state = 'value';
    } else {
      const close = open.at(-1);
      if (close === undefined) return i < n ? i : null;
      const c = text.charCodeAt(i);
      if (c === 0x2c) {
        i++;
        state = close === 0x7d ? 'key' : 'value';
      } else if (c === close) {
        i++;
        open.pop();
      } else return i;
    }
  }
}
