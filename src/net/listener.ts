// One TCP listener: an iptables REDIRECT target for one kind of traffic (http = originally
// port 80, tls = 443, tcp = every other port), on one address.

import { createServer, type Server, type Socket } from 'node:net';

/** An address and port to listen on. */
export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /** The text as written, for logs and errors. */
  readonly text: string;
}

/** Which REDIRECT a connection came through: http (port 80), tls (443), tcp (every other port). */
export type ListenerKind = 'http' | 'tls' | 'tcp';
export const LISTENER_KINDS: readonly ListenerKind[] = ['http', 'tls', 'tcp'];

export type ListenerStatus =
  { state: 'idle' } | { state: 'listening'; address: string; port: number } | { state: 'failed'; error: string } | { state: 'closed' };

export class Listener {
  readonly kind: ListenerKind;
  readonly endpoint: Endpoint;
  #server: Server;
  #status: ListenerStatus = { state: 'idle' };

  constructor(
    kind: ListenerKind,
    endpoint: Endpoint,
    onConnection: (socket: Socket, kind: ListenerKind) => void,
    onAcceptError: (err: NodeJS.ErrnoException, kind: ListenerKind) => void = () => {},
  ) {
    this.kind = kind;
    this.endpoint = endpoint;
    // allowHalfOpen: a client's FIN must be carried upstream, not answered by closing our side.
    this.#server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => onConnection(socket, kind));
    this.#server.on('error', (err: NodeJS.ErrnoException) => {
      // accept(2) failing (EMFILE, ENFILE, ENOBUFS) leaves the socket listening: libuv closes
      // the waiting connections with its reserve descriptor and accepting goes on as soon as
      // descriptors free up. A failed accept is shed load, not a dead listener.
      if (err.syscall === 'accept' && this.#server.listening) return onAcceptError(err, kind);
      this.#status = { state: 'failed', error: err.message };
    });
  }

  get status(): ListenerStatus {
    return this.#status;
  }

  /** The port actually bound (differs from the endpoint's when it asked for port 0). */
  get port(): number | null {
    return this.#status.state === 'listening' ? this.#status.port : null;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.#status = { state: 'failed', error: `${this.endpoint.text}: ${err.message}` };
        reject(new Error(`Cannot listen on ${this.kind} ${this.endpoint.text}: ${err.message}`, { cause: err }));
      };
      this.#server.once('error', onError);
      // `[::]` is bound IPv6-only: `0.0.0.0` is a listener of its own, as the default config has it.
      // SO_REUSEPORT lets a new process bind the same ports while the old one drains: the kernel
      // hands new connections to whichever still listens, so a restart refuses no one.
      this.#server.listen(
        { host: this.endpoint.host, port: this.endpoint.port, ipv6Only: this.endpoint.host.includes(':'), backlog: 1024, reusePort: true },
        () => {
          this.#server.off('error', onError);
          const a = this.#server.address();
          if (a && typeof a === 'object') this.#status = { state: 'listening', address: a.address, port: a.port };
          resolve();
        },
      );
    });
  }

  /**
   * Stops accepting; open connections are left to the caller (drain). Done once the listening
   * socket is closed (net.Server.close closes it at once): the callback of net.Server.close waits
   * for every connection the server accepted to end too, and a stop that waited for it never
   * reached its drain bound (shutdown.drainMs) nor its closeAll while the JS path held a
   * connection, up to the connection's idle timeout.
   */
  close(): Promise<void> {
    if (this.#server.listening) this.#server.close();
    this.#status = { state: 'closed' };
    return Promise.resolve();
  }
}
