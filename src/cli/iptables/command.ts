// `egressd iptables`: the firewall rules that send a sandbox's traffic to egressd. Prints them
// (a shell script for iptables, an `nft -f` file for nftables), or with --apply / --remove changes
// the kernel's tables. The rule set is plain data built by a pure function, so the unit tests
// pin what is installed and the renderers only spell it.
//
// Everything lives in egressd's own chains (EGRESSD-*) or, for nftables, its own tables
// (`ip egressd`, `ip6 egressd`), reached from the built-in chains by one jump each: applying
// again refills the chains and adds no jump; applying with one backend deletes what the other
// backend installed; removing deletes both backends' jumps, chains and tables and leaves every
// other rule where it was.

import { IPTABLES_USAGE, parseIptablesArgs } from './args.ts';
import { CommandFailed } from '../../errors.ts';
import {
  ALL_IPTABLES_CHAINS,
  applyIptables,
  hasNftTable,
  must,
  removeIptablesChains,
  removeIptablesLeftovers,
  removeNftLeftover,
  renderScript,
  runCommand,
  type Runner,
} from './apply.ts';
import { variantWarning } from './variant.ts';
import { nftTableName, renderNft, renderNftRemove } from './render-nft.ts';
import { buildRuleSet } from './rules.ts';

/** `egressd iptables ...`; `run` is replaceable so tests can watch the commands. */
export async function iptablesCommand(argv: string[], run: Runner = runCommand): Promise<{ code: 0 | 1 | 2; stdout: string; stderr: string }> {
  const parsed = parseIptablesArgs(argv);
  if (!parsed.ok) {
    if (parsed.help) return { code: 0, stdout: IPTABLES_USAGE, stderr: '' };
    // As every other command's usage error: the error and where the help is, not the whole help.
    return { code: 2, stdout: '', stderr: `error: ${parsed.error}\n(see "egressd iptables --help")\n` };
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
  if (o.action === 'print') return { code: 0, stdout: renderScript(o), stderr: note + rootNote };
  const done: string[] = [];
  /** What was found and deleted beyond the rules asked for (apply) or as asked (remove), by name. */
  const removed: string[] = [];
  let notes = note + rootNote;
  /** Set while the other backend's rules are being removed: this family's new rules are in already. */
  let replacing: string | null = null;
  try {
    // Asked before anything changes, so the warning stands even when the apply then fails.
    if (o.action === 'apply' && o.backend === 'iptables') notes += await variantWarning(run, o.families[0]!);
    for (const family of o.families) {
      const tool = family === 4 ? 'iptables' : 'ip6tables';
      const chains = (names: readonly string[]): string[] => (names.length > 0 ? [`${tool} chains ${names.join(', ')}`] : []);
      if (o.action === 'apply') {
        // The other backend's rules, left by an earlier apply, would still catch traffic: taken
        // out in the same run, after the new ones are in, so that no moment is without rules.
        const rs = buildRuleSet(o, family);
        if (o.backend === 'nft') await must(run, 'nft', ['-f', '-'], renderNft(rs));
        else await applyIptables(run, rs);
        // A failure from here leaves both backends' rules in, never none: said so, since the
        // command's error alone reads as if nothing had changed.
        replacing = `IPv${family}'s ${o.backend} rules are in, and what the ${o.backend === 'nft' ? 'iptables' : 'nft'} backend had installed is still there: both catch traffic until an --apply succeeds`;
        if (o.backend === 'nft') removed.push(...chains(await removeIptablesLeftovers(run, family)));
        else if (await removeNftLeftover(run, family)) removed.push(`nft table ${nftTableName(family)}`);
        replacing = null;
      } else {
        // Both backends' rules, whichever installed them; a backend named with --backend must be
        // removable (its tool installed), the other is removed where it is found.
        if (o.backendGiven && o.backend === 'iptables')
          removed.push(...chains(await removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS })));
        else removed.push(...chains(await removeIptablesLeftovers(run, family)));
        if (o.backendGiven && o.backend === 'nft') {
          const had = await hasNftTable(run, family);
          await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
          if (had) removed.push(`nft table ${nftTableName(family)}`);
        } else if (await removeNftLeftover(run, family)) removed.push(`nft table ${nftTableName(family)}`);
      }
      done.push(`IPv${family}`);
    }
  } catch (e) {
    if (!(e instanceof CommandFailed)) throw e;
    const partial = done.length > 0 ? `\n(${done.join(' and ')} already ${o.action === 'apply' ? 'applied' : 'removed'})` : '';
    const both = replacing !== null ? `\n(${replacing})` : '';
    return { code: 1, stdout: '', stderr: `${notes}egressd iptables: ${e.detail}${partial}${both}\n` };
  }
  const families = done.join(' and ');
  if (o.action === 'apply') {
    const other = removed.length > 0 ? `; removed what the ${o.backend === 'nft' ? 'iptables' : 'nft'} backend had installed: ${removed.join(', ')}` : '';
    return { code: 0, stdout: `egressd iptables: applied ${o.mode}-mode rules for ${families} (${o.backend})${other}\n`, stderr: notes };
  }
  return { code: 0, stdout: `egressd iptables: removed egressd rules for ${families}: ${removed.join(', ') || 'none were installed'}\n`, stderr: notes };
}
