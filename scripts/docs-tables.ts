// Writes the tables of docs/ that are generated from a table in the code, so the docs list
// exactly what egressd declares: the metrics (METRICS) in docs/metrics.md, and the fields of the
// connection log line (CONNECTION_FIELDS) and the dns-query line (QUERY_FIELDS) in docs/logs.md. test/unit/deploy.test.ts fails when a
// file is not what this script would write.
//
//   npm run docs:tables

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { QUERY_FIELDS } from '../src/dns/query-log.ts';
import { CONNECTION_FIELDS } from '../src/observability/connection-log.ts';
import type { LogField } from '../src/observability/ecs-line.ts';
import { METRICS, type MetricSpec } from '../src/observability/metrics.ts';

/** The rows of docs/metrics.md's metric table, one per row of METRICS, in its order. */
export function metricsTable(specs: readonly MetricSpec[] = Object.values(METRICS)): string {
  const rows = specs.map((s) => {
    const labels = s.labels.map((l) => `\`${l}\``).join(', ') + (s.sandboxLabel === true ? ' (+ `sandbox` with `metrics.sandboxLabel: true`)' : '');
    return `| \`${s.name}\` | ${s.type} |${labels === '' ? ' ' : ` ${labels} `}| ${s.help} |`;
  });
  return ['| metric | type | labels | help |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

/** A docs/logs.md field table: `header` (its first column's title), then one row per field. */
export function fieldsTable<T>(fields: readonly LogField<T>[], header = 'field'): string {
  const rows = fields.map((f) => `| \`${f.name}\` | ${f.type} | ${f.description} |`);
  return [`| ${header} | type | meaning |`, '| --- | --- | --- |', ...rows].join('\n');
}

/** `doc` with the table that starts with `header` (up to the next blank line) replaced by `table`. */
export function replaceTable(doc: string, header: string, table: string): string {
  const start = doc.indexOf(header);
  if (start < 0) throw new Error(`No table starting with "${header}"`);
  const end = doc.indexOf('\n\n', start);
  return doc.slice(0, start) + table + (end < 0 ? '\n' : doc.slice(end));
}

export const GENERATED: readonly { readonly file: string; readonly header: string; readonly table: () => string }[] = [
  { file: 'docs/metrics.md', header: '| metric | type | labels | help |', table: () => metricsTable() },
  { file: 'docs/logs.md', header: '| field | type | meaning |', table: () => fieldsTable(CONNECTION_FIELDS) },
  { file: 'docs/logs.md', header: '| dns-query field | type | meaning |', table: () => fieldsTable(QUERY_FIELDS, 'dns-query field') },
];

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = new URL('../', import.meta.url);
  for (const g of GENERATED) {
    const path = new URL(g.file, root);
    const before = readFileSync(path, 'utf8');
    const after = replaceTable(before, g.header, g.table());
    if (after !== before) writeFileSync(path, after);
    process.stdout.write(`${g.file}: ${after === before ? 'up to date' : 'rewritten'}\n`);
  }
}
