// The configuration file's validated, frozen model. A document is checked against the one
// schema (src/schema/define/config-file.ts: shapes, bounds, defaults), then for what a shape cannot
// say (addresses, CIDRs, names, repeated ids and sources, each policy by its dialect). Every
// problem is reported at once with its key path; a document with any problem is refused whole.
// The keys of DEFAULT_DOCUMENT are the contract documented in docs/config.md.

import type { DialectResult } from '../policy/model.ts';
import { parseNetworkBody } from '../policy/network-body.ts';
import { parseOverlays, type Overlays } from '../policy/overlay.ts';
import { validateCidr } from '../policy/validate.ts';
import { canonicalSource, parseIp, sandboxSource } from '../match/ip.ts';
import { parseNat64Prefix } from '../match/protected.ts';
import { CappedIssues, type FieldIssue } from '../util/issues.ts';
import { normalizePattern } from '../match/names.ts';
import { type Endpoint, type ListenerKind, LISTENER_KINDS } from '../net/listener.ts';
import type { BlockMode } from '../net/refuse.ts';
import type { DialMode } from '../net/upstream-target.ts';
import { deepFreeze, isPlainObject, quote } from '../util/fields.ts';
import type { LimitsOverride, SandboxLimits } from '../limits/limits-body.ts';
import type { UnknownSourcePrefix } from '../match/tenant-key.ts';
import { check } from '../schema/check.ts';
import { DEFAULT_DOCUMENT } from '../schema/constants.ts';
import { ConfigFile } from '../schema/schemas.ts';
import { bearerTokenProblem } from '../util/bearer-token.ts';

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
  /** The block a source of no sandbox is counted by, per family (match/tenant-key.ts). */
  readonly unknownSourcePrefix: UnknownSourcePrefix;
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
  /** TCP connections all sandboxes together may hold to the DNS listeners (within a quarter of the descriptor budget). */
  readonly tcpTotal: number;
}

export interface Config {
  /** TCP listeners by kind, and `dns` (UDP and TCP on each endpoint; empty: no DNS listener). */
  readonly listen: Readonly<Record<ListenerKind, readonly Endpoint[]>> & { readonly dns: readonly Endpoint[] };
  /**
   * `previousToken`: a second token the API accepts beside `token` (a rotation rolled out over a
   * fleet), only while `token` is set.
   */
  readonly admin: { readonly listen: Endpoint; readonly token: string | null; readonly previousToken: string | null; readonly maxBodyBytes: number };
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
    /** Answers each DNS cache holds, all sandboxes together (dns/cache.ts, net/dns-cache.ts). */
    readonly cacheEntries: number;
    /** Bytes each DNS cache may hold (estimated when an answer is stored), all sandboxes together. */
    readonly cacheBytes: number;
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
    /** CIDRs refused whatever a policy allows (decide step 1b); only `except` lifts them. */
    readonly extra: readonly string[];
    /** CIDRs taken out of the built-in and `extra` ranges outright: no policy needs to unlock them. */
    readonly except: readonly string[];
    /**
     * Host addresses (or CIDRs) no longer refused as the host's (decide step 1a), a documented
     * risk: egressd's own listeners stay refused, and steps 1b-1c and the policy still judge them.
     */
    readonly reachableHostAddresses: readonly string[];
    /**
     * The host's NAT64 prefixes beyond the well-known 64:ff9b::/96 (RFC 6052 §2.2 formats,
     * parseNat64Prefix): an address inside one is also judged by the IPv4 address it carries.
     */
    readonly nat64Prefixes: readonly string[];
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
  readonly metrics: {
    readonly sandboxLabel: boolean;
    /** OTLP/HTTP export of the metrics (observability/otlp.ts): off while endpoint is null. */
    readonly otlp: { readonly endpoint: string | null; readonly intervalMs: number };
  };
  readonly log: { readonly level: LogLevel; readonly destination: string | null };
  readonly limits: LimitsConfig;
}

export { DEFAULT_DOCUMENT };

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

type Doc = Record<string, any>;

/** The object at `key` of a shape-checked document, or {} when absent or not an object (its issue is already reported). */
const section = (v: Doc, key: string): Doc => (isPlainObject(v[key]) ? (v[key] as Doc) : {});
/** `v[key]` when present, else the default; only read once the whole document passed. */
const pick = <T>(v: Doc, key: string, def: T): T => (v[key] === undefined ? def : (v[key] as T));
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : typeof v === 'string' ? [v] : []);

/** Parses every endpoint of a shape-checked `string | string[]`, reporting each that does not parse. */
function endpointsAt(v: unknown, field: string, issues: CappedIssues): Endpoint[] {
  if (typeof v !== 'string' && !Array.isArray(v)) return [];
  const out: Endpoint[] = [];
  strings(v).forEach((t, i) => {
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

function cidrsAt(v: unknown, field: string, issues: CappedIssues): void {
  if (!Array.isArray(v)) return;
  v.forEach((c, i) => {
    if (typeof c !== 'string') return;
    const r = validateCidr(c);
    if (!r.ok) issues.add(`${field}[${i}]`, r.reason);
  });
}

/**
 * Validates a parsed document (the file's contents; absent keys take DEFAULT_DOCUMENT's values)
 * into a frozen Config, or returns every issue found.
 */
export function validateConfig(doc: unknown): { ok: true; config: Config } | { ok: false; issues: FieldIssue[] } {
  const issues = new CappedIssues('(root)');
  const input = doc === null || doc === undefined ? {} : doc;
  if (!check(ConfigFile, input, '', issues, '(root)') && !isPlainObject(input)) return { ok: false, issues: issues.result() };
  const root = input as Doc;
  const d = DEFAULT_DOCUMENT as Doc;

  // What the shape cannot say, on the parts whose shape is right.
  const listenIn = section(root, 'listen');
  const listen = {} as Record<ListenerKind, Endpoint[]> & { dns: Endpoint[] };
  for (const kind of LISTENER_KINDS) {
    const raw = pick(listenIn, kind, d['listen'][kind]);
    // An empty list: the schema says so (minItems).
    listen[kind] = endpointsAt(raw, `listen.${kind}`, issues);
  }
  // An empty list turns the DNS listener off (port 53 then works as before: dns.sandboxServers).
  listen.dns = endpointsAt(pick(listenIn, 'dns', d['listen']['dns']), 'listen.dns', issues);

  const adminIn = section(root, 'admin');
  const adminRaw = pick(adminIn, 'listen', d['admin']['listen']);
  const adminListen = endpointsAt(adminRaw, 'admin.listen', issues);
  if (Array.isArray(adminRaw) && adminRaw.length !== 1) issues.add('admin.listen', 'Expected a single "address:port"');
  // A token no call could present would leave the API answering 401 to everyone, silently (an
  // empty one: the schema says so).
  for (const key of ['token', 'previousToken'] as const) {
    const token = adminIn[key];
    const tokenProblem = typeof token === 'string' && token !== '' ? bearerTokenProblem(token) : null;
    if (tokenProblem !== null) issues.add(`admin.${key}`, `Not a usable admin token: ${tokenProblem}`);
  }

  const dnsIn = section(root, 'dns');
  const zones: string[] = [];
  strings(dnsIn['zones']).forEach((z, i) => {
    const n = normalizePattern(z);
    if (!n.ok) issues.add(`dns.zones[${i}]`, n.reason);
    else zones.push(n.pattern);
  });
  if (Array.isArray(dnsIn['servers'])) {
    (dnsIn['servers'] as unknown[]).forEach((s, i) => {
      if (typeof s === 'string' && s !== '' && dnsServer(s) === undefined)
        issues.add(`dns.servers[${i}]`, `Expected an address or "address:port", got ${quote(s)}`);
    });
  }
  const sandboxServers: string[] = [];
  if (Array.isArray(pick(dnsIn, 'sandboxServers', d['dns']['sandboxServers']))) {
    (pick(dnsIn, 'sandboxServers', d['dns']['sandboxServers']) as unknown[]).forEach((s, i) => {
      if (typeof s !== 'string' || s === '') return;
      const c = canonicalSource(s);
      if (c === undefined) issues.add(`dns.sandboxServers[${i}]`, `Expected an IPv4 or IPv6 address, got ${quote(s)}`);
      else sandboxServers.push(c);
    });
  }

  const peekIn = section(root, 'peek');
  const peekTimeout = pick(peekIn, 'timeoutMs', d['peek']['timeoutMs']);
  const firstByte = pick(peekIn, 'firstByteTimeoutMs', d['peek']['firstByteTimeoutMs']);
  // Compared only when both passed their own bounds: one mistake, one reason.
  const peekShapeOk = !issues.list.some((i) => i.field.startsWith('peek.'));
  if (peekShapeOk && firstByte > peekTimeout) {
    issues.add('peek.firstByteTimeoutMs', `Must not exceed peek.timeoutMs (${peekTimeout}), got ${firstByte}`);
  }

  // A sandbox allowed more than all of them together is a typo, not a bound.
  const dnsLimitsIn = section(dnsIn, 'limits');
  const tcpPer = pick(dnsLimitsIn, 'tcpPerSandbox', d['dns']['limits']['tcpPerSandbox']);
  const tcpTotal = pick(dnsLimitsIn, 'tcpTotal', d['dns']['limits']['tcpTotal']);
  const inflightPer = pick(dnsLimitsIn, 'inflightPerSandbox', d['dns']['limits']['inflightPerSandbox']);
  const inflightTotal = pick(dnsLimitsIn, 'inflightTotal', d['dns']['limits']['inflightTotal']);
  if (!issues.list.some((i) => i.field.startsWith('dns.limits.'))) {
    if (tcpPer > tcpTotal) issues.add('dns.limits.tcpPerSandbox', `Must not exceed dns.limits.tcpTotal (${tcpTotal}), got ${tcpPer}`);
    if (inflightPer > inflightTotal)
      issues.add('dns.limits.inflightPerSandbox', `Must not exceed dns.limits.inflightTotal (${inflightTotal}), got ${inflightPer}`);
  }

  const protIn = section(root, 'protected');
  for (const k of ['extra', 'except', 'reachableHostAddresses']) cidrsAt(protIn[k], `protected.${k}`, issues);
  if (Array.isArray(protIn['nat64Prefixes'])) {
    (protIn['nat64Prefixes'] as unknown[]).forEach((c, i) => {
      if (typeof c !== 'string') return;
      const r = parseNat64Prefix(c);
      if (!r.ok) issues.add(`protected.nat64Prefixes[${i}]`, r.reason);
    });
  }

  const defaultNetwork = policyAt(pick(root, 'defaultNetwork', d['defaultNetwork']), 'defaultNetwork', issues);
  const otlpEndpoint = section(section(root, 'metrics'), 'otlp')['endpoint'];
  if (typeof otlpEndpoint === 'string' && /^https?:\/\/\S+$/.test(otlpEndpoint)) {
    // The exporter parses it with WHATWG URL at start: refused here, `egressd validate` says so too.
    const u = URL.canParse(otlpEndpoint) ? new URL(otlpEndpoint) : null;
    if (u === null) issues.add('metrics.otlp.endpoint', `Not a URL: ${quote(otlpEndpoint)}`);
    // The endpoint is written to the log (started, otlp-export-failing): no secret in it.
    else if (u.username !== '' || u.password !== '')
      issues.add('metrics.otlp.endpoint', 'Must not carry credentials (user:password@): the endpoint is written to the log');
  }
  const overlays = parseOverlays(root['overlays'], 'overlays');
  if (!overlays.ok) for (const x of overlays.issues) issues.add(x.field, x.reason);

  const sandboxes: SandboxConfig[] = [];
  const seenIds = new Map<string, number>();
  const seenSources = new Map<string, string>();
  (Array.isArray(root['sandboxes']) ? (root['sandboxes'] as unknown[]) : []).forEach((raw, i) => {
    if (!isPlainObject(raw)) return;
    const f = `sandboxes[${i}]`;
    const id = typeof raw['id'] === 'string' ? raw['id'] : undefined;
    if (id !== undefined && seenIds.has(id)) issues.add(`${f}.id`, `Duplicate sandbox id ${quote(id)} (also sandboxes[${seenIds.get(id)}])`);
    if (id !== undefined && !seenIds.has(id)) seenIds.set(id, i);
    const canon: string[] = [];
    (Array.isArray(raw['sources']) ? (raw['sources'] as unknown[]) : []).forEach((s, j) => {
      if (typeof s !== 'string') return;
      const r = sandboxSource(s);
      const c = r.ok ? r.source : undefined;
      if (!r.ok) issues.add(`${f}.sources[${j}]`, r.reason);
      else if (canon.includes(c!))
        issues.add(`${f}.sources[${j}]`, `Duplicate source ${quote(s)}`); // as the API says it
      else if (seenSources.has(c!)) issues.add(`${f}.sources[${j}]`, `Source ${quote(s)} already belongs to sandbox ${quote(seenSources.get(c!))}`);
      else {
        seenSources.set(c!, id ?? f);
        canon.push(c!);
      }
    });
    // Absent, a sandbox's network is block-all, as through the API: one shape for both.
    const body = raw['network'] ?? { mode: 'block-all' };
    const network = policyAt(body, `${f}.network`, issues);
    if (id !== undefined && network !== undefined) {
      const limits = isPlainObject(raw['limits']) ? (Object.freeze({ ...raw['limits'] }) as LimitsOverride) : null;
      const org = typeof raw['org'] === 'string' ? raw['org'] : null;
      sandboxes.push({ id, sources: canon, org, networkBody: body, network, limits, reportOnly: raw['reportOnly'] === true });
    }
  });

  if (!issues.ok || !defaultNetwork || adminListen.length !== 1 || !overlays.ok) return { ok: false, issues: issues.result() };

  // The document passed: every value read below has its schema's shape.
  const dnsLimits = section(dnsIn, 'limits');
  const dnsMemory = section(dnsIn, 'memory');
  const up = section(root, 'upstream');
  const ref = section(root, 'refusal');
  const cat = section(root, 'catalog');
  const lim = section(root, 'limits');
  const limGlobal = section(lim, 'global');
  const limMemory = section(lim, 'memory');
  const limPrefix = section(lim, 'unknownSourcePrefix');
  const log = section(root, 'log');
  const dl = d['dns']['limits'];
  const config: Config = {
    listen,
    admin: {
      listen: adminListen[0]!,
      token: pick(adminIn, 'token', null),
      previousToken: pick(adminIn, 'previousToken', null),
      maxBodyBytes: pick(adminIn, 'maxBodyBytes', d['admin']['maxBodyBytes']),
    },
    dns: {
      servers: strings(dnsIn['servers']),
      timeoutMs: pick(dnsIn, 'timeoutMs', d['dns']['timeoutMs']),
      sandboxServers,
      refusal: pick(dnsIn, 'refusal', d['dns']['refusal']),
      zones,
      stripEch: pick(dnsIn, 'stripEch', d['dns']['stripEch']),
      limits: {
        perSecond: pick(dnsLimits, 'perSecond', dl['perSecond']),
        burst: pick(dnsLimits, 'burst', dl['burst']),
        inflightPerSandbox: pick(dnsLimits, 'inflightPerSandbox', dl['inflightPerSandbox']),
        inflightTotal: pick(dnsLimits, 'inflightTotal', dl['inflightTotal']),
        tcpPerSandbox: pick(dnsLimits, 'tcpPerSandbox', dl['tcpPerSandbox']),
        tcpTotal: pick(dnsLimits, 'tcpTotal', dl['tcpTotal']),
      },
      memory: {
        graceMs: pick(dnsMemory, 'graceMs', d['dns']['memory']['graceMs']),
        perSandbox: pick(dnsMemory, 'perSandbox', d['dns']['memory']['perSandbox']),
      },
      cacheEntries: pick(dnsIn, 'cacheEntries', d['dns']['cacheEntries']),
      cacheBytes: pick(dnsIn, 'cacheBytes', d['dns']['cacheBytes']),
    },
    upstream: {
      dial: pick(up, 'dial', d['upstream']['dial']),
      connectTimeoutMs: pick(up, 'connectTimeoutMs', d['upstream']['connectTimeoutMs']),
      idleTimeoutMs: pick(up, 'idleTimeoutMs', d['upstream']['idleTimeoutMs']),
    },
    peek: { timeoutMs: peekTimeout, firstByteTimeoutMs: firstByte },
    block: pick(root, 'block', d['block']),
    refusal: {
      lingerMs: pick(ref, 'lingerMs', d['refusal']['lingerMs']),
      lingerMaxBytes: pick(ref, 'lingerMaxBytes', d['refusal']['lingerMaxBytes']),
      lingerMaxConnections: pick(ref, 'lingerMaxConnections', d['refusal']['lingerMaxConnections']),
    },
    protected: {
      extra: strings(protIn['extra']),
      except: strings(protIn['except']),
      reachableHostAddresses: strings(protIn['reachableHostAddresses']),
      nat64Prefixes: strings(protIn['nat64Prefixes']),
    },
    defaultNetwork,
    reportOnly: pick(root, 'reportOnly', false),
    overlays: overlays.value,
    sandboxes,
    catalog: { categories: pick(cat, 'categories', 'all'), extra: strings(cat['extra']), file: pick(cat, 'file', null) },
    state: { path: pick(section(root, 'state'), 'path', null) },
    onPolicyChange: pick(root, 'onPolicyChange', d['onPolicyChange']),
    shutdown: { drainMs: pick(section(root, 'shutdown'), 'drainMs', d['shutdown']['drainMs']) },
    metrics: {
      sandboxLabel: pick(section(root, 'metrics'), 'sandboxLabel', d['metrics']['sandboxLabel']),
      otlp: {
        endpoint: pick(section(section(root, 'metrics'), 'otlp'), 'endpoint', d['metrics']['otlp']['endpoint']),
        intervalMs: pick(section(section(root, 'metrics'), 'otlp'), 'intervalMs', d['metrics']['otlp']['intervalMs']),
      },
    },
    log: { level: pick(log, 'level', d['log']['level']), destination: pick(log, 'destination', null) },
    limits: {
      sandbox: { ...d['limits']['sandbox'], ...section(lim, 'sandbox') },
      global: {
        connections: pick(limGlobal, 'connections', d['limits']['global']['connections']),
        reserveDescriptors: pick(limGlobal, 'reserveDescriptors', d['limits']['global']['reserveDescriptors']),
        sandboxShare: pick(limGlobal, 'sandboxShare', d['limits']['global']['sandboxShare']),
      },
      memory: {
        maxBytes: pick(limMemory, 'maxBytes', d['limits']['memory']['maxBytes']),
        shedAt: pick(limMemory, 'shedAt', d['limits']['memory']['shedAt']),
        intervalMs: pick(limMemory, 'intervalMs', d['limits']['memory']['intervalMs']),
      },
      unknownSourcePrefix: {
        ipv4: pick(limPrefix, 'ipv4', d['limits']['unknownSourcePrefix']['ipv4']),
        ipv6: pick(limPrefix, 'ipv6', d['limits']['unknownSourcePrefix']['ipv6']),
      },
    },
  };
  return { ok: true, config: deepFreeze(config) };
}
