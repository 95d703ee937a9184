// The dns-query lines a sandbox can make one per query (refused, limited, malformed, failed, or
// answered in report-only mode or without denied records: every line above `debug`), bounded as
// the refusals at accept are (limits/controller.ts): a sandbox asking denied names as fast as its
// query rate allows (500 a second, 1000 at once) otherwise wrote a line per query, and the log
// destination, which every sandbox's lines share, fell behind (lines dropped past 16 MiB).
//
// Per sandbox (or block of sources of no sandbox: match/tenant-key.ts), verdict and reason: the
// first line is written at once; the others in the same second are counted, and at the end of
// the second the last of them is written with `egressd.suppressed`, how many were left out since
// the line before. So at most one line a second after the first, and lines plus the suppressed
// counts are every such query. The first SOURCES_LOGGED blocks of sources of no sandbox get lines
// of their own; the others' are gathered by verdict and reason (a client taking a new address
// for each query would otherwise make a line of each).

import type { Logger } from '../observability/logger.ts';
import { logQuery, type QueryLog } from './query-log.ts';

/** How long lines are gathered into one per sandbox, verdict and reason. */
export const QUERY_LINES_MS = 1000;
/** Blocks of sources of no sandbox with lines of their own at once; the rest are gathered. */
const SOURCES_LOGGED = 16;
const OTHER_SOURCES = '\u0000other sources';

interface Gathered {
  /** Lines left out since the last written. */
  count: number;
  /** The last line left out, written at the end of the second with the count. */
  last: { level: 'info' | 'warn'; q: QueryLog } | null;
  /** The block of sources of no sandbox it is one of the lines of, or null (a sandbox's, or the gathered). */
  readonly block: string | null;
}

export class QueryLines {
  readonly #log: Logger;
  readonly #onSuppressed: (reason: string, n: number) => void;
  readonly #gathered = new Map<string, Gathered>();
  /**
   * The blocks of sources of no sandbox with lines of their own, and how many verdicts and reasons
   * each has gathered: one place of SOURCES_LOGGED a block, however many reasons it is refused for.
   */
  readonly #blocks = new Map<string, number>();
  /** Runs while anything is gathered; an idle daemon sleeps. */
  #timer: NodeJS.Timeout | null = null;

  /** `onSuppressed`: told of the lines left out (reason, how many) as each is written. */
  constructor(log: Logger, onSuppressed: (reason: string, n: number) => void = () => {}) {
    this.#log = log;
    this.#onSuppressed = onSuppressed;
  }

  /**
   * Writes `q`'s line at `level` (`debug` lines always, they are off unless asked for), or
   * counts it. `tenant`: the key the source's limits are counted under.
   */
  write(tenant: string, level: 'debug' | 'info' | 'warn', q: QueryLog): void {
    if (level === 'debug') return logQuery(this.#log, level, q);
    const kind = `\u0000${q.verdict}\u0000${q.reason}`;
    const ownSource = q.sandbox === null;
    let k = tenant + kind;
    let e = this.#gathered.get(k);
    if (e === undefined && ownSource && !this.#blocks.has(tenant) && this.#blocks.size >= SOURCES_LOGGED) {
      k = OTHER_SOURCES + kind;
      e = this.#gathered.get(k);
    }
    if (e !== undefined) {
      e.count++;
      e.last = { level, q };
      return;
    }
    const block = ownSource && !k.startsWith(OTHER_SOURCES) ? tenant : null;
    if (block !== null) this.#blocks.set(block, (this.#blocks.get(block) ?? 0) + 1);
    this.#gathered.set(k, { count: 0, last: null, block });
    this.#timer ??= setInterval(() => this.flush(), QUERY_LINES_MS).unref();
    logQuery(this.#log, level, q);
  }

  /**
   * Ends the second: for each sandbox, verdict and reason with lines left out, writes the last
   * with the count; one with none left out is forgotten, so its next line is written at once.
   */
  flush(): void {
    for (const [k, e] of this.#gathered) {
      if (e.last === null) {
        this.#gathered.delete(k);
        if (e.block !== null) {
          const left = (this.#blocks.get(e.block) ?? 1) - 1;
          if (left > 0) this.#blocks.set(e.block, left);
          else this.#blocks.delete(e.block);
        }
        continue;
      }
      const suppressed = e.count - 1;
      if (suppressed > 0) this.#onSuppressed(e.last.q.reason, suppressed);
      logQuery(this.#log, e.last.level, { ...e.last.q, suppressed });
      e.count = 0;
      e.last = null;
    }
    if (this.#gathered.size === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  /** Writes what is gathered and stops the timer. */
  close(): void {
    this.flush();
    this.flush();
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
