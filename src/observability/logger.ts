// The process logger: pino, JSON lines in the ecs-logging layout, trusted keys only. Names a
// client sent (SNI, Host) go under their own field, never into the message, so a hostile name
// cannot forge a line.
//
// Every line carries the ecs-logging spec's keys, written dotted at the top level as that spec
// asks: `@timestamp`, `log.level`, `message`, `ecs.version`; then `process.pid`, and
// `event.action` naming what happened (`started`, `connection`, `policy-change`, …). The
// connection line's fields are declared in observability/connection-log.ts.

import { pino, type Logger, type LoggerOptions } from 'pino';
import { ECS_VERSION } from './connection-log.ts';

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
    return pino({
      ...options,
      transport: {
        target: 'pino-pretty',
        options: { colorize: process.stdout.isTTY, messageKey: 'message', timestampKey: '@timestamp', levelKey: 'log\\.level' },
      },
    });
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
      if (typeof first === 'object' && first !== null && (first as { event?: { action?: unknown } }).event?.action === 'connection') return;
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

/** ECS's `@timestamp`: ISO 8601 in UTC with milliseconds (pino's isoTime, under ECS's key). */
function isoTimestamp(): string {
  return `,"@timestamp":"${new Date().toISOString()}"`;
}

/** The connection log's batch: written out once this many bytes are waiting (≈ 30 lines). */
export const LOG_BUFFER_BYTES = 8192;
/** ...or this long after the oldest waiting line, whichever comes first. */
export const LOG_FLUSH_MS = 100;
