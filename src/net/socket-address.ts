// A Node socket's peer or own address, read so that it never throws.
//
// Node writes a link-local IPv6 address with its zone, the name of its interface (src/tcp_wrap.cc
// AddressToJS, through uv_if_indextoname). When that interface is gone — a sandbox's veth deleted
// with its namespace while its connection waited in the listen backlog — the kernel still
// reports the old scope, if_indextoname(3) finds no name, and Node's remoteAddress,
// remotePort, localAddress and localPort getters throw ENXIO (`uv_if_indextoiid`) instead of
// answering. Read in a 'connection' handler, that ends the process. A socket already closed
// answers undefined. Both are "no address" here: nothing can be sent back on a link that is gone.

import type { Socket } from 'node:net';

export interface SocketAddress {
  /** As Node writes it: `198.18.0.2`, `2001:db8::2`, `::ffff:198.18.0.2`, `fe80::b1%eth1`. */
  readonly address: string;
  readonly port: number;
}

/**
 * `socket`'s peer address (`remote`: getpeername) or its own (`local`: getsockname) with the
 * port, or undefined when Node has none to give: the socket is closed, or its link-local
 * address's interface no longer exists (the getters' ENXIO, caught).
 */
export function socketAddress(socket: Socket, side: 'remote' | 'local'): SocketAddress | undefined {
  try {
    const address = side === 'remote' ? socket.remoteAddress : socket.localAddress;
    const port = side === 'remote' ? socket.remotePort : socket.localPort;
    return address === undefined || port === undefined ? undefined : { address, port };
  } catch {
    return undefined;
  }
}
