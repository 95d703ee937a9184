// The only place that reads argv and the environment, installs signal handlers and exits.

import { closeSync, constants, openSync, statSync } from 'node:fs';
import { buildProgram } from './cli/program.ts';
import { loadConfig } from './config/load.ts';
import type { Config } from './config/schema.ts';
import { Daemon } from './daemon.ts';
import { createLogger, reopenLogFile, type Logger } from './observability/logger.ts';
import { releaseStartupMemory } from './limits/overload.ts';
import { configureNativeSplice, dataPlaneFromEnv, nativeSpliceStatus } from './net/native-splice.ts';
import { listenFailureHint } from './util/system-error.ts';
import { EgressdError } from './errors.ts';
import { tokenText } from './util/bearer-token.ts';

// `egressd --help | head` closes the pipe early: that is the reader's choice, not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
  throw e;
});

function out(s: string): void {
  process.stdout.write(s);
}
function err(s: string): void {
  process.stderr.write(s.endsWith('\n') ? s : `${s}\n`);
}

/**
 * The config with EGRESSD_ADMIN_TOKEN in place of admin.token, and EGRESSD_ADMIN_PREVIOUS_TOKEN in
 * place of admin.previousToken, each when set and not empty (its one last line break dropped);
 * @throws Error naming the variable when it holds no usable token.
 */
function withEnv(config: Config): Config {
  const fromEnv = (name: string): string | null => {
    const value = process.env[name];
    if (!value) return null;
    // A Secret made from a file keeps its last line break (dropped, as a token file's is); anything
    // else no call could present.
    const r = tokenText(value);
    if (!r.ok) throw new Error(`${name} is not a usable admin token: ${r.reason}`);
    return r.token;
  };
  const token = fromEnv('EGRESSD_ADMIN_TOKEN');
  const previousToken = fromEnv('EGRESSD_ADMIN_PREVIOUS_TOKEN');
  if (token === null && previousToken === null) return config;
  return Object.freeze({
    ...config,
    admin: Object.freeze({ ...config.admin, ...(token !== null ? { token } : {}), ...(previousToken !== null ? { previousToken } : {}) }),
  });
}

async function serve(values: { config?: string; pretty?: boolean; sharePorts?: boolean }): Promise<number> {
  // SIGHUP's default action ends the process: one that comes while egressd starts (a reload sent
  // just after a restart) asks for a reload once it serves instead.
  // One listener for the process's life, whose action changes once egressd serves: removing the
  // last listener stops Node's signal watcher, and a SIGHUP the kernel had delivered but the event
  // loop had not yet read (a start-up busy on the JavaScript thread) was dropped with it.
  let hupWhileStarting = false;
  let onHup = (): void => {
    hupWhileStarting = true;
  };
  process.on('SIGHUP', () => onHup());
  // SIGTERM's and SIGINT's default action ends the process at once: one that came while egressd
  // started (systemd stopping a slow start, a rollout aborted) left unjudged what the listeners had
  // accepted, and no line said why the process went. From here on each stops egressd (below);
  // before the daemon exists there is nothing open to close, and the process exits 0 at once, as
  // after a drain: a config file that is a FIFO may hold the start for ever.
  const file = values.config ?? null;
  let onStop = (signal: string): void => {
    err(`egressd: ${signal} while starting, before serving: stopped`);
    // A config file that is a FIFO holds a thread of libuv's pool in its open until a writer
    // comes, and the exit waits for the pool's threads: for ever. A writer of our own, opened
    // without waiting (it succeeds since a reader waits) and closed, lets that open return.
    if (file !== null) {
      try {
        if (statSync(file).isFIFO()) closeSync(openSync(file, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // No reader waits any more (ENXIO), or the path is gone: nothing holds the exit.
      }
    }
    process.exit(0);
  };
  process.on('SIGTERM', () => onStop('SIGTERM'));
  process.on('SIGINT', () => onStop('SIGINT'));
  let config: Config;
  try {
    config = withEnv(await loadConfig(file));
  } catch (e) {
    err(`egressd: ${(e as Error).message}`);
    return 1;
  }
  let log: Logger;
  try {
    log = createLogger({
      level: config.log.level,
      pretty: values.pretty === true,
      ...(config.log.destination !== null ? { destination: config.log.destination } : {}),
    });
  } catch (e) {
    err(`egressd: ${values.pretty === true ? 'cannot log with --pretty' : 'cannot open log.destination'}: ${(e as Error).message}`);
    return 1;
  }
  let daemon: Daemon;
  /** The stop a signal began (once), done when the daemon has stopped and its log is written. */
  let stopping: Promise<void> | null = null;
  try {
    configureNativeSplice(dataPlaneFromEnv(process.env));
    daemon = new Daemon(config, log, values.sharePorts === true ? { sharePorts: true } : {});
    const d = daemon;
    onStop = (signal) => {
      if (stopping !== null) return;
      const starting = d.state === 'starting';
      log.info(
        { event: { action: 'signal' }, signal, drainMs: d.config.shutdown.drainMs, ...(starting ? { starting: true } : {}) },
        starting ? 'stopping the start, draining what it accepted, then stopping' : 'draining, then stopping',
      );
      stopping = d.stop(d.config.shutdown.drainMs).then(() => {
        log.flush();
        stopped = true;
      });
    };
    await daemon.start();
    // A signal that came while it started: the start gave up (or had just ended), and the stop
    // closes what it opened and drains what it accepted.
    const stop = stopping as Promise<void> | null;
    if (stop !== null) {
      await stop;
      return 0;
    }
    // Start-up's garbage, freed C memory and the executable's start-up pages go back before
    // serving begins (issue 12: idle RSS; src/limits/overload.ts).
    releaseStartupMemory();
    const plane = nativeSpliceStatus();
    const setup = daemon.nativeSetup !== null ? 'native' : 'node';
    if (plane.ok)
      log.info(
        {
          event: { action: 'data-plane' },
          plane: 'native',
          setup,
          threads: plane.threads,
          loopHost: plane.hosted ? 'event-loop' : 'threads',
          idleTimeMetrics: plane.idleTimeMetrics === null ? 'unknown' : plane.idleTimeMetrics ? 'on' : 'off',
        },
        'the data phase runs in the native splice loops',
      );
    else log.warn({ event: { action: 'data-plane' }, plane: 'js', reason: plane.reason }, 'the data phase runs in JavaScript');
  } catch (e) {
    const hint = listenFailureHint(e);
    // egressd's own failures carry their code (EGRESSD_ERR_*, src/errors.ts) for alerts and greps.
    const code = e instanceof EgressdError ? e.code : null;
    log.fatal(
      { event: { action: 'start-failed' }, err: (e as Error).message, ...(code !== null ? { error: { code } } : {}), ...(hint !== null ? { hint } : {}) },
      'egressd could not start',
    );
    log.flush();
    err(`egressd: ${code !== null ? `${code}: ` : ''}${(e as Error).message}${hint !== null ? `\n  ${hint}` : ''}`);
    // Whatever start-up had begun must not keep a process that serves nothing alive: its
    // supervisor restarts it only once it has exited.
    stopped = true;
    return 1;
  }
  return new Promise<number>((resolve) => {
    const signalStop = onStop;
    const stop = (signal: string): void => {
      signalStop(signal);
      void (stopping as Promise<void> | null)?.then(() => resolve(0));
    };
    // SIGHUP re-reads the config file; an invalid file is refused and logged, and the running
    // configuration stays in force.
    const reloadOnce = async (): Promise<void> => {
      // A rotation (logrotate's postrotate sends SIGHUP) renamed the log file: lines from here on
      // go to a new one at its path, the reload's among them.
      const kept = reopenLogFile(log);
      if (kept !== null) {
        log.warn(
          { event: { action: 'log-reopen-refused' }, file: { path: config.log.destination }, reason: kept },
          'log.destination was not reopened: lines go on to the file already open',
        );
      }
      if (file === null) {
        log.warn({ event: { action: 'reload-skipped' }, reason: 'no config file' }, 'SIGHUP ignored: running on the built-in default');
        return;
      }
      try {
        const next = withEnv(await loadConfig(file, { again: true }));
        const r = await daemon.reload(next);
        if (r.ok) {
          log.info({ event: { action: 'reload' }, file: { path: file }, sandboxes: r.sandboxes }, 'configuration reloaded');
          if (r.needsRestart.length > 0) {
            log.warn({ event: { action: 'reload-partial' }, file: { path: file }, keys: r.needsRestart }, 'these keys changed but apply only after a restart');
          }
        } else log.error({ event: { action: 'reload-refused' }, file: { path: file }, reason: r.reason }, 'configuration refused; the running one stays');
      } catch (e) {
        daemon.metrics.instruments.configReloads.inc({ result: 'refused' });
        log.error({ event: { action: 'reload-refused' }, file: { path: file }, reason: (e as Error).message }, 'configuration refused; the running one stays');
      }
    };
    onStop = stop;
    // One reload at a time: reads that overlap can finish out of order (a large file, a slow
    // disk), and the older file read last would win. A SIGHUP that comes during a reload asks for
    // one more, after it, which reads the file as it is then; any number of them ask for one.
    let reloading: Promise<void> | null = null;
    let again = false;
    const reload = (): void => {
      if (reloading !== null) {
        again = true;
        return;
      }
      reloading = (async () => {
        do {
          again = false;
          if (stopping !== null) return;
          await reloadOnce();
        } while (again);
      })().finally(() => {
        reloading = null;
      });
    };
    onHup = reload;
    if (hupWhileStarting) reload();
  });
}

/**
 * The daemon stopped on a signal, or could not start: everything it owns is closed or given up,
 * and its log written out, so nothing it began may hold the process.
 */
let stopped = false;

const { run } = buildProgram({ out, err, env: process.env, serve });
process.exitCode = await run(process.argv.slice(2));
// What the daemon gave up on may still hold the event loop: an OTLP export to a collector that
// does not answer waits out the exporter's request timeout (10 s), while the listeners are
// already closed and a replacement process waits for this one to go. The log's last lines are
// written by its exit hook.
if (stopped) process.exit();
