// Wires one running egressd: configuration, the policy store and its control plane, the
// listeners, the resolver, the admin listener (health, API, metrics) and the logger. main.ts
// owns argv, signals and the exit code.

import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { AdminServer, type Readiness } from './admin/server.ts';
import { mountApi } from './admin/api.ts';
import type { Config } from './config/schema.ts';
import { policySettingsOf } from './config/policy-settings.ts';
import { deniedAlias, handleClient, type PipelineDeps } from './net/connection.ts';
import { SocketClient, type ClientSide } from './net/client-side.ts';
import { Listener } from './net/listener.ts';
import { nativeSetup, NativeListener, type NativeClient, type NativeSetup } from './net/native-setup.ts';
import { nativeSetupWanted, nativeSpliceStatus, syncNativeLoops } from './net/native-splice.ts';
import type { Ticket } from './limits/admission.ts';
import { nativeAddonStatus, originalDestination, reusePortBindable } from './net/original-dst.ts';
import type { ConnectionOutcome, OutcomeListener } from './net/outcome.ts';
import { HostAddresses, type HostAddressOptions } from './net/host-addresses.ts';
import { ConnectionRegistry, type RejudgeReason } from './net/registry.ts';
import { POOL_SIZE, QuerySockets, TCP_RETRIES } from './net/query-sockets.ts';
import { LATE_FAMILIES, NameResolver } from './net/resolve.ts';
import { logLinesDropped, type Logger } from './observability/logger.ts';
import { connectionLogger, logConnection } from './observability/connection-log.ts';
import type { OtlpExport } from './observability/otlp.ts';
import { Metrics } from './observability/metrics.ts';
import { verdict } from './policy/verdict.ts';
import { ControlPlane, type ChangeEvent, type SandboxRecord, type StateRejectedEvent, type WriteFailureEvent } from './control/control-plane.ts';
import { StateStore } from './control/state-store.ts';
import { PolicyStore } from './control/store.ts';
import { AnswerCache } from './dns/cache.ts';
import { DnsListener } from './dns/listener.ts';
import { DnsTcpConnections } from './dns/tcp-connections.ts';
import { ResolvedNames } from './dns/memory.ts';
import { heldQuery } from './dns/message.ts';
import { DnsService, type Transport } from './dns/service.ts';
import { Forwarder } from './dns/upstream.ts';
import { canonicalSource } from './match/ip.ts';
import { socketAddress } from './net/socket-address.ts';
import { LimitsController, type SourceLimits } from './limits/controller.ts';
import { tenantKeyOf, type TenantKeyOf } from './match/tenant-key.ts';
import { listenedOnElsewhere, portShareable } from './util/port-shared.ts';
import { PortsSharedError } from './errors.ts';

export type DaemonState = 'starting' | 'serving' | 'draining' | 'stopped';

/** What waits for the start in #early: a proxied connection, a DNS query over UDP, a DNS connection over TCP. */
type EarlyKind = 'connection' | 'dns-udp' | 'dns-tcp';

export interface DaemonOptions {
  /** Replaces SO_ORIGINAL_DST: loopback tests that run without iptables say where a socket was going. */
  readonly originalDst?: PipelineDeps['originalDst'];
  /**
   * Where connections are accepted and set up: `native` in the native loops (native-setup.ts),
   * `node` on Node's sockets. Default: EGRESSD_DATA_PLANE (native-setup) or node.
   */
  readonly setup?: 'native' | 'node';
  /**
   * Replaces os.networkInterfaces() for the host's own addresses (net/host-addresses.ts):
   * loopback tests make the host gain an address without changing the machine's.
   */
  readonly hostInterfaces?: HostAddressOptions['interfaces'];
  /**
   * `serve --share-ports`: start beside another process listening on the same endpoints even
   * without state.path (see start()). Default false.
   */
  readonly sharePorts?: boolean;
  /** The receive buffer each DNS UDP socket asks for (dns/listener.ts DNS_UDP_RECEIVE_BUFFER when absent): tests ask more than rmem_max. */
  readonly dnsUdpReceiveBuffer?: number;
}

/**
 * How long a policy change waits for every data-plane loop to confirm it closed the connections
 * the change refuses, before the API answers anyway (logged and counted as late). A loop answers
 * within one turn of its event loop; only one stuck in the kernel takes longer.
 */
const POLICY_HANDOFF_MS = 1000;
/**
 * The most connections and UDP queries held for the end of the start (#early); past it one is
 * refused (a connection reset, a query dropped, as all were before), unless a sandbox holds two
 * more than its own: then that sandbox's newest gives its place up.
 */
const EARLY_MAX = 1024;
/** A connection or query held in #early: its tenant key, what runs it once egressd serves, what refuses it. */
interface EarlyHeld {
  readonly key: string;
  readonly run: () => void;
  readonly refuse: () => void;
  readonly what: EarlyKind;
  /** Gave its place up to another sandbox's (#heldUntilServing): refused already, never run. */
  gone: boolean;
}
/** The least time between two `api-previous-token` lines. */
const PREVIOUS_TOKEN_LOG_MS = 60_000;
/** How often a stop's drain looks whether the native loops still have accepted connections to report. */
const UNDELIVERED_POLL_MS = 10;

export function configSandboxRecords(config: Config): SandboxRecord[] {
  return config.sandboxes.map((s) => ({
    id: s.id,
    sources: s.sources,
    org: s.org,
    network: s.networkBody,
    origin: 'config' as const,
    ...(s.limits !== null ? { limits: s.limits } : {}),
    ...(s.reportOnly ? { reportOnly: true } : {}),
  }));
}

export class Daemon {
  #config: Config;
  readonly log: Logger;
  readonly store: PolicyStore;
  readonly control: ControlPlane;
  readonly metrics: Metrics;
  readonly registry = new ConnectionRegistry();
  readonly resolver: NameResolver;
  /** The host's own addresses and egressd's listeners, which no policy reaches. */
  readonly host: HostAddresses;
  readonly listeners: (Listener | NativeListener)[] = [];
  /** The native loops that accept and set up connections (EGRESSD_DATA_PLANE=native-setup), or null: Node's listeners. */
  readonly nativeSetup: NativeSetup | null = null;
  /** The DNS listeners (`listen.dns`), answering the sandboxes' port 53. */
  readonly dnsListeners: DnsListener[] = [];
  readonly dnsCache: AnswerCache;
  readonly dnsMemory: ResolvedNames;
  readonly dnsForwarder: Forwarder;
  readonly #querySockets: QuerySockets;
  readonly dns: DnsService;
  readonly admin: AdminServer;
  readonly limits: LimitsController;
  readonly #outcomeListeners: OutcomeListener[] = [];
  readonly #originalDst: PipelineDeps['originalDst'];
  #state: DaemonState = 'starting';
  /**
   * Connections accepted after the listeners were bound and before egressd serves, each to be
   * run once it does (or reset, should the start fail). In a rollout the kernel shares new
   * connections with this process from its bind on (SO_REUSEPORT), while the start still awaits
   * the DNS listeners, the OTLP exporter and the host's listener ports: reset then, they met a
   * refusal the draining process beside it would not have given, and no log line or count said so.
   */
  readonly #early: EarlyHeld[] = [];
  /** The entries of #early each tenant key holds, oldest first (a flood gives up its newest). */
  readonly #earlyBy = new Map<string, EarlyHeld[]>();
  /** Entries of #early that gave their place up (and stay in it, unrun, until it is run). */
  #earlyGone = 0;
  /** Whose limits a source counts against (match/tenant-key.ts): #early is shared by it too. */
  readonly #tenantOf: TenantKeyOf;
  /**
   * The start under way (start()), which a stop waits for: a stop that comes meanwhile (SIGTERM
   * during a slow start: systemd stopping it, a rollout aborted) asks it to give up at its next
   * step (#stopAsked), then closes what it opened.
   */
  #starting: Promise<unknown> | null = null;
  #stopAsked = false;
  /**
   * Whether the start has bound the listeners and started the limits and the host's addresses:
   * from then on a connection can be judged, so a stop during the rest of the start drains what
   * was accepted as a stop after it would.
   */
  #canJudge = false;
  /**
   * Whether a stop's drain still takes connections the listeners accepted before they closed: a
   * native loop reports one once its first flight is read, after the stop began, and the drain
   * carries it as any open connection (reset unjudged, its client saw a reset a process beside
   * this one would not have given). False once the drain is over.
   */
  #drainTakes = false;
  /** The calls that presented admin.previousToken since its last line, and when that was (#previousTokenUsed). */
  #previousTokenCalls = 0;
  #previousTokenLoggedAt = -Infinity;
  /** What every connection's pipeline is given (connection.ts): made once. */
  readonly #deps: PipelineDeps;
  /** The OTLP export (`metrics.otlp`), started only when an endpoint is set. */
  #otlp: OtlpExport | null = null;
  readonly #opts: DaemonOptions;

  constructor(config: Config, log: Logger, opts: DaemonOptions = {}) {
    this.#opts = opts;
    this.#config = config;
    this.log = log;
    this.#originalDst = opts.originalDst ?? originalDestination;
    this.metrics = new Metrics({ sandboxLabel: config.metrics.sandboxLabel });
    // A host address that appears or goes changes verdicts (decide step 1a): a dial connecting
    // after it is judged again, and an open connection to an address the host now holds is
    // closed as a policy change closes one (onPolicyChange), with its own reason.
    this.host = new HostAddresses({
      reachable: config.protected.reachableHostAddresses,
      ...(opts.hostInterfaces ? { interfaces: opts.hostInterfaces } : {}),
      onChange: () => {
        this.nativeSetup?.policyChanged();
        // The first read, inside this constructor, finds no connection to re-judge yet.
        if (this.#state === 'serving' || this.#state === 'draining') this.#rejudge('host-address-changed');
      },
    });
    // The settings `egressd decide --config` judges with too; the host's own addresses beside them.
    this.store = new PolicyStore({ ...policySettingsOf(config), host: this.host }, config.defaultNetwork);
    const state = config.state.path === null ? null : new StateStore(config.state.path);
    state?.onWatch((watching, message) => {
      if (watching) this.log.warn({ event: { action: 'state-watch-restored' }, path: state.path }, 'the state is watched again');
      else
        this.log.warn(
          { event: { action: 'state-watch-failed' }, path: state.path, reason: message },
          "cannot watch the state's write-ahead log: following other processes on it by polling every 100 ms",
        );
    });
    this.control = new ControlPlane(this.store, state);
    this.control.onChange((e) => this.#onPolicyChange(e));
    this.control.onWriteFailure((e) => this.#onStateWriteFailure(e));
    this.control.onStateRejected((e) => this.#onStateRejected(e));
    // The forwarder's pool of query sockets and both's places for TCP retries (net/query-sockets.ts),
    // taken from the reserve: at most half of it per address family (the servers are usually of
    // one) and an eighth for TCP retries; another eighth for the settled lookups of dialed names
    // still listening for their other family, which no connection's admission counts any more.
    const reserve = config.limits.global.reserveDescriptors;
    this.#querySockets = new QuerySockets({
      size: Math.max(4, Math.min(POOL_SIZE, Math.floor(reserve / 2))),
      tcpMax: Math.max(2, Math.min(TCP_RETRIES, Math.floor(reserve / 8))),
      onTcpHeldBack: (why) => this.metrics.instruments.dnsTcpRetriesHeldBack.inc({ scope: why }),
      onTcpJoined: () => this.metrics.instruments.dnsTcpRetriesJoined.inc(),
    });
    this.resolver = new NameResolver({
      servers: [...config.dns.servers],
      timeoutMs: config.dns.timeoutMs,
      maxEntries: config.dns.cacheEntries,
      maxBytes: config.dns.cacheBytes,
      onLookup: (e) => this.metrics.dnsLookup(e),
      sockets: this.#querySockets,
      lateFamilies: Math.max(2, Math.min(LATE_FAMILIES, Math.floor(reserve / 8))),
    });
    this.dnsMemory = new ResolvedNames(config.dns.memory);
    this.dnsCache = new AnswerCache({ maxEntries: config.dns.cacheEntries, maxBytes: config.dns.cacheBytes });
    this.dnsForwarder = new Forwarder({ servers: config.dns.servers, timeoutMs: config.dns.timeoutMs, sockets: this.#querySockets });
    // Whose limits a source's connections and queries count against: one key function for every
    // limit (admission, the DNS listener's, the lookups of dialed names), fixed at start.
    const tenantOf = tenantKeyOf(config.limits.unknownSourcePrefix);
    this.#tenantOf = tenantOf;
    this.dns = new DnsService({
      config: () => this.#config,
      tenantOf,
      policies: this.store,
      forwarder: this.dnsForwarder,
      cache: this.dnsCache,
      addresses: this.resolver.cache,
      memory: this.dnsMemory,
      log,
      onQuery: (e) => this.metrics.dnsQuery(e),
      onLinesSuppressed: (reason, n) => this.metrics.instruments.dnsQueryLinesSuppressed.inc({ reason }, n),
    });
    // tcpPerSandbox and tcpTotal count every listener's connections together (v4 and v6 by default).
    const dnsTcp = new DnsTcpConnections();
    for (const ep of config.listen.dns) {
      this.dnsListeners.push(
        new DnsListener(ep, {
          // A query that comes before egressd serves waits for it (#early), as a connection does.
          answer: (msg, source, transport) =>
            this.#state === 'serving' ? this.dns.answer(msg, source, transport) : this.#answerOnceServing(heldQuery(msg), source, transport),
          keyOf: (source) => tenantOf(this.store.lookup(source).sandbox, source),
          tcpPerSandbox: config.dns.limits.tcpPerSandbox,
          // Each connection a descriptor of the budget, as a proxied connection's are.
          takeTcp: (source, refusing) => this.limits.dnsTcp(source, this.#config.dns.limits.tcpTotal, refusing),
          onTcpRefused: (source, why, reset) => {
            this.metrics.dnsQuery({ verdict: 'tcp-limited', type: 'other', cached: false });
            this.limits.dnsTcpRefused(source, why, reset);
          },
          onTcpShed: () => this.metrics.instruments.dnsTcpShed.inc(),
          onTcpMalformed: () => this.metrics.dnsQuery({ verdict: 'malformed', type: 'other', cached: false }),
          tcpConnections: dnsTcp,
          // Until serving, as the proxy listeners: before the limits start none would count it.
          // One accepted sooner waits for the start (#early), as a proxied connection does.
          accepting: () => this.#state === 'serving',
          ...(opts.dnsUdpReceiveBuffer !== undefined ? { udpReceiveBuffer: opts.dnsUdpReceiveBuffer } : {}),
          holdUntilAccepting: (source, run, refuse) => this.#heldUntilServing(source, run, refuse, 'dns-tcp'),
        }),
      );
    }
    this.metrics.attach({
      remembered: () => this.dnsMemory.total,
      dnsCacheBytes: () => ({ answers: this.dnsCache.bytes, addresses: this.resolver.cache.bytes }),
      registered: () => ({ sandboxes: this.store.sandboxCount, organizations: this.control.orgCount }),
      dataPlane: () => (nativeSpliceStatus().ok ? 'native' : 'js'),
      acceptPauses: () => this.nativeSetup?.acceptPauses() ?? null,
      logLinesDropped: () => logLinesDropped(log),
    });
    this.limits = new LimitsController(
      () => this.#config.limits,
      log,
      this.metrics,
      (source) => this.sourceLimits(source),
      tenantOf,
    );
    this.#deps = {
      config: () => this.#config,
      policies: this.store,
      resolver: this.resolver,
      registry: this.registry,
      dnsMemory: this.dnsMemory,
      tenantOf,
      originalDst: this.#originalDst,
      emit: (o) => this.#emit(o),
    };
    const onConnection = (socket: Socket, kind: Listener['kind']): void => this.#accept(socket, kind);
    const onAcceptError = (err: NodeJS.ErrnoException, kind: Listener['kind']): void => this.limits.acceptError(err, kind);
    const setup = (opts.setup ?? (nativeSetupWanted() ? 'native' : 'node')) === 'native' ? nativeSetup() : null;
    if (setup?.ok) this.nativeSetup = setup.plane;
    else if (setup) log.warn({ event: { action: 'native-setup-unavailable' }, reason: setup.reason }, 'connections are set up on Node sockets');
    const native = {
      onAccept: (c: NativeClient, kind: Listener['kind']) => this.#acceptNative(c, kind),
      onShed: (kind: Listener['kind'], source: string, code: string) => this.limits.shedAtAccept(kind, source, code),
      originalDst: opts.originalDst,
      peek: () => this.#config.peek,
    };
    for (const kind of ['http', 'tls', 'tcp'] as const) {
      for (const ep of config.listen[kind]) {
        this.listeners.push(this.nativeSetup ? new NativeListener(kind, ep, this.nativeSetup, native) : new Listener(kind, ep, onConnection, onAcceptError));
      }
    }
    this.admin = new AdminServer(config.admin.listen, () => this.readiness());
    this.admin.route({
      method: 'GET',
      path: /^\/metrics$/,
      handler: async (_q, res) => {
        const m = await this.metrics.render();
        res.writeHead(200, { 'content-type': m.contentType, 'cache-control': 'no-store' });
        res.end(m.body);
      },
    });
    mountApi(this.admin, this.control, {
      connections: (id) => {
        const r = this.control.sandbox(id);
        const org = r?.org ? this.control.orgRecord(r.org) : undefined;
        return this.limits.sandboxView(id, { sandbox: id, sandboxLimits: r?.limits, orgLimits: org?.limits });
      },
      top: () => ({ ...this.limits.snapshot(), top: this.limits.top() }),
      token: () => this.#config.admin.token,
      previousToken: () => this.#config.admin.previousToken,
      onPreviousToken: (source) => this.#previousTokenUsed(source),
      maxBodyBytes: config.admin.maxBodyBytes,
      onRefused: () => this.metrics.instruments.policyChangesRefused.inc({ source: 'api' }),
      dnsMemory: this.dnsMemory,
    });
    this.onOutcome((o) => this.metrics.outcome(o));
    const connections = connectionLogger(log);
    this.onOutcome((o) => logConnection(connections, o));
  }

  get config(): Config {
    return this.#config;
  }

  get state(): DaemonState {
    return this.#state;
  }

  onOutcome(l: OutcomeListener): void {
    this.#outcomeListeners.push(l);
  }

  readiness(): Readiness {
    if (this.#state !== 'serving') return { ready: false, reason: `Daemon is ${this.#state}` };
    const down = [...this.listeners, ...this.dnsListeners].find((l) => l.status.state !== 'listening');
    if (down) return { ready: false, reason: `Listener ${down.kind} ${down.endpoint.text} is ${down.status.state}` };
    const addon = nativeAddonStatus();
    if (!addon.ok) return { ready: false, reason: addon.reason };
    // Shedding load is working as designed: still ready (a restart would cut every open
    // connection), with the reason for whoever looks.
    const overloaded = this.limits.overloadReason();
    // Still ready: a setting of the host that loses connections in a rolling restart is said, not a reason to take none.
    const warnings = this.limits.hostWarnings;
    return { ready: true, ...(overloaded !== null ? { overloaded } : {}), ...(warnings.length > 0 ? { warnings } : {}) };
  }

  /** The sandbox a source address belongs to and the limits its record and organization set. */
  sourceLimits(source: string): SourceLimits {
    const id = this.store.ownerOf(source);
    if (id === null) return { sandbox: null };
    const r = this.control.sandbox(id);
    const org = r?.org ? this.control.orgRecord(r.org) : undefined;
    return { sandbox: id, sandboxLimits: r?.limits, orgLimits: org?.limits };
  }

  /**
   * Loads the state, binds every listener and serves: 'serving'. 'stopped' when a stop came
   * while it started (stop() then closes what it had opened); throws when it could not start,
   * with everything it opened closed.
   */
  async start(): Promise<'serving' | 'stopped'> {
    const run = this.#start();
    this.#starting = run.catch(() => {});
    try {
      return await run;
    } finally {
      this.#starting = null;
    }
  }

  async #start(): Promise<'serving' | 'stopped'> {
    const addon = nativeAddonStatus();
    if (!addon.ok) throw new Error(addon.reason);
    const loadStart = performance.now();
    const loadCpu = process.cpuUsage();
    const loaded = await this.control.load(configSandboxRecords(this.#config));
    if (this.#stopAsked) return 'stopped';
    const stateLoadMs = Math.round(performance.now() - loadStart);
    // CPU time too: on a shared machine the wall time says more about the neighbours.
    const cpu = process.cpuUsage(loadCpu);
    const stateLoadCpuMs = Math.round((cpu.user + cpu.system) / 1000);
    const statePath = this.#config.state.path;
    if (loaded.migratedTo !== null) {
      this.log.warn(
        { event: { action: 'state-migrated' }, path: statePath, keptAs: loaded.migratedTo, sandboxes: loaded.loaded, orgs: loaded.orgs },
        'converted the version-1 JSON state to the SQLite state; the old file is kept',
      );
    }
    if (loaded.created) {
      // Visible on purpose: a mistyped state.path starts empty, and this line is how one notices.
      this.log.warn({ event: { action: 'state-created' }, path: statePath }, 'no state at state.path: created a new, empty one');
    }
    if (loaded.readOnly) {
      this.log.error(
        { event: { action: 'state-read-only' }, path: statePath },
        'the state folder is not writable: policies are served, every change will be refused with 503',
      );
    }
    this.metrics.instruments.stateEntries.set(loaded.loaded + loaded.orgs);
    // Looked at before binding: with SO_REUSEPORT our own bind succeeds beside another process's,
    // which then shares the connections and API calls (src/util/port-shared.ts).
    const endpoints = [
      { kind: 'admin', endpoint: this.#config.admin.listen },
      ...this.listeners.map((l) => ({ kind: l.kind, endpoint: l.endpoint })),
      ...this.dnsListeners.map((l) => ({ kind: 'dns', endpoint: l.endpoint })),
    ];
    const elsewhere = await Promise.all(endpoints.map((e) => listenedOnElsewhere(e.endpoint.host, e.endpoint.port)));
    const held = endpoints.filter((_, i) => elsewhere[i]);
    const shared = held.map((e) => `${e.kind} ${e.endpoint.text}`);
    // Sharing is consistent only through the state: with state.path, every process on it applies
    // the others' API changes (docs/config.md "Several processes on one state"), which is the
    // documented rollout. Without it, each process holds the API changes that happened to reach
    // it, so the same source is judged by different sandboxes depending on which process the
    // kernel hands its connection to, and no later call can fix that (the API port is shared
    // too). That is a second egressd started by mistake far more often than a rollout of a
    // deployment that does not use the API, which says so with --share-ports.
    if (held.length > 0 && this.#config.state.path === null && this.#opts.sharePorts !== true) {
      // Only a holder that would let this process bind beside it shares; any other makes the
      // bind below fail with EADDRINUSE, in its own words (another service on port 9901).
      // Asked by bind(2) alone where the addon can: a trial listener would take some of the
      // holder's new connections and reset them as it closes (util/port-shared.ts).
      const joinable = await Promise.all(
        held.map(async (e) => reusePortBindable(e.endpoint.host, e.endpoint.port) ?? portShareable(e.endpoint.host, e.endpoint.port)),
      );
      const sharing = held.filter((_, i) => joinable[i]).map((e) => `${e.kind} ${e.endpoint.text}`);
      if (sharing.length > 0) {
        await this.#stop(0, { quiet: true });
        throw new PortsSharedError(sharing);
      }
    }
    if (this.#stopAsked) return 'stopped';
    try {
      await this.admin.listen();
      if (this.#stopAsked) return 'stopped';
      await Promise.all([...this.listeners.map((l) => l.listen()), ...this.dnsListeners.map((l) => l.listen())]);
    } catch (err) {
      // Closes what did start, without a "stopped" line: the caller logs start-failed.
      await this.#stop(0, { quiet: true });
      throw err;
    }
    // Every bound port is known only now (port 0 in tests picks one).
    this.host.setListeners([
      ...this.listeners.map((l) => ({ host: l.endpoint.host, port: l.port ?? l.endpoint.port })),
      ...this.dnsListeners.map((l) => ({ host: l.endpoint.host, port: l.port ?? l.endpoint.port })),
      { host: this.#config.admin.listen.host, port: this.admin.port ?? this.#config.admin.listen.port },
    ]);
    this.host.start();
    this.#checkDnsReceiveBuffer();
    this.limits.start(this.nativeSetup?.threads ?? 0);
    // The loops accept no more than the descriptor budget leaves room for (native-setup.ts).
    const slots = this.limits.acceptSlotsPerLoop;
    if (slots !== null) this.nativeSetup?.setAcceptCap(slots);
    this.#canJudge = true;
    if (this.#stopAsked) return 'stopped';
    const otlp = this.#config.metrics.otlp;
    if (otlp.endpoint !== null) {
      // Loaded only when asked for: the OpenTelemetry SDK stays out of memory otherwise (issue 12's idle RSS).
      const { startOtlpExport } = await import('./observability/otlp.ts');
      this.#otlp = startOtlpExport(this.metrics, { endpoint: otlp.endpoint, intervalMs: otlp.intervalMs }, this.log);
    }
    if (this.#stopAsked) return 'stopped';
    this.#state = 'serving';
    this.log.info(
      {
        event: { action: 'started' },
        listeners: this.listeners.map((l) => ({ kind: l.kind, address: l.endpoint.host, port: l.port })),
        dnsListeners: this.dnsListeners.map((l) => ({ address: l.endpoint.host, port: l.port })),
        admin: this.config.admin.listen.text,
        adminPort: this.admin.port,
        // What a newcomer asks first: what happens to a source of no sandbox, and whether the
        // API answers at all (without a token every call is 401).
        defaultNetwork: this.#config.defaultNetwork.policy.mode,
        reportOnly: this.#config.reportOnly,
        api: this.#config.admin.token !== null ? 'enabled' : 'disabled: no admin.token or EGRESSD_ADMIN_TOKEN',
        sandboxes: this.store.sandboxCount,
        restored: loaded.loaded,
        state: statePath,
        stateLoadMs,
        stateLoadCpuMs,
        otlp: otlp.endpoint,
      },
      'egressd serving',
    );
    if (shared.length > 0) {
      this.log.warn(
        { event: { action: 'listener-shared' }, endpoints: shared },
        'another process already listened on these endpoints: the kernel shares new connections and admin API calls between it and this one (SO_REUSEPORT) until it stops; expected while a replacement starts beside a draining egressd, otherwise stop one of them',
      );
    }
    this.#runEarly();
    return 'serving';
  }

  /**
   * Replaces the running configuration's sandboxes (SIGHUP). The listeners, ports and admin
   * endpoint stay as they are; a config whose sandboxes are refused changes nothing.
   */
  async reload(next: Config): Promise<{ ok: true; sandboxes: number; needsRestart: string[] } | { ok: false; reason: string }> {
    const r = await this.control.replaceConfigSandboxes(configSandboxRecords(next));
    if (!r.ok) {
      this.metrics.instruments.configReloads.inc({ result: 'refused' });
      const e = r.error;
      return { ok: false, reason: e.kind === 'invalid' ? e.issues.map((i) => `${i.field}: ${i.reason}`).join('; ') : e.message };
    }
    // What is bound or compiled into every policy at start stays as it is until a restart; the
    // caller logs which of those keys changed, so an operator is never misled by a quiet reload.
    const before = this.#config;
    const same = (k: (c: Config) => unknown): boolean => JSON.stringify(k(before)) === JSON.stringify(k(next));
    const needsRestart = (
      [
        ['listen', (c: Config) => c.listen],
        ['admin.listen', (c: Config) => c.admin.listen],
        ['admin.maxBodyBytes', (c: Config) => c.admin.maxBodyBytes],
        ['protected', (c: Config) => c.protected],
        ['catalog', (c: Config) => c.catalog],
        ['dns', (c: Config) => c.dns],
        ['state', (c: Config) => c.state],
        ['metrics', (c: Config) => c.metrics],
        ['log', (c: Config) => c.log],
        ['limits.global', (c: Config) => c.limits.global],
        ['limits.memory', (c: Config) => c.limits.memory],
        ['limits.unknownSourcePrefix', (c: Config) => c.limits.unknownSourcePrefix],
      ] as const
    )
      .filter(([, k]) => !same(k))
      .map(([name]) => name);
    // Every key named there is kept as it started, not only those bound to a socket: half of a
    // change is a bound nobody configured (dns: a new tcpTotal read live beside the listeners' old
    // tcpPerSandbox; limits.memory: /readyz naming a new shedAt the guard does not use).
    this.#config = Object.freeze({
      ...next,
      listen: before.listen,
      admin: { ...next.admin, listen: before.admin.listen, maxBodyBytes: before.admin.maxBodyBytes },
      protected: before.protected,
      catalog: before.catalog,
      dns: before.dns,
      state: before.state,
      metrics: before.metrics,
      log: before.log,
      limits: { ...next.limits, global: before.limits.global, memory: before.limits.memory, unknownSourcePrefix: before.limits.unknownSourcePrefix },
    });
    // The native loops read the first flight under the peek's times themselves: they take the new ones.
    if (!same((c) => c.peek)) this.nativeSetup?.peekRulesChanged();
    let changed = false;
    if (!same((c) => c.defaultNetwork)) {
      this.store.setDefault(next.defaultNetwork);
      changed = true;
    }
    if (next.reportOnly !== this.store.reportOnly) {
      this.store.setReportOnly(next.reportOnly);
      changed = true;
    }
    if (!same((c) => c.overlays)) {
      this.store.setOverlays(next.overlays);
      changed = true;
    }
    // Turning report-only off closes what it let through (unless onPolicyChange: keep).
    if (changed) {
      this.nativeSetup?.policyChanged();
      this.#rejudge('policy-changed');
    }
    this.metrics.instruments.configReloads.inc({ result: 'ok' });
    return { ok: true, sandboxes: r.value, needsRestart };
  }

  /**
   * Each DNS UDP socket asks for a receive buffer (dns/listener.ts DNS_UDP_RECEIVE_BUFFER, 4 MiB)
   * so that one sandbox's burst does not fill it and drop the others' queries; the kernel caps the
   * ask at net.core.rmem_max, silently. Shown in a gauge, and warned of once at start when less
   * was granted, with both figures and rmem_max (docs/config.md, "The DNS listener").
   */
  #checkDnsReceiveBuffer(): void {
    let asked = 0;
    let granted = Infinity;
    for (const l of this.dnsListeners) {
      const g = l.udpReceiveBufferGranted;
      if (g === null) continue;
      asked = Math.max(asked, l.udpReceiveBufferAsked);
      granted = Math.min(granted, g);
    }
    if (granted === Infinity) return;
    const gauge = this.metrics.instruments.dnsUdpReceiveBuffer;
    gauge.set({ figure: 'asked' }, asked);
    gauge.set({ figure: 'granted' }, granted);
    if (granted >= asked) return;
    let rmemMax: number | null = null;
    try {
      rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8').trim());
    } catch {
      // Not Linux, or no /proc: the figures say it all the same.
    }
    this.log.warn(
      {
        event: { action: 'dns-receive-buffer-short' },
        askedBytes: asked,
        grantedBytes: granted,
        rmemMax,
        hint: `raise net.core.rmem_max to at least ${asked} (sysctl -w net.core.rmem_max=${asked}): with less, one sandbox's burst of queries can fill the socket and the kernel drops the other sandboxes' queries`,
      },
      'The kernel granted the DNS listener a smaller UDP receive buffer than it asked for',
    );
  }

  /**
   * A call presented admin.previousToken: logged at most once a minute (the calls since, and the
   * last one's source), so an operator sees who still holds the old token before dropping it.
   */
  #previousTokenUsed(source: string): void {
    const now = performance.now();
    this.#previousTokenCalls++;
    if (now - this.#previousTokenLoggedAt < PREVIOUS_TOKEN_LOG_MS) return;
    this.#previousTokenLoggedAt = now;
    this.log.info(
      { event: { action: 'api-previous-token' }, ...(source !== '' ? { source: { ip: source } } : {}), count: this.#previousTokenCalls },
      'API calls presented admin.previousToken: switch them to admin.token before a reload drops it',
    );
    this.#previousTokenCalls = 0;
  }

  /**
   * Whether a connection or query from `rawSource` accepted now waits for the start to finish
   * (and was queued for it: `run` then, or `refuse` should it give its place up). The places are
   * shared as the limits share a host: one sandbox sending during a restart filled all 1,024, and
   * every other sandbox's connections were reset, their queries dropped, until the start ended.
   * Once full, a sandbox holding fewer takes the newest place of the one holding most (max-min).
   */
  #heldUntilServing(rawSource: string | undefined, run: () => void, refuse: () => void, what: EarlyKind): boolean {
    if (this.#state !== 'starting') return false;
    const source = rawSource === undefined ? '' : (canonicalSource(rawSource) ?? rawSource);
    const key = this.#tenantOf(this.store.lookup(source).sandbox, source);
    const mine = this.#earlyBy.get(key) ?? [];
    if (this.#early.length - this.#earlyGone >= EARLY_MAX) {
      let most: EarlyHeld[] = mine;
      for (const held of this.#earlyBy.values()) if (held.length > most.length) most = held;
      if (most.length < mine.length + 2) return false;
      const given = most.pop()!;
      if (most.length === 0) this.#earlyBy.delete(given.key);
      given.gone = true;
      given.refuse();
      // Given-up entries leave the queue once they are as many as its places, so that it stays
      // within twice EARLY_MAX however many places change hands.
      if (++this.#earlyGone >= EARLY_MAX) {
        const live = this.#early.filter((e) => !e.gone);
        this.#early.splice(0, this.#early.length, ...live);
        this.#earlyGone = 0;
      }
    }
    const entry: EarlyHeld = { key, run, refuse, what, gone: false };
    this.#early.push(entry);
    mine.push(entry);
    this.#earlyBy.set(key, mine);
    return true;
  }

  /**
   * The answer to a query that came while egressd starts, once it serves (null: dropped). Only
   * `held` is kept while it waits, not the datagram whole: one past MAX_QUERY_BYTES keeps its header.
   */
  #answerOnceServing(held: ReturnType<typeof heldQuery>, source: string, transport: Transport): Promise<Buffer | null> {
    return new Promise((resolve) => {
      const run = (): void => resolve(this.#state === 'serving' ? this.dns.answer(held.bytes, source, transport, held.length) : null);
      if (!this.#heldUntilServing(source, run, () => resolve(null), transport === 'udp' ? 'dns-udp' : 'dns-tcp')) resolve(null);
    });
  }

  /**
   * Runs what was accepted while egressd started (#early): judged now it serves, or in a stop's
   * drain once the start could judge; otherwise (a start that failed or was stopped before its
   * listeners were all bound), and DNS always in a stop (its listeners close at once, as in any
   * stop), reset or dropped, and counted in one log line, since no connection line will say so.
   */
  #runEarly(): void {
    const early = this.#early.splice(0);
    this.#earlyBy.clear();
    this.#earlyGone = 0;
    const live = early.filter((e) => !e.gone);
    for (const e of live) e.run();
    if (this.#state === 'serving' || live.length === 0) return;
    const count = (what: EarlyKind): number => live.filter((e) => e.what === what).length;
    const reset = this.#judging ? 0 : count('connection');
    const dns = { udp: count('dns-udp'), tcp: count('dns-tcp') };
    if (reset + dns.udp + dns.tcp === 0) return;
    this.log.warn(
      { event: { action: 'early-given-up' }, connections: reset, dnsQueries: dns.udp, dnsConnections: dns.tcp },
      'egressd stopped before serving: what it accepted while starting was reset (DNS queries over UDP dropped) unjudged',
    );
  }

  /** Whether a connection accepted now is judged now: while serving, and during a stop's drain. */
  get #judging(): boolean {
    return this.#state === 'serving' || (this.#state === 'draining' && this.#drainTakes);
  }

  #accept(socket: Socket, kind: Listener['kind']): void {
    if (!this.#judging) {
      socket.on('error', () => {});
      const reset = (): void => void socket.resetAndDestroy();
      if (!this.#heldUntilServing(socketAddress(socket, 'remote')?.address, () => this.#accept(socket, kind), reset, 'connection')) reset();
      return;
    }
    socket.on('error', () => {});
    // A client that reset before Node read its address (getpeername then fails), or a link-local
    // one whose interface is gone since (net/socket-address.ts), has none: '' is no sandbox's,
    // and its lines leave `source.ip` out rather than carry a placeholder an index mapping it as
    // an IP would reject.
    const remote = socketAddress(socket, 'remote')?.address;
    const source = remote === undefined ? '' : (canonicalSource(remote) ?? remote);
    const ticket = this.limits.admit(socket, kind, source);
    if (ticket === null) return;
    this.#run(new SocketClient(socket, this.#originalDst), kind, source, ticket);
  }

  /** A connection the native loops accepted: the same admission and pipeline. */
  #acceptNative(client: NativeClient, kind: Listener['kind']): void {
    if (!this.#judging) {
      const reset = (): void => client.reset();
      if (!this.#heldUntilServing(client.remoteAddress, () => this.#acceptNative(client, kind), reset, 'connection')) reset();
      return;
    }
    const source = canonicalSource(client.remoteAddress) ?? client.remoteAddress;
    const ticket = this.limits.admit(client, kind, source);
    if (ticket === null) return;
    this.#run(client, kind, source, ticket);
  }

  #run(client: ClientSide, kind: Listener['kind'], source: string, ticket: Ticket): void {
    this.metrics.accepted(kind);
    // Never rejects (every failure becomes an outcome); stop() waits on the registry.
    void handleClient(client, kind, this.#deps, source, ticket);
  }

  /**
   * A change applies to the next connection at once; open connections that the new policy
   * refuses are closed now (onPolicyChange: close), those it still allows are untouched.
   */
  #onPolicyChange(e: ChangeEvent): void {
    this.nativeSetup?.policyChanged();
    this.metrics.instruments.policyChanges.inc({ source: e.source });
    // What a removed sandbox was given is not carried over to a new sandbox of the same id.
    if (e.kind === 'sandbox' && e.action === 'delete') this.dnsMemory.forget(e.id);
    this.log.info(
      {
        // ECS: `source` is the peer of a network event (an object); where the change came from
        // (api, config) is the event's provider.
        event: { action: 'policy-change', provider: e.source },
        actor: e.actor,
        action: e.action,
        kind: e.kind,
        id: e.id,
        before: e.before,
        after: e.after,
        version: this.store.version,
      },
      'policy change',
    );
    // A batch (another process's changes) is applied whole before its first event: judged once.
    if (e.more !== true) this.#rejudge('policy-changed');
  }

  /**
   * Another process wrote what this one cannot accept: it keeps its last good view and refuses
   * changes (503 state_rejected) until the state is whole again, which is logged too.
   */
  #onStateRejected(e: StateRejectedEvent): void {
    if (e.issues.length === 0) {
      this.log.warn({ event: { action: 'state-accepted' }, path: e.path }, 'the state is whole again: following it and accepting changes');
      return;
    }
    this.metrics.instruments.stateRejected.inc();
    this.log.error(
      {
        event: { action: 'state-rejected' },
        path: e.path,
        issues: e.issues.slice(0, 20).map((i) => [i.entry, i.field, i.reason].filter((x) => x !== '').join(': ')),
      },
      'another process wrote entries to the state that fail validation: serving the last good view and refusing changes until they are fixed',
    );
  }

  /** A change that could not be made durable: answered 503 by the API, logged and counted here. */
  #onStateWriteFailure(e: WriteFailureEvent): void {
    this.metrics.instruments.stateWriteFailures.inc({ errno: e.error.errno });
    this.log.error(
      {
        event: { action: 'state-write-failed' },
        path: e.error.file,
        errno: e.error.errno,
        detail: e.error.detail,
        action: e.action,
        kind: e.kind,
        id: e.id,
        actor: e.actor,
      },
      'a change could not be written to the state; nothing was changed',
    );
  }

  /**
   * Closes the open connections the current policies refuse (unless onPolicyChange is keep), and
   * returns only once they are closed: the closes of connections in the native loops are commands
   * to those loops, so this waits, bounded, for every loop to confirm it ran them. Called
   * synchronously with the change, so the API answers (and a reload returns) after it. `reason`
   * is what changed, the closed connections' `event.reason`: a policy, or the host's own
   * addresses (decide step 1a: a connection to an address the host has since gained). The
   * host's addresses decide only protected-address refusals, so that change closes only those:
   * a connection some policy refuses and that is still open (kept by onPolicyChange: keep, which
   * a reload then turned to close) did not change its verdict with the host, and is left alone.
   */
  #rejudge(reason: RejudgeReason): void {
    if (this.#config.onPolicyChange === 'keep') return;
    let closed = 0;
    for (const c of this.registry) {
      // A connection an earlier change (or shutdown) closed stays listed until it has ended: it
      // is that change's, not counted again nor waited for twice.
      if (c.facts === null || c.closed) continue;
      const chain = this.store.lookup(c.outcome.source);
      let d = verdict(chain, c.facts);
      // The chain the connection's name ran through, as the dial judged it (a deny rule for a host
      // behind the name may be the change).
      if (d.verdict !== 'refuse' && c.aliases !== null) d = deniedAlias(chain, c.aliases, c.facts.ip, c.facts.port) ?? d;
      if (d.verdict === 'refuse' && (reason === 'policy-changed' || d.reason === 'protected-address')) {
        this.registry.close(c, reason);
        closed++;
      }
    }
    if (closed === 0) return;
    const startedAt = performance.now();
    const late = syncNativeLoops(POLICY_HANDOFF_MS);
    // How long the change waited for the loops (the API's answer waited as long).
    const handoffUs = Math.round((performance.now() - startedAt) * 1000);
    if (late > 0) {
      this.metrics.instruments.policyHandoffsLate.inc();
      this.log.warn(
        { event: { action: 'policy-handoff-late' }, loops: late, waited_ms: Math.round(handoffUs / 1000) },
        'a data-plane loop did not confirm the closes of a policy change in time; answering anyway',
      );
    }
    if (reason === 'policy-changed') {
      this.log.info({ event: { action: 'closed-by-policy-change' }, count: closed, handoff_us: handoffUs }, 'closed connections the new policy refuses');
    } else {
      this.log.info(
        { event: { action: 'closed-by-host-address-change' }, count: closed, handoff_us: handoffUs, addresses: this.host.addresses },
        'closed connections to addresses the host now holds as its own',
      );
    }
  }

  #emit(o: ConnectionOutcome): void {
    for (const l of this.#outcomeListeners) {
      try {
        l(o);
      } catch (err) {
        this.log.error({ event: { action: 'outcome-listener-failed' }, err }, 'An outcome listener threw');
      }
    }
  }

  /**
   * Stops accepting (readiness turns 503 first), lets open connections finish for up to
   * `drainMs`, then closes the rest. During a start it first has the start give up at its next
   * step; what the start had accepted is then judged and drained as in any stop, once its
   * listeners were bound, and reset with a log line before.
   */
  async stop(drainMs: number, opts: { quiet?: boolean } = {}): Promise<void> {
    if (this.#starting !== null) {
      this.#stopAsked = true;
      await this.#starting;
    }
    return this.#stop(drainMs, opts);
  }

  async #stop(drainMs: number, opts: { quiet?: boolean }): Promise<void> {
    if (this.#state === 'stopped' || this.#state === 'draining') return;
    const wasServing = this.#state === 'serving';
    this.#state = 'draining';
    // Set before the held connections run: those that can be judged are, in the drain.
    this.#drainTakes = (wasServing || this.#canJudge) && drainMs > 0;
    this.#runEarly();
    const drainEnds = performance.now() + drainMs;
    await Promise.all([...this.listeners.map((l) => l.close()), ...this.dnsListeners.map((l) => l.close())]);
    // What the native loops accepted before their listeners closed (each takes what its queue
    // held as it closes it; the sync waits for that) reaches this thread once its first flight is
    // read: the drain waits for it to arrive and be judged (#drainTakes).
    if (this.#drainTakes && this.nativeSetup !== null) syncNativeLoops(POLICY_HANDOFF_MS);
    while (this.#drainTakes && (this.nativeSetup?.undelivered ?? 0) > 0 && performance.now() < drainEnds) {
      await new Promise((r) => setTimeout(r, UNDELIVERED_POLL_MS));
    }
    if (this.registry.size > 0 && drainMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.registry.whenEmpty(),
        new Promise((r) => {
          timer = setTimeout(r, Math.max(0, drainEnds - performance.now()));
        }),
      ]);
      clearTimeout(timer);
    }
    this.#drainTakes = false;
    this.registry.closeAll('shutdown');
    await this.registry.whenEmpty();
    this.resolver.close();
    this.host.stop();
    this.dnsForwarder.close();
    this.dns.close();
    this.#querySockets.close();
    this.limits.stop();
    // The last export carries the counts of the connections closed above; bounded by the exporter's timeout.
    await this.#otlp?.shutdown().catch((err: unknown) => this.log.warn({ event: { action: 'otlp-failed' }, err }, 'the last OTLP export failed'));
    await this.admin.close();
    await this.control.close();
    this.#state = 'stopped';
    if (opts.quiet !== true) this.log.info({ event: { action: 'stopped' } }, 'egressd stopped');
  }
}
