// What a config makes of the policy store, in one place: the daemon builds its store from it
// (src/daemon.ts), and so does `egressd decide --config` (src/cli/decide.ts), so the command's
// verdict cannot drift from the daemon's for the same config (a DNS server the policy allows on
// port 53 that the daemon refuses because it answers DNS itself, an overlay, report-only).

import { InvalidConfigError } from '../errors.ts';
import { loadCatalog } from '../policy/catalog/catalog.ts';
import type { Config } from './schema.ts';
import type { FieldIssue } from '../util/issues.ts';

/** The essential-services catalog the config asks for, or the config's error. */
export function catalogOf(config: Config): string[] {
  const c = readCatalog(config);
  if (!c.ok) throw new InvalidConfigError('(catalog)', c.issues);
  return c.domains;
}

/**
 * The problems of the catalog the config asks for (its file, its categories), as the config's own
 * fields (`catalog.file`, `catalog.categories[1]`): what `egressd validate` and loading a config
 * report with the other problems, so a config that validates is one the daemon starts with.
 */
export function catalogProblems(config: Config, opts: { serving?: boolean } = {}): FieldIssue[] {
  const c = readCatalog(config, opts.serving === true);
  return c.ok ? [] : c.issues;
}

function readCatalog(config: Config, serving = false): { ok: true; domains: string[] } | { ok: false; issues: FieldIssue[] } {
  const c = loadCatalog({
    categories: config.catalog.categories,
    extra: config.catalog.extra,
    ...(config.catalog.file !== null ? { file: config.catalog.file } : {}),
    ...(serving ? { serving } : {}),
  });
  if (!c.ok) return { ok: false, issues: c.issues.map((i) => ({ field: `catalog.${i.field}`.replace(/\.$/, ''), reason: i.reason })) };
  return { ok: true, domains: c.domains };
}

/**
 * The policy store's settings (src/control/store.ts StoreSettings) a daemon with `config` runs
 * with, but the host's own addresses, which only the running daemon knows. While egressd answers
 * port 53 itself (`listen.dns`), no sandbox DNS server is reachable directly: raw traffic to
 * 8.8.8.8:53 would otherwise carry any payload out.
 * @throws InvalidConfigError when the catalog cannot be loaded.
 */
export function policySettingsOf(config: Config): {
  readonly protected: { readonly extra: readonly string[]; readonly except: readonly string[]; readonly nat64Prefixes: readonly string[] };
  readonly catalog: readonly string[];
  readonly dnsServers: readonly string[];
  readonly reportOnly: boolean;
  readonly overlays: Config['overlays'];
} {
  return {
    protected: config.protected,
    catalog: catalogOf(config),
    dnsServers: config.listen.dns.length > 0 ? [] : config.dns.sandboxServers,
    reportOnly: config.reportOnly,
    overlays: config.overlays,
  };
}
