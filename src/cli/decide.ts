// `egressd decide --policy FILE [--host NAME [--via tls|http]] --ip ADDR --port N [--config FILE] [--report-only]`:
// the verdict for one connection, without opening anything. Exit codes as every command's
// (src/cli/program.ts EXIT): 0 allowed, 1 refused, 4 would be refused (report-only lets it
// through), 2 no verdict: a usage error (a malformed flag, a file that cannot be read) or a policy
// or config that is invalid, so that 1 always means a refusal (grep's 0/1/2). A refusal prints the
// verdict on stdout; an invalid file prints its problems on stderr and nothing on stdout.
//
// The policy may be in any dialect (src/policy/network-body.ts), and is judged by the daemon's
// own PolicyStore, built from the daemon's config as the daemon builds it
// (src/config/policy-settings.ts; the built-in default config without --config): the
// essential-services catalog joins the allow side when the dialect asks for it, the sandbox DNS
// servers are allowed on port 53 when it says so and egressd does not answer DNS itself, the
// operator's overlays apply, and report-only mode (the config's, or the sandbox's own with
// --report-only) turns a refusal into would-refuse. One code path, so the CLI cannot drift from
// what the daemon does to the same connection; only the host's own addresses, which a running
// daemon protects, are unknown here.

import { readBoundedSync } from '../util/read-bounded.ts';
import { parseConfigBytes, type parseConfigDocument } from '../config/load.ts';
import { catalogProblems, policySettingsOf } from '../config/policy-settings.ts';
import { validateConfig, type Config } from '../config/schema.ts';
import { canonicalSource } from '../match/ip.ts';
import { ConfigReadError, formatIssues, InvalidConfigError } from '../errors.ts';
import { systemError } from '../util/system-error.ts';
import type { FieldIssue } from '../util/issues.ts';
import { normalizeWireName } from '../match/names.ts';
import { CHECK_VIA_REASON, EMPTY_SIDE, isCheckVia } from '../policy/model.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import { PolicyStore } from '../control/store.ts';
import { validateCidr } from '../policy/validate.ts';
import { reportsOnly, rulesetOf, verdict } from '../policy/verdict.ts';
import type { CommandResult } from './inspect.ts';

export interface DecideArgs {
  readonly policy: string;
  readonly host?: string;
  /** How the client sends host: `tls` its SNI, `http` its Host; absent: as the port's rule reads it. */
  readonly via?: string;
  readonly ip: string;
  readonly port: string;
  /** The sandboxes' DNS servers, in place of the config's dns.sandboxServers. */
  readonly dnsServers?: readonly string[];
  /** CIDRs taken out of the protected ranges, beside the config's protected.except. */
  readonly protectedExcept?: readonly string[];
  /** The daemon's config file (YAML or JSON); absent: the built-in default config. */
  readonly config?: string;
  /** Report-only mode for this sandbox (as `sandbox put --report-only`). */
  readonly reportOnly?: boolean;
}

/** The one sandbox the CLI's store holds. */
const SANDBOX_ID = 'decide';

export function decideCommand(args: DecideArgs): CommandResult & { stderr?: string } {
  // Worded as every usage error is (src/cli/program.ts `run`): the error, then where the help is.
  const usage = (msg: string) => ({ code: 2 as const, stdout: '', stderr: `error: ${msg}\n(see "egressd decide --help")\n` });
  // An invalid policy or config gives no verdict: 2, never the 1 of a refusal.
  const invalid = (msg: string) => ({ code: 2 as const, stdout: '', stderr: `${msg}\n` });

  const ip = args.ip.replace(/^\[|\]$/g, '');
  if (canonicalSource(ip) === undefined) return usage(`--ip: expected an IPv4 or IPv6 address, got "${args.ip}"`);
  if (!/^\d{1,5}$/.test(args.port) || Number(args.port) < 1 || Number(args.port) > 65535) {
    return usage(`--port: expected an integer from 1 to 65535, got "${args.port}"`);
  }
  let name: string | null = null;
  if (args.host !== undefined) {
    // As the data path reads an SNI or Host (net/connection.ts): a name it refuses is refused here too.
    const n = normalizeWireName(args.host);
    if (!n.ok) return usage(`--host: ${n.reason}`);
    if ('name' in n) name = n.name;
  }
  const via = args.via;
  if (via !== undefined && !isCheckVia(via)) return usage(`--via: ${CHECK_VIA_REASON}, got "${via}"`);
  let config: Config;
  if (args.config === undefined) config = builtInConfig();
  else {
    let parsedConfig: ReturnType<typeof parseConfigDocument>;
    try {
      parsedConfig = parseConfigBytes(readBoundedSync(args.config), args.config);
    } catch (err) {
      // A YAML error carries its line and column in its message; a read error is worded here.
      if (err instanceof ConfigReadError) return invalid(err.message);
      return usage(`Cannot read config "${args.config}": ${systemError(err)}`);
    }
    const v = validateConfig(parsedConfig.value);
    // The catalog it asks for with the rest, as the daemon loads it (config/load.ts).
    const issues = v.ok ? catalogProblems(v.config) : v.issues;
    if (!v.ok || issues.length > 0) return invalid(`Invalid config "${args.config}":\n${formatIssues(issues.map(rooted), parsedConfig.locate)}`);
    config = v.config;
  }
  const dnsServers: string[] = [];
  for (const s of args.dnsServers ?? []) {
    const c = canonicalSource(s);
    if (c === undefined) return usage(`--dns-server: expected an IPv4 or IPv6 address, got "${s}"`);
    dnsServers.push(c);
  }
  const except: string[] = [];
  for (const c of args.protectedExcept ?? []) {
    const r = validateCidr(c);
    if (!r.ok) return usage(`--protected-except: ${r.reason}`);
    except.push(r.cidr);
  }

  let bytes: Buffer;
  try {
    bytes = readBoundedSync(args.policy === '-' ? 0 : args.policy);
  } catch (err) {
    return usage(`Cannot read policy "${args.policy}": ${systemError(err)}`);
  }
  let doc: ReturnType<typeof parseConfigDocument>;
  try {
    doc = parseConfigBytes(bytes, args.policy, 'policy');
  } catch (err) {
    // Read, but not YAML (or an alias bomb): a problem in the file, as for the config.
    return invalid((err as Error).message);
  }
  const parsed = parseNetworkBody(doc.value);
  if (!parsed.ok) return invalid(`Invalid policy "${args.policy}":\n${formatIssues(parsed.issues.map(rooted), doc.locate)}`);

  if (args.dnsServers !== undefined) config = { ...config, dns: { ...config.dns, sandboxServers: dnsServers } };
  let settings: ReturnType<typeof policySettingsOf>;
  try {
    settings = policySettingsOf(config);
  } catch (err) {
    if (!(err instanceof InvalidConfigError)) throw err;
    return invalid(`Invalid config "${args.config ?? '(built-in)'}":\n${formatIssues(err.issues)}`);
  }
  const store = new PolicyStore(
    { ...settings, protected: { ...settings.protected, except: [...settings.protected.except, ...except] } },
    { dialect: 'sandbox0', policy: { mode: 'block-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: false, dnsServersAllowed: false },
  );
  store.putSandbox({ id: SANDBOX_ID, sources: [], org: null, network: parsed.value, ...(args.reportOnly === true ? { reportOnly: true } : {}) });
  const chain = store.policyOf(SANDBOX_ID)!;
  // `via` as the data path and the check API set it: only beside a name.
  const d = verdict(chain, { name, ip, port: Number(args.port), ...(name !== null && via !== undefined ? { via } : {}) });
  // The fields of the API's check answer (docs/api.md "Check"), and its exit codes.
  const answer = {
    verdict: d.verdict,
    reason: d.reason,
    rule: d.rule,
    layer: rulesetOf(d),
    report_only: { enabled: reportsOnly(chain), levels: chain.reportOnly ?? [] },
  };
  return { code: d.verdict === 'allow' ? 0 : d.verdict === 'would-refuse' ? 4 : 1, stdout: `${JSON.stringify(answer)}\n` };
}

/** network-body names the document itself ''; on a terminal "(root)" reads better than ": ...". */
function rooted(i: FieldIssue): FieldIssue {
  return i.field === '' ? { field: '(root)', reason: i.reason } : i;
}

/** The built-in default config, as a daemon run without a config file has it. */
function builtInConfig(): Config {
  const d = validateConfig({});
  if (!d.ok) throw new Error(`the built-in config is invalid: ${JSON.stringify(d.issues)}`);
  return d.config;
}
