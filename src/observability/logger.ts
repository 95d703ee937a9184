// The process logger: pino, JSON lines, trusted keys only. Names a client sent (SNI, Host)
// go under their own field, never into the message, so a hostile name cannot forge a line.

import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

export interface LoggerSettings {
  readonly level: string;
  /** A file path, or an fd number (1 = stdout, 2 = stderr). */
  readonly destination?: string | number;
  /** Human-readable output through pino-pretty (a development dependency). */
  readonly pretty?: boolean;
}

/** Keys that may carry secrets are removed wherever they appear. */
const REDACT = ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization'];

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT, remove: true },
    formatters: { level: (label) => ({ level: label }) },
  };
  if (settings.pretty) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: process.stdout.isTTY } } });
  }
  const dest = settings.destination ?? 1;
  // Connection lines gather in a buffer and leave in batches: one write(2) per LOG_BUFFER_BYTES
  // or per LOG_FLUSH_MS, not one hand-off to libuv's thread pool per connection (bench/log.ts:
  // about half of a line's cost). Every other line (start, stop, policy changes, errors) is
  // rare and someone may be waiting for it, so it is written out at once, with what is waiting
  // before it. The buffer is written out synchronously when the process exits for any reason
  // but SIGKILL; SIGKILL loses at most LOG_FLUSH_MS of connection lines.
  options.hooks = {
    logMethod(args, method) {
      method.apply(this, args);
      const first: unknown = args[0];
      if (typeof first === 'object' && first !== null && (first as { event?: unknown }).event === 'connection') return;
      try {
        stream.flush();
      } catch {
        // Destroyed at exit: the exit handler below already wrote what was waiting.
      }
    },
  };
  const stream = pino.destination({
    dest,
    sync: false,
    minLength: LOG_BUFFER_BYTES,
    periodicFlush: LOG_FLUSH_MS,
    mkdir: typeof dest === 'string',
  });
  process.once('exit', () => {
    try {
      stream.flushSync();
    } catch {
      // Not open yet (nothing was written) or the destination is gone: nothing left to save.
    }
  });
  return pino(options, stream);
}

/** The connection log's batch: written out once this many bytes are waiting (≈ 30 lines). */
export const LOG_BUFFER_BYTES = 8192;
/** ...or this long after the oldest waiting line, whichever comes first. */
export const LOG_FLUSH_MS = 100;
