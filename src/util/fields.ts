// Small helpers for reading a wire document (YAML or JSON, already parsed): the plain-object
// test, and quoting and describing a value for a reason. Shapes are checked by src/schema/.

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

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${quote(v)}`;
  return `${typeof v} ${quote(v)}`;
}

/** Deep-freezes a validated model so nothing downstream can mutate it by accident. */
export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const k of Object.keys(v)) deepFreeze((v as Record<string, unknown>)[k]);
  }
  return v;
}
