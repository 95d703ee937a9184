// The only place that reads argv and the environment, installs signal handlers and exits.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { decideCommand } from './cli/decide.ts';
import { inspectBytes } from './cli/inspect.ts';
import { loadConfig, parseConfigText } from './config/load.ts';
import { type Config, validateConfig } from './config/schema.ts';
import { Daemon } from './daemon.ts';
import { EgressdError, formatIssues } from './errors.ts';
import { createLogger } from './observability/logger.ts';
import { configureNativeSplice, nativeSpliceStatus } from './net/native-splice.ts';

const USAGE = `Usage: egressd <command> [options]

Commands:
  serve [--config FILE] [--pretty]   Run the daemon (built-in default config without --config)
  validate FILE                      Check a config file; print every problem at once
  inspect [FILE|-]                   Show the protocol and name in a client's first bytes
  decide --policy FILE [--host NAME] --ip ADDR --port N [--dns-server ADDR]... [--protected-except CIDR]...
                                     The verdict a policy (any dialect) gives one connection
  sandbox put|get|rm|network|effective ID, sandbox ls
  org put|get|rm ID
  check --sandbox ID [--host NAME] --ip ADDR --port N
                                     The control-plane API (--admin URL, EGRESSD_ADMIN_URL,
                                     EGRESSD_ADMIN_TOKEN or --token-file)
  iptables [--apply|--remove] [--mode host|sidecar] ...
                                     Print or install the REDIRECT rules (iptables or nft)

Environment:
  EGRESSD_CONFIG        config file for serve when --config is absent
  EGRESSD_ADMIN_TOKEN   admin API token (overrides admin.token)
  EGRESSD_DATA_PLANE    native (default: splice(2) in native loops where the addon runs) or js
  EGRESSD_DATA_PLANE_THREADS  native splice loops (default: one per core)
`;

function out(s: string): void {
  process.stdout.write(s);
}
function err(s: string): void {
  process.stderr.write(s.endsWith('\n') ? s : `${s}\n`);
}

function withEnv(config: Config): Config {
  const token = process.env['EGRESSD_ADMIN_TOKEN'];
  if (!token) return config;
  return Object.freeze({ ...config, admin: Object.freeze({ ...config.admin, token }) });
}

/**
 * EGRESSD_DATA_PLANE=js keeps the data phase in JavaScript; EGRESSD_DATA_PLANE_THREADS sets the
 * number of native splice loops (default: one per core).
 * @throws Error naming the variable when its value is invalid.
 */
function dataPlaneFromEnv(): void {
  const mode = process.env['EGRESSD_DATA_PLANE'];
  if (mode !== undefined && mode !== 'native' && mode !== 'js') throw new Error(`EGRESSD_DATA_PLANE must be "native" or "js", got "${mode}"`);
  const t = process.env['EGRESSD_DATA_PLANE_THREADS'];
  const threads = t === undefined || t === '' ? undefined : Number(t);
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1 && threads <= 64)) {
    throw new Error(`EGRESSD_DATA_PLANE_THREADS must be an integer from 1 to 64, got "${t}"`);
  }
  configureNativeSplice({ enabled: mode !== 'js', ...(threads !== undefined ? { threads } : {}) });
}

async function serve(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string' }, pretty: { type: 'boolean' } }, strict: true });
  const file = values.config ?? process.env['EGRESSD_CONFIG'] ?? null;
  let config: Config;
  try {
    config = withEnv(await loadConfig(file));
  } catch (e) {
    err(`egressd: ${(e as Error).message}`);
    return 1;
  }
  const log = createLogger({
    level: config.log.level,
    pretty: values.pretty === true,
    ...(config.log.destination !== null ? { destination: config.log.destination } : {}),
  });
  let daemon: Daemon;
  try {
    dataPlaneFromEnv();
    daemon = new Daemon(config, log);
    await daemon.start();
    const plane = nativeSpliceStatus();
    if (plane.ok) log.info({ event: 'data-plane', plane: 'native', threads: plane.threads }, 'the data phase runs in the native splice loops');
    else log.warn({ event: 'data-plane', plane: 'js', reason: plane.reason }, 'the data phase runs in JavaScript');
  } catch (e) {
    log.fatal({ event: 'start-failed', err: (e as Error).message }, 'egressd could not start');
    log.flush();
    err(`egressd: ${(e as Error).message}`);
    return 1;
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ event: 'signal', signal, drainMs: daemon.config.shutdown.drainMs }, 'draining, then stopping');
      void daemon.stop(daemon.config.shutdown.drainMs).then(() => {
        log.flush();
        resolve(0);
      });
    };
    // SIGHUP re-reads the config file; an invalid file is refused and logged, and the running
    // configuration stays in force.
    const reload = async (): Promise<void> => {
      if (file === null) {
        log.warn({ event: 'reload-skipped', reason: 'no config file' }, 'SIGHUP ignored: running on the built-in default');
        return;
      }
      try {
        const next = withEnv(await loadConfig(file));
        const r = daemon.reload(next);
        if (r.ok) {
          log.info({ event: 'reload', file, sandboxes: r.sandboxes }, 'configuration reloaded');
          if (r.needsRestart.length > 0) {
            log.warn({ event: 'reload-partial', file, keys: r.needsRestart }, 'these keys changed but apply only after a restart');
          }
        } else log.error({ event: 'reload-refused', file, reason: r.reason }, 'configuration refused; the running one stays');
      } catch (e) {
        daemon.metrics.configReloads.inc({ result: 'refused' });
        log.error({ event: 'reload-refused', file, reason: (e as Error).message }, 'configuration refused; the running one stays');
      }
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => void reload());
  });
}

function validate(argv: string[]): number {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true });
  if (positionals.length !== 1) {
    err('Usage: egressd validate FILE');
    return 2;
  }
  const file = positionals[0]!;
  let doc: unknown;
  try {
    doc = parseConfigText(readFileSync(file, 'utf8'), file);
  } catch (e) {
    err(`${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    return 1;
  }
  const r = validateConfig(doc);
  if (!r.ok) {
    err(`${file}: ${r.issues.length} problem${r.issues.length === 1 ? '' : 's'}\n${formatIssues(r.issues)}`);
    return 1;
  }
  out(`${file}: valid (${r.config.sandboxes.length} sandboxes)\n`);
  return 0;
}

function inspect(argv: string[]): number {
  const { positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true });
  if (positionals.length > 1) {
    err('Usage: egressd inspect [FILE|-]');
    return 2;
  }
  const src = positionals[0] ?? '-';
  let bytes: Buffer;
  try {
    bytes = readFileSync(src === '-' ? 0 : src);
  } catch (e) {
    err(`Cannot read "${src}": ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    return 2;
  }
  const r = inspectBytes(bytes);
  out(r.stdout);
  return r.code;
}

function decideCli(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: {
      policy: { type: 'string' },
      host: { type: 'string' },
      ip: { type: 'string' },
      port: { type: 'string' },
      'dns-server': { type: 'string', multiple: true },
      'protected-except': { type: 'string', multiple: true },
    },
    strict: true,
  });
  if (values.policy === undefined || values.ip === undefined || values.port === undefined) {
    err('Usage: egressd decide --policy FILE [--host NAME] --ip ADDR --port N [--dns-server ADDR]... [--protected-except CIDR]...');
    return 2;
  }
  const r = decideCommand({
    policy: values.policy,
    ip: values.ip,
    port: values.port,
    ...(values.host !== undefined ? { host: values.host } : {}),
    ...(values['dns-server'] !== undefined ? { dnsServers: values['dns-server'] } : {}),
    ...(values['protected-except'] !== undefined ? { protectedExcept: values['protected-except'] } : {}),
  });
  if (r.stderr) err(r.stderr);
  out(r.stdout);
  return r.code;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'validate':
        return validate(rest);
      case 'inspect':
        return inspect(rest);
      case 'decide':
        return decideCli(rest);
      case 'iptables': {
        // Loaded here, not at the top: `serve` never needs the CLI-only modules (undici alone
        // is ≈5 MB of a daemon's RSS).
        const { iptablesCommand } = await import('./cli/iptables/command.ts');
        const r = await iptablesCommand(rest);
        if (r.stderr) err(r.stderr);
        out(r.stdout);
        return r.code;
      }
      case 'sandbox':
      case 'org':
      case 'check': {
        const { apiCommand } = await import('./cli/api-client.ts');
        const r = await apiCommand(command, rest, process.env);
        if (r.stderr) err(r.stderr);
        out(r.stdout);
        return r.code;
      }
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        out(USAGE);
        return command === undefined ? 2 : 0;
      default:
        err(`Unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    // parseArgs throws on unknown or malformed options: a usage error.
    if ((e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err(`egressd ${command}: ${(e as Error).message}`);
      return 2;
    }
    if (e instanceof EgressdError) {
      err(`egressd: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

process.exitCode = await main(process.argv.slice(2));
