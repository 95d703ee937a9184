// Every metric egressd exports, declared once with its help text. Prometheus conventions:
// the `egressd_` prefix, `_total` counters, base units (seconds, bytes). Label values come
// from small fixed sets — never a raw name, address or (unless asked) sandbox id.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ConnectionOutcome } from '../net/outcome.ts';
import type { ListenerKind } from '../config/schema.ts';

export interface MetricsOptions {
  /** Adds a `sandbox` label to the connection counters: only for small fleets. */
  readonly sandboxLabel: boolean;
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

  constructor(opts: MetricsOptions = { sandboxLabel: false }) {
    this.#sandboxLabel = opts.sandboxLabel;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.connections = new Counter({
      name: 'egressd_connections_total',
      help: 'Connections handled, by listener, verdict (allow, refuse, error) and reason.',
      labelNames: opts.sandboxLabel ? ['listener', 'verdict', 'reason', 'sandbox'] : ['listener', 'verdict', 'reason'],
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
    for (const l of ['http', 'tls', 'tcp'] as const) this.activeConnections.set({ listener: l }, 0);
  }

  accepted(listener: ListenerKind): void {
    this.activeConnections.inc({ listener });
  }

  /** Records one finished connection: the outcome is the single source of every count. */
  outcome(o: Readonly<ConnectionOutcome>): void {
    this.activeConnections.dec({ listener: o.listener });
    const labels: Record<string, string> = { listener: o.listener, verdict: o.verdict, reason: o.reason };
    if (this.#sandboxLabel) labels['sandbox'] = o.sandbox ?? '';
    this.connections.inc(labels);
    if (o.bytesUp > 0) this.bytes.inc({ direction: 'up' }, o.bytesUp);
    if (o.bytesDown > 0) this.bytes.inc({ direction: 'down' }, o.bytesDown);
    if (o.peekMs !== undefined) this.peekDuration.observe({ listener: o.listener }, o.peekMs / 1000);
    if (o.connectMs !== undefined) this.connectDuration.observe(o.connectMs / 1000);
    if (o.dialFailure !== undefined) this.connectFailures.inc({ cause: o.dialFailure });
    if (o.reason === 'policy-changed') this.closedByPolicyChange.inc();
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
