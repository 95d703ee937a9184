// Records an allowed answer carries about names the sandbox's policy denies. An upstream may put
// them in any section: an A record of a denied host in the additional section, the NS and glue
// of a denied zone in the authority section, an MX, SRV or HTTPS record that points at a denied
// host. The sandbox would learn the denied host's addresses without ever asking for it, and
// could then connect to them without a name. They are withheld from the response, as BIND's and
// Unbound's `minimal-responses` leave out what a stub resolver does not need (a stub reads the
// answer section's chain and a negative answer's SOA, RFC 2308 §3, which is kept whatever its
// zone: it leads to no address, and without it the stub does not cache the negative answer). Cilium's DNS proxy forwards the upstream's message whole; egressd does not, because
// the additional section is where an address rides without a question.
//
// Pure: an answer and a judge in, the answer without the denied records out.

import type { Answer } from 'dns-packet';
import { ByteReader } from '../peek/byte-reader.ts';
import { HTTPS_TYPE, SVCB_TYPE } from './ech.ts';
import type { Answered } from './message.ts';

/**
 * The names one record leads a client to: its owner, and the host names in its RDATA that a
 * client resolves and connects to. Per type:
 * - CNAME (RFC 1034 §3.6.2) and DNAME (RFC 6672 §2): the target, an alias of the owner.
 * - NS (RFC 1035 §3.3.11): the name server; its glue in the additional section is that name's.
 * - MX (RFC 1035 §3.3.9): the exchange. SRV (RFC 2782): the target. NAPTR (RFC 3403 §4.1): the
 *   replacement, the next name looked up.
 * - SVCB and HTTPS (RFC 9460 §2.2): the TargetName. Its ipv4hint and ipv6hint (§7.3, §7.4) are
 *   addresses of the TargetName, so a denied TargetName withholds the hints with the record; a
 *   TargetName of "." means the owner itself (§2.5), judged anyway. RDATA that cannot be read to
 *   its TargetName yields null: the caller withholds what it cannot judge.
 * Left out: a PTR's target (RFC 1035 §3.3.12) names an address the client already holds. An SOA
 * is judged on no name, not even its owner: its owner is the zone of a negative answer, which a
 * stub caches only with the SOA (RFC 2308 §5: one without is not cached, so the stub would ask
 * again every time), and its MNAME and RNAME (RFC 1035 §3.3.13) name the zone's primary server
 * and a mailbox, nothing a stub dials;
 * RRSIG's signer and NSEC's next name are the zone's own DNSSEC bookkeeping.
 * Names are as written (any case, trailing dot or not); normalizing is the judge's.
 */
export function recordNames(r: Answer): string[] | null {
  if (r.type === 'SOA') return [];
  const names = [r.name];
  const data = (r as { data?: unknown }).data;
  switch (r.type as string) {
    case 'CNAME':
    case 'DNAME':
    case 'NS':
      if (typeof data === 'string') names.push(data);
      break;
    case 'MX':
      if (isObject(data) && typeof data['exchange'] === 'string') names.push(data['exchange']);
      break;
    case 'SRV':
      if (isObject(data) && typeof data['target'] === 'string') names.push(data['target']);
      break;
    case 'NAPTR':
      if (isObject(data) && typeof data['replacement'] === 'string') names.push(data['replacement']);
      break;
    case `UNKNOWN_${SVCB_TYPE}`:
    case `UNKNOWN_${HTTPS_TYPE}`: {
      if (!(data instanceof Uint8Array)) return null;
      const target = svcbTargetName(data);
      if (target === null) return null;
      if (target !== '') names.push(target);
      break;
    }
  }
  return names;
}

/**
 * `a` without the records that name (recordNames) a name `denied` holds true for, or whose names
 * cannot be read, in every section; and the denied names that withheld them (each once, as the
 * judge normalized them). The OPT
 * record is no part of `a` (message.ts Answered: it is added per response), and dns-packet
 * encodes the counts from what is left, so the message stays well formed. `denied` gets each name
 * as written and answers the normalized name it denied, or null.
 */
export function withoutDeniedRecords(a: Answered, denied: (name: string) => string | null): { answered: Answered; withheld: string[] } {
  const withheld = new Set<string>();
  const keep = (rs: readonly Answer[]): readonly Answer[] => {
    let out: Answer[] | null = null;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i]!;
      const names = recordNames(r);
      let deny: string | null = null;
      for (const n of names ?? []) {
        deny = denied(n);
        if (deny !== null) break;
      }
      if (names !== null && deny === null) {
        out?.push(r);
        continue;
      }
      if (deny !== null) withheld.add(deny);
      out ??= rs.slice(0, i);
    }
    return out ?? rs;
  };
  const answered = { ...a, answers: keep(a.answers), authorities: keep(a.authorities), additionals: keep(a.additionals) };
  return answered.answers === a.answers && answered.authorities === a.authorities && answered.additionals === a.additionals
    ? { answered: a, withheld: [] }
    : { answered, withheld: [...withheld] };
}

/**
 * The TargetName of SVCB/HTTPS RDATA (RFC 9460 §2.2: SvcPriority, then an uncompressed name),
 * without the trailing dot: '' for the root ("."), null when it does not read as one.
 */
function svcbTargetName(rdata: Uint8Array): string | null {
  const r = new ByteReader(rdata);
  if (r.u16() < 0) return null;
  const labels: string[] = [];
  for (;;) {
    const len = r.u8();
    if (len < 0 || len > 63) return null;
    if (len === 0) break;
    const start = r.offset;
    if (r.skip(len) < 0) return null;
    labels.push(Buffer.from(rdata.buffer, rdata.byteOffset + start, len).toString('latin1'));
  }
  return labels.join('.');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}
