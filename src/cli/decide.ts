// `egressd decide --policy FILE [--host NAME] --ip ADDR --port N`: the verdict for one
// connection, without opening anything. Exit 0 allowed, 1 refused, 2 invalid policy or usage.
//
// The policy may be in any dialect (src/policy/network-body.ts), and is judged by the daemon's
// own PolicyStore: the essential-services catalog (all categories) joins the allow side when the
// dialect asks for it, and the sandbox DNS servers are allowed on port 53 when it says so. One
// code path, so the CLI cannot drift from what the daemon does to the same connection.

import { readFileSync } from 'node:fs';
import { parseConfigText } from '../config/load.ts';
import { validateConfig } from '../config/schema.ts';
import { canonicalSource } from '../match/ip.ts';
import { formatIssues } from '../errors.ts';
import { loadCatalog } from '../policy/catalog/catalog.ts';
import type { FieldIssue } from '../util/issues.ts';
import { normalizeName } from '../match/names.ts';
import { EMPTY_SIDE } from '../policy/model.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import { PolicyStore } from '../control/store.ts';
import { validateCidr } from '../policy/validate.ts';
import { verdict } from '../policy/verdict.ts';
import type { CommandResult } from './inspect.ts';

export interface DecideArgs {
  readonly policy: string;
  readonly host?: string;
  readonly ip: string;
  readonly port: string;
  /** The sandboxes' DNS servers (the config's dns.sandboxServers); absent: the config's default. */
  readonly dnsServers?: readonly string[];
  /** CIDRs taken out of the protected ranges (the config's protected.except). */
  readonly protectedExcept?: readonly string[];
}

/** The one sandbox the CLI's store holds. */
const SANDBOX_ID = 'decide';

export function decideCommand(args: DecideArgs): CommandResult & { stderr?: string } {
  const usage = (msg: string) => ({ code: 2 as const, stdout: '', stderr: `${msg}\n` });

  const ip = args.ip.replace(/^\[|\]$/g, '');
  if (canonicalSource(ip) === undefined) return usage(`--ip: expected an IPv4 or IPv6 address, got "${args.ip}"`);
  if (!/^\d{1,5}$/.test(args.port) || Number(args.port) < 1 || Number(args.port) > 65535) {
    return usage(`--port: expected an integer from 1 to 65535, got "${args.port}"`);
  }
  let name: string | null = null;
  if (args.host !== undefined) {
    const n = normalizeName(args.host);
    if (!n.ok) return usage(`--host: ${n.reason}`);
    if ('name' in n) name = n.name;
  }
  const dnsServers: string[] = [];
  for (const s of args.dnsServers ?? defaultDnsServers()) {
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

  let text: string;
  try {
    text = args.policy === '-' ? readFileSync(0, 'utf8') : readFileSync(args.policy, 'utf8');
  } catch (err) {
    return usage(`Cannot read policy "${args.policy}": ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let doc: unknown;
  try {
    doc = parseConfigText(text, args.policy);
  } catch (err) {
    return usage((err as Error).message);
  }
  const parsed = parseNetworkBody(doc);
  if (!parsed.ok) return usage(`Invalid policy "${args.policy}":\n${formatIssues(parsed.issues.map(rooted))}`);

  const catalog = loadCatalog({ categories: 'all' });
  if (!catalog.ok) return usage(`Invalid essential-services catalog:\n${formatIssues(catalog.issues.map(rooted))}`);

  const store = new PolicyStore(
    { protected: { extra: [], except }, catalog: catalog.domains, dnsServers },
    { dialect: 'sandbox0', policy: { mode: 'block-all', allow: EMPTY_SIDE, deny: EMPTY_SIDE }, essentialServices: false, dnsServersAllowed: false },
  );
  store.putSandbox({ id: SANDBOX_ID, sources: [], org: null, network: parsed.value });
  const d = verdict(store.policyOf(SANDBOX_ID)!, { name, ip, port: Number(args.port) });
  return {
    code: d.verdict === 'allow' ? 0 : 1,
    stdout: `${JSON.stringify({ verdict: d.verdict, reason: d.reason, rule: d.rule })}\n`,
  };
}

/** network-body names the document itself ''; on a terminal "(root)" reads better than ": ...". */
function rooted(i: FieldIssue): FieldIssue {
  return i.field === '' ? { field: '(root)', reason: i.reason } : i;
}

/** The config's own default for dns.sandboxServers, so the CLI agrees with a daemon run without one. */
function defaultDnsServers(): readonly string[] {
  const d = validateConfig({});
  return d.ok ? d.config.dns.sandboxServers : [];
}
