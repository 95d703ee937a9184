// One DNS endpoint (`listen.dns`): a UDP socket and a TCP server on the same address and port,
// the REDIRECT target of the sandboxes' port 53. Over TCP (RFC 7766 §6.2) a connection may carry
// several queries, answered as each is ready (in any order, §6.2.1.1), and is closed after an
// idle period; each sandbox may hold a bounded number of connections, over every listener
// (dns/tcp-connections.ts). Each connection is a descriptor of the process's budget
// (limits/admission.ts dnsTcp): past the listeners' total or DNS's part of the budget, a
// connection with no query waiting, on any listener, is closed to make room (RFC 7766 §6.2.3 lets
// a server close idle connections under pressure), of the sandbox holding the most — one idle
// for a while, or any answered one of a sandbox holding at least two more than the newcomer's, so
// many sources that keep theirs busy still leave room for the others — else the new one is
// refused.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import type { Endpoint } from '../net/listener.ts';
import { canonicalSource } from '../match/ip.ts';
import { socketAddress } from '../net/socket-address.ts';
import { frame, MAX_QUERY_BYTES, refusedFor } from './message.ts';
import type { Transport } from './service.ts';
import { DnsTcpConnections, type TcpConnection, type TcpHold } from './tcp-connections.ts';

/** Why a TCP connection is refused: the sandbox's bound or share, the listeners' total, DNS's part of the budget. */
export type TcpRefusal = 'sandbox' | 'total' | 'budget';

export type DnsListenerStatus =
  { state: 'idle' } | { state: 'listening'; address: string; port: number } | { state: 'failed'; error: string } | { state: 'closed' };

export interface DnsListenerDeps {
  readonly answer: (msg: Buffer, source: string, transport: Transport) => Promise<Buffer | null>;
  /** The key a source's TCP connections are counted under (its sandbox). */
  readonly keyOf: (source: string) => string;
  readonly tcpPerSandbox: number;
  /**
   * A descriptor for one TCP connection from `source`, or why there is none; `refusing`: it is
   * held only to answer its query REFUSED. Absent: no budget (only tcpPerSandbox bounds them).
   */
  readonly takeTcp?: (source: string, refusing: boolean) => TcpHold | TcpRefusal;
  /** Told of each TCP connection refused, and why; `reset`: not even answered REFUSED. */
  readonly onTcpRefused?: (source: string, why: TcpRefusal, reset: boolean) => void;
  /** Told of each idle connection closed to make room for a new one. */
  readonly onTcpShed?: () => void;
  /**
   * Told of each TCP message whose length is past MAX_QUERY_BYTES: its connection is closed
   * unread, where the same bytes over UDP are answered FORMERR, and it counts as malformed alike.
   */
  readonly onTcpMalformed?: () => void;
  /**
   * The TCP connections of every DNS listener of the process, which tcpPerSandbox and the
   * budget's total count together; this listener's own when absent.
   */
  readonly tcpConnections?: DnsTcpConnections;
  /**
   * Whether a TCP connection may be taken now. The daemon's limits start only once every listener
   * is bound (the budget is sized from what is then open): a connection taken sooner would be
   * held in no budget. Always, when absent.
   */
  readonly accepting?: () => boolean;
  /** The receive buffer each UDP socket asks for, bytes; DNS_UDP_RECEIVE_BUFFER when absent (tests ask more than rmem_max). */
  readonly udpReceiveBuffer?: number;
  /**
   * Holds a connection from `source` accepted while `accepting` says no until it says yes (the
   * start is over): `run` is called then, or once the start was given up; `refuse` should it
   * give its place up to another sandbox's. False when it cannot be held (the daemon's bound on
   * what waits for its start), and the connection is reset. Absent: reset.
   */
  readonly holdUntilAccepting?: (source: string, run: () => void, refuse: () => void) => boolean;
}

/**
 * The receive buffer asked for each UDP socket, in bytes (the kernel doubles it for its
 * bookkeeping and caps the ask at net.core.rmem_max). Every sandbox's queries wait in the same
 * socket until the event loop reads them, and each sandbox may send `dns.limits.burst` (1000) at
 * once: the kernel's default (rmem_default, 208 KiB) holds ~256 small datagrams, so one sandbox's
 * burst filled it and the kernel dropped the other sandboxes' queries behind it. 4 MiB holds
 * ~10,000 (measured), the bursts of ten sandboxes; Unbound's `so-rcvbuf` advice is the same 4m.
 */
export const DNS_UDP_RECEIVE_BUFFER = 4 * 1024 * 1024;

/** RFC 7766 §6.2.3: an idle TCP connection is closed after a few seconds. */
const TCP_IDLE_MS = 10_000;
/** How long the bytes of one query may take to arrive, from its first (a client writes a query at once). */
const TCP_QUERY_MS = 2_000;
/** Queries one TCP connection may have waiting for an answer; past it, its queries are not read. */
const TCP_PIPELINE = 16;
/** How long a connection past a bound is given, from its accept, to send the query it is refused and take the answer. */
const TCP_REFUSE_MS = 2_000;
/**
 * Connections past the bound held at once (all sandboxes, every listener) while their query is read; past
 * this, they are reset without an answer, so a flood of them costs a bounded number of sockets.
 * One sandbox holds at most tcpPerSandbox of them, so its silent ones cannot turn the others'
 * refusals into resets.
 */
const TCP_REFUSING_MAX = 256;
/**
 * How long a connection must have had no query waiting before it may be closed to make room: a
 * new one is not idle before its client could ask (RFC 7766 §6.2.3 "a few seconds" at most).
 */
const TCP_SHED_IDLE_MS = 1_000;

export class DnsListener {
  readonly endpoint: Endpoint;
  readonly kind = 'dns' as const;
  readonly #deps: DnsListenerDeps;
  #udp!: UdpSocket;
  /**
   * For a wildcard endpoint, a second UDP socket on the loopback address and the same port.
   * A reply from a wildcard socket leaves from the address the kernel picks for the client,
   * not the one the query was sent to; REDIRECT in nat OUTPUT (sidecar mode) sends queries to
   * 127.0.0.1 or ::1 while the client is on its own interface address, so those replies would
   * miss conntrack's reverse translation and the client would drop them as from the wrong
   * server. The kernel delivers to the socket bound to the exact address first, and that one
   * replies from it. (Node has no IP_PKTINFO to choose the source per datagram.)
   */
  #udpLoopback: UdpSocket | null = null;
  #tcp!: Server;
  #status: DnsListenerStatus = { state: 'idle' };
  /** This listener's sockets, served or being refused, to close with it. */
  readonly #connections = new Set<Socket>();
  readonly #tcpAll: DnsTcpConnections;

  constructor(endpoint: Endpoint, deps: DnsListenerDeps) {
    this.endpoint = endpoint;
    this.#deps = deps;
    this.#tcpAll = deps.tcpConnections ?? new DnsTcpConnections();
    this.#makeSockets();
  }

  /**
   * (Re)creates the unbound sockets of this endpoint. ipv6Only: `[::]` and `0.0.0.0` are
   * listeners of their own, as for TCP; reusePort: as for TCP, a new process can bind while the
   * old one drains.
   */
  #makeSockets(): void {
    const v6 = this.endpoint.host.includes(':');
    this.#udp = this.#udpSocket(v6);
    this.#udpLoopback = this.endpoint.host === '0.0.0.0' || this.endpoint.host === '::' ? this.#udpSocket(v6) : null;
    this.#tcp = this.#tcpServer();
  }

  #tcpServer(): Server {
    const tcp = createServer({ noDelay: true }, (s) => this.#onConnection(s));
    tcp.on('error', (err) => {
      this.#status = { state: 'failed', error: err.message };
    });
    return tcp;
  }

  get status(): DnsListenerStatus {
    return this.#status;
  }

  /** The receive buffer each UDP socket asks for, bytes. */
  get udpReceiveBufferAsked(): number {
    return this.#deps.udpReceiveBuffer ?? DNS_UDP_RECEIVE_BUFFER;
  }

  /**
   * The least receive buffer the kernel granted a UDP socket of this listener, in bytes as asked
   * (SO_RCVBUF reads back twice what was granted: socket(7)), or null before it listens. Below
   * the ask when net.core.rmem_max is lower.
   */
  get udpReceiveBufferGranted(): number | null {
    if (this.#status.state !== 'listening') return null;
    let least = Infinity;
    for (const sock of [this.#udp, this.#udpLoopback]) if (sock !== null) least = Math.min(least, Math.floor(sock.getRecvBufferSize() / 2));
    return least;
  }

  get port(): number | null {
    return this.#status.state === 'listening' ? this.#status.port : null;
  }

  /**
   * Binds UDP, then TCP (and the loopback UDP socket of a wildcard endpoint) on the port UDP
   * got. With port 0 another process can hold that port for TCP: the sockets are made again
   * and a new port is picked, up to 20 times (a loaded test machine hit it).
   */
  async listen(): Promise<void> {
    const attempts = this.endpoint.port === 0 ? 20 : 1;
    for (let i = 1; ; i++) {
      try {
        await this.#bind();
        return;
      } catch (err) {
        if (i >= attempts || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
          this.#status = { state: 'failed', error: `${this.endpoint.text}: ${(err as Error).message}` };
          throw new Error(`Cannot listen on dns ${this.endpoint.text}: ${(err as Error).message}`, { cause: err });
        }
        await this.#closeSockets();
        this.#makeSockets();
      }
    }
  }

  async #bind(): Promise<void> {
    const v6 = this.endpoint.host.includes(':');
    await new Promise<void>((resolve, reject) => {
      this.#udp.once('error', reject);
      this.#udp.bind({ address: this.endpoint.host, port: this.endpoint.port }, () => {
        this.#udp.off('error', reject);
        resolve();
      });
    });
    // The TCP side takes the port UDP got, so `:0` in tests gives one port for both.
    const port = this.#udp.address().port;
    const lo = this.#udpLoopback;
    if (lo !== null) {
      await new Promise<void>((resolve, reject) => {
        lo.once('error', reject);
        lo.bind({ address: v6 ? '::1' : '127.0.0.1', port }, () => {
          lo.off('error', reject);
          resolve();
        });
      });
    }
    await new Promise<void>((resolve, reject) => {
      this.#tcp.once('error', reject);
      this.#tcp.listen({ host: this.endpoint.host, port, ipv6Only: v6, backlog: 1024, reusePort: true }, () => {
        this.#tcp.off('error', reject);
        resolve();
      });
    });
    this.#status = { state: 'listening', address: this.endpoint.host, port };
  }

  /** Closes whatever of the sockets is bound (a failed attempt). */
  async #closeSockets(): Promise<void> {
    for (const sock of [this.#udp, this.#udpLoopback]) {
      if (sock === null) continue;
      await new Promise<void>((resolve) => {
        try {
          sock.close(() => resolve());
        } catch {
          resolve(); // never bound
        }
      });
    }
    if (this.#tcp.listening) await new Promise<void>((resolve) => this.#tcp.close(() => resolve()));
  }

  #udpSocket(v6: boolean): UdpSocket {
    const sock = createSocket({ type: v6 ? 'udp6' : 'udp4', ipv6Only: v6, reusePort: true, recvBufferSize: this.udpReceiveBufferAsked });
    sock.on('message', (msg, rinfo) => this.#onDatagram(sock, msg, rinfo.address, rinfo.port));
    sock.on('error', (err) => {
      // Once bound, an error is one datagram's, and the socket goes on receiving: a failed read,
      // or one from a link-local source whose interface is gone before it was read (Node's
      // udp_wrap cannot write its address: ENXIO, net/socket-address.ts). That datagram is lost
      // as any other is; the listener is not, for every sandbox.
      if (this.#status.state === 'listening') return;
      this.#status = { state: 'failed', error: err.message };
    });
    return sock;
  }

  #onDatagram(sock: UdpSocket, msg: Buffer, address: string, port: number): void {
    void this.#deps
      .answer(msg, address, 'udp')
      .then((res) => {
        if (res !== null && this.#status.state === 'listening') sock.send(res, port, address, () => {});
      })
      .catch(() => {});
  }

  #onConnection(socket: Socket, early = false): void {
    if (!early) socket.on('error', () => {});
    // Held for the start (below) and closed meanwhile, by its client or by close().
    else if (socket.destroyed) return;
    // A client that reset before Node read its address (getpeername then fails), or a link-local
    // one whose interface is gone since (net/socket-address.ts), is gone: nothing to answer, and
    // no source to count it under.
    const remote = socketAddress(socket, 'remote')?.address;
    if (remote === undefined) return void socket.destroy();
    if (this.#status.state !== 'listening') return void socket.resetAndDestroy();
    if (this.#deps.accepting?.() === false) {
      // Accepted before egressd serves: in a rollout the kernel shares new connections with a
      // starting process from its bind on (SO_REUSEPORT), and a reset here lost a query the
      // draining process beside it would have answered. It waits for the start, as a proxied
      // connection and a UDP query do; what the client sends meanwhile stays in the socket's
      // buffer. Once the start is over (or given up) it is taken, or reset, as then.
      const reset = (): void => void socket.resetAndDestroy();
      if (early || this.#deps.holdUntilAccepting?.(remote, () => this.#onConnection(socket, true), reset) !== true) return reset();
      this.#connections.add(socket);
      socket.once('close', () => this.#connections.delete(socket));
      return;
    }
    this.#connections.delete(socket);
    const source = canonicalSource(remote) ?? remote;
    const key = this.#deps.keyOf(source);
    const held = this.#tcpAll.held(key);
    if (held >= this.#deps.tcpPerSandbox) return this.#refuse(socket, source, key, 'sandbox');
    let hold = this.#deps.takeTcp?.(source, false) ?? null;
    if (typeof hold === 'string' && hold !== 'sandbox' && this.#shedFor(held)) hold = this.#deps.takeTcp?.(source, false) ?? null;
    if (typeof hold === 'string') return this.#refuse(socket, source, key, hold);
    const conn: TcpConnection = { socket, key, waiting: 0, active: performance.now(), answered: false, hold };
    this.#connections.add(socket);
    this.#tcpAll.add(conn);
    socket.once('close', () => {
      conn.hold?.release();
      this.#tcpAll.remove(conn);
      this.#connections.delete(socket);
    });
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let ended = false;
    // Queries are taken from what was read only while fewer than TCP_PIPELINE wait and the client
    // has taken the answers written so far; otherwise reading stops (the rest waits in `buf`) until
    // an answer is done or the answers drain. A client that pipelines without reading would make
    // egressd buffer answers without bound; paused, it holds one socket buffer, and a connection
    // that neither reads nor sends meets the idle timeout.
    const room = (): boolean => conn.waiting < TCP_PIPELINE && !socket.writableNeedDrain;
    // A query begun must be whole within TCP_QUERY_MS: the idle timeout counts bytes, so a byte
    // now and then would otherwise hold the connection for ever without asking anything.
    let partial: NodeJS.Timeout | null = null;
    const pump = (): void => {
      while (room() && buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len > MAX_QUERY_BYTES) {
          this.#deps.onTcpMalformed?.();
          socket.destroy();
          return;
        }
        if (buf.length < len + 2) break;
        const msg = Buffer.from(buf.subarray(2, len + 2));
        buf = buf.subarray(len + 2);
        if (partial !== null) {
          clearTimeout(partial);
          partial = null;
        }
        conn.waiting++;
        void this.#deps
          .answer(msg, source, 'tcp')
          .then((res) => {
            if (res !== null && !socket.destroyed) socket.write(frame(res));
          })
          .catch(() => {})
          .finally(() => {
            conn.waiting--;
            conn.active = performance.now();
            conn.answered = true;
            pump();
            if (ended && conn.waiting === 0) socket.end();
          });
      }
      if (socket.destroyed) return;
      if (!room()) {
        // Not read meanwhile, so the rest of a query begun cannot come: its clock starts again.
        socket.pause();
        if (partial !== null) clearTimeout(partial);
        partial = null;
      } else {
        if (socket.isPaused()) socket.resume();
        // With room, what is left is part of a query.
        if (buf.length > 0 && partial === null) partial = setTimeout(() => socket.destroy(), TCP_QUERY_MS);
      }
    };
    socket.once('close', () => {
      if (partial !== null) clearTimeout(partial);
    });
    socket.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      pump();
    });
    socket.on('drain', pump);
    // A client that half-closes after its queries still gets every answer (RFC 7766 §6.2.4).
    socket.on('end', () => {
      ended = true;
      if (conn.waiting === 0) socket.end();
    });
  }

  /** Closes a connection with no query waiting, on any listener, to make room (DnsTcpConnections.shedFor). */
  #shedFor(mine: number): boolean {
    if (!this.#tcpAll.shedFor(mine, TCP_SHED_IDLE_MS)) return false;
    this.#deps.onTcpShed?.();
    return true;
  }

  /**
   * A connection past a bound (`why`): its first query is answered REFUSED (RFC 1035
   * §4.1.1, "refuses to perform the specified operation for policy reasons"), so the client
   * learns why at once rather than retrying a reset, and the connection is closed.
   */
  #refuse(socket: Socket, source: string, key: string, why: TcpRefusal): void {
    const room = this.#tcpAll.refusing < TCP_REFUSING_MAX && this.#tcpAll.refusingBy(key) < this.#deps.tcpPerSandbox;
    const hold = room ? (this.#deps.takeTcp?.(source, true) ?? { release: () => {} }) : null;
    if (hold === null || typeof hold === 'string') {
      // Not even a descriptor to answer with: reset at once.
      this.#deps.onTcpRefused?.(source, why, true);
      socket.resetAndDestroy();
      return;
    }
    this.#deps.onTcpRefused?.(source, why, false);
    const uncount = this.#tcpAll.addRefusing(key);
    this.#connections.add(socket);
    // From the accept, not from the last byte (socket.setTimeout): a byte now and then is no
    // query, and must not hold one of the few places for connections being refused.
    const bound = setTimeout(() => socket.destroy(), TCP_REFUSE_MS);
    socket.once('close', () => {
      clearTimeout(bound);
      hold.release();
      uncount();
      this.#connections.delete(socket);
    });
    let buf: Buffer = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (buf.length < 2) return;
      const len = buf.readUInt16BE(0);
      if (len > MAX_QUERY_BYTES) {
        this.#deps.onTcpMalformed?.();
        return void socket.destroy();
      }
      if (buf.length < len + 2) return;
      socket.removeAllListeners('data');
      const res = refusedFor(Buffer.from(buf.subarray(2, len + 2)));
      if (res === null) socket.destroy();
      else socket.end(frame(res));
    });
    socket.on('end', () => socket.end());
  }

  async close(): Promise<void> {
    const was = this.#status.state;
    this.#status = { state: 'closed' };
    for (const s of this.#connections) s.destroy();
    if (was === 'listening') {
      await new Promise<void>((resolve) => this.#udp.close(() => resolve()));
      const lo = this.#udpLoopback;
      if (lo !== null) await new Promise<void>((resolve) => lo.close(() => resolve()));
      await new Promise<void>((resolve) => this.#tcp.close(() => resolve()));
    } else {
      for (const sock of [this.#udp, this.#udpLoopback]) {
        try {
          sock?.close();
        } catch {
          // never bound
        }
      }
      // Closed while its listen was still under way (a start that failed on another listener):
      // closed now, it never binds, where it would otherwise bind later and keep the process alive.
      this.#tcp.close();
    }
  }
}
