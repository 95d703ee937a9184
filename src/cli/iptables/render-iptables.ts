// `egressd iptables`, iptables spelling: the rule set as `iptables-restore` input, the jumps from
// the built-in chains, and the removal of egressd's chains found in `iptables-save` output.

import { type BuiltinChain, CHAINS, type Family, type Match, type RuleSet, type Table, type Target } from './rules.ts';

function iptablesMatch(m: Match): string[] {
  const a: string[] = [];
  if (m.inInterface !== undefined) a.push('-i', m.inInterface);
  if (m.outInterface !== undefined) a.push('-o', m.outInterface);
  if (m.source !== undefined) a.push('-s', m.source);
  if (m.destination !== undefined) a.push('-d', m.destination);
  if (m.protocol !== undefined) a.push('-p', m.protocol);
  if (m.dport !== undefined) a.push('--dport', String(m.dport));
  if (m.uid !== undefined) a.push('-m', 'owner', '--uid-owner', String(m.uid));
  if (
    m.originalDirection !== undefined ||
    m.newConnection !== undefined ||
    m.untracked !== undefined ||
    m.originalDestination !== undefined ||
    m.originalDport !== undefined
  ) {
    a.push('-m', 'conntrack');
    if (m.newConnection !== undefined) a.push('--ctstate', 'NEW');
    if (m.untracked !== undefined) a.push('--ctstate', 'INVALID,UNTRACKED');
    if (m.originalDestination !== undefined) a.push('--ctorigdst', m.originalDestination);
    if (m.originalDport !== undefined) a.push('--ctorigdstport', String(m.originalDport));
    if (m.originalDirection !== undefined) a.push('--ctdir', 'ORIGINAL');
  }
  return a;
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
      for (const r of c.rules) out.push(['-A', CHAINS[c.id].iptables, ...iptablesMatch(r.match), ...iptablesTarget(r.target, rs.family)].join(' '));
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
