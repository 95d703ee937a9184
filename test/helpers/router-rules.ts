// The firewall rules in the e2e rig's router namespace as text, for a test that checks that
// applying the same `egressd iptables` again changes nothing.

import type { Rig } from './netns-rig.ts';

/**
 * The router's iptables-save, ip6tables-save and `nft list ruleset`, joined, without what changes
 * between two reads of the same rules: packet and byte counters, the generated-on comments, and
 * the elements of nft's per-source sets (the sources seen in the last 10 s).
 */
export async function routerRules(rig: Rig): Promise<string> {
  const parts = await Promise.all([
    rig.execIn('router', 'iptables-save', []),
    rig.execIn('router', 'ip6tables-save', []),
    rig.execIn('router', 'nft', ['list', 'ruleset']),
  ]);
  return parts
    .map((r) =>
      r.stdout
        .replace(/\[\d+:\d+\]/g, '')
        .replace(/counter packets \d+ bytes \d+/g, '')
        .replace(/^#.*$/gm, ''),
    )
    .join('\n')
    .replace(/\n\t\telements = \{[^}]*\}/g, '');
}
