// The error-code table. Every error egressd raises on purpose is one class here, with a stable
// `code` (EGRESSD_ERR_*) that tests pin and docs list, and every class here is raised somewhere
// (test/unit/errors.test.ts checks both). Messages are sentence case and quote the offending
// value; `cause` carries the underlying error when there is one. The admin API's wire codes
// (`not_found`, ...) are a second table, API_ERRORS, read by the server and pinned to
// docs/api.md by the docs test.

import type { FieldIssue } from './util/issues.ts';
import type { Locate } from './util/yaml-read.ts';

export const ERROR_CODES = {
  EGRESSD_ERR_INVALID_CONFIG: 'The configuration file failed validation; nothing was changed',
  EGRESSD_ERR_CONFIG_READ: 'The configuration file could not be read or parsed',
  EGRESSD_ERR_USAGE: 'A command-line usage error',
  EGRESSD_ERR_NATIVE_ADDON: 'The original-destination addon could not be loaded',
  EGRESSD_ERR_ORIGINAL_DST: 'getsockopt(SO_ORIGINAL_DST) failed with an unexpected errno',
  EGRESSD_ERR_STATE_INVALID: 'The state (state.path) could not be read whole or failed validation; egressd did not start and wrote nothing',
  EGRESSD_ERR_API_REQUEST: 'An admin API request was refused; the response carries its API error code',
  EGRESSD_ERR_COMMAND_FAILED: 'A system command egressd ran (iptables-restore, nft, ...) exited with an error',
  EGRESSD_ERR_STATE_WRITE: 'A change could not be made durable in the state (state.path); nothing was changed',
  EGRESSD_ERR_PORTS_SHARED:
    "Another process already listens on this egressd's endpoints, and this one keeps the API's sandboxes in memory (no state.path): egressd did not start, as the two would judge connections from different sandboxes",
  EGRESSD_ERR_STATE_REJECTED:
    'Another process wrote entries to the state (state.path) that fail validation; this one serves its last good view and refuses changes until they are fixed',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class EgressdError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EgressdError';
    this.code = code;
  }
}

/** Formats issues as `field: reason` lines, the shape every validation error prints. */
/**
 * One issue a line, `field: reason`; given where the fields are written (util/yaml-read.ts
 * `Locate`), each line ends ` (line L, column C)`, as a YAML syntax error's does. The field
 * stays first: what a reader (and a script) looks for.
 */
export function formatIssues(issues: readonly FieldIssue[], locate?: Locate): string {
  return issues
    .map((i) => {
      const pos = locate?.(i.field) ?? null;
      return `${i.field}: ${i.reason}${pos ? ` (line ${pos.line}, column ${pos.column})` : ''}`;
    })
    .join('\n');
}

export class InvalidConfigError extends EgressdError {
  readonly file: string;
  readonly issues: readonly FieldIssue[];
  constructor(file: string, issues: readonly FieldIssue[], locate?: Locate) {
    super('EGRESSD_ERR_INVALID_CONFIG', `Invalid configuration in "${file}":\n${formatIssues(issues, locate)}`);
    this.name = 'InvalidConfigError';
    this.file = file;
    this.issues = issues;
  }
}

export class ConfigReadError extends EgressdError {
  /** Where a syntax error is (1-based), when the file could be read but not parsed. */
  readonly position: { readonly line: number; readonly column: number } | null;
  constructor(file: string, detail: string, cause?: unknown, position: { line: number; column: number } | null = null, what = 'configuration') {
    const at = position ? `${file}:${position.line}:${position.column}: ` : '';
    super('EGRESSD_ERR_CONFIG_READ', `${at}Cannot read ${what} "${file}": ${detail}`, { cause });
    this.name = 'ConfigReadError';
    this.position = position;
  }
}

export class UsageError extends EgressdError {
  constructor(message: string) {
    super('EGRESSD_ERR_USAGE', message);
    this.name = 'UsageError';
  }
}

export class NativeAddonError extends EgressdError {
  constructor(detail: string, cause?: unknown) {
    super('EGRESSD_ERR_NATIVE_ADDON', `Cannot load the original-destination addon: ${detail}`, { cause });
    this.name = 'NativeAddonError';
  }
}

export class OriginalDstError extends EgressdError {
  readonly errno: string;
  constructor(errno: string, cause?: unknown) {
    super('EGRESSD_ERR_ORIGINAL_DST', `getsockopt(SO_ORIGINAL_DST) failed: "${errno}"`, { cause });
    this.name = 'OriginalDstError';
    this.errno = errno;
  }
}

/** One problem found in a stored state: which entry (`sandbox "sb-1"`, `sandboxes[3]`) and which field. */
export interface StateIssue {
  readonly entry: string;
  readonly field: string;
  readonly reason: string;
}

/**
 * The state could not be fully read (not a state, damaged, truncated) or an entry no longer
 * validates. Start-up stops: egressd never drops an entry and never writes over a state it
 * could not read whole.
 */
export class StateInvalidError extends EgressdError {
  readonly file: string;
  readonly issues: readonly StateIssue[];
  constructor(file: string, issues: readonly StateIssue[], cause?: unknown) {
    // An issue of the whole file has no entry or field: its reason alone, not ": reason".
    const lines = issues.map((i) => {
      const where = [i.entry, i.field].filter((x) => x !== '').join(' ');
      return `  ${where === '' ? '' : `${where}: `}${i.reason}`;
    });
    super(
      'EGRESSD_ERR_STATE_INVALID',
      `Cannot use the state "${file}" (${issues.length} problem${issues.length === 1 ? '' : 's'}); nothing was loaded or written, see docs/config.md "Recovering the state":\n${lines.join('\n')}`,
      { cause },
    );
    this.name = 'StateInvalidError';
    this.file = file;
    this.issues = issues;
  }
}

/**
 * A change could not be made durable. `errno` is the system error the storage reported
 * (ENOSPC, EROFS, EIO, ...); `detail` is the storage engine's own words.
 */
export class StateWriteError extends EgressdError {
  readonly file: string;
  readonly errno: string;
  readonly detail: string;
  constructor(file: string, errno: string, detail: string, cause?: unknown) {
    super('EGRESSD_ERR_STATE_WRITE', `Cannot write the state "${file}": ${errno} (${detail}); nothing was changed`, { cause });
    this.name = 'StateWriteError';
    this.file = file;
    this.errno = errno;
    this.detail = detail;
  }
}

/**
 * Another egressd on the same state (a rollout: docs/deployment.md) wrote what this one cannot
 * accept: an entry that fails validation, two sandboxes on one source, a schema it does not
 * read. This process keeps its last good view and refuses every change until the state is
 * whole again (docs/config.md "The state"), so that it never writes on top of the problem.
 */
export class StateRejectedError extends EgressdError {
  readonly file: string;
  readonly issues: readonly StateIssue[];
  constructor(file: string, issues: readonly StateIssue[]) {
    const lines = issues.map((i) => {
      const where = [i.entry, i.field].filter((x) => x !== '').join(' ');
      return `${where === '' ? '' : `${where}: `}${i.reason}`;
    });
    super(
      'EGRESSD_ERR_STATE_REJECTED',
      `Another process wrote to the state "${file}" what this egressd cannot accept, so it refuses changes until that is fixed: ${lines.join('; ')}`,
    );
    this.name = 'StateRejectedError';
    this.file = file;
    this.issues = issues;
  }
}

/**
 * The admin API's error codes: the HTTP status each is answered with and when. The server
 * answers with these codes only (ApiError takes its status from here), and docs/api.md's error
 * table lists exactly these rows (test/unit/deploy.test.ts).
 */
export const API_ERRORS = {
  invalid_json: { status: 400, when: 'The body is empty, not valid JSON, or gives one key of an object more than once (`field` names it).' },
  invalid_policy: { status: 400, when: "A sandbox's or organization's policy (`network`, `tier`, `reportOnly`) fails validation." },
  invalid_request: {
    status: 400,
    when: 'A body is malformed outside its policy (not an object, an unknown field, a bad `sources`, `org` or `limits`), or a `POST /api/v1/check` body, a query parameter or a precondition header is.',
  },
  unauthorized: { status: 401, when: 'No token, a wrong token, or no token configured.' },
  not_found: { status: 404, when: 'The sandbox, organization or route does not exist.' },
  method_not_allowed: { status: 405, when: 'The path exists but not with this method.' },
  conflict: { status: 409, when: 'The change contradicts the current state (a source owned elsewhere, a config-file sandbox).' },
  precondition_failed: { status: 412, when: 'An `If-Match` or `If-None-Match` header did not hold; the answer carries the current `ETag`.' },
  body_too_large: { status: 413, when: 'The body exceeds `admin.maxBodyBytes`.' },
  unsupported_media_type: { status: 415, when: '`Content-Type` is not `application/json`.' },
  internal: { status: 500, when: 'An unexpected failure; nothing was applied.' },
  state_write_failed: { status: 503, when: 'The change could not be made durable in `state.path`; nothing was changed.' },
  state_rejected: {
    status: 503,
    when: 'Another egressd on the same `state.path` wrote entries that fail validation; changes are refused until they are fixed (a `DELETE` of one is taken). Nothing was changed.',
  },
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;

/** An admin API request refused with one of API_ERRORS; `field` is the first offending field's path. */
export class ApiError extends EgressdError {
  readonly status: (typeof API_ERRORS)[ApiErrorCode]['status'];
  readonly apiCode: ApiErrorCode;
  readonly field: string | null;
  /** Response headers the error carries (a 412's current `ETag`). */
  readonly headers: Readonly<Record<string, string>>;
  constructor(
    status: (typeof API_ERRORS)[ApiErrorCode]['status'],
    apiCode: ApiErrorCode,
    message: string,
    field: string | null = null,
    headers: Readonly<Record<string, string>> = {},
  ) {
    super('EGRESSD_ERR_API_REQUEST', message);
    this.name = 'ApiError';
    // The table decides; call sites spell the status for the reader, and the docs test checks
    // that they agree with it.
    void status;
    this.status = API_ERRORS[apiCode].status;
    this.apiCode = apiCode;
    this.field = field;
    this.headers = headers;
  }
}

/** What a failed system command printed, for `egressd iptables`. */
export interface CommandOutput {
  readonly code: number | null;
  readonly stderr: string;
}

/** A system command egressd ran exited non-zero or could not start; `detail` adds its stderr and input. */
export class CommandFailed extends EgressdError {
  readonly detail: string;
  constructor(cmd: string, args: readonly string[], r: CommandOutput, input?: string) {
    const shown = [cmd, ...args].join(' ');
    const stdin = input === undefined ? '' : `\nits input was:\n${input.replace(/^/gm, '  ')}`;
    super('EGRESSD_ERR_COMMAND_FAILED', `Command failed (exit ${r.code ?? 'none'}): ${shown}`);
    this.name = 'CommandFailed';
    this.detail = `${this.message}\n${r.stderr.trim()}${stdin}`;
  }
}

/**
 * `serve` found another process listening on its endpoints (SO_REUSEPORT would have let it bind
 * beside it) while it keeps the API's sandboxes in memory: each process would hold the API changes
 * that reached it only, and the kernel would hand each new connection and API call to either.
 * `endpoints` are `kind host:port`, as the listener-shared line names them.
 */
export class PortsSharedError extends EgressdError {
  readonly endpoints: readonly string[];
  constructor(endpoints: readonly string[]) {
    super(
      'EGRESSD_ERR_PORTS_SHARED',
      `Another process already listens on ${endpoints.map((e) => `"${e}"`).join(', ')}, and this egressd keeps the API's sandboxes in memory (no state.path): ` +
        'the kernel would share connections and API calls between the two, each judging by the sandboxes it was given. ' +
        'Stop the other process; for a rollout beside a draining egressd, give both the same state.path (docs/deployment.md); ' +
        'or pass "serve --share-ports" when neither uses the API',
    );
    this.name = 'PortsSharedError';
    this.endpoints = endpoints;
  }
}
