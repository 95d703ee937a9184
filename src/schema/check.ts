// Checks a parsed document against one of egressd's schemas (src/schema/bodies.ts,
// src/schema/config-file.ts: TypeBox values, which are plain JSON Schema) and reports every
// problem with its field path and a reason in egressd's words, quoting the offending value.
//
// Why our own reading of the schema instead of a validator's error list: operators see these
// reasons (the API's 400, `egressd validate`, a refused state), and a validator's generic
// "must be <= 5" or one line per failed anyOf branch is worse than "Expected an integer from 1
// to 5, got 9". The reader covers exactly the keywords the schemas use (listed in `KEYWORDS`);
// a schema with any other keyword is refused when it is first checked, so a keyword cannot be
// silently ignored. test/unit/schema/check.test.ts holds it to Ajv's verdict on generated
// documents.

import { describe, isPlainObject, quote } from '../util/fields.ts';
import { joinField, type CappedIssues } from '../util/issues.ts';

/** A JSON Schema node as TypeBox builds it, read through the keywords below. */
export interface SchemaNode {
  readonly type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean' | 'null';
  readonly properties?: Readonly<Record<string, SchemaNode>>;
  readonly required?: readonly string[];
  readonly additionalProperties?: boolean;
  readonly items?: SchemaNode;
  readonly minItems?: number;
  readonly maxItems?: number;
  readonly minLength?: number;
  readonly maxLength?: number;
  readonly pattern?: string;
  readonly minimum?: number;
  readonly maximum?: number;
  readonly anyOf?: readonly SchemaNode[];
  readonly const?: unknown;
  /** Replaces the type-mismatch reason's first half ("Expected ..."), as VS Code shows it. */
  readonly errorMessage?: string;
  /** The reason for a string that does not match `pattern` (VS Code's keyword). */
  readonly patternErrorMessage?: string;
  /**
   * A part checked by its own parser, whose reasons know its grammar: `dialect` (a policy body,
   * src/policy/network-body.ts), `overlay` (src/policy/overlay.ts). Its shape here is for editors.
   */
  readonly 'x-checked-by'?: 'dialect' | 'overlay';
}

/** The keywords this reader acts on; annotations (title, description, default, $id...) are read by people and editors. */
const KEYWORDS = new Set([
  'type',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'minItems',
  'maxItems',
  'minLength',
  'maxLength',
  'pattern',
  'minimum',
  'maximum',
  'anyOf',
  'const',
  'errorMessage',
  'patternErrorMessage',
  'x-checked-by',
]);
const ANNOTATIONS = new Set(['$schema', '$id', 'title', 'description', 'default', 'examples', 'markdownDescription', 'readOnly', 'writeOnly', 'deprecated']);

const vetted = new WeakSet<object>();
const patterns = new WeakMap<object, RegExp>();

/** Refuses a schema with a keyword this reader would ignore (a programming error, found by the first check). */
function vet(s: SchemaNode): void {
  if (vetted.has(s)) return;
  for (const k of Object.keys(s)) {
    if (!KEYWORDS.has(k) && !ANNOTATIONS.has(k)) throw new Error(`Schema keyword ${quote(k)} is not supported by src/schema/check.ts`);
  }
  if (s.pattern !== undefined) patterns.set(s, new RegExp(s.pattern, 'u'));
  vetted.add(s);
}

function typeMatches(s: SchemaNode, v: unknown): boolean {
  switch (s.type) {
    case 'object':
      return isPlainObject(v);
    case 'array':
      return Array.isArray(v);
    case 'string':
      return typeof v === 'string';
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    case 'boolean':
      return typeof v === 'boolean';
    case 'null':
      return v === null;
    default:
      return true;
  }
}

/** "Expected ..." for a value of the wrong type or out of range, in the words operators have seen since 0.1. */
function expected(s: SchemaNode): string {
  if (s.errorMessage !== undefined) return s.errorMessage;
  if (s.const !== undefined) return `Expected ${JSON.stringify(s.const)}`;
  switch (s.type) {
    case 'object':
      return 'Expected an object';
    case 'array':
      return s.items?.type === 'string' ? 'Expected a list of strings' : 'Expected a list';
    case 'string':
      return (s.minLength ?? 0) > 0 ? 'Expected a non-empty string' : 'Expected a string';
    case 'integer':
      return `Expected an integer from ${s.minimum ?? Number.MIN_SAFE_INTEGER} to ${s.maximum ?? Number.MAX_SAFE_INTEGER}`;
    case 'number':
      return `Expected a number from ${s.minimum ?? -Infinity} to ${s.maximum ?? Infinity}`;
    case 'boolean':
      return 'Expected true or false';
    case 'null':
      return 'Expected null';
    default:
      return 'Expected a value';
  }
}

const isEnum = (s: SchemaNode): boolean => s.anyOf !== undefined && s.anyOf.every((b) => b.const !== undefined);

/** Whether `v` satisfies `s`, without collecting reasons. */
export function conforms(schema: object, v: unknown): boolean {
  const s = schema as SchemaNode;
  const sink = {
    n: 0,
    add(): void {
      this.n++;
    },
  };
  walk(s, v, '', '', sink);
  return sink.n === 0;
}

interface Sink {
  add(field: string, reason: string): void;
}

/**
 * Checks `value` against `schema`; each problem goes to `issues` under its path below `field`
 * (`sandboxes[2].limits.burst`). Returns whether there was none. Parts marked
 * `x-checked-by` are left to their own parser. `root` names the document itself in
 * a reason about it (`(root)` in a config file; '' for a request body).
 */
export function check(schema: object, value: unknown, field: string, issues: CappedIssues, root = ''): boolean {
  let n = 0;
  walk(schema as SchemaNode, value, field, root, {
    add(f, r) {
      n++;
      issues.add(f, r);
    },
  });
  return n === 0;
}

function walk(s: SchemaNode, v: unknown, field: string, root: string, out: Sink): void {
  vet(s);
  if (s['x-checked-by'] !== undefined) return;
  const at = field === '' ? root : field;
  if (s.anyOf !== undefined) {
    if (isEnum(s)) {
      if (!s.anyOf.some((b) => b.const === v))
        out.add(at, `${s.errorMessage ?? `Expected one of ${s.anyOf.map((b) => String(b.const)).join(', ')}`}, got ${describe(v)}`);
      return;
    }
    if (s.anyOf.some((b) => conforms(b, v))) return;
    // The branch of the value's own type explains best ("sources[1]: Expected an IPv4 ...");
    // with none, the union's own message.
    const branch = s.anyOf.find((b) => b.const === undefined && b.anyOf === undefined && typeMatches(b, v));
    if (branch !== undefined) walk(branch, v, field, root, out);
    else out.add(at, `${s.errorMessage ?? `Expected ${s.anyOf.map((b) => expected(b).replace(/^Expected /, '')).join(' or ')}`}, got ${describe(v)}`);
    return;
  }
  if (s.const !== undefined) {
    if (v !== s.const) out.add(at, `${expected(s)}, got ${describe(v)}`);
    return;
  }
  if (!typeMatches(s, v)) {
    out.add(at, `${expected(s)}, got ${describe(v)}`);
    return;
  }
  switch (s.type) {
    case 'object': {
      const o = v as Record<string, unknown>;
      const props = s.properties ?? {};
      const known = Object.keys(props);
      if (s.additionalProperties === false) {
        for (const k of Object.keys(o))
          if (!Object.hasOwn(props, k)) out.add(joinField(field, k), `Unknown field ${quote(k)}; known fields are ${known.join(', ')}`);
      }
      for (const k of s.required ?? []) if (o[k] === undefined) out.add(joinField(field, k), `Missing required field ${quote(k)}`);
      for (const k of known) if (o[k] !== undefined) walk(props[k]!, o[k], joinField(field, k), root, out);
      return;
    }
    case 'array': {
      const a = v as unknown[];
      if (s.maxItems !== undefined && a.length > s.maxItems) {
        out.add(at, `Expected at most ${s.maxItems} entries, got ${a.length}`);
        return;
      }
      if (s.minItems !== undefined && a.length < s.minItems) out.add(at, s.errorMessage ?? `Expected at least ${s.minItems} entries, got ${a.length}`);
      if (s.items !== undefined) for (let i = 0; i < a.length; i++) walk(s.items, a[i], `${field}[${i}]`, root, out);
      return;
    }
    case 'string': {
      const t = v as string;
      if (t.length < (s.minLength ?? 0)) out.add(at, `${expected(s)}, got ${describe(v)}`);
      else if (s.maxLength !== undefined && t.length > s.maxLength) out.add(at, `Expected at most ${s.maxLength} characters, got ${t.length}`);
      else if (s.pattern !== undefined && !patterns.get(s)!.test(t))
        out.add(at, `${s.patternErrorMessage ?? `Expected a string matching ${s.pattern}`}, got ${quote(t)}`);
      return;
    }
    case 'integer':
    case 'number': {
      const x = v as number;
      if ((s.minimum !== undefined && x < s.minimum) || (s.maximum !== undefined && x > s.maximum)) out.add(at, `${expected(s)}, got ${describe(v)}`);
      return;
    }
    default:
      return;
  }
}
