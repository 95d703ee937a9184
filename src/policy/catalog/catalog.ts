// The essential-services catalog (seed 000 "Essential services", seed 001 "Essential Services
// (Whitelisted on All Tiers)"): the domain patterns a Daytona policy with an allow list, or an
// organization on tier 1 or 2, reaches beside its own rules. The data lives in
// essential-services.yaml; an operator may pick categories, add names, or point at a file of
// their own in the same shape. Read once at start-up, so it is synchronous.

import { readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { describe, isPlainObject, quote } from '../../util/fields.ts';
import type { FieldIssue } from '../model.ts';
import { normalizePattern } from '../../match/names.ts';
import { CappedIssues } from '../../util/issues.ts';

export interface CatalogOptions {
  /** The categories to include, by name, or every category in the file (the default). */
  readonly categories?: readonly string[] | 'all';
  /** More domain patterns to include, normalized like the file's. */
  readonly extra?: readonly string[];
  /** A catalog file of the same shape to read instead of the built-in one. */
  readonly file?: string;
}

export type CatalogResult =
  | { ok: true; domains: string[]; categories: string[] }
  | { ok: false; issues: FieldIssue[] };

const DEFAULT_FILE = fileURLToPath(new URL('./essential-services.yaml', import.meta.url));

/** The built-in file is ~6 KB; an operator's catalog of a few thousand names stays far below. */
const MAX_FILE_BYTES = 4 * 1024 * 1024;
/** Kebab-case, so a name reads the same in YAML, in a config file and in an error message. */
const CATEGORY_NAME = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;

/**
 * The catalog's domains (normalized, each once, in file order then `extra`) and the
 * categories they came from, or every problem found: an unreadable or malformed file, an
 * unknown category, an entry that is not a domain pattern. Never throws.
 */
export function loadCatalog(opts: CatalogOptions = {}): CatalogResult {
  const collected = new CappedIssues();
  const add = (field: string, reason: string): void => collected.add(field, reason);
  const finish = (): { ok: false; issues: FieldIssue[] } => ({ ok: false, issues: collected.result() });

  const path = opts.file ?? DEFAULT_FILE;
  // Problems inside the file are reported against `file` when the operator named one; the
  // built-in file has no key of its own.
  const fileField = opts.file === undefined ? '' : 'file';
  const file = readCatalogFile(path);
  if (!file.ok) {
    add(fileField, file.reason);
    return finish();
  }

  const byName = new Map<string, string[]>();
  for (const [name, raw] of file.categories) {
    const where = `Catalog file ${quote(path)} at categories.${name}`;
    if (!CATEGORY_NAME.test(name)) {
      add(fileField, `${where}: category names are lowercase letters, digits and "-"`);
      continue;
    }
    if (!Array.isArray(raw)) {
      add(fileField, `${where}: expected a list of domain patterns, got ${describe(raw)}`);
      continue;
    }
    const patterns: string[] = [];
    raw.forEach((entry: unknown, i: number) => {
      const r = pattern(entry);
      if (r.ok) patterns.push(r.pattern);
      else add(fileField, `${where}[${i}]: ${r.reason}`);
    });
    byName.set(name, patterns);
  }

  const wanted = opts.categories ?? 'all';
  const selected: string[] = [];
  if (wanted === 'all') selected.push(...byName.keys());
  else if (!Array.isArray(wanted)) add('categories', `Expected "all" or a list of category names, got ${describe(wanted)}`);
  else {
    wanted.forEach((name: unknown, i: number) => {
      if (typeof name !== 'string' || !byName.has(name)) {
        add(`categories[${i}]`, `Unknown category ${quote(name)}; known categories are ${[...byName.keys()].join(', ')}`);
      } else if (!selected.includes(name)) selected.push(name);
    });
  }

  const extra: string[] = [];
  (opts.extra ?? []).forEach((entry: unknown, i: number) => {
    const r = pattern(entry);
    if (r.ok) extra.push(r.pattern);
    else add(`extra[${i}]`, r.reason);
  });

  if (!collected.ok) return finish();
  const domains = new Set<string>();
  for (const name of selected) for (const d of byName.get(name)!) domains.add(d);
  for (const d of extra) domains.add(d);
  return { ok: true, domains: [...domains], categories: selected };
}

/**
 * One catalog entry. `*` passes normalizePattern (it means every name) but is refused here:
 * joined to a restricted policy's allow side it would turn "essential services only" into
 * "every name", which no category of seed 000 asks for.
 */
function pattern(entry: unknown): { ok: true; pattern: string } | { ok: false; reason: string } {
  if (typeof entry !== 'string') return { ok: false, reason: `Expected a domain pattern, got ${describe(entry)}` };
  if (entry === '*') return { ok: false, reason: 'Pattern "*" would allow every name; name the services instead' };
  return normalizePattern(entry);
}

type FileRead = { ok: true; categories: [string, unknown][] } | { ok: false; reason: string };

function readCatalogFile(path: string): FileRead {
  const q = quote(path);
  let text: string;
  try {
    const size = statSync(path).size;
    if (size > MAX_FILE_BYTES) return { ok: false, reason: `Catalog file ${q} is ${size} bytes; at most ${MAX_FILE_BYTES} are read` };
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    return { ok: false, reason: `Cannot read catalog file ${q} (${code})` };
  }
  let doc: unknown;
  try {
    // uniqueKeys: a category written twice would silently lose one of its lists.
    // maxAliasCount bounds alias expansion ("billion laughs") in a file that is not ours.
    const parsed = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
    const first = parsed.errors[0];
    if (first !== undefined) return { ok: false, reason: `Catalog file ${q} is not valid YAML: ${truncate(first.message)}` };
    doc = parsed.toJS({ maxAliasCount: 100 });
  } catch (err) {
    return { ok: false, reason: `Catalog file ${q} is not valid YAML: ${truncate(err instanceof Error ? err.message : String(err))}` };
  }
  if (!isPlainObject(doc)) return { ok: false, reason: `Catalog file ${q} should hold an object with "categories", got ${describe(doc)}` };
  const unknown = Object.keys(doc).filter((k) => k !== 'categories');
  if (unknown.length > 0) return { ok: false, reason: `Catalog file ${q} has unknown field ${quote(unknown[0])}; the only field is categories` };
  const categories = doc['categories'];
  if (!isPlainObject(categories)) {
    return { ok: false, reason: `Catalog file ${q} should map category names to lists under "categories", got ${describe(categories)}` };
  }
  return { ok: true, categories: Object.entries(categories) };
}

function truncate(s: string): string {
  const line = s.split('\n', 1)[0] ?? '';
  return line.length > 200 ? `${line.slice(0, 197)}...` : line;
}
