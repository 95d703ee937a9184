// The command line, declared once with commander: every command and subcommand has its own
// `--help`, the same flag means the same thing everywhere (`--admin`, `--token-file`, `--ip`,
// `--port`, `--host`, `--dns-server`), and the exit code says which outcome it was (EXIT).
//
// commander (the most used Node CLI library, no dependencies, typed) replaces the hand-written
// dispatch: it gives per-command help, "did you mean" for misspelt commands and uniform errors
// for unknown options and missing arguments, which the hand-written parsing did one by one.
// What each command does stays in its own module (src/cli/*.ts); this file only wires argv to
// them. `egressd iptables` keeps its own parser and help (src/cli/iptables/), called as is.

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { ApiCall } from './api-client.ts';
import { decideCommand } from './decide.ts';
import { inspectBytes } from './inspect.ts';
import { parseConfigBytes, type parseConfigDocument } from '../config/load.ts';
import { validateConfig } from '../config/schema.ts';
import { catalogProblems } from '../config/policy-settings.ts';
import { ConfigReadError, formatIssues, UsageError } from '../errors.ts';
import { canonicalSource } from '../match/ip.ts';
import { normalizeWireName } from '../match/names.ts';
import { CHECK_VIA_REASON, isCheckVia, type CheckVia } from '../policy/model.ts';
import { quote } from '../util/fields.ts';
import { systemError } from '../util/system-error.ts';
import { InputTooLargeError, readBoundedSync } from '../util/read-bounded.ts';
import { lineColumn } from '../util/text-position.ts';
import { readJsonText } from '../util/json-read.ts';
import { utf8Text } from '../util/utf8-text.ts';
import { TOKEN_FILE_MAX_BYTES, tokenText } from '../util/bearer-token.ts';
import { EGRESSD_VERSION } from '../util/version.ts';
import { STATE_SCHEMA_VERSION, STATE_SCHEMAS_READ } from '../control/state-schema.ts';

/**
 * Exit codes, the same for every command:
 *   0 done: allowed (check, decide), valid (validate), parsed (inspect), applied (iptables),
 *     stopped on a signal (serve)
 *   1 the answer is no: refused (check, decide), invalid (validate's config), not parseable
 *     (inspect), a change the API refused (400, 404, 409, 412, 413; a --file body that is not
 *     JSON), a firewall command that failed, a daemon that could not start (serve)
 *   2 no answer could be given: unknown command or option, missing or malformed argument (checked
 *     before any request: check's --ip, --host and --port as decide's), an input file that cannot
 *     be read, and for check and decide, whose 1 is a refusal, any input they cannot judge with
 *     (decide's invalid policy or config, a check request the API refuses): grep's convention, so
 *     that a script reading 1 as "refused" is never handed a broken policy
 *   3 the admin API cannot be used: unreachable, timed out, failing (5xx) or refusing the token (401),
 *     or what answers is not the API (a redirect, a 2xx that is not JSON, a check without a verdict)
 *   4 would be refused (check, decide): the policy refuses it, and report-only mode lets it through
 */
export const EXIT = Object.freeze({ ok: 0, no: 1, usage: 2, unavailable: 3, wouldRefuse: 4 });
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/**
 * What `egressd --version` (and `egressd version`) prints: the package version on the first line
 * alone, for scripts (`egressd --version | head -1`), then what an operator needs beside it during a
 * rollout: the state schema this egressd writes and those it reads (docs/config.md "The state": a
 * process that cannot read the schema refuses to start), and the Node.js that runs it.
 */
export function versionText(): string {
  return `egressd ${EGRESSD_VERSION}\nstate schema ${STATE_SCHEMA_VERSION} (reads ${STATE_SCHEMAS_READ.join(', ')})\nnode ${process.version}\n`;
}

export interface CliIo {
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
  readonly env: NodeJS.ProcessEnv;
  /** Runs the daemon until it stops; resolves to the exit code. */
  readonly serve: (opts: { config?: string; pretty?: boolean; sharePorts?: boolean }) => Promise<number>;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

function portArg(v: string): string {
  // Checked again (with the same words) by the command; here only to fail before any I/O.
  if (!/^\d{1,5}$/.test(v) || Number(v) < 1 || Number(v) > 65535) throw new InvalidArgumentError(`expected a port from 1 to 65535, got "${v}"`);
  return v;
}

// `check` checks its address and name here, with decide's words, so that a malformed one is the
// usage error (2) it is for decide rather than the API's 400, which means "refused" (1).
function ipArg(v: string): string {
  const ip = v.replace(/^\[|\]$/g, '');
  if (canonicalSource(ip) === undefined) throw new InvalidArgumentError(`expected an IPv4 or IPv6 address, got "${v}"`);
  return ip;
}

function hostArg(v: string): string {
  // As the data path reads an SNI or Host: a name it refuses (a raw U-label) is refused here too.
  const n = normalizeWireName(v);
  if (!n.ok) throw new InvalidArgumentError(n.reason);
  return v;
}

function viaArg(v: string): CheckVia {
  if (!isCheckVia(v)) throw new InvalidArgumentError(`${CHECK_VIA_REASON}, got "${v}"`);
  return v;
}

function tierArg(v: string): number {
  if (!/^[1-4]$/.test(v)) throw new InvalidArgumentError(`expected a tier from 1 to 4, got "${v}"`);
  return Number(v);
}

/**
 * JSON from an argument or a file. Malformed JSON in an argument (`--network`) is a malformed
 * argument, a usage error (2); in a file that was read, it is a problem found in the file (1), as
 * `egressd validate` and `decide` say of a config or policy file that is not YAML.
 */
function json(text: string, what: string, source: 'argument' | 'file' = 'argument'): unknown {
  // A file's problem is named `file:line:column:` as the config's YAML errors are; an argument's
  // says "at position N", since an argument has no lines to count.
  const fail = (detail: string, offset: number, cause?: unknown): Error =>
    source === 'file'
      ? new ConfigReadError(what, `it ${detail}`, cause, lineColumn(text, offset), 'body')
      : new UsageError(`${what} ${detail} (at position ${offset})`);
  const r = readJsonText(text);
  if (r.ok) return r.value;
  // Parsed here, a duplicate key would reach the API already collapsed to its last value.
  if (r.kind === 'duplicate') throw fail(`gives the key ${JSON.stringify(r.detail)} more than once; give each key once`, r.offset);
  throw fail(`is not valid JSON: ${r.detail}`, r.offset, r.cause);
}

function fileJson(file: string): unknown {
  let bytes: Buffer;
  try {
    bytes = readBoundedSync(file === '-' ? 0 : file);
  } catch (e) {
    throw new UsageError(`Cannot read "${file}": ${systemError(e)}`);
  }
  // RFC 8259 §8.1: JSON exchanged is UTF-8; decoded leniently, another byte was sent as U+FFFD.
  const t = utf8Text(bytes);
  if (!t.ok) throw new ConfigReadError(file, `it is not UTF-8: byte ${t.byte} (offset ${t.offset}) starts no UTF-8 character there`, null, t.position, 'body');
  const text = t.text;
  // RFC 8259 §8.1: a parser may ignore a byte order mark, which some editors write; dropped, it
  // leaves the text's positions as the editor shows them.
  return json(text.startsWith('\ufeff') ? text.slice(1) : text, file, 'file');
}

/**
 * The admin token in `file`, read strictly (bearer-token.ts tokenText): read leniently (bytes
 * that are not UTF-8 as U+FFFD, every blank around it trimmed), a file that was not the token was
 * sent as one, and the daemon's 401 said only "wrong token". At most TOKEN_FILE_MAX_BYTES are
 * read, by read(2) so that a pipe (`--token-file <(vault ...)`) works and /dev/zero ends. The
 * reasons never quote the token.
 */
function tokenFromFile(file: string): string {
  let bytes: Buffer;
  try {
    bytes = readBoundedSync(file, TOKEN_FILE_MAX_BYTES);
  } catch (e) {
    if (e instanceof InputTooLargeError) {
      throw new UsageError(
        `--token-file: "${file}" is not an admin token: it holds more than ${TOKEN_FILE_MAX_BYTES} bytes, more than an HTTP request's fields may carry (the file holds the token alone, on one line)`,
      );
    }
    throw new UsageError(`--token-file: cannot read "${file}": ${systemError(e)}`);
  }
  const t = utf8Text(bytes);
  if (!t.ok) throw new UsageError(`--token-file: "${file}" is not UTF-8: byte ${t.byte} (offset ${t.offset}) starts no UTF-8 character there`);
  // Windows PowerShell 5.1's `Out-File -Encoding utf8` and `Set-Content -Encoding UTF8` begin the
  // file with a byte order mark: an encoding's mark, not part of the token (as the config and JSON
  // files' readers drop it, RFC 8259 §8.1).
  const r = tokenText(t.text.startsWith('\ufeff') ? t.text.slice(1) : t.text);
  if (!r.ok) throw new UsageError(`--token-file: "${file}" is not an admin token: ${r.reason} (the file holds the token alone, on one line)`);
  return r.token;
}

/** EGRESSD_ADMIN_TOKEN as the CLI sends it: unset or empty, none; else a token (its one last line break dropped), as the daemon requires of it. */
function tokenFromEnv(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined;
  const r = tokenText(value);
  if (!r.ok) throw new UsageError(`EGRESSD_ADMIN_TOKEN is not an admin token: ${r.reason}`);
  return r.token;
}

/**
 * `--sources A,B` as the list it names, blanks around each item dropped. An empty item ("a,,b",
 * a trailing comma, "") is refused: dropped, as it was, `--sources ""` or `--sources ,` put a
 * sandbox with no source at all, which no connection ever matches.
 */
function sourceList(v: string): string[] {
  const items = v.split(',').map((s) => s.trim());
  const empty = items.indexOf('');
  if (empty >= 0) throw new UsageError(`--sources: item ${empty + 1} of ${quote(v)} is empty; give each address once, separated by commas`);
  return items;
}

interface ApiOpts {
  admin?: string;
  tokenFile?: string;
  json?: boolean;
}

/** Builds the program; `run` parses argv with it and returns the exit code. */
export function buildProgram(io: CliIo): { program: Command; run: (argv: readonly string[]) => Promise<number> } {
  let code: number = EXIT.ok;
  const emit = (r: { code: number; stdout: string; stderr?: string }): void => {
    if (r.stderr) io.err(r.stderr);
    if (r.stdout) io.out(r.stdout);
    code = r.code;
  };

  const program = new Command('egressd')
    .usage('<command> [options]')
    .description('Egress filter for code-execution sandboxes: the daemon, its checks, its firewall rules and its control-plane API.')
    .addHelpText(
      'after',
      `
Exit codes: 0 done/allowed/valid, 1 the answer is no (refused; validate: invalid; the
API refused the change), 2 no answer (an unknown or malformed flag or argument, a file
that cannot be read; check/decide: a policy or config they cannot judge with, a check
the API refuses), 3 the admin API is unreachable, failing, refuses the token or is not the API,
4 check/decide: would be refused, let through by report-only mode.

Environment:
  EGRESSD_CONFIG        config file for serve when --config is absent
  EGRESSD_ADMIN_URL     admin API for sandbox/org/check (default http://127.0.0.1:9901)
  EGRESSD_ADMIN_TOKEN   admin API token (serve: overrides admin.token)
  EGRESSD_ADMIN_PREVIOUS_TOKEN  serve: the token a rotation replaces, also accepted
                        (overrides admin.previousToken)
  EGRESSD_DATA_PLANE    native-setup (default: native loops accept, peek, dial, refuse and splice
                        where the addon runs), native (only splice(2) in the loops) or js
  EGRESSD_DATA_PLANE_THREADS  native splice loops (default: one per core)
  EGRESSD_DATA_PLANE_HOST     event-loop (default: loop 0 on Node's event loop) or threads

Run "egressd <command> --help" for a command's own options.`,
    )
    // commander's own version option: printed through writeOut, then commander.version, exit 0.
    .version(versionText().trimEnd(), '-V, --version', 'print the egressd version, the state schema version and the Node.js version')
    .showSuggestionAfterError(true)
    .showHelpAfterError('(see "egressd --help")')
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err });
  // The command whose action runs: a usage error its action raises (a missing body, a file that
  // cannot be read) points at that command's help, as commander's own errors do.
  let acting: Command = program;
  program.hook('preAction', (_program, actionCommand) => {
    acting = actionCommand;
  });

  // Subcommands inherit the output and error handling; every one of them exits through EXIT.
  const sub = (parent: Command, spec: string, description: string): Command => {
    const c = parent.command(spec).description(description).exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err });
    return c.showHelpAfterError(`(see "${[...lineage(parent), c.name()].join(' ')} --help")`);
  };

  // A group run without its subcommand (`egressd sandbox`) is a usage error like any other: the
  // error and where the help is, where commander would print the whole help on stderr.
  const group = (parent: Command, spec: string, description: string): Command => {
    const c = sub(parent, spec, description);
    const help = c.help.bind(c) as (context?: { error?: boolean }) => never;
    c.help = ((context?: { error?: boolean }) => {
      if (context?.error === true) c.error(`error: missing command: one of ${c.commands.map((x) => x.name()).join(', ')}`);
      return help(context);
    }) as Command['help'];
    return c;
  };

  const apiOptions = (c: Command): Command =>
    c
      .addOption(new Option('--admin <url>', 'admin API base URL').env('EGRESSD_ADMIN_URL').default('http://127.0.0.1:9901'))
      .option('--token-file <file>', 'read the admin token from this file (default: EGRESSD_ADMIN_TOKEN)')
      .option('--json', 'when the API refuses the request, print its error document (JSON) on stderr instead of one line');

  const api = async (c: Command, call: ApiCall, kind: 'plain' | 'check' | 'list' = 'plain'): Promise<void> => {
    const o = c.opts<ApiOpts>();
    const token = o.tokenFile !== undefined ? tokenFromFile(o.tokenFile) : tokenFromEnv(io.env['EGRESSD_ADMIN_TOKEN']);
    // Loaded on use: `serve` never needs undici (≈5 MB of a daemon's RSS) nor the firewall code.
    const { callApi } = await import('./api-client.ts');
    // EGRESSD_ADMIN_URL set but empty is unset, as EGRESSD_ADMIN_TOKEN is; an empty --admin stays an error.
    const admin = o.admin === undefined || (o.admin === '' && c.getOptionValueSource('admin') === 'env') ? 'http://127.0.0.1:9901' : o.admin;
    emit(await callApi(call, { admin, token, kind, ...(o.json === true ? { json: true } : {}) }));
  };

  sub(program, 'serve', 'Run the daemon (the built-in default configuration without --config)')
    .addOption(new Option('--config <file>', 'configuration file (YAML or JSON)').env('EGRESSD_CONFIG'))
    .option('--pretty', 'human-readable logs (needs the dev dependency pino-pretty)')
    .option(
      '--share-ports',
      'start even when another process listens on these endpoints and this egressd has no state.path: the kernel then splits connections and API calls between the two, each with its own API sandboxes (for a rollout of a deployment that does not use the API)',
    )
    .action(async (o: { config?: string; pretty?: boolean; sharePorts?: boolean }, c: Command) => {
      // EGRESSD_CONFIG set but empty is unset (the built-in config), as the other variables are; an
      // empty --config stays an error.
      if (o.config === '' && c.getOptionValueSource('config') === 'env') delete o.config;
      code = await io.serve(o);
    });

  sub(program, 'validate', 'Check a configuration file: every problem with its key, or the YAML error with its line and column')
    .argument('<file>', 'configuration file (YAML or JSON)')
    .action((file: string) => {
      let doc: ReturnType<typeof parseConfigDocument>;
      try {
        doc = parseConfigBytes(readBoundedSync(file), file);
      } catch (e) {
        // A file that cannot be read is a usage error (exit 2), as for every other command that
        // takes a file; a file that is read but is not YAML is a problem found in it (exit 1).
        if (!(e instanceof ConfigReadError)) throw new UsageError(`Cannot read "${file}": ${systemError(e)}`);
        io.err(`${e.message}\n`);
        code = EXIT.no;
        return;
      }
      const v = validateConfig(doc.value);
      // As the daemon loads it (config/load.ts): the catalog it asks for is checked too.
      const issues = v.ok ? catalogProblems(v.config) : v.issues;
      if (!v.ok || issues.length > 0) {
        io.err(`${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}\n${formatIssues(issues, doc.locate)}\n`);
        code = EXIT.no;
        return;
      }
      io.out(`${file}: valid (${v.config.sandboxes.length} sandboxes)\n`);
      code = EXIT.ok;
    });

  sub(program, 'inspect', "The protocol, name, ALPN and ECH flag in a client's first bytes, as JSON")
    .argument('[file]', 'captured bytes ("-" or absent: standard input)', '-')
    .action((src: string) => {
      let bytes: Buffer;
      try {
        bytes = readBoundedSync(src === '-' ? 0 : src);
      } catch (e) {
        throw new UsageError(`Cannot read "${src}": ${systemError(e)}`);
      }
      emit(inspectBytes(bytes));
    });

  sub(program, 'decide', "The verdict a policy (any dialect) gives one connection, through the daemon's own store; nothing is opened")
    .requiredOption('--policy <file>', 'the policy body, YAML or JSON ("-": standard input)')
    .option('--host <name>', 'the SNI or Host the client sends')
    .option('--via <tls|http>', "how the client sends --host: tls, its SNI; http, its Host (default: as the port's rule reads it)")
    .requiredOption('--ip <addr>', 'the destination address')
    .requiredOption('--port <n>', 'the destination port')
    .option('--config <file>', "the daemon's config: its overlays, report-only mode, protected ranges, catalog and DNS (default: the built-in config)")
    .option('--report-only', "the sandbox's own report-only mode: what its policy refuses is would-refuse (exit 4)")
    .option(
      '--dns-server <addr>',
      "a sandbox DNS server, in place of the config's (repeatable); allowed on port 53 only while egressd does not answer DNS itself (listen.dns empty)",
      collect,
      [],
    )
    .option('--protected-except <cidr>', 'a range taken out of the protected ranges (repeatable)', collect, [])
    .action(
      (o: {
        policy: string;
        host?: string;
        via?: string;
        ip: string;
        port: string;
        config?: string;
        reportOnly?: boolean;
        dnsServer: string[];
        protectedExcept: string[];
      }) => {
        emit(
          decideCommand({
            policy: o.policy,
            ip: o.ip,
            port: o.port,
            ...(o.config !== undefined ? { config: o.config } : {}),
            ...(o.reportOnly === true ? { reportOnly: true } : {}),
            ...(o.host !== undefined ? { host: o.host } : {}),
            ...(o.via !== undefined ? { via: o.via } : {}),
            ...(o.dnsServer.length > 0 ? { dnsServers: o.dnsServer } : {}),
            ...(o.protectedExcept.length > 0 ? { protectedExcept: o.protectedExcept } : {}),
          }),
        );
      },
    );

  // Listed here for the help; its arguments go to its own parser untouched (see run below).
  sub(program, 'iptables', 'Print, apply (--apply) or remove (--remove) the REDIRECT rules, iptables or nft; see "egressd iptables --help"')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments();

  /** `get <id>`, `rm <id>` and `ls` on a collection of the API: GET and DELETE of one member, GET of the whole. */
  const collection = (parent: Command, path: string, help: { id: string; get: string; rm: string; ls: string }): void => {
    const noun = parent.name();
    apiOptions(sub(parent, 'get', help.get))
      .argument('<id>', help.id)
      .action((id: string, _o: unknown, c: Command) => api(c, { method: 'GET', path: `${path}/${enc(id)}`, what: `${noun} get ${quote(id)}` }));
    apiOptions(sub(parent, 'rm', help.rm))
      .argument('<id>', help.id)
      .action((id: string, _o: unknown, c: Command) => api(c, { method: 'DELETE', path: `${path}/${enc(id)}`, what: `${noun} rm ${quote(id)}` }));
    // Every page, following the cursors (docs/api.md "Lists").
    apiOptions(sub(parent, 'ls', help.ls)).action((_o: unknown, c: Command) => api(c, { method: 'GET', path, what: `${noun} ls` }, 'list'));
  };

  const sandbox = group(program, 'sandbox', 'Sandboxes through the control-plane API');
  apiOptions(sub(sandbox, 'put', 'Create or replace a sandbox'))
    .argument('<id>', 'sandbox id')
    // A body from a file is the whole body: a flag beside it would be dropped without a word.
    .addOption(new Option('--file <body.json>', 'the whole body, JSON ("-": standard input)').conflicts(['sources', 'org', 'network', 'reportOnly']))
    .option('--sources <list>', 'comma-separated source addresses (without --file)')
    .option('--org <id>', 'its organization (without --file)')
    .option('--network <json>', 'its policy in any dialect (without --file)')
    .option('--report-only', 'report-only mode: what its policy would refuse is let through and logged as would-refuse (without --file)')
    .action(async (id: string, o: { file?: string; sources?: string; org?: string; network?: string; reportOnly?: boolean }, c: Command) => {
      let body: unknown;
      if (o.file !== undefined) body = fileJson(o.file);
      else if (o.sources !== undefined) {
        body = {
          sources: sourceList(o.sources),
          ...(o.org !== undefined ? { org: o.org } : {}),
          ...(o.network !== undefined ? { network: json(o.network, '--network') } : {}),
          ...(o.reportOnly === true ? { reportOnly: true } : {}),
        };
      } else throw new UsageError('sandbox put needs --file BODY.json or --sources A,B');
      await api(c, { method: 'PUT', path: `/api/v1/sandboxes/${enc(id)}`, body, what: `sandbox put ${quote(id)}` });
    });
  collection(sandbox, '/api/v1/sandboxes', { id: 'sandbox id', get: 'Show a sandbox', rm: 'Delete a sandbox', ls: 'List sandboxes' });
  apiOptions(sub(sandbox, 'network', "Show a sandbox's policy, or replace it with --file or --network"))
    .argument('<id>', 'sandbox id')
    .addOption(new Option('--file <body.json>', 'the policy body, JSON ("-": standard input)').conflicts('network'))
    .option('--network <json>', 'the policy body inline')
    .action((id: string, o: { file?: string; network?: string }, c: Command) => {
      const body = o.file !== undefined ? fileJson(o.file) : o.network !== undefined ? json(o.network, '--network') : undefined;
      const path = `/api/v1/sandboxes/${enc(id)}/network`;
      const what = `sandbox network ${quote(id)}`;
      return api(c, body === undefined ? { method: 'GET', path, what } : { method: 'PUT', path, body, what });
    });
  apiOptions(sub(sandbox, 'effective', 'What applies to a sandbox: its organization, policy, catalog, DNS servers and protected ranges'))
    .argument('<id>', 'sandbox id')
    .action((id: string, _o: unknown, c: Command) =>
      api(c, { method: 'GET', path: `/api/v1/sandboxes/${enc(id)}/effective`, what: `sandbox effective ${quote(id)}` }),
    );

  const org = group(program, 'org', 'Organizations through the control-plane API');
  apiOptions(sub(org, 'put', 'Create or replace an organization: a Daytona tier or a policy'))
    .argument('<id>', 'organization id')
    // An organization has a tier or a policy (the API refuses both), and a file is the whole body.
    .addOption(new Option('--tier <n>', 'Daytona tier 1-4').argParser(tierArg).conflicts('network'))
    .option('--network <json>', 'its policy in any dialect')
    .addOption(new Option('--file <body.json>', 'the whole body, JSON ("-": standard input)').conflicts(['tier', 'network', 'reportOnly']))
    .option('--report-only', "report-only mode for the organization's sandboxes (without --file)")
    .action((id: string, o: { tier?: number; network?: string; file?: string; reportOnly?: boolean }, c: Command) => {
      const ro = o.reportOnly === true ? { reportOnly: true } : {};
      const body =
        o.file !== undefined
          ? fileJson(o.file)
          : o.tier !== undefined
            ? { tier: o.tier, ...ro }
            : o.network !== undefined
              ? { network: json(o.network, '--network'), ...ro }
              : undefined;
      if (body === undefined) throw new UsageError('org put needs --tier N, --network JSON or --file BODY.json');
      return api(c, { method: 'PUT', path: `/api/v1/orgs/${enc(id)}`, body, what: `org put ${quote(id)}` });
    });
  collection(org, '/api/v1/orgs', {
    id: 'organization id',
    get: 'Show an organization',
    rm: 'Delete an organization (once no sandbox names it)',
    ls: 'List organizations',
  });

  apiOptions(
    sub(program, 'check', "A sandbox's verdict for one connection, from the running daemon: exit 0 allowed, 1 refused, 4 would be refused (report-only)"),
  )
    .requiredOption('--sandbox <id>', 'sandbox id')
    .option('--host <name>', 'the SNI or Host the client sends', hostArg)
    .option('--via <tls|http>', "how the client sends --host: tls, its SNI; http, its Host (default: as the port's rule reads it)", viaArg)
    .requiredOption('--ip <addr>', 'the destination address', ipArg)
    .requiredOption('--port <n>', 'the destination port', portArg)
    .action((o: { sandbox: string; host?: string; via?: CheckVia; ip: string; port: string }, c: Command) =>
      api(
        c,
        {
          method: 'POST',
          path: '/api/v1/check',
          body: {
            sandbox: o.sandbox,
            ...(o.host !== undefined ? { host: o.host } : {}),
            ...(o.via !== undefined ? { via: o.via } : {}),
            ip: o.ip,
            port: Number(o.port),
          },
          what: `check --sandbox ${quote(o.sandbox)}`,
        },
        'check',
      ),
    );

  sub(program, 'version', 'Print the egressd version, the state schema version and the Node.js version (as --version)').action(() => {
    io.out(versionText());
  });

  const run = async (argv: readonly string[]): Promise<number> => {
    if (argv.length === 0) {
      io.out(program.helpInformation());
      return EXIT.usage;
    }
    if (argv[0] === 'iptables') {
      const { iptablesCommand } = await import('./iptables/command.ts');
      emit(await iptablesCommand([...argv.slice(1)]));
      return code;
    }
    try {
      await program.parseAsync([...argv], { from: 'user' });
      return code;
    } catch (e) {
      // Raised by an action after commander's own checks passed (a file, a JSON argument).
      if (e instanceof UsageError) {
        io.err(`error: ${e.message}\n(see "${lineage(acting).join(' ')} --help")\n`);
        return EXIT.usage;
      }
      // A body file that was read but is not JSON: a problem found in it, as validate's.
      if (e instanceof ConfigReadError) {
        io.err(`error: ${e.message}\n`);
        return EXIT.no;
      }
      if (e instanceof CommanderError) {
        // --help and --version are answers; everything else commander raises (and has already
        // printed) is a usage error.
        // `egressd sandbox help` is commander.help with exit code 0: asked for, so an answer too.
        if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || (e.code === 'commander.help' && e.exitCode === 0)) return EXIT.ok;
        return EXIT.usage;
      }
      throw e;
    }
  };
  return { program, run };
}

const enc = encodeURIComponent;

/** `egressd sandbox` for the sandbox command: the words that run it. */
function lineage(c: Command): string[] {
  const names: string[] = [];
  for (let x: Command | null = c; x !== null; x = x.parent) names.unshift(x.name());
  return names;
}
