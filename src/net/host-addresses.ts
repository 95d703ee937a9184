// The addresses of the host egressd runs on, and egressd's own listeners: a sandbox must never
// reach either through egressd, whatever its policy and whatever `protected.except` says
// (smokescreen refuses connections to itself for the same reason: a proxy that dials its own
// host hands the sandbox the host's loopback-only services and egressd's own admin API).
//
// The interface addresses are read at start and re-read every `refreshMs` (getifaddrs(3), through
// the native addon: every address, whatever its interface's state; os.networkInterfaces() only
// where the addon is missing). A periodic re-read rather than a netlink subscription: it costs
// microseconds for a few hundred interfaces, and what it can miss — an
// address added in the last `refreshMs` — is on a sandbox host almost always a veth gateway in
// a private range, which the built-in protected ranges refuse anyway.

import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
import { formatIp, parseCidr, parseIpInto, type CidrBlock, type IpFamily } from '../match/ip.ts';
import { asIPv4IfMapped, type HostGuard } from '../match/protected.ts';
import { CidrTrie } from '../match/cidr-trie.ts';
import { interfaceAddresses } from './original-dst.ts';

export interface HostAddressOptions {
  /**
   * Host addresses (or CIDRs) an operator needs reachable from sandboxes: the config's
   * `protected.reachableHostAddresses`. egressd's own listener ports stay refused on them.
   */
  readonly reachable?: readonly string[];
  /** How often the interface addresses are re-read, in milliseconds. */
  readonly refreshMs?: number;
  /** The interface table; tests replace it. Defaults to every address the kernel has (kernelInterfaces). */
  readonly interfaces?: () => NodeJS.Dict<NetworkInterfaceInfo[]>;
  /** Called when a re-read finds the set of addresses changed (verdicts on them may change). */
  readonly onChange?: () => void;
}

export interface ListenerAddress {
  /** The bound address; 0.0.0.0 or :: means every address of the host. */
  readonly host: string;
  readonly port: number;
}

export const DEFAULT_HOST_REFRESH_MS = 2_000;

const words = new Uint32Array(4);

/**
 * The host's interface addresses: every one the kernel has (native addon, getifaddrs), else
 * os.networkInterfaces(). The latter (libuv) leaves out an interface that is up without carrier,
 * a veth whose peer is not up yet or an empty bridge, whose addresses Linux still delivers to
 * locally: a sandbox could reach the host on them.
 */
function kernelInterfaces(): NodeJS.Dict<NetworkInterfaceInfo[]> {
  const all = interfaceAddresses();
  if (all === null) return networkInterfaces();
  return { all: all.map((address) => ({ address }) as NetworkInterfaceInfo) };
}

/** The live set of the host's own addresses and egressd's listeners, consulted by decide step (1). */
export class HostAddresses implements HostGuard {
  readonly #reachable = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
  readonly #refreshMs: number;
  readonly #interfaces: () => NodeJS.Dict<NetworkInterfaceInfo[]>;
  /** Canonical text of every interface address (change detection, logs). */
  #addresses = new Set<string>();
  /** The same addresses as exact-match tries, so the per-connection check formats no text. */
  #local = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
  /** Ports egressd listens on at every address (wildcard binds), and at one address each. */
  #wildcardPorts = new Set<number>();
  #boundPorts = new Set<string>();
  /** The port numbers in #boundPorts: only a destination on one of them needs its text. */
  #boundPortNumbers = new Set<number>();
  #timer: NodeJS.Timeout | null = null;
  readonly #onChange: (() => void) | undefined;

  constructor(o: HostAddressOptions = {}) {
    this.#onChange = o.onChange;
    for (const text of o.reachable ?? []) {
      const r = parseCidr(text);
      if (!r.ok) throw new TypeError(`Reachable host address: ${r.reason}`);
      const b: CidrBlock = asIPv4IfMapped(r.block);
      this.#reachable[b.family].insert(b.words, b.prefix, 0);
    }
    this.#refreshMs = Math.max(100, o.refreshMs ?? DEFAULT_HOST_REFRESH_MS);
    this.#interfaces = o.interfaces ?? kernelInterfaces;
    this.refresh();
  }

  /** Re-reads the interface addresses now. */
  refresh(): void {
    const next = new Set<string>();
    const local = { 4: new CidrTrie(4), 6: new CidrTrie(6) };
    let table: NodeJS.Dict<NetworkInterfaceInfo[]>;
    try {
      table = this.#interfaces();
    } catch {
      // Keep the last good set: an empty one would open the host's addresses.
      return;
    }
    for (const list of Object.values(table)) {
      for (const i of list ?? []) {
        // A link-local IPv6 address carries its zone (fe80::1%eth0): the address is what counts.
        const text = String(i.address).split('%')[0]!;
        const family = parseIpInto(text, words);
        if (family === 0) continue;
        next.add(formatIp(family, words));
        local[family].insert(words, family === 4 ? 32 : 128, 0);
      }
    }
    const changed = next.size !== this.#addresses.size || [...next].some((a) => !this.#addresses.has(a));
    this.#addresses = next;
    this.#local = local;
    if (changed) this.#onChange?.();
  }

  /** Starts the periodic re-read; the timer never keeps the process alive. */
  start(): void {
    if (this.#timer !== null) return;
    this.#timer = setInterval(() => this.refresh(), this.#refreshMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** egressd's own listening sockets (traffic listeners and admin), once bound. */
  setListeners(list: readonly ListenerAddress[]): void {
    const wildcard = new Set<number>();
    const bound = new Set<string>();
    const boundPortNumbers = new Set<number>();
    for (const l of list) {
      const family = parseIpInto(l.host, words);
      if (family === 0) continue;
      const allZero = words[0] === 0 && (family === 4 || (words[1] === 0 && words[2] === 0 && words[3] === 0));
      if (allZero) wildcard.add(l.port);
      else {
        bound.add(`${formatIp(family, words)} ${l.port}`);
        boundPortNumbers.add(l.port);
      }
    }
    this.#wildcardPorts = wildcard;
    this.#boundPorts = bound;
    this.#boundPortNumbers = boundPortNumbers;
  }

  /** The interface addresses as last read (canonical text), for logs and tests. */
  get addresses(): readonly string[] {
    return [...this.#addresses];
  }

  /**
   * Why the destination is the host itself, or null. `w` holds the address (IPv4-mapped
   * addresses already turned into IPv4 by the caller). Loopback (127.0.0.0/8, ::1) and the
   * unspecified address (0.0.0.0/8, ::), which Linux delivers locally, count as the host's.
   */
  refuses(family: IpFamily, w: Uint32Array, port: number): string | null {
    // Called on every decide(): the address is formatted as text only for a refusal or a port
    // egressd binds at one address, never for an ordinary destination.
    const local = this.#isLocal(family, w);
    if ((local && this.#wildcardPorts.has(port)) || (this.#boundPortNumbers.has(port) && this.#boundPorts.has(`${formatIp(family, w)} ${port}`))) {
      const text = formatIp(family, w);
      return `egressd's own listener ${family === 6 ? `[${text}]` : text}:${port}`;
    }
    if (local && this.#reachable[family].longest(w) < 0) return `host address ${JSON.stringify(formatIp(family, w))}`;
    return null;
  }

  #isLocal(family: IpFamily, w: Uint32Array): boolean {
    if (family === 4) {
      const first = w[0]! >>> 24;
      if (first === 127 || first === 0) return true;
    } else if (w[0] === 0 && w[1] === 0 && w[2] === 0 && (w[3] === 0 || w[3] === 1)) {
      return true;
    }
    return this.#local[family].longest(w) >= 0;
  }
}
