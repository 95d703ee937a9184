// `egressd iptables`, iptables spelling: the rule set as `iptables-restore` input, the jumps from
// the built-in chains, and the removal of egressd's chains found in `iptables-save` output.

import { type BuiltinChain, CHAINS, type Family, type Match, type PerSourceLimit, type RuleSet, type Table, type Target } from './rules.ts';

function iptablesMatch(m: Match, family: Family): string[] {
  const a: string[] = [];
  if (m.inInterface !== undefined) a.push('-i', m.inInterface);
  if (m.outInterface !== undefined) a.push('-o', m.outInterface);
  if (m.source !== undefined) a.push('-s', m.source);
  if (m.destination !== undefined) a.push('-d', m.destination);
  if (m.protocol !== undefined) a.push('-p', m.protocol);
  if (m.dport !== undefined) a.push('--dport', String(m.dport));
  if (m.icmpv6Type !== undefined) a.push('--icmpv6-type', String(m.icmpv6Type));
  if (m.syn !== undefined) a.push('--syn');
  if (m.uid !== undefined) a.push('-m', 'owner', '--uid-owner', String(m.uid));
  if (
    m.originalDirection !== undefined ||
    m.newConnection !== undefined ||
    m.untracked !== undefined ||
    m.related !== undefined ||
    m.originalDestination !== undefined ||
    m.originalDport !== undefined
  ) {
    a.push('-m', 'conntrack');
    if (m.newConnection !== undefined) a.push('--ctstate', 'NEW');
    if (m.untracked !== undefined) a.push('--ctstate', 'INVALID,UNTRACKED');
    if (m.related !== undefined) a.push('--ctstate', 'RELATED');
    if (m.originalDestination !== undefined) a.push('--ctorigdst', m.originalDestination);
    if (m.originalDport !== undefined) a.push('--ctorigdstport', String(m.originalDport));
    if (m.originalDirection !== undefined) a.push('--ctdir', 'ORIGINAL');
  }
  if (m.overPerSource !== undefined) a.push(...hashlimit(m.overPerSource, family));
  return a;
}

/**
 * hashlimit(8) keyed on the whole source address. The kernel shares a table among the rules that
 * name it (per family) and keeps the settings of whichever rule created it: a rule with a new rate
 * restored while the old rule still holds the table would get the old rate, so the name carries
 * the rate and burst, and the bucket, so that two flags at the same settings keep apart. Table
 * size and expiry are hashlimit's defaults: 8192 buckets (on a host with over 1 GiB of memory),
 * 65,536 sources at most (beyond that a new source's packets are dropped: xt_hashlimit.c,
 * dsthash_alloc_init), a source forgotten 10 s after its last packet counted.
 */
export function hashlimit(limit: PerSourceLimit, family: Family): string[] {
  return [
    '-m',
    'hashlimit',
    '--hashlimit-above',
    `${limit.perSecond}/sec`,
    '--hashlimit-burst',
    String(limit.burst),
    '--hashlimit-mode',
    'srcip',
    '--hashlimit-srcmask',
    family === 4 ? '32' : '128',
    '--hashlimit-name',
    hashlimitName(limit),
  ];
}

/**
 * The hashlimit table's name: /proc/net/ipt_hashlimit/NAME (ip6t_hashlimit for IPv6) lists its
 * sources. egressd-RATE-BURST for new connections (the name it had before DNS flows were
 * limited), egressd-dns-RATE-BURST for new DNS flows, egressd-dnsp-RATE-BURST for DNS datagrams: at most 26 characters, within the
 * NAME_MAX (255) of hashlimit's revisions 2 and 3 (linux/netfilter/xt_hashlimit.h).
 */
export function hashlimitName(limit: PerSourceLimit): string {
  const kind = { 'new-connections': '', 'new-dns-flows': 'dns-', 'dns-packets': 'dnsp-' }[limit.bucket];
  return `egressd-${kind}${limit.perSecond}-${limit.burst}`;
}

function iptablesTarget(t: Target, family: Family): string[] {
  switch (t.kind) {
    case 'jump':
      return ['-j', CHAINS[t.chain].iptables];
    case 'return':
      return ['-j', 'RETURN'];
    case 'redirect':
      return ['-j', 'REDIRECT', '--to-ports', String(t.port)];
    case 'reject':
      return ['-j', 'REJECT', '--reject-with', family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable'];
    case 'reset':
      return ['-j', 'REJECT', '--reject-with', 'tcp-reset'];
    case 'drop':
      return ['-j', 'DROP'];
  }
}

/**
 * The input for `iptables-restore --noflush`: declaring a chain creates it or flushes it. Given
 * the tables as `iptables-save -t TABLE` prints them now, each table's transaction also makes
 * egressd's jump the first rule of its built-in chain (jumpPlacement); without them (the printed
 * script) the jumps are left to the script's own `-C || -I` lines.
 */
export function renderIptablesRestore(rs: RuleSet, saved?: Readonly<Record<Table, string>>): string {
  const out: string[] = [];
  for (const table of ['nat', 'filter'] as const) {
    const chains = rs.chains.filter((c) => CHAINS[c.id].table === table);
    if (chains.length === 0) continue;
    out.push(`*${table}`);
    for (const c of chains) out.push(`:${CHAINS[c.id].iptables} - [0:0]`);
    for (const c of chains) {
      for (const r of c.rules) out.push(['-A', CHAINS[c.id].iptables, ...iptablesMatch(r.match, rs.family), ...iptablesTarget(r.target, rs.family)].join(' '));
    }
    if (saved !== undefined) {
      for (const [t, builtin, chain] of iptablesJumps(rs)) if (t === table) out.push(...jumpPlacement(saved[table], builtin, chain));
    }
    out.push('COMMIT');
  }
  return `${out.join('\n')}\n`;
}

/**
 * The restore lines that leave exactly one `-A BUILTIN -j CHAIN`, as the first rule of BUILTIN,
 * given the table as `iptables-save` printed it: none when it is so already. Rules in front of
 * egressd's jump decide first (kube-proxy and Docker insert theirs at the top when they start: a
 * DNAT there sends a sandbox's connection past egressd, an ACCEPT in FORWARD lets its UDP out), so
 * applying again moves the jump back in front. Deleting and inserting in one transaction leaves
 * no moment without the jump.
 */
function jumpPlacement(saved: string, builtin: BuiltinChain, chain: string): string[] {
  const jump = `-A ${builtin} -j ${chain}`;
  const rules = saved
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.startsWith(`-A ${builtin} `));
  const mine = rules.filter((l) => l === jump).length;
  if (mine === 1 && rules[0] === jump) return [];
  return [...Array.from({ length: mine }, () => `-D ${builtin} -j ${chain}`), `-I ${builtin} 1 -j ${chain}`];
}

/** The jumps from built-in chains: `[table, builtin, chain name]`. */
export function iptablesJumps(rs: RuleSet): Array<readonly [Table, BuiltinChain, string]> {
  return rs.chains.flatMap((c) => {
    const info = CHAINS[c.id];
    return info.hook === null ? [] : [[info.table, info.hook, info.iptables] as const];
  });
}

/**
 * The `iptables-restore --noflush` input that deletes every jump to one of a table's `chains`,
 * then flushes and deletes those chains, as found in `iptables-save -t TABLE` output; null when
 * there is nothing to remove. One transaction per table: all or nothing.
 */
export function renderIptablesRemoval(saved: Readonly<Record<Table, string>>, chains: Readonly<Record<Table, ReadonlySet<string>>>): string | null {
  const out: string[] = [];
  for (const table of ['nat', 'filter'] as const) {
    const lines = saved[table].split('\n');
    const doomed = chains[table];
    const present = lines.flatMap((l) => {
      const m = /^:(\S+) /.exec(l);
      return m && doomed.has(m[1]!) ? [m[1]!] : [];
    });
    const jumps = lines.filter((l) => {
      const m = /^-A (\S+) .*-j (\S+)$/.exec(l);
      return m !== null && !doomed.has(m[1]!) && doomed.has(m[2]!);
    });
    if (present.length === 0 && jumps.length === 0) continue;
    out.push(`*${table}`, ...jumps.map((l) => `-D${l.slice(2)}`), ...present.map((c) => `-F ${c}`), ...present.map((c) => `-X ${c}`), 'COMMIT');
  }
  return out.length === 0 ? null : `${out.join('\n')}\n`;
}
