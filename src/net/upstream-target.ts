// Chooses the address to dial, defeating SNI/Host spoofing: code in a sandbox can send
// `SNI: allowed.example` to an attacker's address. When a connection is allowed by its name,
// the name is resolved here and its own addresses are what may be dialed.
//
//   resolved (default)  the original destination if it is one of the name's addresses,
//                       else one of the name's addresses: the bytes reach the name's owner
//   verify              the original destination only if it is one of the name's addresses,
//                       else refuse
//   original            trust the original destination (the three platforms' behaviour)
//
// Every candidate is re-judged by the policy on its own address (`allows`), so a name that
// resolves to a protected address (DNS rebinding, metadata) is never dialed unless unlocked.

import { isIP } from 'node:net';
import { canonicalSource } from '../match/ip.ts';
import type { NameResolver } from './resolve.ts';

/** How the address to dial is chosen (see the header). */
export type DialMode = 'resolved' | 'verify' | 'original';

export type UpstreamTarget =
  { ok: true; address: string; how: 'original' | 'resolved' } | { ok: false; reason: 'dns-failure' | 'dns-mismatch' | 'no-allowed-address'; detail: string };

export interface UpstreamQuery {
  readonly mode: DialMode;
  readonly name: string | null;
  /** Whether the allow verdict came from a domain rule (rather than an address, port or mode). */
  readonly byName: boolean;
  readonly original: string;
  readonly port: number;
  /** Only `resolve` is used, so a test can hand in a stub. */
  readonly resolver: Pick<NameResolver, 'resolve'>;
  readonly allows: (address: string) => boolean;
}

export async function chooseUpstream(q: UpstreamQuery): Promise<UpstreamTarget> {
  if (!q.byName || q.name === null || q.mode === 'original') return { ok: true, address: q.original, how: 'original' };
  const r = await q.resolver.resolve(q.name);
  if (!r.ok) return { ok: false, reason: 'dns-failure', detail: `Resolving "${q.name}" failed: ${r.cause}` };
  const original = canonicalSource(q.original);
  const resolved = r.addresses.map((a) => canonicalSource(a) ?? a);
  if (resolved.includes(original ?? '')) return { ok: true, address: q.original, how: 'original' };
  if (q.mode === 'verify') {
    return {
      ok: false,
      reason: 'dns-mismatch',
      detail: `"${q.original}" is not an address of "${q.name}" (${resolved.join(', ') || 'none'})`,
    };
  }
  const allowed = resolved.filter((a) => q.allows(a));
  if (allowed.length === 0) {
    return { ok: false, reason: 'no-allowed-address', detail: `No address of "${q.name}" is allowed (${resolved.join(', ') || 'none'})` };
  }
  // Prefer the family the client used: its route to the upstream is known to exist.
  const family = isIP(original ?? '');
  return { ok: true, address: allowed.find((a) => isIP(a) === family) ?? allowed[0]!, how: 'resolved' };
}
