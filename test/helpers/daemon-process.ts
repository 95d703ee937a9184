// Runs a real egressd process (bin: node src/main.ts serve) and reads its JSON log lines, so
// tests can wait for the start, find each connection's one outcome line, and stop it by PID.

import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

import { action, destinationOf, ecsConflicts, type LogLine } from './log-line.ts';

export type { LogLine };

export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[];
  readonly stderr: () => string;
  /** Waits for a log line that satisfies `pred`; rejects after `timeoutMs` with what was seen. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  connections(): LogLine[];
  /** Waits for the outcome line (`event.action: connection`) of a connection that satisfies `pred`. */
  outcome(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Waits for the outcome line of a connection to `destination` (`ip:port`, IPv6 in brackets) that also satisfies `pred`. */
  outcomeAt(destination: string, pred?: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends the signal and waits for the exit code (SIGKILL after `timeoutMs`). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export async function watchDaemon(child: ChildProcess, startTimeoutMs = 20_000): Promise<DaemonProcess> {
  const lines: LogLine[] = [];
  let err = '';
  const waiters = new Set<() => void>();
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    if (err.length < 65_536) err += d;
  });
  const rl = createInterface({ input: child.stdout! });
  rl.on('line', (text) => {
    try {
      lines.push(JSON.parse(text) as LogLine);
    } catch {
      lines.push({ event: { action: 'unparsed' }, text });
    }
    for (const w of [...waiters]) w();
  });
  let exitCode: number | null | undefined;
  child.once('exit', (code) => {
    exitCode = code;
    for (const w of [...waiters]) w();
  });

  const waitFor = (pred: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const hit = lines.find(pred);
        if (hit) {
          cleanup();
          resolve(hit);
          return true;
        }
        if (exitCode !== undefined) {
          cleanup();
          reject(new Error(`egressd exited (${exitCode}) before the expected log line; stderr: ${err.slice(-2000)}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `No matching log line within ${timeoutMs} ms; last lines:\n${lines
              .slice(-8)
              .map((l) => JSON.stringify(l))
              .join('\n')}\nstderr: ${err.slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      const w = (): void => void check();
      const cleanup = (): void => {
        clearTimeout(timer);
        waiters.delete(w);
      };
      waiters.add(w);
      check();
    });

  // Every line the daemon wrote fits an ECS mapping (docs/logs.md): checked when any test that
  // runs egressd's process stops it, whatever that test was about.
  const fitsEcs = (code: number | null): number | null => {
    const bad = lines.flatMap((l) => ecsConflicts(l).map((k) => `${String(action(l))}: ${k}=${JSON.stringify(l[k])}`));
    if (bad.length > 0) throw new Error(`egressd wrote log lines an ECS mapping rejects: ${[...new Set(bad)].join('; ')}`);
    return code;
  };

  const d: DaemonProcess = {
    child,
    lines,
    stderr: () => err,
    waitFor,
    connections: () => lines.filter((l) => action(l) === 'connection'),
    outcome: (pred, timeoutMs = 20_000) => waitFor((l) => action(l) === 'connection' && pred(l), timeoutMs),
    outcomeAt: (destination, pred = () => true, timeoutMs = 20_000) =>
      waitFor((l) => action(l) === 'connection' && destinationOf(l) === destination && pred(l), timeoutMs),
    async stop(signal = 'SIGTERM', timeoutMs = 15_000) {
      if (exitCode !== undefined) return fitsEcs(exitCode);
      const exited = once(child, 'exit');
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const [code] = (await exited) as [number | null];
      clearTimeout(timer);
      return fitsEcs(code);
    },
  };
  await waitFor((l) => action(l) === 'started', startTimeoutMs);
  return d;
}
