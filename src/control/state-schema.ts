// The state file's schema versions, apart from the store that reads and writes it
// (state-store.ts), so that `egressd --version` can name them without loading node:sqlite.

/**
 * The schema this egressd writes. 2 has the tables of 1; it says that every process writing the
 * state reads the others' changes inside its write transaction (state-writer.ts), so an egressd
 * that would not (schema 1 only) refuses to start on it rather than hand out what another holds.
 * 3 adds config_claims: every process writing the state records there the sources its config
 * file gives out, and checks every change against the others' (control-plane.ts), so an egressd
 * that would not (schema 2) refuses to start on it rather than hand out a source another
 * process's config file holds.
 */
export const STATE_SCHEMA_VERSION = 3;
/** Schemas this egressd reads: 1 and 2 are raised to 3 once the state is opened for writing. */
export const STATE_SCHEMAS_READ: readonly number[] = [1, 2, 3];

/**
 * How an entry's body is selected, by the start-up read and by the writer thread alike: its type
 * (`type`, SQLite's typeof) and its bytes as stored (`body`), to be judged by storedBody. Selected
 * as text, node:sqlite decodes bytes that are not UTF-8 with U+FFFD in their place, silently.
 */
export const BODY_COLUMNS = 'typeof(body) AS type, CAST(body AS BLOB) AS body';
