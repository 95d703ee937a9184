// `egressd iptables --backend nft`: the rule set as an `nft -f` file, one table per family.

import { type BuiltinChain, CHAINS, type Family, type Match, type PerSourceBucket, type RuleSet, type Target } from './rules.ts';

function nftMatch(m: Match, family: Family): string[] {
  const ip = family === 4 ? 'ip' : 'ip6';
  const a: string[] = [];
  // iptables spells an interface prefix "veth+", nftables "veth*".
  if (m.inInterface !== undefined) a.push(`iifname "${m.inInterface.replace(/\+$/, '*')}"`);
  if (m.outInterface !== undefined) a.push(`oifname "${m.outInterface.replace(/\+$/, '*')}"`);
  if (m.uid !== undefined) a.push(`meta skuid ${m.uid}`);
  if (m.source !== undefined) a.push(`${ip} saddr ${m.source}`);
  if (m.destination !== undefined) a.push(`${ip} daddr ${m.destination}`);
  if (m.protocol !== undefined) {
    if (m.dport !== undefined) a.push(`${m.protocol} dport ${m.dport}`);
    else if (m.icmpv6Type !== undefined) a.push(`icmpv6 type ${m.icmpv6Type}`);
    else a.push(`meta l4proto ${m.protocol}`);
  }
  if (m.syn !== undefined) a.push('tcp flags & (fin | syn | rst | ack) == syn');
  if (m.originalDestination !== undefined) a.push(`ct original ${ip} daddr ${m.originalDestination}`);
  if (m.originalDport !== undefined) a.push(`ct original proto-dst ${m.originalDport}`);
  if (m.originalDirection !== undefined) a.push('ct direction original');
  if (m.newConnection !== undefined) a.push('ct state new');
  if (m.untracked !== undefined) a.push('ct state invalid,untracked');
  if (m.related !== undefined) a.push('ct state related');
  if (m.overPerSource !== undefined) {
    const { bucket, perSecond, burst } = m.overPerSource;
    a.push(`update @${PER_SOURCE_SETS[bucket]} { ${ip} saddr limit rate over ${perSecond}/second burst ${burst} packets }`);
  }
  return a;
}

function nftTarget(t: Target, family: Family): string {
  switch (t.kind) {
    case 'jump':
      return `jump ${CHAINS[t.chain].nft}`;
    case 'return':
      return 'return';
    case 'redirect':
      return `redirect to :${t.port}`;
    case 'reject':
      return family === 4 ? 'reject with icmp type port-unreachable' : 'reject with icmpv6 type port-unreachable';
    case 'reset':
      return 'reject with tcp reset';
    case 'drop':
      return 'drop';
  }
}

/**
 * The NAT chains' priority: before "dstnat" (-100), where kube-proxy, Docker and iptables-nft's
 * own nat table hook in. The first NAT a connection meets is the only one it gets, and chains of
 * equal priority run newest first: at -100, a table another tool made after egressd's (kube-proxy
 * starting after the init container) DNATs a sandbox's connection to a service address past
 * egressd. Filter chains need no such care: a reject in any table is final. Spelled as a number
 * because nft 1.0 rejects "dstnat - 10" on the output hook; still after conntrack (-200).
 */
export const NAT_PRIORITY = -110;

/**
 * The per-source buckets of --new-connections-per-source (new_tcp_per_source) and
 * --new-dns-flows-per-source (new_dns_per_source) and --dns-packets-per-source
 * (dns_packets_per_source): a dynamic set each, one element (a token
 * bucket) per source address, forgotten 10 s after its last packet counted, as hashlimit's
 * defaults. When a set is full a new source's update fails and the rule does not match: that
 * source is not limited (hashlimit drops it instead).
 */
export const PER_SOURCE_SETS: Readonly<Record<PerSourceBucket, string>> = Object.freeze({
  'new-connections': 'new_tcp_per_source',
  'new-dns-flows': 'new_dns_per_source',
  'dns-packets': 'dns_packets_per_source',
});
const NEW_PER_SOURCE_MAX = 65536;
const NEW_PER_SOURCE_TIMEOUT = '10s';

const NFT_HOOK: Readonly<Record<BuiltinChain, string>> = { PREROUTING: 'prerouting', INPUT: 'input', FORWARD: 'forward', OUTPUT: 'output' };

export function nftTableName(family: Family): string {
  return `${family === 4 ? 'ip' : 'ip6'} egressd`;
}

/**
 * An `nft -f` input that replaces egressd's table atomically: declaring the table first makes
 * the delete valid when it does not exist yet, and all three lines are one transaction.
 * One table per family (not `inet`) so that --family 4 and --family 6 are applied and removed
 * independently, as with iptables and ip6tables.
 */
export function renderNft(rs: RuleSet): string {
  const table = nftTableName(rs.family);
  const out = [`table ${table}`, `delete table ${table}`, `table ${table} {`];
  for (const bucket of ['new-connections', 'new-dns-flows', 'dns-packets'] as const) {
    if (!rs.chains.some((c) => c.rules.some((r) => r.match.overPerSource?.bucket === bucket))) continue;
    out.push(
      `\tset ${PER_SOURCE_SETS[bucket]} {`,
      `\t\ttype ${rs.family === 4 ? 'ipv4_addr' : 'ipv6_addr'}`,
      `\t\tsize ${NEW_PER_SOURCE_MAX}`,
      '\t\tflags dynamic,timeout',
      `\t\ttimeout ${NEW_PER_SOURCE_TIMEOUT}`,
      '\t}',
    );
  }
  for (const c of rs.chains) {
    const info = CHAINS[c.id];
    out.push(`\tchain ${info.nft} {`);
    if (info.hook !== null) {
      const priority = info.table === 'nat' ? String(NAT_PRIORITY) : '0';
      out.push(`\t\ttype ${info.table} hook ${NFT_HOOK[info.hook]} priority ${priority}; policy accept;`);
    }
    for (const r of c.rules) out.push(`\t\t${[...nftMatch(r.match, rs.family), nftTarget(r.target, rs.family)].join(' ')}`);
    out.push('\t}');
  }
  out.push('}');
  return `${out.join('\n')}\n`;
}

export function renderNftRemove(family: Family): string {
  return `table ${nftTableName(family)}\ndelete table ${nftTableName(family)}\n`;
}
