// How a failed read of a file the operator named is worded: the errno code (what a search finds)
// and the system's words for it (what a person reads), as in "ENOENT (no such file or directory)".

import { getSystemErrorMessage } from 'node:util';

/** `"ENOENT (no such file or directory)"` for a system error, the error's message otherwise. */
export function readFailure(err: unknown): string {
  const e = err as NodeJS.ErrnoException | null | undefined;
  if (typeof e?.code === 'string' && typeof e.errno === 'number') return `${e.code} (${getSystemErrorMessage(e.errno)})`;
  return err instanceof Error ? err.message : String(err);
}
