// YAML (and so JSON) text read into plain values, every refusal with where it is: the config
// file, `decide --policy` and the essential-services catalog file read through here. A file
// declared to be JSON (named `.json`) is read as strict JSON.

import { type Document, isAlias, isMap, isPair, isScalar, isSeq, type Pair, parseDocument, visit, type YAMLMap } from 'yaml';
import { readJsonText } from './json-read.ts';
import { lineColumn } from './text-position.ts';

/** Where a field (`sandboxes[2].network.mode`, issue-path style) is written, 1-based; null when nowhere. */
export type Locate = (field: string) => { readonly line: number; readonly column: number } | null;

export type YamlRead =
  | { readonly ok: true; readonly value: unknown; readonly locate: Locate }
  | {
      readonly ok: false;
      /** What is wrong, in the yaml package's words (or V8's, for JSON), without its position. */
      readonly reason: string;
      /** Which reader refused it: the text as YAML, or as JSON (`json: true`). */
      readonly syntax: 'YAML' | 'JSON';
      /**
       * The yaml package's error code (`BAD_INDENT`, `DUPLICATE_KEY`, ...), `ALIAS` or `MERGE`; for
       * JSON, `SYNTAX` or `DUPLICATE_KEY`.
       */
      readonly code: string;
      /** 1-based; null only when the text gives no place to point at. */
      readonly position: { readonly line: number; readonly column: number } | null;
      /** The lines around it with a caret under the place, when the yaml package gives them. */
      readonly snippet: string;
      readonly cause: unknown;
    };

/**
 * Parses one YAML document: duplicate keys and syntax errors are refusals, not warnings, and so
 * are what the yaml package only warns of (a tag it does not resolve, an unknown directive), a
 * key that is not a string, an integer with a leading zero (0443: 443 in YAML 1.2, 291 in 1.1),
 * an alias with no anchor before it or inside the node it names, and aliases that expand the
 * document past MAX_EXPANDED_VALUES (an alias bomb); those the yaml package finds only while
 * building values, with no position, are placed at the alias.
 *
 * Merge keys (`<<: *base`, https://yaml.org/type/merge.html) are read as the fields written out,
 * a key written in the map beside them winning; two in one map, or one whose value is not a map,
 * an alias to one or a list of them, are refused at that place.
 *
 * With `json: true` the text must be one JSON text (RFC 8259), each object's keys unique; its
 * value is JSON.parse's, and a `<<` key is a key.
 */
export function readYaml(text: string, options: { readonly strict?: boolean; readonly json?: boolean } = {}): YamlRead {
  // A byte order mark is not content (YAML 1.2 §5.2; RFC 8259 §8.1 lets a JSON reader ignore it):
  // left in, the yaml package counts it as a column of line 1, and every position on that line is
  // one too far right.
  if (text.startsWith('\ufeff')) text = text.slice(1);
  if (options.json === true) return readJson(text);
  const doc = parseDocument(text, {
    // Two merge keys are refused below, in words that say what to write instead.
    uniqueKeys: (a, b) => a === b || (isScalar(a) && isScalar(b) && a.value === b.value && !isMergeKey(a)),
    prettyErrors: true,
    strict: options.strict ?? true,
    // YAML 1.2 dropped merge keys, but the files operators write still use them (Helm values,
    // docker-compose, GitLab CI); off, `<<` was an unknown field with no word of why.
    merge: true,
    // Every key is its text: `1` and "1" are one key (a duplicate), and a list or a map as a key
    // is refused rather than stringified ("[ a ]") with a warning on the process's stderr.
    stringKeys: true,
    // YAML 1.1's !!binary, !!set, !!timestamp, !!omap and !!pairs are refused as unknown tags
    // below, not read into a Buffer, a Set or a Date that no field takes.
    resolveKnownTags: false,
  });
  // The yaml package only warns of what it could not read as written (a tag it does not resolve,
  // read as its bare text; an unknown directive or YAML version; an anchor ending in ":"): each
  // means the file says something egressd would not do.
  const first = doc.errors[0] ?? doc.warnings[0];
  if (first !== undefined) {
    // prettyErrors words it "... at line 2, column 1:" then the lines around it with a caret.
    const [head = 'YAML syntax error', ...context] = first.message.split('\n');
    const pos = first.linePos?.[0];
    return {
      ok: false,
      syntax: 'YAML',
      reason: reasonOf(first.code, head.replace(/ at line \d+, column \d+:?$/, '')),
      code: first.code,
      position: pos ? { line: pos.line, column: pos.col } : null,
      snippet: context.join('\n').replace(/^\n+|\n+$/g, ''),
      cause: first,
    };
  }
  const ambiguous = ambiguousNumber(doc);
  if (ambiguous !== null) {
    return {
      ok: false,
      syntax: 'YAML',
      reason: ambiguous.reason,
      code: 'AMBIGUOUS_NUMBER',
      position: lineColumn(text, ambiguous.offset),
      snippet: '',
      cause: null,
    };
  }
  const targets = aliasTargets(doc);
  const expansion = expansionProblem(doc, targets);
  if (expansion !== null) {
    return { ok: false, syntax: 'YAML', reason: expansion.reason, code: 'ALIAS', position: lineColumn(text, expansion.offset), snippet: '', cause: null };
  }
  const merge = mergeProblem(doc, targets);
  if (merge !== null) {
    return { ok: false, syntax: 'YAML', reason: merge.reason, code: 'MERGE', position: lineColumn(text, merge.offset), snippet: '', cause: null };
  }
  try {
    // The expansion is bounded above; the yaml package's count of an anchor's uses is not a bound
    // on size, and refused 100 sandboxes sharing one network.
    const value = doc.toJS({ maxAliasCount: -1 });
    return {
      ok: true,
      value,
      locate: (field) => {
        const offset = fieldOffset(doc, field, targets);
        return offset === null ? null : lineColumn(text, offset);
      },
    };
  } catch (err) {
    const offset = aliasOffset(doc);
    return {
      ok: false,
      syntax: 'YAML',
      reason: err instanceof Error ? err.message : String(err),
      code: 'ALIAS',
      position: offset === null ? null : lineColumn(text, offset),
      snippet: '',
      cause: err,
    };
  }
}

/**
 * Values a document may hold once its aliases are expanded: go-yaml v3's bound, under which it
 * takes any share of aliases (decode.go, allowedAliasRatio). A billion laughs of nine levels
 * holds 10^9; a config of 10,000 sandboxes sharing one network anchor about 200,000.
 */
const MAX_EXPANDED_VALUES = 400_000;

/**
 * An alias bomb (the document's values, aliases expanded, past MAX_EXPANDED_VALUES), placed at its
 * first alias, or an alias inside the node it names (a cycle, which no JSON value can be), placed
 * at that alias. Each node is counted once: linear in the document, nothing built.
 */
function expansionProblem(doc: Document, targets: ReadonlyMap<unknown, unknown>): { reason: string; offset: number } | null {
  const sizes = new Map<unknown, number>();
  const open = new Set<unknown>();
  let cycle: number | null = null;
  const sizeOf = (node: unknown): number => {
    if (cycle !== null || node === null || node === undefined) return 0;
    if (isAlias(node)) {
      const target = targets.get(node);
      if (open.has(target)) {
        cycle = offsetOf(node) ?? 0;
        return 0;
      }
      return sizeOf(target);
    }
    const known = sizes.get(node);
    if (known !== undefined) return known;
    let size = 1;
    if (isMap(node) || isSeq(node)) {
      open.add(node);
      for (const item of node.items as unknown[]) size += isPair(item) ? sizeOf(item.key) + sizeOf(item.value) : sizeOf(item);
      open.delete(node);
    }
    sizes.set(node, size);
    return size;
  };
  const total = sizeOf(doc.contents);
  if (cycle !== null) return { reason: 'An alias is inside the node it names (a cycle, which egressd cannot read as a value)', offset: cycle };
  if (total <= MAX_EXPANDED_VALUES) return null;
  return {
    reason: `Aliases expand the document past ${MAX_EXPANDED_VALUES} values (an alias bomb); write the repeated parts out, or share fewer`,
    offset: aliasOffset(doc) ?? 0,
  };
}

/**
 * Each alias's node, in one pass: an alias names the last node with its anchor before it (YAML
 * 1.2 §3.2.2.2). The yaml package's Alias.resolve walks the whole document for each alias, which
 * made 1,000 aliases take seconds.
 */
function aliasTargets(doc: Document): Map<unknown, unknown> {
  const anchors = new Map<string, unknown>();
  const targets = new Map<unknown, unknown>();
  visit(doc, (_key, node) => {
    if (isAlias(node)) targets.set(node, anchors.get(node.source));
    else if ((isScalar(node) || isMap(node) || isSeq(node)) && node.anchor) anchors.set(node.anchor, node);
  });
  return targets;
}

/** The yaml package's words, or egressd's where they speak to the package's caller, not to the file's writer. */
function reasonOf(code: string, words: string): string {
  switch (code) {
    // Its advice is "use YAML.parseAllDocuments()".
    case 'MULTIPLE_DOCS':
      return 'The file holds more than one YAML document (a "---" or "..." line after the first); egressd reads one';
    case 'NON_STRING_KEY':
      return 'A key must be a string, not a list or a map (nor a value tagged other than !!str)';
    case 'TAG_RESOLVE_FAILED': {
      const tag = /Unresolved tag: (\S+)/.exec(words)?.[1]?.replace(/^tag:yaml\.org,2002:/, '!!');
      return `The tag ${tag ?? 'here'} cannot be read: egressd reads YAML 1.2's core tags alone, !!str, !!int, !!float, !!bool, !!null, !!map and !!seq, each on a value of its kind; write the value itself`;
    }
    // The yaml package's composer ran out of stack ("Maximum call stack size exceeded"), which
    // says where but not what in the file to change.
    case 'RESOURCE_EXHAUSTION':
      return /call stack/i.test(words)
        ? 'Lists and maps nest here deeper than egressd reads (several hundred levels, as deep as its stack allows; its files need fewer than ten)'
        : words;
    default:
      return words;
  }
}

/**
 * The first plain integer written with a leading zero (0443) in a YAML 1.2 document: 443 to YAML
 * 1.2 (the yaml package), octal to YAML 1.1 (§ int: `0[0-7]+`; PyYAML, go-yaml v2, Ruby's Psych),
 * 291, or a string where a digit is 8 or 9. A document that declares `%YAML 1.1` says which.
 */
function ambiguousNumber(doc: Document): { reason: string; offset: number } | null {
  if (doc.directives?.yaml.version !== '1.2') return null;
  let found: { reason: string; offset: number } | null = null;
  visit(doc, {
    Scalar(_key, node) {
      const m = typeof node.value === 'number' ? /^([-+]?)0([0-9]+)$/.exec(node.source ?? '') : null;
      if (m === null) return undefined;
      const [, sign = '', digits = ''] = m;
      const v11 = /^[0-7]+$/.test(digits) ? String(Number.parseInt(`${sign}${digits}`, 8)) : `the string ${JSON.stringify(node.source)}`;
      found = {
        reason: `${node.source} is ${String(node.value)} in YAML 1.2 but ${v11} in YAML 1.1, which other tools that read this file may follow: write ${String(node.value)}${/^[0-7]+$/.test(digits) ? `, or ${v11} for the octal` : ''}`,
        offset: node.range?.[0] ?? 0,
      };
      return visit.BREAK;
    },
  });
  return found;
}

function readJson(text: string): YamlRead {
  const r = readJsonText(text);
  if (!r.ok) {
    const position = lineColumn(text, r.offset);
    return {
      ok: false,
      syntax: 'JSON',
      reason:
        r.kind === 'syntax' ? `Not valid JSON: ${r.detail}` : `The key ${JSON.stringify(r.detail)} is given more than once; give each key once (RFC 8259 §4)`,
      code: r.kind === 'syntax' ? 'SYNTAX' : 'DUPLICATE_KEY',
      position,
      snippet: caretUnder(text, position),
      cause: r.cause,
    };
  }
  // JSON is YAML 1.2 (but for the leniencies refused above), read again for where fields are,
  // when a problem is to be placed: JSON nested a million deep is JSON.parse's in milliseconds and
  // the yaml package's in seconds, to fail at its stack's depth.
  let doc: Document | undefined;
  return {
    ok: true,
    value: r.value,
    locate: (field) => {
      doc ??= parseDocument(text, { uniqueKeys: true, strict: true, merge: false });
      if (doc.errors.length > 0) return null;
      // JSON has no aliases.
      const offset = fieldOffset(doc, field, new Map());
      return offset === null ? null : lineColumn(text, offset);
    },
  };
}

/** The line of `position` and a caret under its column, as the yaml package's prettyErrors; '' for a line too long to show. */
function caretUnder(text: string, position: { line: number; column: number }): string {
  const line = text.split(/\r\n|\r|\n/)[position.line - 1] ?? '';
  if (line.length > 120) return '';
  return `${line}\n${' '.repeat(position.column - 1)}^`;
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

/** A plain `<<` key: with stringKeys the yaml package keeps its text and merges it by that. */
const isMergeKey = (key: unknown): boolean =>
  isScalar(key) && (typeof key.value === 'symbol' || (key.value === '<<' && (key.type === undefined || key.type === 'PLAIN')));
const offsetOf = (node: unknown): number | null => (node as { range?: [number, number, number] } | null)?.range?.[0] ?? null;

/**
 * The first merge key the yaml package would refuse while building values (with no position), or
 * that it takes where another reader might not: a second `<<` in one map, which the yaml package
 * merges after the first, where the merge-key spec gives one key with a list for that.
 */
function mergeProblem(doc: Document, targets: ReadonlyMap<unknown, unknown>): { reason: string; offset: number } | null {
  let problem: { reason: string; offset: number } | null = null;
  const notMap = (node: unknown, at: unknown): boolean => {
    const target = isAlias(node) ? targets.get(node) : node;
    if (isMap(target)) return false;
    problem = {
      reason: `A merge key (<<) takes a map, an alias to one, or a list of them; this is ${isSeq(target) ? 'a list' : isScalar(target) ? 'a scalar' : 'empty'}`,
      offset: offsetOf(at) ?? 0,
    };
    return true;
  };
  visit(doc, {
    Map(_key, map) {
      const merges = map.items.filter((p) => isMergeKey(p.key));
      if (merges.length > 1) {
        problem = { reason: 'The map gives more than one merge key (<<); give one with a list, e.g. "<<: [*a, *b]"', offset: offsetOf(merges[1]!.key) ?? 0 };
        return visit.BREAK;
      }
      const value = merges[0]?.value;
      if (merges[0] === undefined) return undefined;
      if (isSeq(value)) {
        for (const item of value.items) if (notMap(item, item)) return visit.BREAK;
      } else if (notMap(value, value ?? merges[0].key)) return visit.BREAK;
      return undefined;
    },
  });
  return problem;
}

/**
 * The pair that gives `key` in `map`: its own, or else the one a merge brings in (the first merge
 * source that has it, as the yaml package merges). Aliases are followed.
 */
function pairOf(targets: ReadonlyMap<unknown, unknown>, map: YAMLMap, key: string, depth = 0): Pair | undefined {
  const own = map.items.find((p) => !isMergeKey(p.key) && (isScalar(p.key) ? String(p.key.value) : p.key) === key);
  if (own !== undefined || depth > 32) return own;
  for (const p of map.items) {
    if (!isMergeKey(p.key)) continue;
    const sources = isSeq(p.value) ? p.value.items : [p.value];
    for (const s of sources) {
      const source = isAlias(s) ? targets.get(s) : s;
      const found = isMap(source) ? pairOf(targets, source, key, depth + 1) : undefined;
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/**
 * The offset where `field` is written: a map entry's key (where a reader looks for it), a list
 * item itself; a field that is not written (a required key left out) is placed at the nearest
 * one above it that is. Null for an empty document.
 */
function fieldOffset(doc: Document, field: string, targets: ReadonlyMap<unknown, unknown> = aliasTargets(doc)): number | null {
  const steps = [...field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]!));
  let node: unknown = doc.contents;
  let at: number | null = offsetOf(doc.contents);
  for (const step of steps) {
    // A value written as an alias is where its anchor's node is written.
    if (isAlias(node)) node = targets.get(node);
    if (isMap(node)) {
      const pair = pairOf(targets, node, String(step));
      if (pair === undefined) break;
      at = offsetOf(pair.key) ?? at;
      node = pair.value;
    } else if (isSeq(node) && typeof step === 'number' && step < node.items.length) {
      node = node.items[step];
      at = offsetOf(node) ?? at;
    } else break;
  }
  return at;
}
