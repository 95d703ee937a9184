// The `dns-query` log line: one per query the DNS listener judges, in Elastic Common Schema
// (ECS) field names, declared once in QUERY_FIELDS and built from it as the connection line is
// (observability/ecs-line.ts; docs/logs.md's list is generated from it, npm run docs:tables).
// ECS has `source`, `rule` and `dns` as objects: a top-level string there breaks an ECS index.

import { ecsIp, lineBuilder, networkTypeOf, outcomeOf, zoneOf, type LogField } from '../observability/ecs-line.ts';
import type { Logger } from '../observability/logger.ts';
import { RCODE, type RcodeName } from './message.ts';
import type { Transport } from './service.ts';

/** What one query's line records; absent values are left out of the line. */
export interface QueryLog {
  /** The sandbox the source belongs to, null when none. */
  readonly sandbox: string | null;
  /** The querier's address (canonical, no port). */
  readonly source: string;
  readonly transport: Transport;
  /** The question's name as asked, and its type (`A`, `TXT`, …), when a question could be read. */
  readonly name?: string | undefined;
  readonly type?: string | undefined;
  /** `would-refuse`: report-only mode answered a name the policy would not reach. */
  readonly verdict: 'allow' | 'refuse' | 'would-refuse' | 'error';
  readonly reason: string;
  /** The policy rule (or `dns.zones` entry) that decided, as written. */
  readonly rule?: string | null;
  /** The RCODE answered: a name, or the upstream's number (written by name when it has one). */
  readonly rcode?: RcodeName | number;
  readonly cached?: boolean;
  /** What went wrong, for `malformed` and `error` lines. */
  readonly detail?: string;
  /** How many lines of this sandbox, verdict and reason were left out since the last written (dns/query-lines.ts). */
  readonly suppressed?: number;
  /** Answered lines: the denied names whose records were withheld from the answer (denied-records.ts). */
  readonly withheld?: readonly string[];
  /** Answered lines, report-only mode: the denied names whose records enforcing would have withheld. */
  readonly wouldWithhold?: readonly string[];
}

const RCODE_NAME = new Map<number, string>(Object.entries(RCODE).map(([k, v]) => [v, k]));
const CATEGORY = ['network'] as const;
const TYPE = ['protocol'] as const;

export const QUERY_FIELDS: readonly LogField<QueryLog>[] = [
  { name: 'event.action', type: 'keyword', description: 'Always `dns-query`.', value: () => 'dns-query' },
  { name: 'event.kind', type: 'keyword', description: 'Always `event`.', value: () => 'event' },
  { name: 'event.category', type: 'keyword[]', description: 'Always `["network"]`.', value: () => CATEGORY },
  { name: 'event.type', type: 'keyword[]', description: 'Always `["protocol"]`.', value: () => TYPE },
  {
    name: 'event.outcome',
    type: 'keyword',
    description: '`success` when the name was answered (`allow`, `would-refuse`), `failure` when it was refused or failed.',
    value: (q) => outcomeOf(q.verdict),
  },
  {
    name: 'event.reason',
    type: 'keyword',
    description:
      "Why: `policy`, `zone` (an operator's `dns.zones`), `report-only`, `not-allowed`, `deny-rule`, `invalid-name`, `malformed`, `rate-limited`, `inflight-limited`, `upstream-failed` or `unencodable`.",
    value: (q) => q.reason,
  },
  { name: 'source.ip', type: 'ip', description: "The querier's address, without a zone as on the connection line.", value: (q) => ecsIp(q.source) },
  {
    name: 'observer.ingress.interface.name',
    type: 'keyword',
    description: "A link-local querier's interface (its address's zone), as on the connection line; absent for any other address.",
    value: (q) => zoneOf(q.source),
  },
  { name: 'network.transport', type: 'keyword', description: '`udp` or `tcp`.', value: (q) => q.transport },
  { name: 'network.protocol', type: 'keyword', description: 'Always `dns`.', value: () => 'dns' },
  { name: 'network.type', type: 'keyword', description: "`ipv4` or `ipv6`, the querier's family.", value: (q) => networkTypeOf(q.source) },
  { name: 'dns.question.name', type: 'keyword', description: 'The name asked, as asked; absent when no question could be read.', value: (q) => q.name },
  { name: 'dns.question.type', type: 'keyword', description: 'Its type (`A`, `TXT`, …).', value: (q) => q.type },
  {
    name: 'dns.response_code',
    type: 'keyword',
    description: 'The RCODE answered (`NOERROR`, `NXDOMAIN`, `FORMERR`, …), on answered and malformed lines.',
    value: (q) => (typeof q.rcode === 'number' ? (RCODE_NAME.get(q.rcode) ?? String(q.rcode)) : q.rcode),
  },
  {
    name: 'rule.name',
    type: 'keyword',
    description:
      'The policy rule (or `dns.zones` entry) that decided, as written; `alias "name": <rule>` when the answer\'s CNAME or DNAME chain led to a name that rule denies.',
    value: (q) => q.rule,
  },
  {
    name: 'error.message',
    type: 'keyword',
    description: 'What went wrong, on `malformed`, `upstream-failed` and `unencodable` lines.',
    value: (q) => q.detail,
  },
  {
    name: 'egressd.verdict',
    type: 'keyword',
    description: '`allow`, `refuse`, `would-refuse` (report-only mode answered it; `rule.name` is the refusing rule) or `error`.',
    value: (q) => q.verdict,
  },
  { name: 'egressd.sandbox', type: 'keyword', description: 'The sandbox the querier belongs to; absent when it belongs to none.', value: (q) => q.sandbox },
  { name: 'egressd.cached', type: 'boolean', description: "Whether the answer came from egressd's cache.", value: (q) => q.cached },
  {
    name: 'egressd.suppressed',
    type: 'long',
    description:
      'How many lines of the same sandbox, verdict and reason were left out since the last one written: past the first, one such line a second is written (the last of that second), so lines plus these counts are every such query.',
    value: (q) => q.suppressed,
  },
  {
    name: 'egressd.dns_withheld',
    type: 'keyword[]',
    description:
      "On an answered line: the names a deny rule of the sandbox's denies whose records the answer carried besides its chain (an address in the additional section, an NS, MX, SRV or HTTPS record pointing at one), withheld from the answer.",
    value: (q) => q.withheld,
  },
  {
    name: 'egressd.dns_would_withhold',
    type: 'keyword[]',
    description:
      'On an answered line of report-only mode: the names whose records `egressd.dns_withheld` would list were the policy enforced; they were forwarded.',
    value: (q) => q.wouldWithhold,
  },
];

/** The query's fields as nested ECS objects (`{ source: { ip }, dns: { question: { name, type } }, … }`). */
export const queryLine: (q: QueryLog) => Record<string, unknown> = lineBuilder(QUERY_FIELDS);

/** Writes the query's line at `level` (info for refusals, debug for plain answers, warn for errors). */
export function logQuery(log: Logger, level: 'debug' | 'info' | 'warn', q: QueryLog): void {
  log[level](queryLine(q), 'dns query');
}
