// Text declared to be JSON (a `.json` file, an admin API body, a `--file` body) read as JSON and
// nothing else (RFC 8259): the YAML reader would take `{"a": }` as `a: null`, and unquoted keys,
// single quotes, comments and trailing commas besides.

import { duplicateKey } from './json-duplicate-key.ts';
import { jsonErrorOffset } from './json-error-offset.ts';

export type JsonRead =
  | { readonly ok: true; readonly value: unknown }
  | {
      readonly ok: false;
      /** `syntax`: the text is not JSON; `duplicate`: an object gives one key twice (RFC 8259 §4). */
      readonly kind: 'syntax' | 'duplicate';
      /**
       * For `syntax`, V8's words without the position it gives for some errors nor the text it
       * quotes around an unexpected token ("Expected property name or '}'"); for `duplicate`, the
       * key's path (`network.egress.allowed_ports`).
       */
      readonly detail: string;
      /** UTF-16 offset of the fault (for `duplicate`, the second occurrence's opening quote). */
      readonly offset: number;
      readonly cause: unknown;
    };

/**
 * Parses `text` as one JSON text, each object's keys unique (a policy whose reading depends on the
 * reader, the first or the last of two values, is refused). A byte order mark is an error here, as
 * to JSON.parse: a caller that reads a file drops it first (RFC 8259 §8.1).
 */
export function readJsonText(text: string): JsonRead {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const detail = (e as Error).message
      .replace(/ (?:in JSON )?at position \d+(?: \(line \d+ column \d+\))?/, '')
      .replace(/, (?:\.\.\.)?"[^]* is not valid JSON$/, '');
    return { ok: false, kind: 'syntax', detail, offset: jsonErrorOffset(text) ?? text.length, cause: e };
  }
  const dup = duplicateKey(text);
  if (dup !== null) return { ok: false, kind: 'duplicate', detail: dup.path, offset: dup.offset, cause: null };
  return { ok: true, value };
}

/** Whether a file's name declares it JSON (`.json`, any case): such a file is read as JSON alone. */
export const namesJson = (file: string): boolean => /\.json$/i.test(file);
