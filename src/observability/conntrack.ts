// The connection-tracking table of egressd's own network namespace, as node_exporter's conntrack
// collector reads it (node_nf_conntrack_entries{,_limit}): the kernel's count and its maximum. In
// host mode that namespace is the host's, whose table every sandbox's redirected connections
// share (docs/limits.md, "The host's connection-tracking table").

import { readFileSync } from 'node:fs';

export interface ConntrackTable {
  /** nf_conntrack_count: entries in this namespace's table now, TIME_WAIT ones included. */
  readonly entries: number;
  /** nf_conntrack_max: the entries the kernel allows (global; a child namespace reads the host's). */
  readonly limit: number;
}

export const NETFILTER_SYSCTL_DIR = '/proc/sys/net/netfilter';

/**
 * The table's count and limit from `dir` (/proc/sys/net/netfilter), or null when either file is
 * missing or unreadable: nf_conntrack is not loaded (no NAT rule has needed it yet), or /proc/sys
 * is not this namespace's.
 */
export function readConntrackTable(dir: string = NETFILTER_SYSCTL_DIR): ConntrackTable | null {
  const read = (file: string): number | null => {
    try {
      // The kernel writes decimal digits and a line break; Number() took "" (an empty read) as 0.
      const m = /^(\d{1,15})\n?$/.exec(readFileSync(`${dir}/${file}`, 'latin1'));
      return m ? Number(m[1]) : null;
    } catch {
      return null;
    }
  };
  const entries = read('nf_conntrack_count');
  const limit = read('nf_conntrack_max');
  return entries === null || limit === null ? null : { entries, limit };
}
