// The essential-services catalog (Daytona's "Network Limits (Firewall)" documentation, section
// "Essential services", and its older "Essential Services (Whitelisted on All Tiers)" list):
// the domain patterns a Daytona policy with an allow list, or an organization on tier 1 or 2,
// reaches beside its own rules. The data lives in essential-services.yaml: `categories` is
// Daytona's list as published; `published` adds, per category, the hosts each service's own
// firewall or allow-list documentation names (each with that document's title and URL), so
// that an install, pull or clone works. An operator may pick categories, add names, or point at
// a file of their own in the same shape. Read once at start-up, so it is synchronous.

import { fileURLToPath } from 'node:url';
import { type Locate, readYaml } from '../../util/yaml-read.ts';
import { namesJson } from '../../util/json-read.ts';
import { utf8Text } from '../../util/utf8-text.ts';
import { InputTooLargeError, NotRegularFileError, readBoundedSync } from '../../util/read-bounded.ts';
import { describe, isPlainObject, quote } from '../../util/fields.ts';
import type { FieldIssue } from '../../util/issues.ts';
import { normalizePattern } from '../../match/names.ts';
import { CappedIssues } from '../../util/issues.ts';

export interface CatalogOptions {
  /** The categories to include, by name, or every category in the file (the default). */
  readonly categories?: readonly string[] | 'all';
  /** More domain patterns to include, normalized like the file's. */
  readonly extra?: readonly string[];
  /** A catalog file of the same shape to read instead of the built-in one. */
  readonly file?: string;
  /**
   * Read while serving (a reload checks the config's catalog): the file is read on the event
   * loop, so one that is not a regular file is refused rather than waited for (a FIFO without a
   * writer held every connection, for ever).
   */
  readonly serving?: boolean;
}

/** A host added from the service's own published documentation, with that document. */
export interface PublishedHost {
  readonly category: string;
  readonly host: string;
  readonly title: string;
  readonly url: string;
}

export type CatalogResult = { ok: true; domains: string[]; categories: string[]; published: PublishedHost[] } | { ok: false; issues: FieldIssue[] };

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
  const file = readCatalogFile(path, opts.serving === true);
  if (!file.ok) {
    add(fileField, file.reason);
    return finish();
  }

  // A problem inside the file is placed in it: `Catalog file "F", line L, column C, at categories.x[1]`,
  // the position the catalog file's own, ahead of the config's (where `catalog.file` is written).
  const at = (field: string): string => {
    const pos = file.locate(field);
    return `Catalog file ${quote(path)}${pos ? `, line ${pos.line}, column ${pos.column},` : ''} at ${field}`;
  };
  const byName = new Map<string, string[]>();
  for (const [name, raw] of file.categories) {
    const where = at(`categories.${name}`);
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
      else add(fileField, `${at(`categories.${name}[${i}]`)}: ${r.reason}`);
    });
    byName.set(name, patterns);
  }

  const published: PublishedHost[] = [];
  for (const [name, raw] of file.published) {
    const where = at(`published.${name}`);
    if (!byName.has(name)) {
      add(fileField, `${where}: no category of that name under "categories"`);
      continue;
    }
    if (!Array.isArray(raw)) {
      add(fileField, `${where}: expected a list of { host, title, url }, got ${describe(raw)}`);
      continue;
    }
    raw.forEach((entry: unknown, i: number) => {
      const r = publishedEntry(entry);
      if (r.ok) published.push({ category: name, ...r.value });
      else add(fileField, `${at(`published.${name}[${i}]`)}: ${r.reason}`);
    });
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
  for (const name of selected) {
    for (const d of byName.get(name)!) domains.add(d);
    for (const p of published) if (p.category === name) domains.add(p.host);
  }
  for (const d of extra) domains.add(d);
  return { ok: true, domains: [...domains], categories: selected, published: published.filter((p) => selected.includes(p.category)) };
}

/**
 * One catalog entry. `*` passes normalizePattern (it means every name) but is refused here:
 * joined to a restricted policy's allow side it would turn "essential services only" into
 * "every name", which no category of Daytona's list asks for.
 */
function pattern(entry: unknown): { ok: true; pattern: string } | { ok: false; reason: string } {
  if (typeof entry !== 'string') return { ok: false, reason: `Expected a domain pattern, got ${describe(entry)}` };
  if (entry === '*') return { ok: false, reason: 'Pattern "*" would allow every name; name the services instead' };
  return normalizePattern(entry);
}

/** One `published` entry: a host pattern and the document that names it (title, https URL). */
function publishedEntry(entry: unknown): { ok: true; value: Omit<PublishedHost, 'category'> } | { ok: false; reason: string } {
  if (!isPlainObject(entry)) return { ok: false, reason: `Expected { host, title, url }, got ${describe(entry)}` };
  const unknown = Object.keys(entry).filter((k) => k !== 'host' && k !== 'title' && k !== 'url');
  if (unknown.length > 0) return { ok: false, reason: `Unknown field ${quote(unknown[0])}; the fields are host, title and url` };
  const host = pattern(entry['host']);
  if (!host.ok) return host;
  const title = entry['title'];
  if (typeof title !== 'string' || title.trim() === '') return { ok: false, reason: `Expected the source document's title, got ${describe(title)}` };
  const url = entry['url'];
  if (typeof url !== 'string' || !/^https:\/\/[^\s/]+\/\S*$/.test(url))
    return { ok: false, reason: `Expected the source document's https URL, got ${describe(url)}` };
  return { ok: true, value: { host: host.pattern, title, url } };
}

type FileRead = { ok: true; categories: [string, unknown][]; published: [string, unknown][]; locate: Locate } | { ok: false; reason: string };

function readCatalogFile(path: string, serving: boolean): FileRead {
  const q = quote(path);
  let text: string;
  try {
    // Bounded whatever the file is: a regular file by its size, before a byte is read; a pipe
    // (`<(generate)`, /dev/stdin) or a device once it passes the bound. statSync's size, 0 for
    // those, let readFileSync read one whole, /dev/zero for ever.
    const t = utf8Text(
      readBoundedSync(
        path,
        MAX_FILE_BYTES,
        serving ? { regularOnly: 'egressd is serving, and a reload reads the catalog on its event loop, where no wait is bounded' } : {},
      ),
    );
    if (!t.ok) {
      const { line, column } = t.position;
      return {
        ok: false,
        reason: `Catalog file ${q} is not UTF-8 at line ${line}, column ${column}: byte ${t.byte} (offset ${t.offset}) starts no UTF-8 character there`,
      };
    }
    text = t.text;
  } catch (err) {
    if (err instanceof InputTooLargeError) {
      const what = err.bytes === null ? `is longer than ${MAX_FILE_BYTES} bytes, the most read` : `is ${err.bytes} bytes; at most ${MAX_FILE_BYTES} are read`;
      return { ok: false, reason: `Catalog file ${q} ${what}` };
    }
    if (err instanceof NotRegularFileError) return { ok: false, reason: `Catalog file ${q}: ${err.message}; give a regular file` };
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    return { ok: false, reason: `Cannot read catalog file ${q} (${code})` };
  }
  // Duplicate keys refused: a category written twice would silently lose one of its lists.
  // Alias expansion is bounded ("billion laughs") in a file that is not ours.
  // A file named .json is JSON alone (RFC 8259), not the YAML superset.
  const parsed = readYaml(text, { json: namesJson(path) });
  if (!parsed.ok) {
    const at = parsed.position ? ` at line ${parsed.position.line}, column ${parsed.position.column}` : '';
    return { ok: false, reason: `Catalog file ${q} is not valid ${parsed.syntax}${at}: ${truncate(parsed.reason)}` };
  }
  const doc = parsed.value;
  if (!isPlainObject(doc)) return { ok: false, reason: `Catalog file ${q} should hold an object with "categories", got ${describe(doc)}` };
  const unknown = Object.keys(doc).filter((k) => k !== 'categories' && k !== 'published');
  if (unknown.length > 0) return { ok: false, reason: `Catalog file ${q} has unknown field ${quote(unknown[0])}; the fields are categories and published` };
  const categories = doc['categories'];
  if (!isPlainObject(categories)) {
    return { ok: false, reason: `Catalog file ${q} should map category names to lists under "categories", got ${describe(categories)}` };
  }
  const published = doc['published'] ?? {};
  if (!isPlainObject(published)) {
    return { ok: false, reason: `Catalog file ${q} should map category names to lists under "published", got ${describe(published)}` };
  }
  return { ok: true, categories: Object.entries(categories), published: Object.entries(published), locate: parsed.locate };
}

function truncate(s: string): string {
  const line = s.split('\n', 1)[0] ?? '';
  return line.length > 200 ? `${line.slice(0, 197)}...` : line;
}
