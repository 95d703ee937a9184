// The error-code table. Every error egressd raises on purpose is one class here, with a stable
// `code` (EGRESSD_ERR_*) that tests pin and docs list. Messages are sentence case and quote the
// offending value; `cause` carries the underlying error when there is one.

import type { FieldIssue } from './policy/model.ts';

export const ERROR_CODES = {
  EGRESSD_ERR_INVALID_POLICY: 'A policy failed validation; nothing was changed',
  EGRESSD_ERR_INVALID_CONFIG: 'The configuration file failed validation; nothing was changed',
  EGRESSD_ERR_CONFIG_READ: 'The configuration file could not be read or parsed',
  EGRESSD_ERR_USAGE: 'A command-line usage error',
  EGRESSD_ERR_NATIVE_ADDON: 'The original-destination addon could not be loaded',
  EGRESSD_ERR_ORIGINAL_DST: 'getsockopt(SO_ORIGINAL_DST) failed with an unexpected errno',
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
  constructor(file: string, detail: string, cause?: unknown) {
    super('EGRESSD_ERR_CONFIG_READ', `Cannot read configuration "${file}": ${detail}`, { cause });
    this.name = 'ConfigReadError';
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
