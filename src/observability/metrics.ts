// Every metric egressd exports, declared once with its help text. Prometheus conventions:
// the `egressd_` prefix, `_total` counters, base units (seconds, bytes). Label values come
// from small fixed sets — never a raw name, address or (unless asked) sandbox id.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ConnectionOutcome } from '../net/outcome.ts';
import type { ListenerKind } from '../net/listener.ts';

export interface MetricsOptions {
  /** Adds a `sandbox` label to the connection counters: only for small fleets. */
  readonly sandboxLabel: boolean;
}

/** What the limits hold now (limits/controller.ts), read at scrape time. */
export interface LimitsSnapshot {
  readonly nofileSoft: number | null;
  readonly nofileHard: number | null;
  readonly openDescriptors: number | null;
  readonly globalConnections: number | null;
  readonly sandboxShare: number | null;
  readonly open: number;
  readonly undecided: number;
  readonly memoryPressure: number;
  readonly memoryLimitBytes: number | null;
  readonly overloaded: { readonly memory: boolean; readonly descriptors: boolean };
}

const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  readonly #sandboxLabel: boolean;

  readonly connections: Counter;
  readonly activeConnections: Gauge<'listener'>;
  readonly bytes: Counter<'direction'>;
  readonly peekDuration: Histogram<'listener'>;
  readonly connectDuration: Histogram;
  readonly connectFailures: Counter<'cause'>;
  readonly dnsLookups: Counter<'outcome'>;
  readonly dnsCacheHits: Counter;
  readonly dnsFailures: Counter<'cause'>;
  readonly policyChanges: Counter<'source'>;
  readonly policyChangesRefused: Counter<'source'>;
  readonly configReloads: Counter<'result'>;
  readonly closedByPolicyChange: Counter;
  readonly stateWriteFailures: Counter<'errno'>;
  readonly stateEntries: Gauge;
  readonly dnsQueries: Counter<'verdict' | 'type'>;
  readonly dnsUpstreamDuration: Histogram;
  readonly dnsAnswerCacheHits: Counter;
  readonly dnsRememberedAddresses: Gauge;
  #remembered: () => { total: number } = () => ({ total: 0 });
  readonly acceptErrors: Counter<'code'>;
  readonly limitDescriptors: Gauge<'kind'>;
  readonly openDescriptors: Gauge;
  readonly limitConnections: Gauge<'scope'>;
  readonly admittedConnections: Gauge<'state'>;
  readonly memoryPressure: Gauge;
  readonly memoryLimit: Gauge;
  readonly overloaded: Gauge<'resource'>;
  #limits: (() => LimitsSnapshot) | null = null;

  constructor(opts: MetricsOptions = { sandboxLabel: false }) {
    this.#sandboxLabel = opts.sandboxLabel;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.connections = new Counter({
      name: 'egressd_connections_total',
      help: 'Connections handled, by listener, verdict (allow, refuse, error), reason and the side that ended it (client, policy, upstream, egressd).',
      labelNames: opts.sandboxLabel ? ['listener', 'verdict', 'reason', 'ended_by', 'sandbox'] : ['listener', 'verdict', 'reason', 'ended_by'],
      registers,
    });
    this.activeConnections = new Gauge({
      name: 'egressd_active_connections',
      help: 'Connections currently open, by listener.',
      labelNames: ['listener'],
      registers,
    });
    this.bytes = new Counter({
      name: 'egressd_bytes_total',
      help: 'Bytes carried between clients and upstreams; direction "up" is client to upstream.',
      labelNames: ['direction'],
      registers,
    });
    this.peekDuration = new Histogram({
      name: 'egressd_peek_duration_seconds',
      help: 'Time from accept until the ClientHello or request head was read (or the peek gave up).',
      labelNames: ['listener'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.connectDuration = new Histogram({
      name: 'egressd_upstream_connect_duration_seconds',
      help: 'Time to establish the TCP connection to the upstream.',
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.connectFailures = new Counter({
      name: 'egressd_upstream_connect_failures_total',
      help: 'Upstream connections that failed, by cause (refused, timeout, unreachable, reset, aborted, other).',
      labelNames: ['cause'],
      registers,
    });
    this.dnsLookups = new Counter({
      name: 'egressd_dns_lookups_total',
      help: 'Name resolutions made to dial an allowed name, by outcome (ok or a failure cause).',
      labelNames: ['outcome'],
      registers,
    });
    this.dnsCacheHits = new Counter({
      name: 'egressd_dns_cache_hits_total',
      help: 'Name resolutions answered from the TTL cache.',
      registers,
    });
    this.dnsFailures = new Counter({
      name: 'egressd_dns_failures_total',
      help: 'Name resolutions that failed, by cause (nxdomain, nodata, timeout, servfail, refused, error).',
      labelNames: ['cause'],
      registers,
    });
    this.policyChanges = new Counter({
      name: 'egressd_policy_changes_total',
      help: 'Policy changes applied, by source (api, config).',
      labelNames: ['source'],
      registers,
    });
    this.policyChangesRefused = new Counter({
      name: 'egressd_policy_changes_refused_total',
      help: 'Policy changes refused as invalid or conflicting, by source (api, config).',
      labelNames: ['source'],
      registers,
    });
    this.configReloads = new Counter({
      name: 'egressd_config_reloads_total',
      help: 'Configuration reloads (SIGHUP), by result (ok, refused).',
      labelNames: ['result'],
      registers,
    });
    this.closedByPolicyChange = new Counter({
      name: 'egressd_connections_closed_by_policy_change_total',
      help: 'Open connections closed because a policy change refuses them.',
      registers,
    });
    this.stateWriteFailures = new Counter({
      name: 'egressd_state_write_failures_total',
      help: 'Policy changes refused (503) because the state could not be written, by errno (ENOSPC, EROFS, EACCES, EIO, EBUSY, ...).',
      labelNames: ['errno'],
      registers,
    });
    this.stateEntries = new Gauge({
      name: 'egressd_state_entries',
      help: 'Sandboxes and organizations restored from the state at start-up.',
      registers,
    });
    this.dnsQueries = new Counter({
      name: 'egressd_dns_queries_total',
      help: 'Queries to the DNS listener, by verdict (allow, refuse, rate-limited, inflight-limited, tcp-limited, malformed, servfail) and query type (A, AAAA, HTTPS, ..., other).',
      labelNames: ['verdict', 'type'],
      registers,
    });
    this.dnsUpstreamDuration = new Histogram({
      name: 'egressd_dns_upstream_duration_seconds',
      help: 'Time the upstream resolvers took to answer a query the DNS listener forwarded.',
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.dnsAnswerCacheHits = new Counter({
      name: 'egressd_dns_answer_cache_hits_total',
      help: 'Queries to the DNS listener answered from the answer cache.',
      registers,
    });
    const remembered = (): number => this.#remembered().total;
    this.dnsRememberedAddresses = new Gauge({
      name: 'egressd_dns_remembered_addresses',
      help: 'Addresses remembered with the names that gave them, over every sandbox (the API lists the top sandboxes).',
      registers,
      collect() {
        this.set(remembered());
      },
    });
    this.acceptErrors = new Counter({
      name: 'egressd_accept_errors_total',
      help: 'accept(2) failures on the listeners, by errno (EMFILE, ENFILE, ...): connections the kernel could not hand over.',
      labelNames: ['code'],
      registers,
    });
    // The limits' gauges are read from the controller at scrape time, so they cost nothing
    // between scrapes; unset until the daemon attaches its limits.
    const limits = (): LimitsSnapshot | null => this.#limits?.() ?? null;
    const setIf = (g: Gauge<string>, labels: Record<string, string>, v: number | null | undefined): void => {
      if (v !== null && v !== undefined) g.set(labels, v);
    };
    this.limitDescriptors = new Gauge({
      name: 'egressd_limit_descriptors',
      help: 'RLIMIT_NOFILE in force, by kind (soft: raised to the hard limit at start; hard).',
      labelNames: ['kind'],
      registers,
      collect() {
        const s = limits();
        setIf(this, { kind: 'soft' }, s?.nofileSoft);
        setIf(this, { kind: 'hard' }, s?.nofileHard);
      },
    });
    this.openDescriptors = new Gauge({
      name: 'egressd_open_descriptors',
      help: 'Descriptors the process has open now.',
      registers,
      collect() {
        setIf(this, {}, limits()?.openDescriptors);
      },
    });
    this.limitConnections = new Gauge({
      name: 'egressd_limit_connections',
      help: 'Connections egressd may hold, by scope: global (the descriptor budget: RLIMIT_NOFILE minus the reserve, two per connection) and sandbox_share (what one sandbox may hold of it).',
      labelNames: ['scope'],
      registers,
      collect() {
        const s = limits();
        setIf(this, { scope: 'global' }, s?.globalConnections);
        setIf(this, { scope: 'sandbox_share' }, s?.sandboxShare);
      },
    });
    this.admittedConnections = new Gauge({
      name: 'egressd_admitted_connections',
      help: 'Connections admitted and not yet closed, all sandboxes, by state (open: all of them; undecided: still being peeked).',
      labelNames: ['state'],
      registers,
      collect() {
        const s = limits();
        setIf(this, { state: 'open' }, s?.open);
        setIf(this, { state: 'undecided' }, s?.undecided);
      },
    });
    this.memoryPressure = new Gauge({
      name: 'egressd_memory_pressure_ratio',
      help: 'The highest memory pressure (used / limit) of the cgroup working set, RSS and V8 heap monitors.',
      registers,
      collect() {
        setIf(this, {}, limits()?.memoryPressure);
      },
    });
    this.memoryLimit = new Gauge({
      name: 'egressd_memory_limit_bytes',
      help: 'The tightest cgroup memory.max above egressd (absent without one).',
      registers,
      collect() {
        setIf(this, {}, limits()?.memoryLimitBytes);
      },
    });
    this.overloaded = new Gauge({
      name: 'egressd_overloaded',
      help: 'Whether new connections are being shed, by resource (memory, descriptors): 1 yes, 0 no.',
      labelNames: ['resource'],
      registers,
      collect() {
        const s = limits();
        if (!s) return;
        this.set({ resource: 'memory' }, s.overloaded.memory ? 1 : 0);
        this.set({ resource: 'descriptors' }, s.overloaded.descriptors ? 1 : 0);
      },
    });
    for (const l of ['http', 'tls', 'tcp'] as const) this.activeConnections.set({ listener: l }, 0);
  }

  /** Where the limits' gauges read from (the daemon's limits controller). */
  attachLimits(snapshot: () => LimitsSnapshot): void {
    this.#limits = snapshot;
  }

  accepted(listener: ListenerKind): void {
    this.activeConnections.inc({ listener });
  }

  /** Records one finished connection: the outcome is the single source of every count. */
  outcome(o: Readonly<ConnectionOutcome>): void {
    this.activeConnections.dec({ listener: o.listener });
    const labels: Record<string, string> = { listener: o.listener, verdict: o.verdict, reason: o.reason, ended_by: o.endedBy };
    if (this.#sandboxLabel) labels['sandbox'] = o.sandbox ?? '';
    this.connections.inc(labels);
    if (o.bytesUp > 0) this.bytes.inc({ direction: 'up' }, o.bytesUp);
    if (o.bytesDown > 0) this.bytes.inc({ direction: 'down' }, o.bytesDown);
    if (o.peekMs !== undefined) this.peekDuration.observe({ listener: o.listener }, o.peekMs / 1000);
    if (o.connectMs !== undefined) this.connectDuration.observe(o.connectMs / 1000);
    if (o.dialFailure !== undefined) this.connectFailures.inc({ cause: o.dialFailure });
    if (o.reason === 'policy-changed') this.closedByPolicyChange.inc();
  }

  /** A connection refused at accept by admission control (it has no outcome record). */
  shed(listener: ListenerKind, reason: 'sandbox-limit' | 'global-limit' | 'overload', sandbox: string | null): void {
    // Shed at accept for capacity: egressd's own doing, not a policy's.
    const labels: Record<string, string> = { listener, verdict: 'refuse', reason, ended_by: 'egressd' };
    if (this.#sandboxLabel) labels['sandbox'] = sandbox ?? '';
    this.connections.inc(labels);
  }

  dnsLookup(e: { cached: boolean; outcome: string }): void {
    if (e.cached) this.dnsCacheHits.inc();
    this.dnsLookups.inc({ outcome: e.outcome });
    if (e.outcome !== 'ok') this.dnsFailures.inc({ cause: e.outcome });
  }

  dnsQuery(e: { verdict: string; type: string; cached: boolean; upstreamMs?: number }): void {
    this.dnsQueries.inc({ verdict: e.verdict, type: e.type });
    if (e.cached) this.dnsAnswerCacheHits.inc();
    if (e.upstreamMs !== undefined) this.dnsUpstreamDuration.observe(e.upstreamMs / 1000);
  }

  /** Where the remembered-address gauge reads its value at scrape time. */
  dnsRemembered(read: () => { total: number }): void {
    this.#remembered = read;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
