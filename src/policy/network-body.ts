// A sandbox's network policy in any of the three platforms' dialects, recognized by its keys
// and translated into the canonical model by one path (STYLE.md principle 6): the API, the
// config file and the state file all come through here, so a body means the same everywhere.
//
//   sandbox0 (sandbox0 "Network Policy")      mode, egress
//   Daytona (the Daytona documents)  networkBlockAll, networkAllowList, domainAllowList
//   Novita/E2B (Novita "Internet access")    allowInternetAccess, network
//
// A body uses one dialect: keys of two are refused rather than merged, since the dialects
// disagree on what an absent key means. An empty body has no dialect's keys; every dialect
// reads it as full access (Daytona "Network Configuration" "By default, sandboxes have full network access", sandbox0 "Network Policy"
// "allow-all ... Default", Novita "Internet access" "Internet access is turned on by default"), and it is
// translated as Daytona's.

import { describe, isPlainObject, quote } from '../util/fields.ts';
import { parseDaytona } from './dialects/daytona.ts';
import { parseNovita } from './dialects/novita.ts';
import { parseSandbox0 } from './dialects/sandbox0.ts';
import type { DialectResult } from './model.ts';
import type { FieldIssue } from '../util/issues.ts';

type Result = { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] };

interface Dialect {
  readonly label: string;
  readonly keys: readonly string[];
  readonly parse: (body: Readonly<Record<string, unknown>>) => Result;
}

const DIALECTS: readonly Dialect[] = [
  { label: 'sandbox0', keys: ['mode', 'egress'], parse: parseSandbox0 },
  { label: 'Daytona', keys: ['networkBlockAll', 'networkAllowList', 'domainAllowList'], parse: parseDaytona },
  { label: 'Novita', keys: ['allowInternetAccess', 'network'], parse: parseNovita },
];
const DAYTONA = DIALECTS[1]!;
const KNOWN = DIALECTS.map((d) => `${d.keys.join(', ')} (${d.label})`).join('; ');
/** Key issues past this are counted, not listed: a body with a million keys gets one line. */
const MAX_KEY_ISSUES = 20;

/**
 * The body's dialect, its policy and the two flags beside it, or every problem found, each
 * with its field path relative to the body ('' for the body itself). Never throws.
 */
export function parseNetworkBody(body: unknown): Result {
  if (!isPlainObject(body))
    return { ok: false, issues: [{ field: '', reason: `Expected an object with the keys of one dialect (${KNOWN}), got ${describe(body)}` }] };

  const issues: FieldIssue[] = [];
  let dropped = 0;
  const add = (field: string, reason: string): void => {
    if (issues.length < MAX_KEY_ISSUES) issues.push({ field, reason });
    else dropped++;
  };

  let chosen: Dialect | undefined;
  let firstKey = '';
  const own: Record<string, unknown> = {};
  for (const k of Object.keys(body)) {
    const d = DIALECTS.find((x) => x.keys.includes(k));
    if (d === undefined) add(k, `Unknown field ${quote(k)}; known fields are ${KNOWN}`);
    else if (chosen === undefined || chosen === d) {
      chosen = d;
      if (firstKey === '') firstKey = k;
      own[k] = body[k];
    } else {
      add(k, `Field ${quote(k)} belongs to the ${d.label} dialect but ${quote(firstKey)} to the ${chosen.label} dialect; a policy uses one dialect`);
    }
  }

  // The chosen dialect's own keys are still checked, so one answer lists every problem.
  const r = (chosen ?? DAYTONA).parse(own);
  if (issues.length === 0 && dropped === 0) return r;
  if (dropped > 0) issues.push({ field: '', reason: `${dropped} more unknown or mixed fields not shown` });
  return { ok: false, issues: r.ok ? issues : [...issues, ...r.issues] };
}
