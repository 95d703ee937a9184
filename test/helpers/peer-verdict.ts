// The verdict the data path gives a client's first flight under a sandbox's network body, without
// sockets: the peek's answer, the name normalized as connection.ts normalizes it, then decide().
// For the peer-case tables (test/unit/*/peer-cases-*.test.ts), which set what a peer does beside
// what egressd does. A connection with no name (none sent, or an address spelled as one) is
// judged by its destination alone, as the daemon judges one whose address no DNS answer gave.

import { expect, it } from 'vitest';
import { normalizeWireName } from '../../src/match/names.ts';
import { compileProtected } from '../../src/match/protected.ts';
import { parseClientHello } from '../../src/peek/tls-client-hello.ts';
import { parseHttpHead } from '../../src/peek/http-head.ts';
import { compilePolicy } from '../../src/policy/compile.ts';
import { decide } from '../../src/policy/decide.ts';
import { parsed } from './network-body.ts';

/** `allow`, `refuse`, or why the flight is refused before any rule: `malformed:<reason>`, `invalid-name`. */
export type PeerVerdict = 'allow' | 'refuse' | `malformed:${string}` | 'invalid-name' | 'need-more';

/** Where the tables' clients connect: an address no rule names (198.18.0.0/15, lifted from the protected ranges as the e2e rig lifts it). */
export const PEER_DESTINATION = '198.18.7.7';
const PROTECTED = compileProtected({ except: ['198.18.0.0/15'] });

/** An allow list (block-all + allowed.test and the names below it) and a deny list (allow-all − denied.test and below). */
export const ALLOW_LIST = { mode: 'block-all', egress: { allowed_domains: ['allowed.test', '*.allowed.test'] } };
export const DENY_LIST = { mode: 'allow-all', egress: { denied_domains: ['denied.test', '*.denied.test'] } };

/** The verdict for a raw name as the peek read it (null: none), under `body`. */
export function nameVerdict(body: unknown, raw: string | null, port = 443): PeerVerdict {
  const policy = compilePolicy(parsed(body).policy, PROTECTED);
  const judge = (name: string | null): PeerVerdict => decide(policy, { name, ip: PEER_DESTINATION, port }).verdict;
  if (raw === null) return judge(null);
  const n = normalizeWireName(raw);
  if (!n.ok) return 'invalid-name';
  return judge('name' in n ? n.name : null);
}

/** The verdict for a client's first TLS bytes under `body`. */
export function tlsVerdict(body: unknown, bytes: Uint8Array): PeerVerdict {
  const r = parseClientHello(bytes);
  if (r.kind === 'malformed') return `malformed:${r.reason}`;
  if (r.kind === 'need-more') return 'need-more';
  return nameVerdict(body, r.kind === 'hello' ? r.sni : null);
}

/** The verdict for a client's first HTTP bytes (latin1) under `body`. */
export function httpVerdict(body: unknown, head: string): PeerVerdict {
  const r = parseHttpHead(Buffer.from(head, 'latin1'));
  if (r.kind === 'malformed') return `malformed:${r.reason}`;
  if (r.kind === 'need-more') return 'need-more';
  return nameVerdict(body, r.kind === 'head' ? r.host : null, 80);
}

/** A row of the TLS and HTTP peer tables: the peer, what the case is and what the peer does, and egressd's two verdicts. */
export interface PeerRow {
  readonly peer: string;
  readonly it: string;
  /** egressd's verdict under ALLOW_LIST (allowed.test, *.allowed.test) and DENY_LIST (denied.test, *.denied.test). */
  readonly allowList: PeerVerdict;
  readonly denyList: PeerVerdict;
}

/** One test per row, named `peer: it`, that expects `verdict(body, row)` under ALLOW_LIST to be `allowList` and under DENY_LIST `denyList`. */
export function itJudgesEachRow<R extends PeerRow>(rows: readonly R[], verdict: (body: unknown, row: R) => PeerVerdict): void {
  it.each(rows.map((r) => [`${r.peer}: ${r.it}`, r] as const))('%s', (_, row) => {
    expect(verdict(ALLOW_LIST, row), 'allow list').toBe(row.allowList);
    expect(verdict(DENY_LIST, row), 'deny list').toBe(row.denyList);
  });
}
