// Which kernel tables the `iptables` that egressd drives writes to. Since iptables 1.8 one command
// has two variants, told apart by its version string (`iptables -V`: `(legacy)` or `(nf_tables)`,
// xtables-legacy(8), xtables-nft(8)): legacy writes the x_tables of the getsockopt/setsockopt
// API, iptables-nft writes nftables tables named like the old ones. The kernel runs both, each
// unaware of the other: rules split between them all still filter, but a jump put first in one
// is not first in the other, and one variant's save and restore never see the other's rules.
// egressd's rules belong where the host's other rules are.

import type { Runner } from './apply.ts';
import { nftTableName } from './render-nft.ts';
import type { Family } from './rules.ts';

export type IptablesVariant = 'legacy' | 'nf_tables';

/**
 * The variant of the `iptables-save` (or `ip6tables-save`) on PATH, from its `--version` line
 * (`iptables-save v1.8.9 (nf_tables)`; before 1.8 there was only legacy, and no mark); null when
 * it cannot be run.
 */
export async function iptablesVariant(run: Runner, family: Family): Promise<IptablesVariant | null> {
  const r = await run(family === 4 ? 'iptables-save' : 'ip6tables-save', ['--version']);
  if (r.code !== 0) return null;
  return /\(nf_tables\)/.test(`${r.stdout}${r.stderr}`) ? 'nf_tables' : 'legacy';
}

/**
 * Whether an `nft list ruleset` listing has a rule in a table that is not egressd's own
 * (`ip egressd`, `ip6 egressd`): a line of a chain's body other than its `type ... hook`,
 * `policy` and `comment` lines.
 */
export function nftHasOtherRules(ruleset: string): boolean {
  const own = new Set<string>([nftTableName(4), nftTableName(6)]);
  let table: string | null = null;
  let inChain = false;
  for (const raw of ruleset.split('\n')) {
    const line = raw.trim();
    const t = /^table (\S+ \S+) \{$/.exec(line);
    if (t) {
      table = t[1]!;
      inChain = false;
    } else if (/^chain \S+ \{$/.test(line)) {
      inChain = true;
    } else if (line === '}') {
      inChain = false;
    } else if (inChain && table !== null && !own.has(table) && line !== '' && !/^(type |policy |comment |devices? )/.test(line)) {
      return true;
    }
  }
  return false;
}

/**
 * One line for stderr when the iptables egressd drives is one variant and the host's other rules
 * live in the other's tables, else ''. Asked of the first family's tools; a tool that cannot be
 * run says nothing (the apply then fails with its own error).
 */
export async function variantWarning(run: Runner, family: Family): Promise<string> {
  const variant = await iptablesVariant(run, family);
  if (variant === null) return '';
  const tool = family === 4 ? 'iptables' : 'ip6tables';
  if (variant === 'legacy') {
    const r = await run('nft', ['list', 'ruleset']);
    if (r.code !== 0 || !nftHasOtherRules(r.stdout)) return '';
    return `egressd iptables: warning: ${tool} here is the legacy variant, but this host's other rules are in nftables (iptables-nft or nft): both filter every packet and neither sees the other's rules; apply with the variant the host uses (${tool}-nft on PATH first, or --backend nft)\n`;
  }
  const r = await run(`${tool}-legacy-save`, []);
  if (r.code !== 0 || !/^-A /m.test(r.stdout)) return '';
  return `egressd iptables: warning: ${tool} here is the nf_tables variant, but this host's other rules are in the legacy tables (${tool}-legacy-save lists them): both filter every packet and neither sees the other's rules; apply with the variant the host uses (${tool}-legacy on PATH first)\n`;
}
