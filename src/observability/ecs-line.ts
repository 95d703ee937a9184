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
 * absent ones left out, each object made when its first present field is set (so the keys come
 * in the table's order). The function is generated once, here, from the table: one statement
 * per field with its path written out, so that building a line is straight-line property stores
 * and one call per field, not a walk of the table with computed keys (3-4x faster, and a line is
 * built per connection). Only the table's own names go into the generated text, each as a JSON
 * string literal.
 */
export function lineBuilder<T>(fields: readonly LogField<T>[]): (o: T) => Record<string, unknown> {
  const body = fields
    .map((f, i) => {
      const path = f.name.split('.').map((p) => `[${JSON.stringify(p)}]`);
      const parents = path.slice(0, -1).reduce((at, p) => `(${at}${p} ??= {})`, 'line');
      return `v = f[${i}](o); if (v !== undefined && v !== null) ${parents}${path.at(-1)} = v;`;
    })
    .join('\n');
  const values = fields.map((f) => f.value);
  try {
    // oxlint-disable-next-line typescript/no-implied-eval -- the text is made above from the field table's own names, as JSON literals
    const make = new Function('f', `return function line(o) {\nconst line = {};\nlet v;\n${body}\nreturn line;\n};`) as (
      f: readonly ((o: T) => unknown)[],
    ) => (o: T) => Record<string, unknown>;
    return make(values);
  } catch {
    // A process that forbids code from strings (--disallow-code-generation-from-strings): the
    // same line, by walking the table.
    return walkingBuilder(fields);
  }
}

/** lineBuilder's line made by walking the table (the fallback; tests hold the two equal). */
export function walkingBuilder<T>(fields: readonly LogField<T>[]): (o: T) => Record<string, unknown> {
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
 * An address as an ECS `ip` field takes it: a link-local one without its zone, `fe80::b1` of
 * `fe80::b1%eth1` (RFC 4007 §11). Elasticsearch's ip type refuses a zone ("is not an IP string
 * literal", elastic/elasticsearch#22400: the whole line is then refused), and ECS has no field of
 * its own for one (elastic/ecs#314 was closed without); the interface is written apart, as
 * `observer.ingress.interface.name` (zoneOf). Null stays null.
 */
export function ecsIp(address: string | null): string | null {
  const pct = address === null ? -1 : address.indexOf('%');
  return pct < 0 ? address : address!.slice(0, pct);
}

/** The zone of an address written with one (`eth1` of `fe80::b1%eth1`), else null. */
export function zoneOf(address: string | null): string | null {
  const pct = address === null ? -1 : address.indexOf('%');
  return pct < 0 ? null : address!.slice(pct + 1);
}
