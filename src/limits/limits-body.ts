// The `limits` object of a sandbox or organization body (config file and API alike) and of the
// config's `limits.sandbox` defaults: the same four keys everywhere.
//
//   { connections?: int, undecided?: int, perSecond?: int, burst?: int }
//
// Each key absent falls back to the organization's, then to the config's default.

import { CappedIssues, type FieldIssue } from '../util/issues.ts';
import { LIMIT_MAX } from '../schema/constants.ts';
import { LimitsBody } from '../schema/schemas.ts';
import { check } from '../schema/check.ts';

/** What one sandbox may hold and open. */
export interface SandboxLimits {
  /** Connections open at once (accepted and not yet closed). */
  readonly connections: number;
  /** Connections still being peeked (no verdict yet): what a slow-ClientHello flood holds. */
  readonly undecided: number;
  /** New connections per second, refilled continuously (a token bucket)... */
  readonly perSecond: number;
  /** ...holding at most this many at once (the burst a sandbox may open after a quiet spell). */
  readonly burst: number;
}

export type LimitsOverride = Partial<SandboxLimits>;

export const LIMIT_KEYS = ['connections', 'undecided', 'perSecond', 'burst'] as const;

/** The bounds every key is checked against: 1 to ten million (src/schema/constants.ts). */
export { LIMIT_MAX };

/**
 * Checks a `limits` object against the one schema (src/schema/define/bodies.ts `LimitsBody`); issues
 * name the key under `field` (e.g. `limits.perSecond`). Every key is optional and an integer
 * from 1 to 10,000,000.
 */
export function parseLimits(v: unknown, field: string): { ok: true; value: LimitsOverride } | { ok: false; issues: FieldIssue[] } {
  const issues = new CappedIssues();
  if (!check(LimitsBody, v, field, issues)) return { ok: false, issues: issues.result() };
  return { ok: true, value: Object.freeze({ ...(v as LimitsOverride) }) };
}

/** Each key from the first layer that sets it: the sandbox's, then its organization's, then the defaults. */
export function effectiveLimits(defaults: SandboxLimits, ...layers: (LimitsOverride | null | undefined)[]): SandboxLimits {
  const pick = (k: (typeof LIMIT_KEYS)[number]): number => {
    for (const l of layers) if (l?.[k] !== undefined) return l[k]!;
    return defaults[k];
  };
  return { connections: pick('connections'), undecided: pick('undecided'), perSecond: pick('perSecond'), burst: pick('burst') };
}
