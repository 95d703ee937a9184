// Small helpers for validating a wire document (YAML or JSON, already parsed) into a model while
// collecting every issue with its field path, instead of stopping at the first one.

import { joinField, type CappedIssues } from './issues.ts';

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Quotes a value for an error message without letting hostile input flood the log. */
export function quote(v: unknown): string {
  let s: string;
  try {
    s = typeof v === 'string' ? v : (JSON.stringify(v) ?? String(v));
  } catch {
    s = String(v);
  }
  if (s.length > 80) s = `${s.slice(0, 77)}...`;
  return JSON.stringify(s);
}

/** Refuses keys outside `known`; returns the object or undefined (with an issue) when it is not one. */
export function objectWithKeys(v: unknown, field: string, known: readonly string[], issues: CappedIssues): Record<string, unknown> | undefined {
  if (!isPlainObject(v)) {
    issues.add(field || '(root)', `Expected an object, got ${describe(v)}`);
    return undefined;
  }
  for (const k of Object.keys(v)) {
    if (!known.includes(k)) issues.add(joinField(field, k), `Unknown field ${quote(k)}; known fields are ${known.join(', ')}`);
  }
  return v;
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${quote(v)}`;
  return `${typeof v} ${quote(v)}`;
}

export function optString(v: unknown, field: string, issues: CappedIssues): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') {
    issues.add(field, `Expected a non-empty string, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

export function optInt(v: unknown, field: string, min: number, max: number, issues: CappedIssues): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    issues.add(field, `Expected an integer from ${min} to ${max}, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

export function optBool(v: unknown, field: string, issues: CappedIssues): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') {
    issues.add(field, `Expected true or false, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

export function optEnum<T extends string>(v: unknown, field: string, values: readonly T[], issues: CappedIssues): T | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    issues.add(field, `Expected one of ${values.join(', ')}, got ${describe(v)}`);
    return undefined;
  }
  return v as T;
}

export function optStringArray(v: unknown, field: string, issues: CappedIssues): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) {
    issues.add(field, `Expected a list of strings, got ${describe(v)}`);
    return undefined;
  }
  const out: string[] = [];
  v.forEach((item, i) => {
    if (typeof item !== 'string' || item === '') issues.add(`${field}[${i}]`, `Expected a non-empty string, got ${describe(item)}`);
    else out.push(item);
  });
  return out;
}

/** Deep-freezes a validated model so nothing downstream can mutate it by accident. */
export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}
