// One TCP client in a sandbox namespace (test/helpers/send-client.py, python3): connect, say the
// source port, wait, send the bytes as given, read the reply. Run it with the rig's execIn or
// spawnIn as `python3 ...sendClientArgs(...)`; sendClientResult reads what it printed.

import { join } from 'node:path';

const SCRIPT = join(import.meta.dirname, 'send-client.py');

export interface SendClientOptions {
  /** A source address to bind (IPv4; bound as ::ffff:a.b.c.d towards an IPv6 destination). */
  readonly bind?: string;
  /** Seconds between the connect and the send. */
  readonly waitS?: number;
  /** Seconds without a byte after which the reply is taken as whole (default 10). */
  readonly readTimeoutS?: number;
  /** How many of the reply's first bytes are printed (default 300). */
  readonly show?: number;
}

/**
 * python3's arguments for one client to ip:port sending `payload`: Python escapes (`\\r\\n`,
 * sent as latin-1), or `hex:` and the bytes in hex.
 */
export function sendClientArgs(ip: string, port: number, payload: string, opts: SendClientOptions = {}): string[] {
  return [
    SCRIPT,
    ...(opts.bind ? ['--bind', opts.bind] : []),
    ...(opts.waitS !== undefined ? ['--wait', String(opts.waitS)] : []),
    ...(opts.readTimeoutS !== undefined ? ['--read-timeout', String(opts.readTimeoutS)] : []),
    ...(opts.show !== undefined ? ['--show', String(opts.show)] : []),
    '--',
    ip,
    String(port),
    payload,
  ];
}

/** The client's source port (undefined when it never connected) and its reply line: `b'...'`, `error NAME b'...'`, or its stderr. */
export function sendClientResult(stdout: string, stderr: string): { port: string | undefined; reply: string } {
  const port = /^port (\d+)$/m.exec(stdout)?.[1];
  const reply = /^reply (.*)$/m.exec(stdout)?.[1] ?? /^error (.*)$/m.exec(stdout)?.[0] ?? stderr;
  return { port, reply };
}
