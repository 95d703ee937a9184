// Reads a configuration file (YAML, or JSON alone for a file named `.json`) and validates it. A
// file that cannot be read or parsed, or that has any invalid key, is refused with the file, the key and the
// reason; the caller keeps whatever configuration it was running.

import { readBounded } from '../util/read-bounded.ts';
import { type Locate, readYaml } from '../util/yaml-read.ts';
import { namesJson } from '../util/json-read.ts';
import { utf8Text } from '../util/utf8-text.ts';
import { ConfigReadError, InvalidConfigError } from '../errors.ts';
import { systemError } from '../util/system-error.ts';
import { type Config, validateConfig } from './schema.ts';
import { catalogProblems } from './policy-settings.ts';

/**
 * Parses YAML text, or JSON alone when `file` is named `.json`; duplicate keys and syntax errors
 * are refusals, not warnings. `document` names
 * the document in the error ("configuration", or "policy" for `egressd decide --policy`).
 */
export function parseConfigText(text: string, file: string, document = 'configuration'): unknown {
  return parseConfigDocument(text, file, document).value;
}

/** As parseConfigText, with where each field is written (for the problems validation finds). */
export function parseConfigDocument(text: string, file: string, document = 'configuration'): { value: unknown; locate: Locate } {
  const r = readYaml(text, { json: namesJson(file) });
  if (r.ok) return { value: r.value, locate: r.locate };
  // What is wrong, where, and its code, so no one has to guess.
  const at = r.position ? `, line ${r.position.line}, column ${r.position.column}` : '';
  throw new ConfigReadError(file, `${r.reason} (${r.syntax} ${r.code}${at})${r.snippet ? `\n${r.snippet}` : ''}`, r.cause, r.position, document);
}

/**
 * The file's bytes as text, or a ConfigReadError at the first byte that is not UTF-8: decoded
 * leniently, such a byte was read as U+FFFD, another text than the file's.
 */
export function configText(bytes: Uint8Array, file: string, document = 'configuration'): string {
  const t = utf8Text(bytes);
  if (t.ok) return t.text;
  const { line, column } = t.position;
  throw new ConfigReadError(
    file,
    `Not UTF-8: byte ${t.byte} (offset ${t.offset}) starts no UTF-8 character there; save the file as UTF-8 (line ${line}, column ${column})`,
    null,
    t.position,
    document,
  );
}

/** As parseConfigDocument, from the file's bytes (configText). */
export function parseConfigBytes(bytes: Uint8Array, file: string, document = 'configuration'): { value: unknown; locate: Locate } {
  return parseConfigDocument(configText(bytes, file, document), file, document);
}

/**
 * `serving`: checked while egressd serves (a reload): its catalog file is read as loadCatalog's
 * `serving` says, and a file that holds no configuration is refused.
 */
export function configFromText(text: string, file: string, opts: { serving?: boolean } = {}): Config {
  const { value, locate } = parseConfigDocument(text, file);
  // At start-up an empty file is the built-in default, as no file is. Read again it is nearly
  // always a file caught while it is rewritten in place, or a write cut short (a full disk):
  // taken as every default, it dropped the overlays, the file's sandboxes and admin.token.
  if (opts.serving === true && (value === null || value === undefined)) {
    throw new ConfigReadError(
      file,
      'it holds no configuration (empty, or comments only): a file being rewritten, or a write cut short? The running configuration stays; a configuration of every default is written "{}"',
    );
  }
  const result = validateConfig(value);
  if (!result.ok) throw new InvalidConfigError(file, result.issues, locate);
  // The catalog is part of the config: its problems are this file's, at the fields that name it.
  const catalog = catalogProblems(result.config, opts);
  if (catalog.length > 0) throw new InvalidConfigError(file, catalog, locate);
  return result.config;
}

/**
 * The configuration in `file` (null: the built-in default). `again`: a reload (SIGHUP). A pipe
 * given at start-up (`--config <(generate)`, `/dev/stdin`) was read to its end then: read again it
 * gave nothing, taken for an empty file, a valid configuration without a sandbox, which replaced
 * the running one. Read again, a file that is not a regular file and gives nothing is refused, a
 * FIFO is waited for AGAIN_WAIT_MS at most (readBounded), the catalog file must be a regular
 * file (it is read on the event loop), and a file that holds no configuration (empty, or
 * comments only) is refused.
 */
export async function loadConfig(file: string | null, opts: { again?: boolean } = {}): Promise<Config> {
  if (file === null) return configFromText('', '(built-in default)');
  let bytes: Buffer;
  try {
    bytes = await readBounded(file, undefined, { again: opts.again === true });
  } catch (err) {
    throw new ConfigReadError(file, systemError(err), err);
  }
  return configFromText(configText(bytes, file), file, opts.again === true ? { serving: true } : {});
}
