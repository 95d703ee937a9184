// Opens the TCP connection to the upstream, to an address already judged by the policy. It
// never resolves a name: the address checked is the address dialed (smokescreen's lesson).

import { connect, isIP, type Socket } from 'node:net';

export type DialFailure = 'refused' | 'timeout' | 'unreachable' | 'reset' | 'aborted' | 'other';

export type DialResult = { ok: true; socket: Socket; connectMs: number } | { ok: false; cause: DialFailure; detail: string };

export interface DialOptions {
  /** An IP address literal. */
  readonly address: string;
  readonly port: number;
  readonly connectTimeoutMs: number;
  /** Aborting destroys the half-made connection and settles as `aborted`. */
  readonly signal: AbortSignal;
}

export function dial(o: DialOptions): Promise<DialResult> {
  const target = `${isIP(o.address) === 6 ? `[${o.address}]` : o.address}:${o.port}`;
  if (isIP(o.address) === 0) return Promise.resolve({ ok: false, cause: 'other', detail: `Not an IP address: "${o.address}"` });
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) {
    return Promise.resolve({ ok: false, cause: 'other', detail: `Not a port: "${o.port}"` });
  }
  if (o.signal.aborted) return Promise.resolve({ ok: false, cause: 'aborted', detail: `Dialing "${target}" was aborted before it began` });

  return new Promise((resolve) => {
    const started = performance.now();
    // allowHalfOpen: the upstream's FIN is carried to the client by splice, not answered here.
    const socket = connect({ host: o.address, port: o.port, allowHalfOpen: true, noDelay: true });
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const settle = (r: DialResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', onError);
      if (!r.ok) socket.destroy();
      resolve(r);
    };
    const onConnect = (): void => {
      settle({ ok: true, socket, connectMs: Math.round((performance.now() - started) * 1000) / 1000 });
    };
    const onError = (err: Error): void => {
      const code = (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
      settle({ ok: false, cause: causeOf(code), detail: `Connecting to "${target}" failed: ${code}` });
    };
    const onAbort = (): void => settle({ ok: false, cause: 'aborted', detail: `Dialing "${target}" was aborted` });
    timer = setTimeout(
      () => settle({ ok: false, cause: 'timeout', detail: `Connecting to "${target}" took longer than ${o.connectTimeoutMs} ms` }),
      o.connectTimeoutMs,
    );
    // Until splice attaches its own handlers, a late error must not be unhandled; after a
    // failed dial the destroyed socket may still report one.
    socket.on('error', () => {});
    socket.once('connect', onConnect);
    socket.once('error', onError);
    o.signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Syscall errnos (by name), mapped to the fixed set that the metrics label carries. */
export function causeOf(code: string): DialFailure {
  switch (code) {
    case 'ECONNREFUSED':
      return 'refused';
    // The kernel's own SYN retries ran out before our timer (net.ipv4.tcp_syn_retries).
    case 'ETIMEDOUT':
      return 'timeout';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EHOSTDOWN':
    case 'ENETDOWN':
    case 'EADDRNOTAVAIL':
      return 'unreachable';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'reset';
    default:
      return 'other';
  }
}
