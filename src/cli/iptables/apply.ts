// `egressd iptables --apply | --remove`: runs iptables-restore / nft with the rendered rules, and
// prints the same steps as a shell script when neither flag is given.

import { spawn } from 'node:child_process';
import { CommandFailed } from '../../errors.ts';
import { buildRuleSet, CHAINS, type Family, type IptablesOptions, type RuleSet, type Table } from './rules.ts';
import { iptablesJumps, renderIptablesRemoval, renderIptablesRestore } from './render-iptables.ts';
import { nftTableName, renderNft, renderNftRemove } from './render-nft.ts';

/** What `--apply` does, as a shell script an operator can read or run. */
export function renderScript(options: IptablesOptions): string {
  const out: string[] = [
    `# egressd iptables: ${options.mode} mode, ${options.families.map((f) => `IPv${f}`).join(' and ')}, backend ${options.backend}`,
    '# Install with `egressd iptables --apply` and the same options; remove with `egressd iptables --remove`.',
  ];
  for (const family of options.families) {
    const rs = buildRuleSet(options, family);
    if (options.backend === 'nft') {
      out.push(`nft -f - <<'EOF'`, renderNft(rs).trimEnd(), 'EOF');
      continue;
    }
    const tool = family === 4 ? 'iptables' : 'ip6tables';
    out.push(`${tool}-restore -w 10 --noflush <<'EOF'`, renderIptablesRestore(rs).trimEnd(), 'EOF');
    // Moving a jump another tool put ahead needs the table read and rewritten in one transaction,
    // which --apply does; a static script can only add a missing one without a fail-open window.
    out.push(
      `# These add a missing jump only. A NAT rule another tool puts ahead of egressd's (kube-proxy and Docker do when they`,
      `# start) wins for the connections it matches: \`egressd iptables --apply\` moves egressd's jumps first again, atomically.`,
    );
    for (const [table, builtin, chain] of iptablesJumps(rs)) {
      out.push(`${tool} -w 10 -t ${table} -C ${builtin} -j ${chain} 2>/dev/null || ${tool} -w 10 -t ${table} -I ${builtin} 1 -j ${chain}`);
    }
  }
  return `${out.join('\n')}\n`;
}

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export type Runner = (cmd: string, args: readonly string[], input?: string) => Promise<RunResult>;

const COMMAND_TIMEOUT_MS = 30_000;

// Operators often run this through sudo or cron, whose PATH may lack the sbin directories.
const SBIN_PATH = [process.env['PATH'] ?? '', '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean).join(':');

export const runCommand: Runner = (cmd, args, input) =>
  new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PATH: SBIN_PATH }, timeout: COMMAND_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' ? 'not found (is it installed and on PATH?)' : e.message;
      resolve({ code: null, stdout, stderr: `${stderr}Cannot run "${cmd}": ${why}` });
    });
    child.on('close', (code, signal) => resolve({ code: code ?? null, stdout, stderr: signal ? `${stderr}killed by ${signal}` : stderr }));
    // A tool that exits before reading its input makes the write fail with EPIPE; its exit says why.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });

export async function must(run: Runner, cmd: string, args: readonly string[], input?: string): Promise<RunResult> {
  const r = await run(cmd, args, input);
  if (r.code !== 0) throw new CommandFailed(cmd, args, r, input);
  return r;
}

export const ALL_IPTABLES_CHAINS: ReadonlySet<string> = new Set(Object.values(CHAINS).map((c) => c.iptables));

/** The nat and filter tables of one family, as `iptables-save -t TABLE` prints them. */
async function saveTables(run: Runner, family: Family): Promise<Record<Table, string>> {
  const save = family === 4 ? 'iptables-save' : 'ip6tables-save';
  return {
    nat: (await must(run, save, ['-t', 'nat'])).stdout,
    filter: (await must(run, save, ['-t', 'filter'])).stdout,
  };
}

/**
 * Deletes `chains` (per table) and every jump into them, as found now; returns the chains it
 * deleted, each named once, in the order found (none: nothing was there).
 */
export async function removeIptablesChains(run: Runner, family: Family, chains: Readonly<Record<Table, ReadonlySet<string>>>): Promise<string[]> {
  const saved = await saveTables(run, family);
  const input = renderIptablesRemoval(saved, chains);
  if (input === null) return [];
  await must(run, family === 4 ? 'iptables-restore' : 'ip6tables-restore', ['-w', '10', '--noflush'], input);
  return [...new Set(input.split('\n').flatMap((l) => (l.startsWith('-X ') ? [l.slice(3)] : [])))];
}

/**
 * The iptables backend's chains (EGRESSD-*) of one family, removed where the iptables tools are
 * installed (a host without them has none); returns the chains deleted. Any other failure throws.
 */
export async function removeIptablesLeftovers(run: Runner, family: Family): Promise<string[]> {
  const probe = await run(family === 4 ? 'iptables-save' : 'ip6tables-save', ['-t', 'nat']);
  return probe.code === null ? [] : removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS });
}

/** Whether egressd's nft table of `family` exists; false where nft cannot list (not installed, no nf_tables). */
export async function hasNftTable(run: Runner, family: Family): Promise<boolean> {
  const list = await run('nft', ['list', 'tables', family === 4 ? 'ip' : 'ip6']);
  return list.code === 0 && new RegExp(`^table ${nftTableName(family)}$`, 'm').test(list.stdout);
}

/** The nft backend's table of one family (`ip egressd`, `ip6 egressd`), deleted when it is there; true when it was. */
export async function removeNftLeftover(run: Runner, family: Family): Promise<boolean> {
  if (!(await hasNftTable(run, family))) return false;
  await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
  return true;
}

export async function applyIptables(run: Runner, rs: RuleSet): Promise<void> {
  const tool = rs.family === 4 ? 'iptables' : 'ip6tables';
  // The chains and their jumps, each table in one transaction; a rule that changed between the
  // save and the restore fails the restore, which then changes nothing in that table.
  await must(run, `${tool}-restore`, ['-w', '10', '--noflush'], renderIptablesRestore(rs, await saveTables(run, rs.family)));
  // The other mode's chains, left by an earlier --apply, would still catch traffic. EGRESSD-OUTPUT
  // names a chain in both nat and filter, so staleness is decided per table.
  const staleIn = (table: Table): ReadonlySet<string> => {
    const mine = new Set(rs.chains.filter((c) => CHAINS[c.id].table === table).map((c) => CHAINS[c.id].iptables));
    return new Set([...ALL_IPTABLES_CHAINS].filter((c) => !mine.has(c)));
  };
  await removeIptablesChains(run, rs.family, { nat: staleIn('nat'), filter: staleIn('filter') });
}
