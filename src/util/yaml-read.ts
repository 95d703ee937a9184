// YAML (and so JSON) text read into plain values, every refusal with where it is: the config
// file, `decide --policy` and the essential-services catalog file read through here.

import { type Document, isMap, isScalar, isSeq, parseDocument, visit } from 'yaml';
import { lineColumn } from './text-position.ts';

/** Where a field (`sandboxes[2].network.mode`, issue-path style) is written, 1-based; null when nowhere. */
export type Locate = (field: string) => { readonly line: number; readonly column: number } | null;

export type YamlRead =
  | { readonly ok: true; readonly value: unknown; readonly locate: Locate }
  | {
      readonly ok: false;
      /** What is wrong, in the yaml package's words, without its position. */
      readonly reason: string;
      /** The yaml package's error code (`BAD_INDENT`, `DUPLICATE_KEY`, ...), or `ALIAS`. */
      readonly code: string;
      /** 1-based; null only when the text gives no place to point at. */
      readonly position: { readonly line: number; readonly column: number } | null;
      /** The lines around it with a caret under the place, when the yaml package gives them. */
      readonly snippet: string;
      readonly cause: unknown;
    };

/**
 * Parses one YAML document: duplicate keys and syntax errors are refusals, not warnings, and so
 * are the errors found while aliases are expanded (an alias with no anchor before it, or more
 * than `maxAliasCount` expansions: an alias bomb), which the yaml package raises only after
 * parsing, with no position: they are placed at that alias.
 */
export function readYaml(text: string, options: { readonly strict?: boolean; readonly maxAliasCount?: number } = {}): YamlRead {
  // A byte order mark is not content (YAML 1.2 §5.2): left in, the yaml package counts it as a
  // column of line 1, and every position on that line is one too far right.
  if (text.startsWith('\ufeff')) text = text.slice(1);
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true, strict: options.strict ?? true });
  const first = doc.errors[0];
  if (first !== undefined) {
    // prettyErrors words it "... at line 2, column 1:" then the lines around it with a caret.
    const [head = 'YAML syntax error', ...context] = first.message.split('\n');
    const pos = first.linePos?.[0];
    return {
      ok: false,
      // The yaml package's advice for this one is to its caller ("use YAML.parseAllDocuments()"):
      // the reader of the file needs to know what in it to change.
      reason:
        first.code === 'MULTIPLE_DOCS'
          ? 'The file holds more than one YAML document (a "---" or "..." line after the first); egressd reads one'
          : head.replace(/ at line \d+, column \d+:?$/, ''),
      code: first.code,
      position: pos ? { line: pos.line, column: pos.col } : null,
      snippet: context.join('\n').replace(/^\n+|\n+$/g, ''),
      cause: first,
    };
  }
  try {
    const value = doc.toJS({ maxAliasCount: options.maxAliasCount ?? 100 });
    return {
      ok: true,
      value,
      locate: (field) => {
        const offset = fieldOffset(doc, field);
        return offset === null ? null : lineColumn(text, offset);
      },
    };
  } catch (err) {
    const offset = aliasOffset(doc);
    return {
      ok: false,
      reason: err instanceof Error ? err.message : String(err),
      code: 'ALIAS',
      position: offset === null ? null : lineColumn(text, offset),
      snippet: '',
      cause: err,
    };
  }
}

/** The offset of the first alias whose anchor is not set before it, or else of the first alias. */
function aliasOffset(doc: Document): number | null {
  let unresolved: number | null = null;
  let first: number | null = null;
  visit(doc, {
    Alias(_key, node) {
      const at = node.range?.[0] ?? null;
      first ??= at;
      if (node.resolve(doc) === undefined) {
        unresolved = at;
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return unresolved ?? first;
}

/**
 * The offset where `field` is written: a map entry's key (where a reader looks for it), a list
 * item itself; a field that is not written (a required key left out) is placed at the nearest
 * one above it that is. Null for an empty document.
 */
function fieldOffset(doc: Document, field: string): number | null {
  const steps = [...field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]!));
  let node: unknown = doc.contents;
  let at: number | null = (doc.contents as { range?: [number, number, number] } | null)?.range?.[0] ?? null;
  for (const step of steps) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : p.key) === String(step));
      if (pair === undefined) break;
      at = (pair.key as { range?: [number, number, number] } | null)?.range?.[0] ?? at;
      node = pair.value;
    } else if (isSeq(node) && typeof step === 'number' && step < node.items.length) {
      node = node.items[step];
      at = (node as { range?: [number, number, number] } | null)?.range?.[0] ?? at;
    } else break;
  }
  return at;
}
