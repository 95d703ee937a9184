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
  return pino(options, pino.destination({ dest, sync: false, mkdir: typeof dest === 'string' }));
}
