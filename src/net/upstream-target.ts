// Chooses the addresses to dial, defeating SNI/Host spoofing: code in a sandbox can send
// `SNI: innocent.example` to an attacker's address. Every connection that carries a name is
// dialed the way `upstream.dial` says for that name, whatever rule allowed it (issue 10 §7: a
// presented name is honoured under every mode, so an innocent name does not open a denied
// name's address):
//
//   resolved (default)  the original destination if it is one of the name's addresses, then
//                       the name's other allowed addresses; else the name's allowed addresses
//   verify              the original destination only, and only if it is one of the name's
//                       addresses, else refuse
//   original            trust the original destination (the three platforms' behaviour)
//
// A connection without a name is dialed at its original destination: it was judged by address
// and port alone. Every candidate is re-judged by the policy on its own address (`allows`), so
// a name that resolves to a protected address (DNS rebinding, metadata) is never dialed unless
// unlocked. The candidates come in the order they are tried (address-order.ts).

import { isIP } from 'node:net';
import { canonicalSource, withoutZone } from '../match/ip.ts';
import { orderAddresses } from './address-order.ts';
import type { NameResolver, ResolveResult } from './resolve.ts';

/** How the addresses to dial are chosen (see the header). */
export type DialMode = 'resolved' | 'verify' | 'original';

/** Why no address could be chosen. */
export type TargetReason = 'dns-failure' | 'dns-mismatch' | 'no-allowed-address';

/** The upstream's part of the outcome reasons: no address chosen, or none answered. */
export type UpstreamReason = TargetReason | 'upstream-failed';

/**
 * `aliases`: the CNAME targets the name's chain ran through, when it was resolved (ResolveResult):
 * the caller judges them before dialing (net/connection.ts).
 */
export type UpstreamTarget =
  { ok: true; addresses: readonly string[]; how: 'original' | 'resolved'; aliases?: readonly string[] } | { ok: false; reason: TargetReason; detail: string };

export interface UpstreamQuery {
  readonly mode: DialMode;
  /** The normalized name the client presented, or null. */
  readonly name: string | null;
  readonly original: string;
  readonly port: number;
  /** Only `resolve` and `cached` are used, so a test can hand in a stub. */
  readonly resolver: Pick<NameResolver, 'resolve'> & Partial<Pick<NameResolver, 'cached'>>;
  readonly allows: (address: string) => boolean;
}

/** `signal`: the caller leaves the lookup when it aborts (NameResolver.resolve); what it settles with is then moot. */
export async function chooseUpstream(q: UpstreamQuery, signal?: AbortSignal): Promise<UpstreamTarget> {
  return chooseUpstreamNow(q) ?? targetOf(q, await q.resolver.resolve(q.name!, undefined, signal));
}

/**
 * chooseUpstream's answer when it needs no wait (no name, `original`, or the name's addresses
 * cached), else null: the caller then awaits chooseUpstream.
 */
export function chooseUpstreamNow(q: UpstreamQuery): UpstreamTarget | null {
  if (q.name === null || q.mode === 'original') return { ok: true, addresses: [q.original], how: 'original' };
  const r = q.resolver.cached?.(q.name) ?? null;
  return r === null ? null : targetOf(q, r);
}

function targetOf(q: UpstreamQuery, r: ResolveResult): UpstreamTarget {
  if (!r.ok) return { ok: false, reason: 'dns-failure', detail: `Resolving "${q.name}" failed: ${r.cause}` };
  const t = chosen(q, r);
  return t.ok && r.aliases !== undefined && r.aliases.length > 0 ? { ...t, aliases: r.aliases } : t;
}

function chosen(q: UpstreamQuery, r: ResolveResult & { ok: true }): UpstreamTarget {
  // A link-local original destination carries its zone, which no DNS answer does: compared by
  // its address, dialed as it is (on the link the connection came in on).
  const original = canonicalSource(withoutZone(q.original));
  const resolvedText = (): string => r.addresses.map((a) => canonicalSource(a) ?? a).join(', ') || 'none';
  let hasOriginal = false;
  // The name's other addresses the policy allows, in the resolver's order; made only when there
  // is one (a name usually has the one address the client dialed: no array, no ordering).
  let others: string[] | null = null;
  for (const a of r.addresses) {
    const c = canonicalSource(a) ?? a;
    if (c === original) hasOriginal = true;
    else if (q.mode !== 'verify' && q.allows(c)) (others ??= []).push(c);
  }
  if (q.mode === 'verify') {
    if (hasOriginal) return { ok: true, addresses: [q.original], how: 'original' };
    return { ok: false, reason: 'dns-mismatch', detail: `"${q.original}" is not an address of "${q.name}" (${resolvedText()})` };
  }
  const ordered = others === null ? null : orderAddresses(others, isIP(original ?? '') === 6 ? 6 : 4);
  // The original destination was judged already (the verdict); it is tried first.
  if (hasOriginal) return { ok: true, addresses: ordered === null ? [q.original] : [q.original, ...ordered], how: 'original' };
  if (ordered === null || ordered.length === 0) {
    return { ok: false, reason: 'no-allowed-address', detail: `No address of "${q.name}" is allowed (${resolvedText()})` };
  }
  return { ok: true, addresses: ordered, how: 'resolved' };
}
