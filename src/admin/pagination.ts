// Pages of the API's lists: `?limit=N&cursor=C` on every list route. Entries are ordered by id
// (code-unit order, stable) and a cursor is the last id of the page it ended, so a walk from the
// first page to the last returns every entry that existed throughout exactly once, whatever was
// added or removed between pages (keyset pagination: an offset would skip or repeat entries
// when an earlier one is removed or added). The cursor is opaque to clients (base64url of a
// small JSON) and names its list, so a cursor of another list is refused.

import { ApiError } from '../errors.ts';
import { quote } from '../util/fields.ts';
import { ID, PAGE_LIMIT } from '../schema/constants.ts';

export interface Page<T> {
  readonly items: T[];
  /** The cursor of the next page, or null when this page is the last. */
  readonly next: string | null;
}

const encode = (list: string, after: string): string => Buffer.from(JSON.stringify({ l: list, a: after })).toString('base64url');

function decode(list: string, cursor: string): string {
  const bad = (): ApiError => new ApiError(400, 'invalid_request', `Query "cursor" is not a cursor this list gave out: ${quote(cursor)}`, 'cursor');
  if (!/^[A-Za-z0-9_-]{1,400}$/.test(cursor)) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  const o = v as { l?: unknown; a?: unknown } | null;
  if (typeof o !== 'object' || o === null || o.l !== list || typeof o.a !== 'string' || !ID.test(o.a)) throw bad();
  // Byte for byte what encode gives out: decoded leniently, a key given twice (JSON.parse takes
  // the last), other key orders, blanks and base64url's unused bits each made another cursor of
  // the same page, and one that was never given out passed as this list's.
  if (encode(list, o.a) !== cursor) throw bad();
  return o.a;
}

/** The `limit` and `cursor` of a list request; any other query parameter, one given twice, or a bad value, is a 400 naming it. */
export function pageQuery(url: string | undefined, list: string): { limit: number; after: string | null } {
  const q = new URL(url ?? '/', 'http://x').searchParams;
  const seen = new Set<string>();
  for (const k of q.keys()) {
    if (k !== 'limit' && k !== 'cursor') throw new ApiError(400, 'invalid_request', `Unknown query parameter ${quote(k)}; known are limit, cursor`, k);
    // `?limit=1&limit=1000` has no one meaning (servers differ on first or last): say so.
    if (seen.has(k)) throw new ApiError(400, 'invalid_request', `Query parameter ${quote(k)} is given more than once`, k);
    seen.add(k);
  }
  const rawLimit = q.get('limit');
  let limit: number = PAGE_LIMIT.default;
  if (rawLimit !== null) {
    if (!/^\d{1,7}$/.test(rawLimit) || Number(rawLimit) < 1 || Number(rawLimit) > PAGE_LIMIT.max) {
      throw new ApiError(400, 'invalid_request', `Query "limit" must be an integer from 1 to ${PAGE_LIMIT.max}, got ${quote(rawLimit)}`, 'limit');
    }
    limit = Number(rawLimit);
  }
  const cursor = q.get('cursor');
  return { limit, after: cursor === null ? null : decode(list, cursor) };
}

/** One page of `sorted` (ascending by id): the entries after `after`, at most `limit`. */
export function pageOf<T extends { readonly id: string }>(sorted: readonly T[], list: string, q: { limit: number; after: string | null }): Page<T> {
  let lo = 0;
  if (q.after !== null) {
    // The first entry whose id sorts after the cursor's: binary search, the list is sorted.
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]!.id <= q.after) lo = mid + 1;
      else hi = mid;
    }
  }
  const items = sorted.slice(lo, lo + q.limit);
  const more = lo + q.limit < sorted.length;
  return { items, next: more && items.length > 0 ? encode(list, items[items.length - 1]!.id) : null };
}
