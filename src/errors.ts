// The error-code table. Every error egressd raises on purpose is one class here, with a stable
// `code` (EGRESSD_ERR_*) that tests pin and docs list. Messages are sentence case and quote the
// offending value; `cause` carries the underlying error when there is one.

import type { FieldIssue } from './util/issues.ts';

export const ERROR_CODES = {
  EGRESSD_ERR_INVALID_POLICY: 'A policy failed validation; nothing was changed',
  EGRESSD_ERR_INVALID_CONFIG: 'The configuration file failed validation; nothing was changed',
  EGRESSD_ERR_CONFIG_READ: 'The configuration file could not be read or parsed',
  EGRESSD_ERR_USAGE: 'A command-line usage error',
  EGRESSD_ERR_NATIVE_ADDON: 'The original-destination addon could not be loaded',
  EGRESSD_ERR_ORIGINAL_DST: 'getsockopt(SO_ORIGINAL_DST) failed with an unexpected errno',
  EGRESSD_ERR_STATE_INVALID: 'The state (state.path) could not be read whole or failed validation; egressd did not start and wrote nothing',
  EGRESSD_ERR_STATE_WRITE: 'A change could not be made durable in the state (state.path); nothing was changed',
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
export function formatIssues(issues: readonly FieldIssue[]): string {
  return issues.map((i) => `${i.field}: ${i.reason}`).join('\n');
}

export class InvalidPolicyError extends EgressdError {
  readonly issues: readonly FieldIssue[];
  constructor(issues: readonly FieldIssue[]) {
    super('EGRESSD_ERR_INVALID_POLICY', `Invalid policy:\n${formatIssues(issues)}`);
    this.name = 'InvalidPolicyError';
    this.issues = issues;
  }
}

export class InvalidConfigError extends EgressdError {
  readonly file: string;
  readonly issues: readonly FieldIssue[];
  constructor(file: string, issues: readonly FieldIssue[]) {
    super('EGRESSD_ERR_INVALID_CONFIG', `Invalid configuration in "${file}":\n${formatIssues(issues)}`);
    this.name = 'InvalidConfigError';
    this.file = file;
    this.issues = issues;
  }
}

export class ConfigReadError extends EgressdError {
  /** Where a syntax error is (1-based), when the file could be read but not parsed. */
  readonly position: { readonly line: number; readonly column: number } | null;
  constructor(file: string, detail: string, cause?: unknown, position: { line: number; column: number } | null = null) {
    const at = position ? `${file}:${position.line}:${position.column}: ` : '';
    super('EGRESSD_ERR_CONFIG_READ', `${at}Cannot read configuration "${file}": ${detail}`, { cause });
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
    const lines = issues.map((i) => `  ${[i.entry, i.field].filter((x) => x !== '').join(' ')}: ${i.reason}`);
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
