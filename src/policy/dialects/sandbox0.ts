// The sandbox0 dialect (sandbox0 "Network Policy"): `{ mode, egress }`, egressd's own vocabulary. The document's
// parser is src/policy/parse-policy.ts; this adds the two platform behaviours beside the policy,
// neither of which sandbox0 "Network Policy" has.

import type { DialectResult } from '../model.ts';
import type { FieldIssue } from '../../util/issues.ts';
import { parsePolicyDocument } from '../parse-policy.ts';

type Result = { ok: true; value: DialectResult } | { ok: false; issues: FieldIssue[] };

/** A body holding only sandbox0's keys. Field paths in issues are relative to the body ('' is the body). */
export function parseSandbox0(body: Readonly<Record<string, unknown>>): Result {
  const r = parsePolicyDocument(body);
  if (!r.ok) {
    // parse-policy names the document itself "(root)"; a body is nested under another key
    // (`network`, `sandboxes.x.network`), where the empty path joins cleanly.
    return { ok: false, issues: r.issues.map((i) => (i.field === '(root)' ? { field: '', reason: i.reason } : i)) };
  }
  return { ok: true, value: { dialect: 'sandbox0', policy: r.value, essentialServices: false, dnsServersAllowed: false } };
}
