// The dialect suites' three questions about a sandbox's network body: what it parses to, which
// issues refuse it, and what verdict a connection gets under it.

import { compilePolicy, type SharedDomains } from '../../src/policy/compile.ts';
import { decide } from '../../src/policy/decide.ts';
import type { DialectResult } from '../../src/policy/model.ts';
import { parseNetworkBody } from '../../src/policy/network-body.ts';
import { compileProtected } from '../../src/match/protected.ts';
import type { FieldIssue } from '../../src/util/issues.ts';

const PROTECTED = compileProtected({});

/** The body's parse; throws with the issues when it is refused. */
export function parsed(body: unknown): DialectResult {
  const r = parseNetworkBody(body);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r.value;
}

/** The issues that refuse the body; throws when it parses. */
export function issuesOf(body: unknown): FieldIssue[] {
  const r = parseNetworkBody(body);
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.value)}`);
  return r.issues;
}

/**
 * The verdict for one connection (name, ip, port 443 unless given) under a body, default
 * protected ranges, and `catalog` joined to the allowed names when the body asks for the
 * essential services, as the store joins it.
 */
export function verdictOf(body: unknown, catalog: SharedDomains | null = null): (name: string | null, ip: string, port?: number) => 'allow' | 'refuse' {
  const r = parsed(body);
  const compiled = compilePolicy(r.policy, PROTECTED, r.essentialServices ? catalog : null);
  return (name, ip, port = 443) => decide(compiled, { name, ip, port }).verdict;
}
