// How a failed system call on something the operator named (a file, a port) is worded: the errno
// code (what a search finds) and the system's words for it (what a person reads), as in
// "ENOENT (no such file or directory)".

import { getSystemErrorMessage } from 'node:util';

/** `"ENOENT (no such file or directory)"` for a system error, the error's message otherwise. */
export function systemError(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null | undefined;
  if (typeof e?.code === 'string' && typeof e.errno === 'number') return `${e.code} (${getSystemErrorMessage(e.errno)})`;
  return err instanceof Error ? err.message : String(err);
}

/** The errno `code` of an error or of the first of its causes that has one. */
function errnoCode(err: unknown): string | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return code;
  }
  return undefined;
}

/**
 * What the operator can do about a listener that could not bind, from the errno on the error or
 * its causes; null when there is nothing to add. The errors themselves name the listener.
 */
export function listenFailureHint(err: unknown): string | null {
  switch (errnoCode(err)) {
    case 'EACCES':
      return 'a port below 1024 needs root or CAP_NET_BIND_SERVICE; egressd needs neither on its default ports, where iptables redirects to';
    case 'EADDRINUSE':
      return 'another process holds that port without SO_REUSEPORT, or as another user ("ss -ltnup" names it)';
    case 'EADDRNOTAVAIL':
      return 'no interface of this host has that address';
    default:
      return null;
  }
}
