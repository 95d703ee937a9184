// The conditional request headers of the API's writes (RFC 9110 §13.1.1 If-Match, §13.1.2
// If-None-Match), read into the control plane's Preconditions. A header that is not `*` or a
// list of entity tags is a 400 naming it.

import type { IncomingMessage } from 'node:http';
import type { Preconditions } from '../control/control-plane.ts';
import { ApiError } from '../errors.ts';
import { quote } from '../util/fields.ts';

// RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text.
// etagc includes ",": the list (§5.6.1, empty elements allowed) is read tag by tag, never split
// on commas. Each match: optional whitespace, one tag, optional whitespace, then "," or the end.
const LIST_ITEM = /[ \t]*(?:((?:W\/)?"[\x21\x23-\x7e\x80-\xff]*")[ \t]*)?(?:,|$)/y;

function tags(req: IncomingMessage, name: 'if-match' | 'if-none-match', weak: boolean): '*' | string[] | undefined {
  const raw = req.headers[name];
  if (raw === undefined) return undefined;
  if (raw.trim() === '*') return '*';
  const out: string[] = [];
  LIST_ITEM.lastIndex = 0;
  while (LIST_ITEM.lastIndex < raw.length) {
    const m = LIST_ITEM.exec(raw);
    if (m === null || m[0] === '') {
      const field = name === 'if-match' ? 'If-Match' : 'If-None-Match';
      throw new ApiError(400, 'invalid_request', `Header ${field} must be "*" or entity tags such as "\\"12-ab\\"", got ${quote(raw)}`, field);
    }
    const t = m[1];
    // If-Match compares strongly: a weak tag never matches (kept as sent). If-None-Match compares
    // weakly: W/"x" matches "x".
    if (t !== undefined) out.push(weak ? t.replace(/^W\//, '') : t);
  }
  return out;
}

/** The preconditions a write request carries, or undefined when it carries none. */
export function preconditionsOf(req: IncomingMessage): Preconditions | undefined {
  const ifMatch = tags(req, 'if-match', false);
  const ifNoneMatch = tags(req, 'if-none-match', true);
  if (ifMatch === undefined && ifNoneMatch === undefined) return undefined;
  return { ...(ifMatch !== undefined ? { ifMatch } : {}), ...(ifNoneMatch !== undefined ? { ifNoneMatch } : {}) };
}
