// What an admin token may be: one word of visible ASCII. The daemon takes the token an API call
// presents from `Authorization: Bearer <token>` as one run of non-space characters, and a header
// carries visible ASCII unchanged (RFC 9110 §5.5: other bytes are obs-text, read as Latin-1 by
// node:http), so a token holding a space, a line break or another character could never be
// presented: the API refused every call with 401, and nothing said why.

/**
 * Why `token` cannot be an admin token, or null when it can: empty, or holding a character
 * outside visible ASCII (U+0021 to U+007E; RFC 6750 §2.1's b64token is narrower, and the daemon
 * accepts this much). The reason names the character by code point and its UTF-16 offset, never
 * the token's text: it is a secret.
 */
export function bearerTokenProblem(token: string): string | null {
  if (token === '') return 'it is empty';
  for (let i = 0; i < token.length; i++) {
    const c = token.codePointAt(i)!;
    if (c >= 0x21 && c <= 0x7e) continue;
    return `it holds ${characterName(c)} at offset ${i}; a token is one word of visible ASCII (U+0021 to U+007E), which is what the Authorization field carries`;
  }
  return null;
}

function characterName(c: number): string {
  const code = `U+${c.toString(16).toUpperCase().padStart(4, '0')}`;
  if (c === 0x0a || c === 0x0d) return `a line break (${code})`;
  if (c === 0x20 || c === 0x09) return `a blank (${code})`;
  if (c === 0xfeff) return `a byte order mark (${code})`;
  return code;
}

/**
 * The token a text holds (a token file's, or EGRESSD_ADMIN_TOKEN's): the text without the one line
 * break a text file ends with ("\n" or "\r\n"), which must then be a token (bearerTokenProblem).
 * A variable takes that line break too: a Kubernetes Secret made `--from-file` keeps the file's
 * last line break, and a variable set from it ends with one; refused, every node's egressd
 * stopped at its next restart. Anything else is refused rather than trimmed to something the text
 * does not say. Returns the token or the reason.
 */
export function tokenText(text: string): { ok: true; token: string } | { ok: false; reason: string } {
  const token = text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
  const problem = bearerTokenProblem(token);
  return problem === null ? { ok: true, token } : { ok: false, reason: problem };
}

/**
 * The most bytes a token file may hold. Node's HTTP server takes at most 16 KiB of header fields
 * (--max-http-header-size), so a longer token could never be presented; read whole, a token file
 * naming /dev/zero or a mistaken 1 GiB file held the CLI's memory until it died.
 */
export const TOKEN_FILE_MAX_BYTES = 16 * 1024;
