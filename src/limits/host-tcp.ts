// The kernel's TCP settings that decide how many connections egressd can open to one upstream
// address, read at start from the network namespace egressd dials from. egressd dials every
// upstream from one address (the host's, in host mode), so the sandboxes share its source
// ports: a port whose connection egressd closed first waits in TIME_WAIT for 60 s, and is taken
// again for a new connection to the same address only with `net.ipv4.tcp_tw_reuse=1` and TCP
// timestamps (the kernel's default, 2, reuses on loopback only; Documentation/networking/
// ip-sysctl.rst). Without it one sandbox's churn leaves every other EADDRNOTAVAIL for that
// address (docs/deployment.md). egressd cannot change them (it runs without privileges): it says so.

import { readFileSync } from 'node:fs';

/** What the kernel was read to say; a setting that could not be read is null. */
export interface HostTcp {
  /** `net.ipv4.tcp_tw_reuse` (0 off, 1 on, 2 loopback only); it governs IPv6 too. */
  readonly twReuse: number | null;
  /** `net.ipv4.tcp_timestamps` (0 off): reuse needs them. */
  readonly timestamps: number | null;
  /** `net.ipv4.ip_local_port_range`: the source ports a connection may take, inclusive. */
  readonly localPorts: { readonly from: number; readonly to: number } | null;
  /**
   * `net.ipv4.tcp_migrate_req` (0 off, 1 on; it governs IPv6 too): whether a listener of a
   * SO_REUSEPORT group that closes hands its connections still in their handshake, and those
   * accepted by the kernel but not by it, to another listener of the group, or resets them.
   */
  readonly migrateReq: number | null;
}

/** Reads HostTcp under `root` (`/proc/sys/net/ipv4` by default; tests give a folder of their own). */
export function readHostTcp(root = '/proc/sys/net/ipv4'): HostTcp {
  const read = (name: string): string | null => {
    try {
      return readFileSync(`${root}/${name}`, 'utf8');
    } catch {
      return null;
    }
  };
  const int = (text: string | null): number | null => (text !== null && /^\s*\d+\s*$/.test(text) ? Number(text) : null);
  const range = read('ip_local_port_range')?.trim().split(/\s+/).map(Number);
  return {
    twReuse: int(read('tcp_tw_reuse')),
    timestamps: int(read('tcp_timestamps')),
    migrateReq: int(read('tcp_migrate_req')),
    localPorts:
      range !== undefined && range.length === 2 && range.every((n) => Number.isInteger(n) && n > 0 && n <= 65535) && range[0]! <= range[1]!
        ? { from: range[0]!, to: range[1]! }
        : null,
  };
}

/**
 * Why a rolling restart resets connections, or null when it need not: tcp_migrate_req 0 (the
 * kernel's default). The draining process's listeners close while the new one listens beside
 * them (SO_REUSEPORT); a connection whose handshake was under way on a closing listener is then
 * reset (its client's last ACK meets no listener), where with 1 the kernel hands it to the new
 * process (Documentation/networking/ip-sysctl.rst, tcp_migrate_req). A setting that could not be
 * read (a kernel before 5.14) says nothing.
 */
export function migrateReqProblem(t: HostTcp): string | null {
  if (t.migrateReq === 0)
    return 'net.ipv4.tcp_migrate_req is 0: a connection still in its handshake when a rolling restart closes the old listeners is reset, not handed to the new process';
  return null;
}

/**
 * Why a port egressd closed first is not taken again for 60 s, or null when it is: tcp_tw_reuse
 * other than 1, or TCP timestamps off. Settings that could not be read say nothing.
 */
export function timeWaitReuseProblem(t: HostTcp): string | null {
  if (t.twReuse !== null && t.twReuse !== 1)
    return `net.ipv4.tcp_tw_reuse is ${t.twReuse}${t.twReuse === 2 ? ' (loopback only)' : ''}: a source port egressd closed first is not reused for 60 s`;
  if (t.timestamps === 0)
    return 'net.ipv4.tcp_timestamps is 0: tcp_tw_reuse needs TCP timestamps, so a source port egressd closed first is not reused for 60 s';
  return null;
}
