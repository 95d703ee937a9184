// Reads a configuration file (YAML, which includes JSON) and validates it. A file that cannot
// be read or parsed, or that has any invalid key, is refused with the file, the key and the
// reason; the caller keeps whatever configuration it was running.

import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import { ConfigReadError, InvalidConfigError } from '../errors.ts';
import { systemError } from '../util/system-error.ts';
import { type Config, validateConfig } from './schema.ts';

/**
 * Parses YAML/JSON text; duplicate keys and syntax errors are refusals, not warnings. `document` names
 * the document in the error ("configuration", or "policy" for `egressd decide --policy`).
 */
export function parseConfigText(text: string, file: string, document = 'configuration'): unknown {
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true, strict: true });
  if (doc.errors.length > 0) {
    // The first error, as the yaml library words it ("... at line 2, column 1:" then the lines
    // around it with a caret): what is wrong, where, and its code, so no one has to guess.
    const first = doc.errors[0]!;
    const [head = 'YAML syntax error', ...context] = first.message.split('\n');
    const what = head.replace(/ at line \d+, column \d+:?$/, '');
    const pos = first.linePos?.[0];
    const snippet = context.join('\n').replace(/^\n+|\n+$/g, '');
    throw new ConfigReadError(
      file,
      `${what} (YAML ${first.code}${pos ? `, line ${pos.line}, column ${pos.col}` : ''})${snippet ? `\n${snippet}` : ''}`,
      first,
      pos ? { line: pos.line, column: pos.col } : null,
      document,
    );
  }
  return doc.toJS({ maxAliasCount: 100 });
}

export function configFromText(text: string, file: string): Config {
  const result = validateConfig(parseConfigText(text, file));
  if (!result.ok) throw new InvalidConfigError(file, result.issues);
  return result.config;
}

export async function loadConfig(file: string | null): Promise<Config> {
  if (file === null) return configFromText('', '(built-in default)');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigReadError(file, systemError(err), err);
  }
  return configFromText(text, file);
}
