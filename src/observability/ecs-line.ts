// A log line declared as a table of ECS fields (docs/logs.md): each field once, with its dotted
// name, type, meaning and how it is read from the record the line is about. The line is built
// from the table as nested objects (`{ source: { ip } }`, which ECS takes as equal to the dotted
// `source.ip`), absent fields left out, and docs/logs.md's field lists are generated from the
// same tables (npm run docs:tables). The connection line (connection-log.ts) and the dns-query
// line (dns/query-log.ts) are built so.

/** One field of a line about a `T`. */
export interface LogField<T> {
  /** The dotted name: an ECS field, or egressd's own under `egressd.`. */
  readonly name: string;
  /** The ECS field type (`keyword`, `ip`, `long`, `boolean`; `[]` for an array of it). */
  readonly type: string;
  readonly description: string;
  /** Its value for one record; `undefined` or `null` leaves the field out of the line. */
  readonly value: (o: T) => unknown;
}

/**
 * The function that builds a line from `fields`: `{ a: { b: value } }` for the field `a.b`,
 * absent ones left out. The dotted names are split once, here: building a line walks short
 * arrays, nothing parses.
 */
export function lineBuilder<T>(fields: readonly LogField<T>[]): (o: T) => Record<string, unknown> {
  const compiled = fields.map((f) => {
    const path = f.name.split('.');
    return { parents: path.slice(0, -1), leaf: path.at(-1)!, value: f.value };
  });
  return (o) => {
    const line: Record<string, unknown> = {};
    for (const f of compiled) {
      const v = f.value(o);
      if (v === undefined || v === null) continue;
      let at = line;
      for (const p of f.parents) at = (at[p] ??= {}) as Record<string, unknown>;
      at[f.leaf] = v;
    }
    return line;
  };
}

/**
 * `event.outcome` for egressd's verdict: `success` for `allow` and for `would-refuse` (report-only
 * mode carried the connection or answered the query), `failure` for `refuse` and `error`.
 */
export const outcomeOf = (verdict: string): 'success' | 'failure' => (verdict === 'allow' || verdict === 'would-refuse' ? 'success' : 'failure');

/** `network.type` of an address in text: `ipv6` when it has a colon, else `ipv4`. */
export const networkTypeOf = (address: string): 'ipv4' | 'ipv6' => (address.includes(':') ? 'ipv6' : 'ipv4');

/**
 * The function that writes the same line as `lineBuilder` straight as JSON text: the members of
 * the object without its braces (`"source":{"ip":"…"},…`, or `''` when every field is absent),
 * in the same order, so that `{${text}}` equals `JSON.stringify(lineBuilder(fields)(o))`. No
 * object is built and nothing walks one: a connection's line costs its fields' encodings alone.
 */
export function lineWriter<T>(fields: readonly LogField<T>[]): (o: T) => string {
  const root: Member<T>[] = [];
  for (const f of fields) {
    const path = f.name.split('.');
    let at = root;
    for (const p of path.slice(0, -1)) {
      let group = at.find((m) => m.name === p && m.children !== undefined);
      if (group === undefined) {
        group = { name: p, key: `${JSON.stringify(p)}:`, children: [] };
        at.push(group);
      }
      at = group.children!;
    }
    const leaf = path.at(-1)!;
    at.push({ name: leaf, key: `${JSON.stringify(leaf)}:`, value: f.value });
  }
  return (o) => members(root, o);
}

interface Member<T> {
  readonly name: string;
  /** The key as JSON text with its colon. */
  readonly key: string;
  readonly value?: (o: T) => unknown;
  readonly children?: Member<T>[];
}

function members<T>(list: readonly Member<T>[], o: T): string {
  let out = '';
  for (const m of list) {
    let text: string | undefined;
    if (m.children !== undefined) {
      const inner = members(m.children, o);
      if (inner === '') continue;
      text = `{${inner}}`;
    } else {
      text = encode(m.value!(o));
      if (text === undefined) continue;
    }
    out = out === '' ? m.key + text : `${out},${m.key}${text}`;
  }
  return out;
}

/** A value as JSON text, as JSON.stringify writes it; undefined for an absent one (undefined or null). */
function encode(v: unknown): string | undefined {
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'number':
      return Number.isFinite(v) ? String(v) : 'null';
    case 'boolean':
      return v ? 'true' : 'false';
    case 'undefined':
      return undefined;
    default:
      return v === null ? undefined : JSON.stringify(v);
  }
}
