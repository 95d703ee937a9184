// Where a redirected connection was going before iptables REDIRECT rewrote it: netfilter's
// conntrack keeps the original tuple, and getsockopt(SO_ORIGINAL_DST) reads it
// (native/original_dst.c). A connection that was not redirected is a result, not an error. The
// same addon asks a socket its pending error (SO_ERROR) for splice.ts.

import { createRequire } from 'node:module';
import { isIP, type Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { canonicalSource } from '../match/ip.ts';
import { socketAddress } from './socket-address.ts';
import { NativeAddonError, OriginalDstError } from '../errors.ts';

export type OriginalDestination = { kind: 'redirected'; address: string; port: number } | { kind: 'not-redirected'; why: string };

interface Addon {
  originalDst(fd: number, family: 4 | 6): { address: string; port: number };
  /** Absent from an addon built before it. */
  socketError?(fd: number): number;
  /** Absent from an addon built before it. */
  peerFinished?(fd: number): number;
  interfaceAddresses?(): string[];
  /** Absent from an addon built before it. */
  reusePortBindable?(host: string, port: number, ipv6Only: boolean): number;
}

type Loaded = { ok: true; addon: Addon } | { ok: false; error: NativeAddonError };

const ADDON_PATH = '../../native/build/original_dst.node';
let loaded: Loaded | undefined;

function load(): Loaded {
  if (loaded) return loaded;
  try {
    const addon = createRequire(import.meta.url)(ADDON_PATH) as Partial<Addon>;
    loaded =
      typeof addon.originalDst === 'function'
        ? { ok: true, addon: addon as Addon }
        : { ok: false, error: new NativeAddonError(`"${ADDON_PATH}" exports no originalDst function`) };
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    loaded = { ok: false, error: new NativeAddonError(`"${ADDON_PATH}": ${detail} (npm ci builds it)`, err) };
  }
  return loaded;
}

/**
 * The socket's pending error (getsockopt SO_ERROR), by its errno name (`ECONNRESET`,
 * `ETIMEDOUT`...), taking it: a reset that came while Node watched nothing on the socket. null when
 * there is none, or it cannot be asked (no addon, no descriptor). For a socket no write can probe
 * (its write half ended): the caller must act on what it returns, Node will not see it again.
 */
export function takeSocketError(socket: Socket): string | null {
  const l = load();
  if (!l.ok || typeof l.addon.socketError !== 'function') return null;
  const fd: unknown = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return null;
  const e = l.addon.socketError(fd);
  if (e <= 0) return null;
  return errnoNames.get(e) ?? `E${e}`;
}

/**
 * Whether the peer's FIN came, read by Node or not (the socket's TCP state is CLOSE_WAIT): for a
 * socket Node stopped reading with its buffer full, whose EOF Node never reads. False when it
 * cannot be asked (no addon, no descriptor).
 */
export function peerFinished(socket: Socket): boolean {
  const l = load();
  if (!l.ok || typeof l.addon.peerFinished !== 'function') return false;
  const fd: unknown = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return false;
  return l.addon.peerFinished(fd) === 1;
}

/**
 * Every address on the host's interfaces, as text (getifaddrs(3)), whatever the interface's state;
 * null when the addon cannot be loaded or is too old to have it. Unlike os.networkInterfaces(),
 * which leaves out an interface without carrier, though Linux delivers to its addresses.
 *
 * @throws Error with the errno name as `code` when getifaddrs fails.
 */
export function interfaceAddresses(): readonly string[] | null {
  const l = load();
  if (!l.ok || typeof l.addon.interfaceAddresses !== 'function') return null;
  return l.addon.interfaceAddresses();
}

const errnoNames = new Map(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

export function nativeAddonStatus(): { ok: true } | { ok: false; reason: string } {
  const l = load();
  return l.ok ? { ok: true } : { ok: false, reason: l.error.message };
}

/**
 * The connection's destination before REDIRECT, or `not-redirected` when there was none: no
 * conntrack entry (ENOENT), conntrack not loaded (ENOPROTOOPT), an original destination that is
 * the listener itself (a direct connection: a loop or a probe), or a socket already closed.
 *
 * @throws OriginalDstError on any other errno; NativeAddonError when the addon is missing
 * (the daemon refuses to start without it, so neither happens on the hot path).
 */
export function originalDestination(socket: Socket): OriginalDestination {
  const l = load();
  if (!l.ok) throw l.error;
  const fd: unknown = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  const own = socketAddress(socket, 'local');
  // A client can reset before its connection is looked at; that is its choice, not a fault. A
  // link-local connection whose interface has gone since has no address either (socket-address.ts).
  if (typeof fd !== 'number' || fd < 0 || own === undefined) {
    return { kind: 'not-redirected', why: 'The socket is already closed' };
  }
  const { address: local, port: localPort } = own;
  const localPlain = unmapped(local);
  // An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d; its conntrack entry is IPv4.
  const family: 4 | 6 = isIP(localPlain) === 6 ? 6 : 4;
  let od: { address: string; port: number };
  try {
    od = l.addon.originalDst(fd, family);
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ENOENT') return { kind: 'not-redirected', why: 'No NAT entry for this connection (ENOENT)' };
    if (code === 'ENOPROTOOPT') return { kind: 'not-redirected', why: 'Connection tracking is not loaded (ENOPROTOOPT)' };
    throw new OriginalDstError(typeof code === 'string' ? code : 'EUNKNOWN', err);
  }
  // Conntrack keeps a tuple for every tracked connection, NATed or not: an un-NATed one's
  // "original" destination is simply the listener's own address.
  if (od.port === localPort && unmapped(od.address) === localPlain) {
    return { kind: 'not-redirected', why: `The original destination "${od.address}:${od.port}" is the listener itself` };
  }
  return { kind: 'redirected', address: od.address, port: od.port };
}

/**
 * The address as inet_ntop(3) writes it, which is how both Node and the addon spell it, with an
 * IPv4-mapped IPv6 address (RFC 4291 §2.5.5.2) written as the IPv4 address it is.
 */
function unmapped(address: string): string {
  return canonicalSource(address) ?? address.toLowerCase();
}

/**
 * Whether a TCP socket of this process could bind `host`:`port` beside its holder now, with
 * SO_REUSEPORT (the holder set it too and runs as the same user, socket(7)), found by bind(2)
 * alone (native/original_dst.c): the trial socket never listens, so the kernel never hands it a
 * connection meant for the holder. An IPv6 host is tried IPv6-only, as egressd binds it. Null
 * when the addon cannot say (not loaded, or built before it).
 */
export function reusePortBindable(host: string, port: number): boolean | null {
  const l = load();
  if (!l.ok || l.addon.reusePortBindable === undefined) return null;
  return l.addon.reusePortBindable(host, port, host.includes(':')) === 0;
}
