// `egressd iptables`: the firewall rules that send a sandbox's traffic to egressd. Prints them
// (a shell script for iptables, an `nft -f` file for nftables), or with --apply / --remove changes
// the kernel's tables. The rule set is plain data built by a pure function, so the unit tests
// pin what is installed and the renderers only spell it.
//
// Everything lives in egressd's own chains (EGRESSD-*) or, for nftables, its own tables
// (`ip egressd`, `ip6 egressd`), reached from the built-in chains by one jump each: applying
// again refills the chains and adds no jump; removing deletes the jumps and the chains and
// leaves every other rule where it was.

import { IPTABLES_USAGE, parseIptablesArgs } from './args.ts';
import { ALL_IPTABLES_CHAINS, applyIptables, CommandFailed, must, removeIptablesChains, renderScript, runCommand, type Runner } from './apply.ts';
import { renderNft, renderNftRemove } from './render-nft.ts';
import { buildRuleSet } from './rules.ts';

/** `egressd iptables ...`; `run` is replaceable so tests can watch the commands. */
export async function iptablesCommand(argv: string[], run: Runner = runCommand): Promise<{ code: 0 | 1 | 2; stdout: string; stderr: string }> {
  const parsed = parseIptablesArgs(argv);
  if (!parsed.ok) {
    if (parsed.help) return { code: 0, stdout: IPTABLES_USAGE, stderr: '' };
    return { code: 2, stdout: '', stderr: `egressd iptables: ${parsed.error}\n\n${IPTABLES_USAGE}` };
  }
  const o = parsed.options;
  if (o.action === 'print') return { code: 0, stdout: renderScript(o), stderr: '' };
  const done: string[] = [];
  try {
    for (const family of o.families) {
      if (o.action === 'apply') {
        const rs = buildRuleSet(o, family);
        if (o.backend === 'nft') await must(run, 'nft', ['-f', '-'], renderNft(rs));
        else await applyIptables(run, rs);
      } else if (o.backend === 'nft') {
        await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
      } else {
        await removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS });
      }
      done.push(`IPv${family}`);
    }
  } catch (e) {
    if (!(e instanceof CommandFailed)) throw e;
    const partial = done.length > 0 ? `\n(${done.join(' and ')} already ${o.action === 'apply' ? 'applied' : 'removed'})` : '';
    return { code: 1, stdout: '', stderr: `egressd iptables: ${e.detail}${partial}\n` };
  }
  const what = o.action === 'apply' ? `applied ${o.mode}-mode rules` : 'removed egressd rules';
  return { code: 0, stdout: `egressd iptables: ${what} for ${done.join(' and ')} (${o.backend})\n`, stderr: '' };
}
