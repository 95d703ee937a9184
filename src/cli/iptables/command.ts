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
import { CommandFailed } from '../../errors.ts';
import { ALL_IPTABLES_CHAINS, applyIptables, must, removeIptablesChains, renderScript, runCommand, type Runner } from './apply.ts';
import { nftTableName, renderNft, renderNftRemove } from './render-nft.ts';
import { buildRuleSet, type Family } from './rules.ts';

/** `egressd iptables ...`; `run` is replaceable so tests can watch the commands. */
export async function iptablesCommand(argv: string[], run: Runner = runCommand): Promise<{ code: 0 | 1 | 2; stdout: string; stderr: string }> {
  const parsed = parseIptablesArgs(argv);
  if (!parsed.ok) {
    if (parsed.help) return { code: 0, stdout: IPTABLES_USAGE, stderr: '' };
    return { code: 2, stdout: '', stderr: `egressd iptables: ${parsed.error}\n\n${IPTABLES_USAGE}` };
  }
  const o = parsed.options;
  // Documented as ignored while the DNS listener is on, and the deploy examples pass it either
  // way; said once on stderr, so that no one takes it for an opening of port 53.
  const note =
    o.action !== 'remove' && o.dnsPort !== null && o.dnsServers.length > 0
      ? `egressd iptables: --dns-server is ignored while egressd's DNS listener is on (--dns-port ${o.dnsPort}): every query to port 53 is redirected to it, whatever server it addresses\n`
      : '';
  // The exemption is by uid alone: with egressd as root, whatever else runs as root in the
  // namespace (a sandbox image's default user) leaves unfiltered. Allowed (a test rig, a pod
  // whose sandbox is known to run as another user), never silently.
  const rootNote =
    o.action !== 'remove' && o.mode === 'sidecar' && o.uid === 0
      ? "egressd iptables: --uid 0 exempts every process running as root in this namespace: a sandbox running as root (many images' default) leaves unfiltered; run egressd as a uid of its own (the image's is 10001)\n"
      : '';
  const notes = note + rootNote;
  if (o.action === 'print') return { code: 0, stdout: renderScript(o), stderr: notes };
  const done: string[] = [];
  const removedBy: string[] = [];
  try {
    for (const family of o.families) {
      if (o.action === 'apply') {
        const rs = buildRuleSet(o, family);
        if (o.backend === 'nft') await must(run, 'nft', ['-f', '-'], renderNft(rs));
        else await applyIptables(run, rs);
      } else if (o.backendGiven) {
        if (o.backend === 'nft') await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
        else await removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS });
      } else {
        removedBy.push(...(await removeEither(run, family)));
      }
      done.push(`IPv${family}`);
    }
  } catch (e) {
    if (!(e instanceof CommandFailed)) throw e;
    const partial = done.length > 0 ? `\n(${done.join(' and ')} already ${o.action === 'apply' ? 'applied' : 'removed'})` : '';
    return { code: 1, stdout: '', stderr: `egressd iptables: ${e.detail}${partial}\n` };
  }
  const what = o.action === 'apply' ? `applied ${o.mode}-mode rules` : 'removed egressd rules';
  const how = o.action === 'remove' && !o.backendGiven ? [...new Set(removedBy)].join(', ') || 'none were installed' : o.backend;
  return { code: 0, stdout: `egressd iptables: ${what} for ${done.join(' and ')} (${how})\n`, stderr: notes };
}

/**
 * Removes what either backend installed for one family: egressd's iptables chains and its nft
 * table. A backend whose tool is not installed has nothing installed; an nft table that is not
 * there is nothing to remove. Any other failure is an error. Returns the backends that acted.
 */
async function removeEither(run: Runner, family: Family): Promise<string[]> {
  const acted: string[] = [];
  const save = await run(family === 4 ? 'iptables-save' : 'ip6tables-save', ['-t', 'nat']);
  if (save.code !== null) {
    await removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS });
    acted.push('iptables');
  }
  const list = await run('nft', ['list', 'tables', family === 4 ? 'ip' : 'ip6']);
  if (list.code === 0 && new RegExp(`^table ${nftTableName(family)}$`, 'm').test(list.stdout)) {
    await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
    acted.push('nft');
  }
  return acted;
}
