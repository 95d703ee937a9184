// The configuration file's wire format (YAML or JSON) and its validated, frozen model.
// Every problem is reported at once with its key path; a document with any problem is refused
// whole. The keys listed in DEFAULTS_DOC are the contract documented in docs/config.md.

import type { DialectResult } from '../policy/model.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import { parseOverlays, type Overlays } from '../policy/overlay.ts';
import { validateCidr } from '../policy/validate.ts';
import { canonicalSource, parseIp } from '../match/ip.ts';
import { CappedIssues, type FieldIssue } from '../util/issues.ts';
import { normalizePattern } from '../match/names.ts';
import { type Endpoint, type ListenerKind, LISTENER_KINDS } from '../net/listener.ts';
import type { BlockMode } from '../net/refuse.ts';
import type { DialMode } from '../net/upstream-target.ts';
import { optBool, deepFreeze, describe, objectWithKeys, optEnum, optInt, optString, optStringArray, quote } from '../util/fields.ts';
import { parseLimits, type LimitsOverride, type SandboxLimits } from '../limits/limits-body.ts';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface SandboxConfig {
  readonly id: string;
  /** Canonical source addresses that identify this sandbox's connections. */
  readonly sources: readonly string[];
  readonly org: string | null;
  /** The policy body as written (any dialect), kept so the control plane re-reads it by one path. */
  readonly networkBody: unknown;
  readonly network: DialectResult;
  /** This sandbox's own limits (each key absent falls back to its organization's, then limits.sandbox). */
  readonly limits: LimitsOverride | null;
  /** Report-only mode for this sandbox (absent: false). */
  readonly reportOnly: boolean;
}

export interface LimitsConfig {
  /** The default per-sandbox limits. */
  readonly sandbox: SandboxLimits;
  readonly global: {
    /** An explicit cap on connections in total, below what the descriptor limit allows; null for none. */
    readonly connections: number | null;
    /** Descriptors kept back from proxied connections for the admin listener, DNS, the state file, logs. */
    readonly reserveDescriptors: number;
    /** The fraction of the global connection budget one sandbox may hold. */
    readonly sandboxShare: number;
  };
  readonly memory: {
    /** A cap on RSS in bytes (null: only the cgroup's memory.max and V8's heap limit apply). */
    readonly maxBytes: number | null;
    /** Memory pressure (0..1) at which new connections are shed. */
    readonly shedAt: number;
    readonly intervalMs: number;
  };
}

export type OnPolicyChange = 'close' | 'keep';

export type DnsRefusal = 'nxdomain' | 'refused';

export interface DnsLimits {
  /** Queries per second per sandbox (token bucket refill). */
  readonly perSecond: number;
  /** Queries a sandbox may send at once above the rate (token bucket size). */
  readonly burst: number;
  /** Upstream queries one sandbox may have waiting. */
  readonly inflightPerSandbox: number;
  /** Upstream queries all sandboxes together may have waiting. */
  readonly inflightTotal: number;
  /** TCP connections one sandbox may hold to the DNS listener. */
  readonly tcpPerSandbox: number;
}

export interface Config {
  /** TCP listeners by kind, and `dns` (UDP and TCP on each endpoint; empty: no DNS listener). */
  readonly listen: Readonly<Record<ListenerKind, readonly Endpoint[]>> & { readonly dns: readonly Endpoint[] };
  readonly admin: { readonly listen: Endpoint; readonly token: string | null; readonly maxBodyBytes: number };
  readonly dns: {
    readonly servers: readonly string[];
    readonly timeoutMs: number;
    /**
     * The sandboxes' own DNS servers, allowed on port 53 when a policy names a domain (Novita);
     * ignored while the DNS listener is on, which answers port 53 itself.
     */
    readonly sandboxServers: readonly string[];
    /** How a query for a name the sandbox may not reach is answered. */
    readonly refusal: DnsRefusal;
    /** Name patterns forwarded for every sandbox that may reach anything; they grant no connection. */
    readonly zones: readonly string[];
    /** Remove the `ech` SvcParam from HTTPS and SVCB answers. */
    readonly stripEch: boolean;
    readonly limits: DnsLimits;
    /** Names given to a sandbox are remembered for the record's TTL plus `graceMs`, at most `perSandbox` addresses. */
    readonly memory: { readonly graceMs: number; readonly perSandbox: number };
  };
  readonly upstream: {
    readonly dial: DialMode;
    readonly connectTimeoutMs: number;
    readonly idleTimeoutMs: number;
  };
  readonly peek: { readonly timeoutMs: number; readonly firstByteTimeoutMs: number };
  readonly block: BlockMode;
  /** A refused client still sending is read (and discarded) this long, for this many bytes, so it reads the answer. */
  readonly refusal: { readonly lingerMs: number; readonly lingerMaxBytes: number; readonly lingerMaxConnections: number };
  readonly protected: {
    readonly extra: readonly string[];
    readonly except: readonly string[];
    /** Host addresses (or CIDRs) sandboxes may reach through egressd: a documented risk. */
    readonly reachableHostAddresses: readonly string[];
  };
  /** The policy for a source that belongs to no sandbox. */
  readonly defaultNetwork: DialectResult;
  /**
   * Report-only mode for every sandbox and the default policy: what a policy would refuse is
   * let through and reported as `would-refuse`. Protected addresses stay refused. Reloadable.
   */
  readonly reportOnly: boolean;
  /**
   * The operator's always-deny and always-allow lists, applied to every sandbox around its own
   * policy (policy/verdict.ts gives the order). Reloadable; an invalid list refuses the file.
   */
  readonly overlays: Overlays;
  readonly sandboxes: readonly SandboxConfig[];
  readonly catalog: { readonly categories: readonly string[] | 'all'; readonly extra: readonly string[]; readonly file: string | null };
  readonly state: { readonly path: string | null };
  readonly onPolicyChange: OnPolicyChange;
  readonly shutdown: { readonly drainMs: number };
  readonly metrics: { readonly sandboxLabel: boolean };
  readonly log: { readonly level: LogLevel; readonly destination: string | null };
  readonly limits: LimitsConfig;
}

const BLOCK_EVERYTHING: unknown = { mode: 'block-all' };

/** The built-in default configuration, as a document, so `npm start` needs no file. */
export const DEFAULT_DOCUMENT: Readonly<Record<string, unknown>> = Object.freeze({
  listen: {
    http: ['0.0.0.0:15080', '[::]:15080'],
    tls: ['0.0.0.0:15443', '[::]:15443'],
    tcp: ['0.0.0.0:15001', '[::]:15001'],
    dns: ['0.0.0.0:15053', '[::]:15053'],
  },
  admin: { listen: '127.0.0.1:9901', maxBodyBytes: 1_048_576 },
  dns: {
    servers: [],
    timeoutMs: 2000,
    sandboxServers: ['8.8.8.8'],
    refusal: 'nxdomain',
    zones: [],
    stripEch: true,
    limits: { perSecond: 500, burst: 1000, inflightPerSandbox: 64, inflightTotal: 1024, tcpPerSandbox: 16 },
    memory: { graceMs: 60_000, perSandbox: 4096 },
  },
  upstream: { dial: 'resolved', connectTimeoutMs: 5000, idleTimeoutMs: 3_600_000 },
  peek: { timeoutMs: 10_000, firstByteTimeoutMs: 1000 },
  block: 'explain',
  refusal: { lingerMs: 30_000, lingerMaxBytes: 67_108_864, lingerMaxConnections: 4096 },
  protected: { extra: [], except: [], reachableHostAddresses: [] },
  defaultNetwork: BLOCK_EVERYTHING,
  reportOnly: false,
  overlays: { alwaysAllow: [], alwaysDeny: [] },
  sandboxes: [],
  catalog: { categories: 'all', extra: [], file: null },
  state: { path: null },
  onPolicyChange: 'close',
  shutdown: { drainMs: 30_000 },
  metrics: { sandboxLabel: false },
  log: { level: 'info', destination: null },
  // Why these numbers: docs/config.md, "limits".
  limits: {
    sandbox: { connections: 1024, undecided: 256, perSecond: 200, burst: 400 },
    global: { connections: null, reserveDescriptors: 64, sandboxShare: 0.5 },
    memory: { maxBytes: null, shedAt: 0.8, intervalMs: 250 },
  },
});

const TOP_KEYS = [
  'listen',
  'admin',
  'dns',
  'upstream',
  'peek',
  'block',
  'refusal',
  'protected',
  'defaultNetwork',
  'reportOnly',
  'overlays',
  'sandboxes',
  'catalog',
  'state',
  'onPolicyChange',
  'shutdown',
  'metrics',
  'log',
  'limits',
];

export function parseEndpoint(text: string): Endpoint | string {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text);
  if (!m) return `Expected "address:port" (IPv6 in brackets), got ${quote(text)}`;
  const host = (m[1] ?? m[2])!;
  const port = Number(m[3]);
  if (parseIp(host) === null) return `Invalid address ${quote(host)} in ${quote(text)}`;
  if (m[1] !== undefined && parseIp(host)?.family !== 6) return `Only IPv6 addresses go in brackets: ${quote(text)}`;
  if (port > 65535) return `Port ${port} is outside 0-65535 in ${quote(text)}`;
  return { host, port, text };
}

function endpointList(v: unknown, field: string, issues: CappedIssues): Endpoint[] | undefined {
  const list = typeof v === 'string' ? [v] : optStringArray(v, field, issues);
  if (list === undefined) return undefined;
  if (list.length === 0) {
    issues.add(field, 'Expected at least one "address:port"');
    return undefined;
  }
  const out: Endpoint[] = [];
  list.forEach((t, i) => {
    const e = parseEndpoint(t);
    if (typeof e === 'string') issues.add(typeof v === 'string' ? field : `${field}[${i}]`, e);
    else out.push(e);
  });
  return out;
}

function dnsServer(text: string): string | undefined {
  const e = parseEndpoint(text);
  if (typeof e !== 'string') return text;
  return parseIp(text) !== null ? text : undefined;
}

function policyAt(v: unknown, field: string, issues: CappedIssues): DialectResult | undefined {
  const parsed = parseNetworkBody(v);
  if (!parsed.ok) {
    issues.addAll(field, parsed.issues);
    return undefined;
  }
  return parsed.value;
}

/**
 * Validates a parsed document (the file's contents, already merged over nothing: absent keys
 * take DEFAULT_DOCUMENT's values) into a frozen Config, or returns every issue found.
 */
export function validateConfig(doc: unknown): { ok: true; config: Config } | { ok: false; issues: FieldIssue[] } {
  const issues = new CappedIssues('(root)');
  const root = doc === null || doc === undefined ? {} : objectWithKeys(doc, '', TOP_KEYS, issues);
  if (!root) return { ok: false, issues: issues.result() };
  const d = DEFAULT_DOCUMENT as Record<string, any>;

  const listenIn = root['listen'] === undefined ? {} : objectWithKeys(root['listen'], 'listen', [...LISTENER_KINDS, 'dns'], issues);
  const listen = {} as Record<ListenerKind, Endpoint[]> & { dns: Endpoint[] };
  for (const kind of LISTENER_KINDS) {
    const raw = listenIn?.[kind] ?? d['listen'][kind];
    listen[kind] = endpointList(raw, `listen.${kind}`, issues) ?? [];
  }
  // An empty list turns the DNS listener off (port 53 then works as before: dns.sandboxServers).
  const dnsListen = listenIn?.['dns'] ?? d['listen']['dns'];
  listen.dns = Array.isArray(dnsListen) && dnsListen.length === 0 ? [] : (endpointList(dnsListen, 'listen.dns', issues) ?? []);

  const adminIn = root['admin'] === undefined ? {} : objectWithKeys(root['admin'], 'admin', ['listen', 'token', 'maxBodyBytes'], issues);
  const adminListen = endpointList(adminIn?.['listen'] ?? d['admin']['listen'], 'admin.listen', issues);
  if (adminListen && adminListen.length > 1) issues.add('admin.listen', 'Expected a single "address:port"');
  const token = optString(adminIn?.['token'], 'admin.token', issues) ?? null;
  const maxBodyBytes = optInt(adminIn?.['maxBodyBytes'], 'admin.maxBodyBytes', 1024, 64 * 1_048_576, issues) ?? d['admin']['maxBodyBytes'];

  const dnsIn =
    root['dns'] === undefined
      ? {}
      : objectWithKeys(root['dns'], 'dns', ['servers', 'timeoutMs', 'sandboxServers', 'refusal', 'zones', 'stripEch', 'limits', 'memory'], issues);
  const refusal = optEnum(dnsIn?.['refusal'], 'dns.refusal', ['nxdomain', 'refused'] as const, issues) ?? 'nxdomain';
  const zones: string[] = [];
  (optStringArray(dnsIn?.['zones'], 'dns.zones', issues) ?? []).forEach((z, i) => {
    const n = normalizePattern(z);
    if (!n.ok) issues.add(`dns.zones[${i}]`, n.reason);
    else zones.push(n.pattern);
  });
  const stripEch = optBool(dnsIn?.['stripEch'], 'dns.stripEch', issues) ?? true;
  const limIn = dnsIn?.['limits'] === undefined ? {} : objectWithKeys(dnsIn['limits'], 'dns.limits', Object.keys(d['dns']['limits']), issues);
  const lim = (k: keyof DnsLimits, max: number): number => optInt(limIn?.[k], `dns.limits.${k}`, 1, max, issues) ?? d['dns']['limits'][k];
  const limits: DnsLimits = {
    perSecond: lim('perSecond', 1_000_000),
    burst: lim('burst', 10_000_000),
    inflightPerSandbox: lim('inflightPerSandbox', 100_000),
    inflightTotal: lim('inflightTotal', 1_000_000),
    tcpPerSandbox: lim('tcpPerSandbox', 100_000),
  };
  const memIn = dnsIn?.['memory'] === undefined ? {} : objectWithKeys(dnsIn['memory'], 'dns.memory', ['graceMs', 'perSandbox'], issues);
  const memory = {
    graceMs: optInt(memIn?.['graceMs'], 'dns.memory.graceMs', 0, 86_400_000, issues) ?? d['dns']['memory']['graceMs'],
    perSandbox: optInt(memIn?.['perSandbox'], 'dns.memory.perSandbox', 1, 10_000_000, issues) ?? d['dns']['memory']['perSandbox'],
  };
  const servers = optStringArray(dnsIn?.['servers'], 'dns.servers', issues) ?? [];
  servers.forEach((s, i) => {
    if (dnsServer(s) === undefined) issues.add(`dns.servers[${i}]`, `Expected an address or "address:port", got ${quote(s)}`);
  });
  const sandboxServers = optStringArray(dnsIn?.['sandboxServers'], 'dns.sandboxServers', issues) ?? d['dns']['sandboxServers'];
  const sandboxServersCanon: string[] = [];
  sandboxServers.forEach((s: string, i: number) => {
    const c = canonicalSource(s);
    if (c === undefined) issues.add(`dns.sandboxServers[${i}]`, `Expected an IPv4 or IPv6 address, got ${quote(s)}`);
    else sandboxServersCanon.push(c);
  });
  const dnsTimeout = optInt(dnsIn?.['timeoutMs'], 'dns.timeoutMs', 1, 60_000, issues) ?? d['dns']['timeoutMs'];

  const upIn = root['upstream'] === undefined ? {} : objectWithKeys(root['upstream'], 'upstream', ['dial', 'connectTimeoutMs', 'idleTimeoutMs'], issues);
  const dial = optEnum(upIn?.['dial'], 'upstream.dial', ['resolved', 'verify', 'original'] as const, issues) ?? 'resolved';
  const connectTimeoutMs = optInt(upIn?.['connectTimeoutMs'], 'upstream.connectTimeoutMs', 1, 600_000, issues) ?? d['upstream']['connectTimeoutMs'];
  const idleTimeoutMs = optInt(upIn?.['idleTimeoutMs'], 'upstream.idleTimeoutMs', 1, 7 * 86_400_000, issues) ?? d['upstream']['idleTimeoutMs'];

  const peekIn = root['peek'] === undefined ? {} : objectWithKeys(root['peek'], 'peek', ['timeoutMs', 'firstByteTimeoutMs'], issues);
  const peekTimeout = optInt(peekIn?.['timeoutMs'], 'peek.timeoutMs', 1, 600_000, issues) ?? d['peek']['timeoutMs'];
  const firstByte = optInt(peekIn?.['firstByteTimeoutMs'], 'peek.firstByteTimeoutMs', 1, 600_000, issues) ?? d['peek']['firstByteTimeoutMs'];
  if (firstByte > peekTimeout) issues.add('peek.firstByteTimeoutMs', `Must not exceed peek.timeoutMs (${peekTimeout}), got ${firstByte}`);

  const block = optEnum(root['block'], 'block', ['explain', 'drop'] as const, issues) ?? 'explain';
  const refIn = root['refusal'] === undefined ? {} : objectWithKeys(root['refusal'], 'refusal', ['lingerMs', 'lingerMaxBytes', 'lingerMaxConnections'], issues);
  const lingerMs = optInt(refIn?.['lingerMs'], 'refusal.lingerMs', 0, 600_000, issues) ?? d['refusal']['lingerMs'];
  const lingerMaxBytes = optInt(refIn?.['lingerMaxBytes'], 'refusal.lingerMaxBytes', 0, 1_073_741_824, issues) ?? d['refusal']['lingerMaxBytes'];
  const lingerMaxConnections =
    optInt(refIn?.['lingerMaxConnections'], 'refusal.lingerMaxConnections', 0, 1_000_000, issues) ?? d['refusal']['lingerMaxConnections'];

  const protIn = root['protected'] === undefined ? {} : objectWithKeys(root['protected'], 'protected', ['extra', 'except', 'reachableHostAddresses'], issues);
  const extra = optStringArray(protIn?.['extra'], 'protected.extra', issues) ?? [];
  const except = optStringArray(protIn?.['except'], 'protected.except', issues) ?? [];
  const reachableHostAddresses = optStringArray(protIn?.['reachableHostAddresses'], 'protected.reachableHostAddresses', issues) ?? [];
  const cidrIssues = validateCidrList(extra, 'protected.extra')
    .concat(validateCidrList(except, 'protected.except'))
    .concat(validateCidrList(reachableHostAddresses, 'protected.reachableHostAddresses'));
  for (const i of cidrIssues) issues.add(i.field, i.reason);

  const defaultNetwork = policyAt(root['defaultNetwork'] ?? BLOCK_EVERYTHING, 'defaultNetwork', issues);
  const reportOnly = optBool(root['reportOnly'], 'reportOnly', issues) ?? false;
  const overlays = parseOverlays(root['overlays'], 'overlays');
  if (!overlays.ok) for (const x of overlays.issues) issues.add(x.field, x.reason);

  const sandboxes: SandboxConfig[] = [];
  const sbIn = root['sandboxes'];
  if (sbIn !== undefined && !Array.isArray(sbIn)) issues.add('sandboxes', `Expected a list, got ${describe(sbIn)}`);
  const seenIds = new Map<string, number>();
  const seenSources = new Map<string, string>();
  if (Array.isArray(sbIn)) {
    sbIn.forEach((raw, i) => {
      const f = `sandboxes[${i}]`;
      const sb = objectWithKeys(raw, f, ['id', 'sources', 'org', 'network', 'limits', 'reportOnly'], issues);
      if (!sb) return;
      const id = optString(sb['id'], `${f}.id`, issues);
      if (sb['id'] === undefined) issues.add(`${f}.id`, 'Missing required field "id"');
      else if (id !== undefined && !SANDBOX_ID.test(id)) issues.add(`${f}.id`, `Expected letters, digits, "-", "_" or "." (at most 128), got ${quote(id)}`);
      else if (id !== undefined && seenIds.has(id)) issues.add(`${f}.id`, `Duplicate sandbox id ${quote(id)} (also sandboxes[${seenIds.get(id)}])`);
      if (id !== undefined) seenIds.set(id, i);
      const sources = optStringArray(sb['sources'], `${f}.sources`, issues);
      if (sb['sources'] === undefined) issues.add(`${f}.sources`, 'Missing required field "sources"');
      const canon: string[] = [];
      (sources ?? []).forEach((s, j) => {
        const c = canonicalSource(s);
        if (c === undefined) issues.add(`${f}.sources[${j}]`, `Expected an IPv4 or IPv6 address, got ${quote(s)}`);
        else if (seenSources.has(c)) issues.add(`${f}.sources[${j}]`, `Source ${quote(s)} already belongs to sandbox ${quote(seenSources.get(c))}`);
        else {
          seenSources.set(c, id ?? f);
          canon.push(c);
        }
      });
      const org = optString(sb['org'], `${f}.org`, issues);
      if (org !== undefined && !SANDBOX_ID.test(org)) issues.add(`${f}.org`, `Expected an organization id, got ${quote(org)}`);
      if (sb['network'] === undefined) issues.add(`${f}.network`, 'Missing required field "network"');
      const network = sb['network'] === undefined ? undefined : policyAt(sb['network'], `${f}.network`, issues);
      const limits = sb['limits'] === undefined ? null : parseLimits(sb['limits'], `${f}.limits`);
      if (limits !== null && !limits.ok) for (const x of limits.issues) issues.add(x.field, x.reason);
      const sbReportOnly = optBool(sb['reportOnly'], `${f}.reportOnly`, issues) ?? false;
      if (id !== undefined && network !== undefined) {
        sandboxes.push({
          id,
          sources: canon,
          org: org ?? null,
          networkBody: sb['network'],
          network,
          limits: limits?.ok ? limits.value : null,
          reportOnly: sbReportOnly,
        });
      }
    });
  }

  const catIn = root['catalog'] === undefined ? {} : objectWithKeys(root['catalog'], 'catalog', ['categories', 'extra', 'file'], issues);
  const categories: readonly string[] | 'all' =
    catIn?.['categories'] === undefined || catIn['categories'] === 'all' ? 'all' : (optStringArray(catIn['categories'], 'catalog.categories', issues) ?? []);
  const catalogExtra = optStringArray(catIn?.['extra'], 'catalog.extra', issues) ?? [];
  const catalogFile = optString(catIn?.['file'], 'catalog.file', issues) ?? null;

  const stateIn = root['state'] === undefined ? {} : objectWithKeys(root['state'], 'state', ['path'], issues);
  const statePath = optString(stateIn?.['path'], 'state.path', issues) ?? null;
  const onPolicyChange = optEnum(root['onPolicyChange'], 'onPolicyChange', ['close', 'keep'] as const, issues) ?? 'close';
  const shutIn = root['shutdown'] === undefined ? {} : objectWithKeys(root['shutdown'], 'shutdown', ['drainMs'], issues);
  const drainMs = optInt(shutIn?.['drainMs'], 'shutdown.drainMs', 0, 86_400_000, issues) ?? d['shutdown']['drainMs'];
  const metIn = root['metrics'] === undefined ? {} : objectWithKeys(root['metrics'], 'metrics', ['sandboxLabel'], issues);
  const sandboxLabel = optBool(metIn?.['sandboxLabel'], 'metrics.sandboxLabel', issues) ?? false;

  const logIn = root['log'] === undefined ? {} : objectWithKeys(root['log'], 'log', ['level', 'destination'], issues);
  const level = optEnum(logIn?.['level'], 'log.level', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const, issues) ?? 'info';
  const destination = optString(logIn?.['destination'], 'log.destination', issues) ?? null;

  const connectionLimits = limitsAt(root['limits'], issues);

  if (!issues.ok || !defaultNetwork || !adminListen || !overlays.ok) return { ok: false, issues: issues.result() };
  const config: Config = {
    listen,
    admin: { listen: adminListen[0]!, token, maxBodyBytes },
    dns: { servers, timeoutMs: dnsTimeout, sandboxServers: sandboxServersCanon, refusal, zones, stripEch, limits, memory },
    upstream: { dial, connectTimeoutMs, idleTimeoutMs },
    peek: { timeoutMs: peekTimeout, firstByteTimeoutMs: firstByte },
    block,
    refusal: { lingerMs, lingerMaxBytes, lingerMaxConnections },
    protected: { extra, except, reachableHostAddresses },
    defaultNetwork,
    reportOnly,
    overlays: overlays.value,
    sandboxes,
    catalog: { categories, extra: catalogExtra, file: catalogFile },
    state: { path: statePath },
    onPolicyChange,
    shutdown: { drainMs },
    metrics: { sandboxLabel },
    log: { level, destination },
    limits: connectionLimits,
  };
  return { ok: true, config: deepFreeze(config) };
}

function optRatio(v: unknown, field: string, min: number, max: number, issues: CappedIssues): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    issues.add(field, `Expected a number from ${min} to ${max}, got ${describe(v)}`);
    return undefined;
  }
  return v;
}

function limitsAt(v: unknown, issues: CappedIssues): LimitsConfig {
  const d = (DEFAULT_DOCUMENT as Record<string, any>)['limits'];
  const root = v === undefined ? {} : objectWithKeys(v, 'limits', ['sandbox', 'global', 'memory'], issues);
  const sb = root?.['sandbox'] === undefined ? null : parseLimits(root['sandbox'], 'limits.sandbox');
  if (sb !== null && !sb.ok) for (const x of sb.issues) issues.add(x.field, x.reason);
  const g =
    root?.['global'] === undefined ? {} : objectWithKeys(root['global'], 'limits.global', ['connections', 'reserveDescriptors', 'sandboxShare'], issues);
  const m = root?.['memory'] === undefined ? {} : objectWithKeys(root['memory'], 'limits.memory', ['maxBytes', 'shedAt', 'intervalMs'], issues);
  return {
    sandbox: { ...d['sandbox'], ...(sb?.ok ? sb.value : {}) },
    global: {
      connections:
        g?.['connections'] === null ? null : (optInt(g?.['connections'], 'limits.global.connections', 1, 10_000_000, issues) ?? d['global']['connections']),
      reserveDescriptors: optInt(g?.['reserveDescriptors'], 'limits.global.reserveDescriptors', 16, 1_000_000, issues) ?? d['global']['reserveDescriptors'],
      sandboxShare: optRatio(g?.['sandboxShare'], 'limits.global.sandboxShare', 0.01, 1, issues) ?? d['global']['sandboxShare'],
    },
    memory: {
      maxBytes:
        m?.['maxBytes'] === null
          ? null
          : (optInt(m?.['maxBytes'], 'limits.memory.maxBytes', 16 * 1_048_576, Number.MAX_SAFE_INTEGER, issues) ?? d['memory']['maxBytes']),
      shedAt: optRatio(m?.['shedAt'], 'limits.memory.shedAt', 0.1, 1, issues) ?? d['memory']['shedAt'],
      intervalMs: optInt(m?.['intervalMs'], 'limits.memory.intervalMs', 10, 60_000, issues) ?? d['memory']['intervalMs'],
    },
  };
}

export const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function validateCidrList(list: readonly string[], field: string): { field: string; reason: string }[] {
  const out: { field: string; reason: string }[] = [];
  list.forEach((c, i) => {
    const r = validateCidr(c);
    if (!r.ok) out.push({ field: `${field}[${i}]`, reason: r.reason });
  });
  return out;
}
