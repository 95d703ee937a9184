// Every metric egressd exports, declared once in METRICS: name, type, help, labels and buckets.
// The registry, the OTLP export (observability/otlp.ts), docs/metrics.md (pinned by
// test/unit/deploy.test.ts) and the dashboard's checks all read that one table. Prometheus
// conventions: the `egressd_` prefix, `_total` counters, base units (seconds, bytes). Label
// values come from small fixed sets — never a raw name, address or (unless asked) sandbox id.

import { createRequire } from 'node:module';
import type { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ConnectionOutcome } from '../net/outcome.ts';
import type { ListenerKind } from '../net/listener.ts';
import { type ConntrackTable, readConntrackTable } from './conntrack.ts';
import { LoopDelay, registerDefaultMetrics } from './loop-delay.ts';
import { EGRESSD_VERSION } from '../util/version.ts';

// prom-client's parts from their own files: its index also loads the Pushgateway (node:http,
// https, zlib) and the cluster aggregator, which egressd never uses — about 4 MB of idle RSS.
// The classes are the same objects the index exports.
const promRequire = createRequire(import.meta.url);
const prom = {
  Counter: promRequire('prom-client/lib/counter') as typeof Counter,
  Gauge: promRequire('prom-client/lib/gauge') as typeof Gauge,
  Histogram: promRequire('prom-client/lib/histogram') as typeof Histogram,
  Registry: promRequire('prom-client/lib/registry') as typeof Registry,
};
/** prom-client's key of a label set in a metric's series (lib/util.js), as its own observe computes it. */
const hashObject = (promRequire('prom-client/lib/util') as { hashObject: (labels: object, names?: readonly string[]) => string }).hashObject;

/** One series of a prom-client histogram as prom-client keeps it (lib/histogram.js createBaseValues). */
interface HistogramEntry {
  sum: number;
  count: number;
  readonly bucketValues: Record<string, number>;
}

/**
 * One label set's series of a prom-client histogram, observed without prom-client's work per
 * observation. prom-client's `observe(labels, v)` (15.1, pinned) builds the series' key string and
 * looks it up, makes a closure and an object, and reads the bucket by a number key each time:
 * about 4,400 instructions, and the connections' three histograms were 7 % of egressd's JavaScript
 * per connection (issue 12). Here the first observation goes through prom-client, which makes the
 * series; the later ones add to the series it made, exactly as its observe does (the sum in the
 * same order, the bucket of the first bound at or above the value, none above the last). While
 * prom-client keeps another series under the key (a reset, a remove), the next observation goes
 * through prom-client again. test/unit/observability/metrics.test.ts holds the two equal.
 */
export class HistogramSeries {
  readonly #histogram: Histogram<string>;
  readonly #labels: Readonly<Record<string, string>>;
  readonly #key: string;
  readonly #bounds: readonly number[];
  /** Each bound's key in the series' bucketValues (prom-client's object, keyed by the number's text). */
  readonly #boundKeys: readonly string[];
  #entry: HistogramEntry | undefined;

  constructor(histogram: Histogram<string>, labels: Readonly<Record<string, string>>) {
    const h = histogram as unknown as { sortedLabelNames: readonly string[]; upperBounds: readonly number[] };
    this.#histogram = histogram;
    this.#labels = labels;
    this.#key = hashObject(labels, h.sortedLabelNames);
    this.#bounds = h.upperBounds;
    this.#boundKeys = h.upperBounds.map(String);
  }

  observe(value: number): void {
    const map = (this.#histogram as unknown as { hashMap: Record<string, HistogramEntry | undefined> }).hashMap;
    const e = this.#entry;
    if (e === undefined || map[this.#key] !== e || !Number.isFinite(value)) {
      this.#histogram.observe(this.#labels, value);
      this.#entry = map[this.#key];
      return;
    }
    e.sum += value;
    e.count += 1;
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) {
        e.bucketValues[this.#boundKeys[i]!]! += 1;
        return;
      }
    }
  }
}

/** The peek-duration histogram's label set of each listener (see Metrics.#durationSeries). */
const PEEK_LABELS: Readonly<Record<ListenerKind, Readonly<Record<string, string>>>> = Object.freeze({
  http: Object.freeze({ listener: 'http' }),
  tls: Object.freeze({ listener: 'tls' }),
  tcp: Object.freeze({ listener: 'tcp' }),
});

export interface MetricsOptions {
  /** Adds a `sandbox` label to the connection counters: only for small fleets. */
  readonly sandboxLabel: boolean;
}

/** One row of METRICS. */
export interface MetricSpec {
  /** The Prometheus name (and the OTLP instrument name). */
  readonly name: string;
  readonly type: 'counter' | 'gauge' | 'histogram';
  readonly help: string;
  readonly labels: readonly string[];
  /** Upper bounds of a histogram's buckets, in the metric's unit. */
  readonly buckets?: readonly number[];
  /** A `sandbox` label is added when `metrics.sandboxLabel` is on. */
  readonly sandboxLabel?: true;
  /**
   * A counter's label sets exported at 0 from the start. A series first exported when its first
   * event counts starts at 1, and increase() and rate() never see that event: an alert on
   * increase() > 0 (deploy/prometheus) missed the first refused reload of a process.
   */
  readonly zeroed?: readonly Readonly<Record<string, string>>[];
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
  /** Refused connections lingering after their answer (one descriptor each). */
  readonly lingering: number;
  /** Dial attempts in flight past their connection's first (one descriptor each). */
  readonly dialAttempts: number;
  /** TCP connections to the DNS listener held now (descriptors of the budget). */
  readonly dnsTcp: number;
  readonly memoryPressure: number;
  readonly memoryLimitBytes: number | null;
  readonly overloaded: { readonly memory: boolean; readonly descriptors: boolean };
}

/** Peeks, dials and DNS answers: half a millisecond to ten seconds. */
const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;
/** Whole connections: a refusal in milliseconds, a download or a held-open stream for an hour. */
const CONNECTION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600] as const;

export { EGRESSD_VERSION };

export const METRICS = {
  buildInfo: {
    name: 'egressd_build_info',
    type: 'gauge',
    help: 'Always 1; the labels say which egressd runs: its version, the Node.js version, and the data plane (native splice loops or js).',
    labels: ['version', 'node_version', 'data_plane'],
  },
  sandboxes: {
    name: 'egressd_sandboxes',
    type: 'gauge',
    help: 'Sandboxes registered now, from the config file and the API.',
    labels: [],
  },
  organizations: {
    name: 'egressd_organizations',
    type: 'gauge',
    help: 'Organizations registered now.',
    labels: [],
  },
  connections: {
    name: 'egressd_connections_total',
    type: 'counter',
    help: 'Connections handled, by listener, verdict (allow, refuse, error), reason and the side that ended it (client, policy, upstream, egressd).',
    labels: ['listener', 'verdict', 'reason', 'ended_by'],
    sandboxLabel: true,
  },
  ruleHits: {
    name: 'egressd_rule_hits_total',
    type: 'counter',
    help: 'Connections decided, by the layer whose rule decided (always-deny, always-allow, org, sandbox, protected), the verdict (allow, refuse, would-refuse) and, for the operator overlays, the entry name (rule; empty for the other layers). Per-rule counts of each policy are in the effective view.',
    labels: ['layer', 'verdict', 'rule'],
  },
  activeConnections: {
    name: 'egressd_active_connections',
    type: 'gauge',
    help: 'Connections currently open, by listener.',
    labels: ['listener'],
  },
  connectionDuration: {
    name: 'egressd_connection_duration_seconds',
    type: 'histogram',
    help: 'Time from accept until the connection ended, by listener and verdict.',
    labels: ['listener', 'verdict'],
    buckets: CONNECTION_BUCKETS,
  },
  bytes: {
    name: 'egressd_bytes_total',
    type: 'counter',
    help: 'Bytes carried between clients and upstreams; direction "up" is client to upstream.',
    labels: ['direction'],
  },
  peekDuration: {
    name: 'egressd_peek_duration_seconds',
    type: 'histogram',
    help: 'Time from accept until the ClientHello or request head was read (or the peek gave up).',
    labels: ['listener'],
    buckets: SECONDS_BUCKETS,
  },
  connectDuration: {
    name: 'egressd_upstream_connect_duration_seconds',
    type: 'histogram',
    help: 'Time to establish the TCP connection to the upstream.',
    labels: [],
    buckets: SECONDS_BUCKETS,
  },
  connectFailures: {
    name: 'egressd_upstream_connect_failures_total',
    type: 'counter',
    help: 'Upstream connections that failed, by cause (refused, timeout, unreachable, reset, aborted, other).',
    labels: ['cause'],
  },
  dnsLookups: {
    name: 'egressd_dns_lookups_total',
    type: 'counter',
    help: 'Name resolutions made to dial an allowed name, by outcome (ok or a failure cause).',
    labels: ['outcome'],
  },
  dnsCacheHits: {
    name: 'egressd_dns_cache_hits_total',
    type: 'counter',
    help: 'Name resolutions answered from the TTL cache.',
    labels: [],
  },
  dnsFailures: {
    name: 'egressd_dns_failures_total',
    type: 'counter',
    help: 'Name resolutions that failed, by cause (nxdomain, nodata, timeout, servfail, refused, error).',
    labels: ['cause'],
  },
  dnsQueries: {
    name: 'egressd_dns_queries_total',
    type: 'counter',
    help: 'Queries to the DNS listener, by verdict (allow, refuse, rate-limited, inflight-limited, tcp-limited, malformed, servfail) and query type (A, AAAA, HTTPS, ..., other).',
    labels: ['verdict', 'type'],
  },
  dnsQueryLinesSuppressed: {
    name: 'egressd_dns_query_lines_suppressed_total',
    type: 'counter',
    help: 'dns-query log lines left out, by reason (not-allowed, deny-rule, rate-limited, ...): past the first, one line a second per sandbox, verdict and reason is written, saying how many were left out (egressd.suppressed).',
    labels: ['reason'],
  },
  dnsUdpReceiveBuffer: {
    name: 'egressd_dns_udp_receive_buffer_bytes',
    type: 'gauge',
    help: "The receive buffer of the DNS listener's UDP sockets, by figure: asked (4 MiB) and granted (the least the kernel gave a socket, capped at net.core.rmem_max); granted below asked is warned of at start (dns-receive-buffer-short).",
    labels: ['figure'],
  },
  dnsUpstreamDuration: {
    name: 'egressd_dns_upstream_duration_seconds',
    type: 'histogram',
    help: 'Time the upstream resolvers took to answer a query the DNS listener forwarded.',
    labels: [],
    buckets: SECONDS_BUCKETS,
  },
  dnsAnswerCacheHits: {
    name: 'egressd_dns_answer_cache_hits_total',
    type: 'counter',
    help: 'Queries to the DNS listener answered from the answer cache.',
    labels: [],
  },
  dnsRememberedAddresses: {
    name: 'egressd_dns_remembered_addresses',
    type: 'gauge',
    help: 'Addresses remembered with the names that gave them, over every sandbox (the API lists the top sandboxes).',
    labels: [],
  },
  dnsCacheBytes: {
    name: 'egressd_dns_cache_bytes',
    type: 'gauge',
    help: "Bytes held by each of egressd's DNS caches, as estimated when each entry was stored, by cache: answers (the DNS listener's) or addresses (the names' addresses, dialed from); each at most dns.cacheBytes.",
    labels: ['cache'],
  },
  dnsTcpRetriesHeldBack: {
    name: 'egressd_dns_tcp_retries_held_back_total',
    type: 'counter',
    help: "Retries over TCP of truncated DNS answers (the DNS listener's and the resolver's) that found no place at once and waited their turn within their deadline, by scope: sandbox (their sandbox held its share and no more than a share's worth of places was free) or global (every place was taken).",
    labels: ['scope'],
  },
  dnsTcpRetriesJoined: {
    name: 'egressd_dns_tcp_retries_joined_total',
    type: 'counter',
    help: 'Retries over TCP of truncated DNS answers whose place was charged to a sandbox that joined the query (asked the same question while it was on its way), not the one that asked first: the joiner held fewer places, or the first held its share.',
    labels: [],
  },
  dnsTcpConnections: {
    name: 'egressd_dns_tcp_connections',
    type: 'gauge',
    help: "TCP connections to the DNS listener held now, those held only to answer REFUSED included: one descriptor each, counted against the descriptor budget and the sandbox's share.",
    labels: [],
  },
  dnsTcpRefused: {
    name: 'egressd_dns_tcp_connections_refused_total',
    type: 'counter',
    help: "TCP connections to the DNS listener refused at accept (their first query answered REFUSED, or reset when no descriptor was left even for that), by scope: sandbox (dns.limits.tcpPerSandbox, or the sandbox's share of the descriptor budget), total (dns.limits.tcpTotal) or budget (DNS's part of the descriptor budget).",
    labels: ['scope'],
  },
  dnsTcpShed: {
    name: 'egressd_dns_tcp_connections_shed_total',
    type: 'counter',
    help: "TCP connections to the DNS listener with no query waiting closed to make room for a new one at dns.limits.tcpTotal or DNS's part of the budget (RFC 7766 §6.2.3): the sandbox holding the most loses its oldest idle one, or an answered one when it holds two more than the newcomer's sandbox.",
    labels: [],
  },
  policyChanges: {
    name: 'egressd_policy_changes_total',
    type: 'counter',
    help: 'Policy changes applied, by source (api, config, state: made by another egressd process on the same state).',
    labels: ['source'],
  },
  policyChangesRefused: {
    name: 'egressd_policy_changes_refused_total',
    type: 'counter',
    help: 'Policy changes refused as invalid or conflicting, by source (api, config).',
    labels: ['source'],
  },
  configReloads: {
    name: 'egressd_config_reloads_total',
    type: 'counter',
    help: 'Configuration reloads (SIGHUP), by result (ok, refused).',
    labels: ['result'],
    zeroed: [{ result: 'ok' }, { result: 'refused' }],
  },
  closedByPolicyChange: {
    name: 'egressd_connections_closed_by_policy_change_total',
    type: 'counter',
    help: 'Open connections closed because a policy change refuses them.',
    labels: [],
  },
  policyHandoffsLate: {
    name: 'egressd_policy_handoffs_late_total',
    type: 'counter',
    help: 'Policy changes answered before every data-plane loop confirmed it had closed the connections they refuse (a loop silent for 1 s).',
    labels: [],
  },
  stateWriteFailures: {
    name: 'egressd_state_write_failures_total',
    type: 'counter',
    help: 'Policy changes refused (503) because the state could not be written, by errno (ENOSPC, EROFS, EACCES, EIO, EBUSY, ...).',
    labels: ['errno'],
    zeroed: ['ENOSPC', 'EROFS', 'EACCES', 'EIO', 'EBUSY', 'ENOMEM'].map((errno) => ({ errno })),
  },
  stateRejected: {
    name: 'egressd_state_rejected_total',
    type: 'counter',
    help: 'Times changes another egressd process wrote to the state were refused (an entry that fails validation, two sandboxes on one source, an unknown schema); changes are then refused until the state is whole.',
    labels: [],
  },
  stateEntries: {
    name: 'egressd_state_entries',
    type: 'gauge',
    help: 'Sandboxes and organizations restored from the state at start-up.',
    labels: [],
  },
  acceptErrors: {
    name: 'egressd_accept_errors_total',
    type: 'counter',
    help: 'accept(2) failures on the listeners, by errno (EMFILE, ENFILE, ...): connections the kernel could not hand over.',
    labels: ['code'],
  },
  acceptPauses: {
    name: 'egressd_accept_pauses_total',
    type: 'counter',
    help: 'Times a native loop stopped accepting, by reason: cap (it held its cap of accepted connections not yet admitted, sized from the descriptor budget: the kernel queue holds the rest until an admission frees a slot) or descriptors (accept(2) failed with EMFILE/ENFILE and no reserve descriptor was left, or with ENOBUFS/ENOMEM: paused 100 ms). Absent on the JS data path.',
    labels: ['reason'],
  },
  limitDescriptors: {
    name: 'egressd_limit_descriptors',
    type: 'gauge',
    help: 'RLIMIT_NOFILE in force, by kind (soft: raised to the hard limit at start; hard).',
    labels: ['kind'],
  },
  openDescriptors: {
    name: 'egressd_open_descriptors',
    type: 'gauge',
    help: 'Descriptors the process has open now.',
    labels: [],
  },
  limitConnections: {
    name: 'egressd_limit_connections',
    type: 'gauge',
    help: 'Connections egressd may hold, by scope: global (the descriptor budget: RLIMIT_NOFILE minus the reserve, two per connection) and sandbox_share (what one sandbox may hold of it).',
    labels: ['scope'],
  },
  admittedConnections: {
    name: 'egressd_admitted_connections',
    type: 'gauge',
    help: 'Connections admitted and not yet closed, all sandboxes, by state (open: all of them; undecided: still being peeked; lingering: refused, still read after the answer, one descriptor each and not among open).',
    labels: ['state'],
  },
  dialAttemptsExtra: {
    name: 'egressd_dial_attempts_extra',
    type: 'gauge',
    help: "Dial attempts in flight past their connection's first (RFC 8305 staggered attempts to a name's several addresses), one descriptor each, counted against the descriptor budget and the sandbox's share.",
    labels: [],
  },
  dialAttemptsWithheld: {
    name: 'egressd_dial_attempts_withheld_total',
    type: 'counter',
    help: "Dial attempts past the first that dials asked for and were not granted, the descriptor budget or their sandbox's share having no room: their addresses were tried fewer at a time.",
    labels: [],
  },
  refusalLingersGivenUp: {
    name: 'egressd_refusal_lingers_given_up_total',
    type: 'counter',
    help: "Refused connections closed right after their answer instead of lingering, because lingering refusals already held half the descriptors of their sandbox's share of the budget (sandbox) or of the whole budget (global).",
    labels: ['scope'],
  },
  logLinesDropped: {
    name: 'egressd_log_lines_dropped_total',
    type: 'counter',
    help: 'Log lines dropped because the log destination had not taken the 16 MiB already waiting for it (journald, a full pipe, a slow disk); told on a log-lines-dropped line once it takes lines again.',
    labels: [],
  },
  memoryPressure: {
    name: 'egressd_memory_pressure_ratio',
    type: 'gauge',
    help: 'The highest memory pressure (used / limit) of the cgroup working set, RSS and V8 heap monitors.',
    labels: [],
  },
  memoryLimit: {
    name: 'egressd_memory_limit_bytes',
    type: 'gauge',
    help: 'The tightest cgroup memory.max above egressd (absent without one).',
    labels: [],
  },
  conntrackEntries: {
    name: 'egressd_conntrack_entries',
    type: 'gauge',
    help: "Entries in the connection-tracking table of egressd's network namespace (nf_conntrack_count), as node_exporter's node_nf_conntrack_entries: in host mode the host's table, where each redirected connection and each of egressd's dials holds one, 120 s past its close. Absent without conntrack.",
    labels: [],
  },
  conntrackEntriesLimit: {
    name: 'egressd_conntrack_entries_limit',
    type: 'gauge',
    help: "The entries the connection-tracking table may hold (nf_conntrack_max); when full, the kernel drops new connections' packets, every sandbox's. Absent without conntrack.",
    labels: [],
  },
  overloaded: {
    name: 'egressd_overloaded',
    type: 'gauge',
    help: 'Whether new connections are being shed, by resource (memory, descriptors): 1 yes, 0 no.',
    labels: ['resource'],
  },
} as const satisfies Record<string, MetricSpec>;

export type MetricKey = keyof typeof METRICS;
type LabelOf<S> = S extends { readonly labels: readonly (infer L extends string)[] } ? L : never;
type InstrumentOf<S extends MetricSpec> = S['type'] extends 'counter'
  ? Counter<LabelOf<S>>
  : S['type'] extends 'gauge'
    ? Gauge<LabelOf<S>>
    : Histogram<LabelOf<S>>;
/** The prom-client instrument of each row of METRICS, under the row's key. */
export type Instruments = { readonly [K in MetricKey]: InstrumentOf<(typeof METRICS)[K]> };

/** Values read only when someone scrapes: they cost nothing between scrapes. */
export interface ScrapeSources {
  readonly limits: () => LimitsSnapshot | null;
  readonly remembered: () => number;
  /** The DNS caches' estimated bytes (dns/cache.ts, net/dns-cache.ts), or null before they exist. */
  readonly dnsCacheBytes: () => { readonly answers: number; readonly addresses: number } | null;
  readonly registered: () => { readonly sandboxes: number; readonly organizations: number } | null;
  readonly dataPlane: () => 'native' | 'js';
  /** The native loops' accept pauses so far (native-setup.ts), or null on the JS path. */
  readonly acceptPauses: () => { readonly cap: number; readonly descriptors: number } | null;
  /** The log lines dropped so far (observability/logger.ts logLinesDropped). */
  readonly logLinesDropped: () => number;
  /** The connection-tracking table of egressd's namespace (observability/conntrack.ts), or null without one. */
  readonly conntrack: () => ConntrackTable | null;
}

const LISTENERS: readonly ListenerKind[] = ['http', 'tls', 'tcp'];
/** Outcomes counted together once this many wait... */
const OUTCOME_BATCH = 128;
/** ...or this long after the first of them, whichever comes first. */
const OUTCOME_FLUSH_MS = 100;

export class Metrics {
  readonly registry = new prom.Registry();
  /** Every egressd metric, as declared in METRICS. */
  readonly instruments: Instruments;
  readonly #sandboxLabel: boolean;
  #sources: ScrapeSources = {
    limits: () => null,
    remembered: () => 0,
    dnsCacheBytes: () => null,
    registered: () => null,
    dataPlane: () => 'js',
    acceptPauses: () => null,
    logLinesDropped: () => 0,
    conntrack: () => readConntrackTable(),
  };
  /** Accepts and outcomes not yet counted (see `outcome`). */
  readonly #acceptedNow: Record<ListenerKind, number> = { http: 0, tls: 0, tcp: 0 };
  #outcomes: Readonly<ConnectionOutcome>[] = [];
  #dnsCacheHitsNow = 0;
  readonly #dnsLookupsNow = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;
  /** The event loop's delay (nodejs_eventloop_lag_*), sampled while connections come (see #later). */
  readonly loopDelay = new LoopDelay();

  constructor(opts: MetricsOptions = { sandboxLabel: false }) {
    this.#sandboxLabel = opts.sandboxLabel;
    registerDefaultMetrics(this.registry, this.loopDelay);
    const src = (): ScrapeSources => this.#sources;
    const setIf = (g: Gauge<string>, labels: Record<string, string>, v: number | null | undefined): void => {
      if (v !== null && v !== undefined) g.set(labels, v);
    };
    // A label-less gauge starts at 0 (prom-client): removing its one sample leaves it absent, as
    // node_exporter's are where conntrack is not loaded; 0 would read as an empty table.
    const setOrAbsent = (g: Gauge<string>, v: number | undefined): void => {
      if (v === undefined) g.remove({});
      else g.set(v);
    };
    // The pauses counted in C, read at scrape time: the counter moves by what they grew since.
    const pausesSeen = { cap: 0, descriptors: 0 };
    let droppedSeen = 0;
    // The instruments that are read at scrape time, by key; each runs with the instrument it fills.
    const collect: Partial<Record<MetricKey, (g: Gauge<string>) => void>> = {
      buildInfo: (g) => {
        g.reset();
        g.set({ version: EGRESSD_VERSION, node_version: process.version, data_plane: src().dataPlane() }, 1);
      },
      sandboxes: (g) => setIf(g, {}, src().registered()?.sandboxes),
      organizations: (g) => setIf(g, {}, src().registered()?.organizations),
      dnsRememberedAddresses: (g) => g.set(src().remembered()),
      dnsCacheBytes: (g) => {
        const b = src().dnsCacheBytes();
        setIf(g, { cache: 'answers' }, b?.answers);
        setIf(g, { cache: 'addresses' }, b?.addresses);
      },
      limitDescriptors: (g) => {
        const s = src().limits();
        setIf(g, { kind: 'soft' }, s?.nofileSoft);
        setIf(g, { kind: 'hard' }, s?.nofileHard);
      },
      openDescriptors: (g) => setIf(g, {}, src().limits()?.openDescriptors),
      limitConnections: (g) => {
        const s = src().limits();
        setIf(g, { scope: 'global' }, s?.globalConnections);
        setIf(g, { scope: 'sandbox_share' }, s?.sandboxShare);
      },
      admittedConnections: (g) => {
        const s = src().limits();
        setIf(g, { state: 'open' }, s?.open);
        setIf(g, { state: 'undecided' }, s?.undecided);
        setIf(g, { state: 'lingering' }, s?.lingering);
      },
      dialAttemptsExtra: (g) => setIf(g, {}, src().limits()?.dialAttempts),
      dnsTcpConnections: (g) => setIf(g, {}, src().limits()?.dnsTcp),
      acceptPauses: (g) => {
        const p = src().acceptPauses();
        if (!p) return;
        const c = g as unknown as Counter<string>;
        for (const reason of ['cap', 'descriptors'] as const) {
          if (p[reason] > pausesSeen[reason]) c.inc({ reason }, p[reason] - pausesSeen[reason]);
          else c.inc({ reason }, 0);
          pausesSeen[reason] = p[reason];
        }
      },
      logLinesDropped: (g) => {
        const n = src().logLinesDropped();
        (g as unknown as Counter<string>).inc(Math.max(0, n - droppedSeen));
        droppedSeen = Math.max(droppedSeen, n);
      },
      memoryPressure: (g) => setIf(g, {}, src().limits()?.memoryPressure),
      memoryLimit: (g) => setOrAbsent(g, src().limits()?.memoryLimitBytes ?? undefined),
      conntrackEntries: (g) => setOrAbsent(g, src().conntrack()?.entries),
      conntrackEntriesLimit: (g) => setOrAbsent(g, src().conntrack()?.limit),
      overloaded: (g) => {
        const s = src().limits();
        if (!s) return;
        g.set({ resource: 'memory' }, s.overloaded.memory ? 1 : 0);
        g.set({ resource: 'descriptors' }, s.overloaded.descriptors ? 1 : 0);
      },
    };
    const made: Record<string, Counter<string> | Gauge<string> | Histogram<string>> = {};
    for (const [key, spec] of Object.entries(METRICS) as [MetricKey, MetricSpec][]) {
      made[key] = instrument(spec, this.registry, opts.sandboxLabel, collect[key]);
      for (const labels of spec.zeroed ?? []) (made[key] as Counter<string>).inc(labels, 0);
    }
    this.instruments = made as unknown as Instruments;
    for (const l of ['http', 'tls', 'tcp'] as const) this.instruments.activeConnections.set({ listener: l }, 0);
  }

  /** Where the scrape-time gauges read from (the daemon's limits, DNS memory, control plane and data plane). */
  attach(sources: Partial<ScrapeSources>): void {
    this.#sources = { ...this.#sources, ...sources };
  }

  /** Where the limits' gauges read from (the daemon's limits controller). */
  attachLimits(snapshot: () => LimitsSnapshot): void {
    this.attach({ limits: snapshot });
  }

  /**
   * One connection accepted. Counted, as the outcomes are, in a batch (see `outcome`): the open
   * connections' gauge moves by the batch's accepts less its outcomes.
   */
  accepted(listener: ListenerKind): void {
    this.#acceptedNow[listener]++;
    this.#later();
  }

  /**
   * Records one finished connection: the outcome is the single source of every count. Counted in
   * a batch, all in one tight loop, once OUTCOME_BATCH wait or OUTCOME_FLUSH_MS after the first,
   * and always before the metrics are read (render, flush): a scrape sees every connection ended
   * before it, and no label set is looked up per connection on the connection's own time.
   */
  outcome(o: Readonly<ConnectionOutcome>): void {
    this.#outcomes.push(o);
    if (this.#outcomes.length >= OUTCOME_BATCH) this.flush();
    else this.#later();
  }

  /** Counts what waits (accepts, outcomes, upstream lookups), now. */
  flush(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    const a = this.#acceptedNow;
    for (const listener of LISTENERS) {
      if (a[listener] > 0) this.instruments.activeConnections.inc({ listener }, a[listener]);
      a[listener] = 0;
    }
    if (this.#dnsCacheHitsNow > 0) this.instruments.dnsCacheHits.inc(this.#dnsCacheHitsNow);
    this.#dnsCacheHitsNow = 0;
    for (const [outcome, n] of this.#dnsLookupsNow) {
      this.instruments.dnsLookups.inc({ outcome }, n);
      if (outcome !== 'ok') this.instruments.dnsFailures.inc({ cause: outcome }, n);
    }
    this.#dnsLookupsNow.clear();
    const outcomes = this.#outcomes;
    this.#outcomes = [];
    if (outcomes.length > 0) this.#count(outcomes);
  }

  /**
   * The connection-duration histogram's series for a listener and verdict, made once (a label
   * object per observation was most of what counting a connection allocated; prom-client keeps the
   * object it first saw for a label set, and never changes it), and observed as HistogramSeries says.
   */
  #durationSeries(listener: ListenerKind, verdict: ConnectionOutcome['verdict']): HistogramSeries {
    const byVerdict = (this.#durationSeriesSets[listener] ??= {});
    return (byVerdict[verdict] ??= new HistogramSeries(this.instruments.connectionDuration, Object.freeze({ listener, verdict })));
  }

  readonly #durationSeriesSets: Partial<Record<ListenerKind, Partial<Record<ConnectionOutcome['verdict'], HistogramSeries>>>> = {};
  /** The peek-duration histogram's series of each listener, and the connect-duration one's (see #durationSeries). */
  readonly #peekSeries: Partial<Record<ListenerKind, HistogramSeries>> = {};
  #connectSeries: HistogramSeries | undefined;

  #later(): void {
    if (this.#timer !== null) return;
    this.#timer = setTimeout(this.#due, OUTCOME_FLUSH_MS).unref();
    // A batch begins: egressd is serving, so the loop's delay is worth sampling (at most once per batch).
    this.loopDelay.busy();
  }

  readonly #due = (): void => {
    this.#timer = null;
    this.flush();
  };

  /**
   * Counts a batch of outcomes: each counter moved once per label set the batch holds (prom-client
   * looks a label set up at every call), each histogram observed per connection.
   */
  #count(outcomes: readonly Readonly<ConnectionOutcome>[]): void {
    const m = this.instruments;
    const ended: Record<ListenerKind, number> = { http: 0, tls: 0, tcp: 0 };
    const connections = new Map<string, { labels: Record<string, string>; n: number }>();
    const failures = new Map<string, number>();
    const hits = new Map<string, { labels: Record<string, string>; n: number }>();
    let up = 0;
    let down = 0;
    let closedByPolicy = 0;
    for (const o of outcomes) {
      ended[o.listener]++;
      const sandbox = this.#sandboxLabel ? (o.sandbox ?? '') : '';
      const key = `${o.listener}\u0000${o.verdict}\u0000${o.reason}\u0000${o.endedBy}\u0000${sandbox}`;
      const c = connections.get(key);
      if (c !== undefined) c.n++;
      else {
        const labels: Record<string, string> = { listener: o.listener, verdict: o.verdict, reason: o.reason, ended_by: o.endedBy };
        if (this.#sandboxLabel) labels['sandbox'] = sandbox;
        connections.set(key, { labels, n: 1 });
      }
      this.#durationSeries(o.listener, o.verdict).observe(o.durationMs / 1000);
      if (o.bytesUp > 0) up += o.bytesUp;
      if (o.bytesDown > 0) down += o.bytesDown;
      if (o.peekMs !== undefined) (this.#peekSeries[o.listener] ??= new HistogramSeries(m.peekDuration, PEEK_LABELS[o.listener])).observe(o.peekMs / 1000);
      if (o.connectMs !== undefined) (this.#connectSeries ??= new HistogramSeries(m.connectDuration, {})).observe(o.connectMs / 1000);
      if (o.dialFailure !== undefined) failures.set(o.dialFailure, (failures.get(o.dialFailure) ?? 0) + 1);
      if (o.reason === 'policy-changed') closedByPolicy++;
      const d = o.decided;
      if (d !== undefined) {
        // Bounded: five layers, three verdicts, and the overlay names the operator wrote.
        const layer = d.reason === 'protected-address' ? 'protected' : d.layer;
        const rule = d.overlay?.name ?? '';
        const k = `${layer}\u0000${d.verdict}\u0000${rule}`;
        const h = hits.get(k);
        if (h !== undefined) h.n++;
        else hits.set(k, { labels: { layer, verdict: d.verdict, rule }, n: 1 });
      }
    }
    for (const listener of LISTENERS) if (ended[listener] > 0) m.activeConnections.dec({ listener }, ended[listener]);
    for (const c of connections.values()) m.connections.inc(c.labels, c.n);
    if (up > 0) m.bytes.inc({ direction: 'up' }, up);
    if (down > 0) m.bytes.inc({ direction: 'down' }, down);
    for (const [cause, n] of failures) m.connectFailures.inc({ cause }, n);
    if (closedByPolicy > 0) m.closedByPolicyChange.inc(closedByPolicy);
    for (const h of hits.values()) m.ruleHits.inc(h.labels, h.n);
  }

  /** A connection refused at accept by admission control (it has no outcome record). */
  shed(listener: ListenerKind, reason: 'sandbox-limit' | 'global-limit' | 'overload', sandbox: string | null): void {
    // Shed at accept for capacity: egressd's own doing, not a policy's.
    const labels: Record<string, string> = { listener, verdict: 'refuse', reason, ended_by: 'egressd' };
    if (this.#sandboxLabel) labels['sandbox'] = sandbox ?? '';
    this.instruments.connections.inc(labels);
  }

  /** One lookup of the upstream resolver (one per connection that carries a name): counted with the outcomes' batch. */
  dnsLookup(e: { cached: boolean; outcome: string }): void {
    if (e.cached) this.#dnsCacheHitsNow++;
    this.#dnsLookupsNow.set(e.outcome, (this.#dnsLookupsNow.get(e.outcome) ?? 0) + 1);
    this.#later();
  }

  dnsQuery(e: { verdict: string; type: string; cached: boolean; upstreamMs?: number }): void {
    this.instruments.dnsQueries.inc({ verdict: e.verdict, type: e.type });
    if (e.cached) this.instruments.dnsAnswerCacheHits.inc();
    if (e.upstreamMs !== undefined) this.instruments.dnsUpstreamDuration.observe(e.upstreamMs / 1000);
  }

  /** Where the remembered-address gauge reads its value at scrape time. */
  dnsRemembered(read: () => { total: number }): void {
    this.attach({ remembered: () => read().total });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    this.flush();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** The prom-client instrument for one row of METRICS, registered in `registry`. */
function instrument(
  spec: MetricSpec,
  registry: Registry,
  sandboxLabel: boolean,
  collect: ((g: Gauge<string>) => void) | undefined,
): Counter<string> | Gauge<string> | Histogram<string> {
  const labelNames = spec.sandboxLabel === true && sandboxLabel ? [...spec.labels, 'sandbox'] : [...spec.labels];
  const base = { name: spec.name, help: spec.help, labelNames, registers: [registry] };
  switch (spec.type) {
    case 'counter':
      return new prom.Counter(
        collect === undefined
          ? base
          : {
              ...base,
              collect() {
                collect(this as unknown as Gauge<string>);
              },
            },
      );
    case 'histogram':
      return new prom.Histogram({ ...base, buckets: [...(spec.buckets ?? SECONDS_BUCKETS)] });
    case 'gauge':
      return new prom.Gauge(
        collect === undefined
          ? base
          : {
              ...base,
              collect() {
                collect(this);
              },
            },
      );
  }
}
