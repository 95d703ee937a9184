// The process logger: pino, JSON lines in the ecs-logging layout, trusted keys only. Names a
// client sent (SNI, Host) go under their own field, never into the message, so a hostile name
// cannot forge a line.
//
// Every line carries the ecs-logging spec's keys, written dotted at the top level as that spec
// asks: `@timestamp`, `log.level`, `message`, `ecs.version`; then `process.pid`, and
// `event.action` naming what happened (`started`, `connection`, `policy-change`, …). The
// connection line's fields are declared in observability/connection-log.ts.

import { closeSync, constants, fstatSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { pino, type Logger, type LoggerOptions } from 'pino';
import { ECS_VERSION } from './connection-log.ts';
import { NotRegularFileError } from '../util/read-bounded.ts';

export type { Logger };

export interface LoggerSettings {
  readonly level: string;
  /** A file path, or an fd number (1 = stdout, 2 = stderr). */
  readonly destination?: string | number;
  /** Human-readable output through pino-pretty (a development dependency). */
  readonly pretty?: boolean;
}

/** Keys that may carry secrets are removed wherever they appear. */
const REDACT = ['token', '*.token', 'previousToken', '*.previousToken', 'authorization', '*.authorization', 'headers.authorization'];

/** The lines' layout (ECS keys, redaction), without a destination: what every egressd logger uses. */
export function loggerOptions(level: string): LoggerOptions {
  return {
    level,
    base: { 'ecs.version': ECS_VERSION, process: { pid: process.pid } },
    messageKey: 'message',
    timestamp: isoTimestamp,
    redact: { paths: REDACT, remove: true },
    formatters: { level: (label) => ({ 'log.level': label }) },
  };
}

export function createLogger(settings: LoggerSettings): Logger {
  const options = loggerOptions(settings.level);
  if (settings.pretty) {
    // A stream in this thread, not pino's transport: the transport's worker thread blocks
    // process.exit for good once its stdout reader has gone (`serve --pretty | head`, then
    // SIGTERM: the daemon drained, stopped and never exited).
    let prettyStream: (o: Record<string, unknown>) => NodeJS.WritableStream;
    try {
      prettyStream = createRequire(import.meta.url)('pino-pretty') as typeof prettyStream;
    } catch (err) {
      throw new Error(prettyMissing(), { cause: err });
    }
    return pino(
      options,
      prettyStream({ colorize: process.stdout.isTTY, messageKey: 'message', timestampKey: '@timestamp', levelKey: 'log\\.level', destination: 1, sync: true }),
    );
  }
  const dest = settings.destination ?? 1;
  // Connection lines gather in a batch (LineBatch, written to by connection-log.ts) and leave as
  // one write(2) per LOG_BATCH_LINES or per LOG_FLUSH_MS, not one hand-off to libuv's thread pool
  // per connection (bench/log.ts). Every other line (start, stop, policy changes, errors) is rare
  // and someone may be waiting for it: the batch goes out first, then the line, at once. The
  // destination itself buffers nothing (minLength 0): what reaches it is written at once, or
  // behind the write in flight. The batch is written out synchronously when the process exits
  // for any reason but SIGKILL; SIGKILL loses at most LOG_FLUSH_MS of connection lines. No timer
  // runs while nothing waits (an idle daemon does not wake up to write nothing).
  options.hooks = {
    logMethod(args, method) {
      batch.flush();
      method.apply(this, args);
    },
  };
  // A file is opened here, synchronously: the destination is ready from the first line, so the
  // batch can always be written at exit, even by a process that exits just after starting.
  const fd = typeof dest === 'string' ? openLogFile(dest) : dest;
  // What the destination has not taken waits in memory, LOG_BUFFER_BYTES at most: past it a write
  // is dropped (sonic-boom's maxLength), counted, and told once the destination takes lines again.
  const stream = pino.destination({ dest: fd, sync: false, minLength: 0, maxLength: LOG_BUFFER_BYTES });
  // sonic-boom reopens only a destination it knows by path (`reopen()` after a rotation); it was
  // given the descriptor opened above, so it is told the path the descriptor came from.
  if (typeof dest === 'string') (stream as unknown as { file: string }).file = dest;
  const dropped = { lines: 0, untold: 0 };
  stream.on('drop', (data: string | Buffer) => {
    const n = linesIn(data);
    dropped.lines += n;
    dropped.untold += n;
  });
  // 'drain': everything held was written, so the destination takes lines again.
  stream.on('drain', () => {
    if (dropped.untold === 0) return;
    const count = dropped.untold;
    dropped.untold = 0;
    logger.warn(
      { event: { action: 'log-lines-dropped' }, count, bufferBytes: LOG_BUFFER_BYTES },
      'Log lines dropped while the log destination was bufferBytes behind',
    );
  });
  drops.set(stream, dropped);
  // A destination that fails a write (a full disk: ENOSPC, EDQUOT, EIO) must not stop egressd with
  // it. Unheard, the stream's 'error' ends the process (pino re-emits every error but EPIPE), and
  // sonic-boom's flushSync (4.2) retries a failed write forever whatever the error, so the exit
  // hooks (this module's and pino's) then hang the process: it neither served nor exited, SIGTERM
  // included. What failed waits in memory and is written when the destination takes writes again
  // (past LOG_BUFFER_BYTES lines are dropped and counted, as for a slow destination); the first
  // failure is told on standard error, the one channel left; while failing, an exit writes nothing.
  let failing = false;
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (failing) return;
    failing = true;
    process.stderr.write(
      `egressd: cannot write the log to ${typeof dest === 'string' ? dest : `fd ${dest}`}: ${e.code ?? e.message}; lines wait in memory (${LOG_BUFFER_BYTES} bytes at most, then they are dropped and counted)\n`,
    );
  });
  stream.on('write', () => {
    failing = false;
  });
  const flushSync = stream.flushSync.bind(stream);
  stream.flushSync = () => {
    if (!failing) flushSync();
  };
  const batch = new LineBatch((text) => stream.write(text));
  process.once('exit', () => {
    try {
      batch.flush();
      stream.flushSync();
    } catch {
      // Not open yet (nothing was written) or the destination is gone: nothing left to save.
    }
  });
  const logger = pino(options, stream);
  batches.set(stream, batch);
  return logger;
}

/**
 * Opens (creating it and its folder) a log file for appending; throws the open's error, and
 * NotRegularFileError for a FIFO or a socket. Opened without waiting (O_NONBLOCK): a FIFO's open
 * for writing waits for a reader, for ever when none comes, on the JavaScript thread at start
 * (egressd neither started nor said why) and on a thread of libuv's pool at a reopen (every
 * later line waited behind it). A FIFO with a reader is refused too, as its reopen by path would
 * wait again once that reader is gone: standard output is the way to a pipe. A character device
 * (/dev/null, /dev/full) opens at once and is taken.
 */
function openLogFile(path: string): number {
  mkdirSync(dirname(path), { recursive: true });
  const notAFile = `"${path}" is a file (or a device such as /dev/null) egressd appends to; leave log.destination unset to write to standard output`;
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK, 0o666);
  } catch (e) {
    // open(2): a FIFO opened to write without waiting, while no one reads it.
    if ((e as NodeJS.ErrnoException).code === 'ENXIO') throw new NotRegularFileError(`a FIFO no one reads; ${notAFile}`);
    throw e;
  }
  const st = fstatSync(fd);
  if (!st.isFile() && !st.isCharacterDevice()) {
    closeSync(fd);
    throw new NotRegularFileError(notAFile);
  }
  return fd;
}

/**
 * Lines written together: each added as its record and the function that renders it, rendered
 * and handed to `write` as one string once LOG_BATCH_LINES wait or LOG_FLUSH_MS after the first.
 * Rendered together, in one tight loop, a line costs a fraction of what it costs rendered alone
 * at the end of its connection, among everything else the connection ran.
 */
export class LineBatch {
  readonly #write: (text: string) => void;
  #items: unknown[] = [];
  #renders: ((item: never) => string)[] = [];
  #timer: NodeJS.Timeout | null = null;

  constructor(write: (text: string) => void) {
    this.#write = write;
  }

  /** Holds `item`, to be written as `render(item)` (one or more whole lines, each ending in a newline). */
  add<T>(item: T, render: (item: T) => string): void {
    this.#items.push(item);
    this.#renders.push(render);
    if (this.#items.length >= LOG_BATCH_LINES) this.flush();
    else if (this.#timer === null) this.#timer = setTimeout(this.#due, LOG_FLUSH_MS).unref();
  }

  /** Renders and writes out what waits, now. */
  flush(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    const items = this.#items;
    if (items.length === 0) return;
    const renders = this.#renders as ((item: unknown) => string)[];
    this.#items = [];
    this.#renders = [];
    let text = '';
    for (let i = 0; i < items.length; i++) text += renders[i]!(items[i]);
    this.#write(text);
  }

  readonly #due = (): void => {
    this.#timer = null;
    this.flush();
  };
}

/** The batch of each destination createLogger made, for connection lines (connection-log.ts). */
const batches = new WeakMap<object, LineBatch>();
/** The lines each destination createLogger made dropped (LOG_BUFFER_BYTES), in all and not yet told. */
const drops = new WeakMap<object, { lines: number; untold: number }>();

/** The lines in what a write held (each ends in a newline). */
function linesIn(data: string | Buffer): number {
  let n = 0;
  if (typeof data === 'string') for (let i = data.indexOf('\n'); i >= 0; i = data.indexOf('\n', i + 1)) n++;
  else for (let i = data.indexOf(10); i >= 0; i = data.indexOf(10, i + 1)) n++;
  return n;
}

/**
 * Reopens `log`'s destination file by its path, after a rotation renamed it (logrotate's
 * `create`): lines written from now on go to the file at that path, created if missing. Those
 * already handed over finish in the old file. Null when reopened, or when there is nothing to
 * reopen (standard output). What the path holds is first opened here as at start (openLogFile):
 * if that fails, or it is not a regular file (a FIFO, whose open by sonic-boom on a thread of
 * libuv's pool would wait for a reader for ever, every line behind it), the old file is kept
 * and the reason returned.
 */
export function reopenLogFile(log: Logger): string | null {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] as { file?: unknown; reopen?: () => void } | undefined;
  if (stream === undefined || !drops.has(stream) || typeof stream.file !== 'string' || typeof stream.reopen !== 'function') return null;
  lineBatchOf(log)?.flush();
  try {
    closeSync(openLogFile(stream.file));
  } catch (e) {
    return (e as Error).message;
  }
  stream.reopen();
  return null;
}

/** The lines `log`'s destination dropped so far for want of room (0 for a logger createLogger did not make). */
export function logLinesDropped(log: Logger): number {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  return typeof stream === 'object' && stream !== null ? (drops.get(stream)?.lines ?? 0) : 0;
}

/** The batch of lines bound for `log`'s destination, or null when `log` was not made by createLogger. */
export function lineBatchOf(log: Logger): LineBatch | null {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  return typeof stream === 'object' && stream !== null ? (batches.get(stream) ?? null) : null;
}

/** ECS's `@timestamp`: ISO 8601 in UTC with milliseconds (pino's isoTime, under ECS's key). */
function isoTimestamp(): string {
  return timestampAt(Date.now());
}

/** The `@timestamp` member of a line for the time `ms` (Date.now() clock), as every line has it. */
export function timestampAt(ms: number): string {
  if (!Number.isInteger(ms)) return `,"@timestamp":"${new Date(ms).toISOString()}"`;
  // Lines come many to a second: the text up to the second is made once per second.
  const second = Math.floor(ms / 1000);
  if (second !== stamp.second) {
    stamp.second = second;
    stamp.prefix = new Date(second * 1000).toISOString().slice(0, -4); // "…T03:04:05." without "000Z"
  }
  const frac = ms - second * 1000;
  return `,"@timestamp":"${stamp.prefix}${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}Z"`;
}

/** The last second timestampAt wrote, and its text. */
const stamp = { second: Number.NaN, prefix: '' };

/**
 * The most a destination that falls behind (journald, a full pipe, a slow disk) may have waiting
 * in memory. The lines come at the sandboxes' pace (a refused connection or DNS query is one):
 * held whole, a stalled destination cost 450 bytes of heap a line, without bound.
 */
export const LOG_BUFFER_BYTES = 16 * 1024 * 1024;
/** Connection lines are written out once this many wait (≈ 64 KiB)... */
export const LOG_BATCH_LINES = 128;
/** ...or this long after the first of them, whichever comes first. */
export const LOG_FLUSH_MS = 100;

/**
 * What to do when `--pretty` finds no pino-pretty, with the version range package.json pins.
 * It stays a development dependency: a daemon's logs go to a collector as JSON, and the
 * formatter and its dozen dependencies have no place in the image. A production install cannot
 * add it beside egressd either (`npm install --omit=dev pino-pretty` skips it, since
 * package.json lists it under devDependencies), so the way that works from any install is
 * pino-pretty's own command reading the JSON lines, as pino advises.
 */
function prettyMissing(): string {
  let range = '';
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { devDependencies?: Record<string, string> };
    range = pkg.devDependencies?.['pino-pretty'] ?? '';
  } catch {
    // Named without a version: any pino-pretty reads these lines.
  }
  const spec = range === '' ? 'pino-pretty' : `pino-pretty@${range}`;
  return (
    `--pretty needs ${spec}, a development dependency that only a development install (npm ci) has; ` +
    `from any install, run without --pretty and pipe the JSON lines through it: ` +
    `egressd serve | npx --yes ${spec} --messageKey message --timestampKey @timestamp --levelKey 'log\\.level'`
  );
}
