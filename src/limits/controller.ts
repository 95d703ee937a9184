// Limits, per sandbox and in total, wired together: admission at accept (limits/admission.ts),
// the descriptor budget (limits/descriptors.ts) and the memory guard (limits/overload.ts),
// with their log lines, metrics and readiness. The daemon asks `admit` for each accepted
// socket; a refused one is reset here at once and counted.

import type { LimitsConfig } from '../config/schema.ts';
import type { ListenerKind } from '../net/listener.ts';
import type { Logger } from '../observability/logger.ts';
import { ecsIp } from '../observability/ecs-line.ts';
import type { LimitsSnapshot, Metrics } from '../observability/metrics.ts';
import { Admission, type DnsTcpHold, type DnsTcpRefusal, type LingerGivenUp, type LingerHold, type ShedReason, type Ticket } from './admission.ts';
import { acceptSlots, connectionBudget, openDescriptors, raiseNofile, type NofileLimits } from './descriptors.ts';
import { migrateReqProblem, readHostTcp, timeWaitReuseProblem } from './host-tcp.ts';
import { effectiveLimits, type LimitsOverride, type SandboxLimits } from './limits-body.ts';
import { MemoryGuard, type MemorySample } from './overload.ts';

/** The sandbox a source belongs to and the limits its record and organization set. */
export interface SourceLimits {
  readonly sandbox: string | null;
  readonly sandboxLimits?: LimitsOverride | undefined;
  readonly orgLimits?: LimitsOverride | undefined;
}

/** What admission needs of a connection: a way to reset it (a Node socket, or a native one). */
export interface Resettable {
  resetAndDestroy(): void;
}

/** A source of no sandbox on a refusal line: the first address seen and the block holding it (`2001:db8::/64`). */
interface SourceNamed {
  readonly ip: string;
  readonly block: string;
}

/** How long refusals are gathered into one log line per sandbox and reason. */
const SHED_LOG_MS = 1000;
/**
 * Blocks of sources of no sandbox whose refusals get lines of their own in one gathering; the
 * others' are counted together, one line per reason with `other_sources`. A source of no sandbox
 * is gathered under the block its limits count (match/tenant-key.ts, `limits.unknownSourcePrefix`),
 * named by the block and the first address seen in it: a client opening each connection from a
 * new address of its /64 makes one line, not one per address, and leaves the other sources their
 * own lines. The bound still holds many blocks to SOURCES_LOGGED entries until the lines are written.
 */
const SOURCES_LOGGED = 16;
/** The top-N sandboxes by open connections in the API and the log. */
export const TOP_N = 10;

export class LimitsController {
  readonly #config: () => LimitsConfig;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #lookup: (source: string) => SourceLimits;
  readonly #tenantOf: (sandbox: string | null, source: string) => string;
  readonly memory: MemoryGuard;
  #admission: Admission;
  #nofile: NofileLimits = { soft: null, hard: null };
  /** Why a rolling restart resets connections (host-tcp.ts migrateReqProblem), read at start; null: it need not. */
  #migrateReq: string | null = null;
  /** Each native loop's accept slots (descriptors.ts acceptSlots), or null: none set. */
  #acceptSlots: number | null = null;
  #timers: NodeJS.Timeout[] = [];
  /** Admitted client sockets with no verdict yet, the first to go under critical memory pressure. */
  readonly #peeking = new PeekingList();
  /** Each sandbox's effective limits, and the layers they were made of (limitsOf). */
  readonly #limits = new Map<
    string,
    { defaults: SandboxLimits; sandboxLimits: LimitsOverride | undefined; orgLimits: LimitsOverride | undefined; limits: SandboxLimits }
  >();
  readonly #shed = new Map<string, { sandbox: string | null; source: SourceNamed | null; reason: ShedReason; count: number; detail: string }>();
  /** Blocks of sources of no sandbox with an entry of their own in #shed (at most SOURCES_LOGGED). */
  #shedSources = 0;
  /** Logs #shed SHED_LOG_MS after the first refusal it holds; no timer while nothing is shed (an idle daemon sleeps). */
  #shedTimer: NodeJS.Timeout | null = null;
  /** When accept(2)'s failure was last logged (performance.now() ms: a step of the wall clock back must not silence it). */
  #acceptErrorsLogged = -Infinity;
  /** DNS TCP connections refused since the last log line, by sandbox (or source) and scope (dnsTcpRefused). */
  readonly #dnsRefused = new Map<string, { sandbox: string | null; source: SourceNamed | null; scope: DnsTcpRefusal; count: number; reset: number }>();
  /** Blocks of sources of no sandbox with an entry of their own in #dnsRefused (at most SOURCES_LOGGED). */
  #dnsRefusedSources = 0;
  #dnsRefusedTimer: NodeJS.Timeout | null = null;

  /**
   * `tenantOf`: the key a source's limits are counted under, its sandbox's id or, for a source of
   * none, the block holding it (match/tenant-key.ts, `limits.unknownSourcePrefix`).
   */
  constructor(
    config: () => LimitsConfig,
    log: Logger,
    metrics: Metrics,
    lookup: (source: string) => SourceLimits,
    tenantOf: (sandbox: string | null, source: string) => string,
  ) {
    this.#config = config;
    this.#tenantOf = tenantOf;
    this.#log = log;
    this.#metrics = metrics;
    this.#lookup = lookup;
    const c = config();
    this.memory = new MemoryGuard(
      { maxBytes: c.memory.maxBytes, shedAt: c.memory.shedAt, intervalMs: c.memory.intervalMs, held: () => this.#admission.open },
      (shedding, s) => {
        const fields = {
          event: { action: shedding ? 'overload-start' : 'overload-end' },
          monitor: s.monitor,
          pressure: round(s.pressure),
          rssBytes: s.rssBytes,
          cgroupLimitBytes: s.cgroupLimitBytes,
          cgroupWorkingSetBytes: s.cgroupWorkingSetBytes,
        };
        if (shedding) this.#log.warn(fields, 'Memory pressure: shedding new connections');
        else this.#log.info(fields, 'Memory pressure over: accepting new connections');
      },
      (s) => this.#resetUndecided(s),
      (ms, before, after) =>
        this.#log.info(
          {
            event: { action: 'memory-shrunk' },
            ms: Math.round(ms),
            pressureBefore: round(before.pressure),
            pressureAfter: round(after.pressure),
            rssBytesBefore: before.rssBytes,
            rssBytesAfter: after.rssBytes,
          },
          'Memory pressure: collected garbage and returned free memory to the kernel',
        ),
    );
    // No budget until start() has raised the limit and counted what is open.
    this.#admission = new Admission({
      globalConnections: c.global.connections,
      sandboxShare: c.global.sandboxShare,
      onLingerGivenUp: this.#lingerGivenUp,
      onAttemptsWithheld: this.#attemptsWithheld,
    });
    metrics.attachLimits(() => this.snapshot());
  }

  /**
   * Raises RLIMIT_NOFILE to its hard limit, sizes the connection budget from it and the
   * descriptors already open (call once the listeners are bound), starts the memory guard,
   * and logs the limits egressd ends up with. `acceptLoops`: the native loops that accept (0 on
   * the JS path); their accept slots (acceptSlotsPerLoop) come out of the budget.
   */
  start(acceptLoops = 0): void {
    const c = this.#config();
    const r = raiseNofile();
    this.#nofile = r.after;
    if (r.error !== null)
      this.#log.warn({ event: { action: 'nofile-not-raised' }, err: r.error, soft: r.after.soft, hard: r.after.hard }, 'Could not raise RLIMIT_NOFILE');
    const inUse = openDescriptors() ?? 0;
    this.#acceptSlots = acceptSlots(r.after.soft, inUse, c.global.reserveDescriptors, acceptLoops);
    const byDescriptors = connectionBudget(r.after.soft, inUse + (this.#acceptSlots ?? 0) * acceptLoops, c.global.reserveDescriptors);
    const global =
      byDescriptors === null ? c.global.connections : c.global.connections === null ? byDescriptors : Math.min(byDescriptors, c.global.connections);
    this.#admission = new Admission({
      globalConnections: global,
      sandboxShare: c.global.sandboxShare,
      onLingerGivenUp: this.#lingerGivenUp,
      onAttemptsWithheld: this.#attemptsWithheld,
    });
    this.memory.start();
    this.#timers.push(setInterval(() => this.#admission.sweep(), 10_000).unref());
    const tcp = readHostTcp();
    const reuse = timeWaitReuseProblem(tcp);
    if (reuse !== null) {
      const ports = tcp.localPorts === null ? null : tcp.localPorts.to - tcp.localPorts.from + 1;
      this.#log.warn(
        { event: { action: 'time-wait-reuse-off' }, reason: reuse, tcp, ports },
        `A source port egressd closed first is held 60 s: about ${ports === null ? 'ip_local_port_range ÷ 60' : Math.floor(ports / 60)} connections a second to one upstream address leave later ones to it EADDRNOTAVAIL (in host mode, every sandbox's); set net.ipv4.tcp_tw_reuse=1 (docs/deployment.md)`,
      );
    }
    this.#migrateReq = migrateReqProblem(tcp);
    if (this.#migrateReq !== null) {
      this.#log.warn(
        { event: { action: 'migrate-req-off' }, reason: this.#migrateReq, tcp },
        'a rolling restart resets connections caught in their handshake as the old process closes its listeners; set net.ipv4.tcp_migrate_req=1 (docs/deployment.md)',
      );
    }
    this.#log.info(
      {
        event: { action: 'limits' },
        tcp,
        nofile: { before: r.before, after: r.after },
        descriptorsInUse: inUse,
        reserveDescriptors: c.global.reserveDescriptors,
        globalConnections: global,
        sandboxShare: this.#admission.sandboxShare,
        acceptSlotsPerLoop: this.#acceptSlots,
        sandbox: c.sandbox,
        memory: { cgroupLimitBytes: this.memory.cgroupLimitBytes, maxBytes: c.memory.maxBytes, shedAt: c.memory.shedAt },
      },
      'limits in force',
    );
  }

  /**
   * How many connections each native loop may hold accepted before admission answers them, sized
   * by start() from the descriptor budget; null when no descriptor limit sizes it.
   */
  get acceptSlotsPerLoop(): number | null {
    return this.#acceptSlots;
  }

  readonly #lingerGivenUp = (why: LingerGivenUp): void => this.#metrics.instruments.refusalLingersGivenUp.inc({ scope: why });
  readonly #attemptsWithheld = (n: number): void => this.#metrics.instruments.dialAttemptsWithheld.inc(n);

  stop(): void {
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    this.memory.stop();
    this.#flushShed();
    this.#flushDnsRefused();
  }

  /**
   * A descriptor of the budget for one TCP connection of `source` to the DNS listener
   * (Admission.dnsTcp), or why there is none. `total`: dns.limits.tcpTotal.
   */
  dnsTcp(source: string, total: number, refusing: boolean): DnsTcpHold | DnsTcpRefusal {
    return this.#admission.dnsTcp(this.#tenantOf(this.#lookup(source).sandbox, source), total, refusing);
  }

  /**
   * Counts one DNS TCP connection refused at accept, by scope; `reset`: not even answered
   * REFUSED. Logged once a second per sandbox (or source of none) and scope, with a count.
   */
  dnsTcpRefused(source: string, scope: DnsTcpRefusal, reset: boolean): void {
    this.#metrics.instruments.dnsTcpRefused.inc({ scope });
    const sandbox = this.#lookup(source).sandbox;
    let k = `${this.#tenantOf(sandbox, source)}\u0000${scope}`;
    let e = this.#dnsRefused.get(k);
    let own = sandbox === null && source !== '' ? this.#named(source) : null;
    if (e === undefined && own !== null && this.#dnsRefusedSources >= SOURCES_LOGGED) {
      k = `${OTHER_SOURCES}\u0000${scope}`;
      e = this.#dnsRefused.get(k);
      own = null;
    }
    if (e) {
      e.count++;
      if (reset) e.reset++;
    } else {
      if (own !== null) this.#dnsRefusedSources++;
      this.#dnsRefused.set(k, { sandbox, source: own, scope, count: 1, reset: reset ? 1 : 0 });
    }
    this.#dnsRefusedTimer ??= setTimeout(() => this.#flushDnsRefused(), SHED_LOG_MS).unref();
  }

  #flushDnsRefused(): void {
    if (this.#dnsRefusedTimer !== null) clearTimeout(this.#dnsRefusedTimer);
    this.#dnsRefusedTimer = null;
    for (const [k, e] of this.#dnsRefused) {
      this.#log.warn(
        {
          event: { action: 'dns-tcp-refused' },
          sandbox: e.sandbox,
          ...(e.source !== null ? { source: { ip: ecsIp(e.source.ip) }, source_block: e.source.block } : {}),
          ...(k.startsWith(OTHER_SOURCES) ? { other_sources: true } : {}),
          verdict: 'refuse',
          reason: e.scope,
          count: e.count,
          reset: e.reset,
          detail: DNS_TCP_DETAIL[e.scope],
        },
        'DNS TCP connections refused at accept',
      );
    }
    this.#dnsRefused.clear();
    this.#dnsRefusedSources = 0;
  }

  /** A source of no sandbox as its refusal lines name it: the address, and the block its limits count. */
  #named(source: string): SourceNamed {
    const key = this.#tenantOf(null, source);
    return { ip: source, block: key.startsWith('source ') ? key.slice(7) : source };
  }

  limitsOf(l: SourceLimits): SandboxLimits {
    const defaults = this.#config().sandbox;
    // Kept per sandbox while its record's, its organization's and the config's limits are the
    // same objects (each is replaced whole when it changes): admission reads them per connection.
    const key = l.sandbox ?? '';
    const c = this.#limits.get(key);
    if (c !== undefined && c.defaults === defaults && c.sandboxLimits === l.sandboxLimits && c.orgLimits === l.orgLimits) return c.limits;
    const limits = effectiveLimits(defaults, l.sandboxLimits, l.orgLimits);
    if (this.#limits.size >= LIMITS_CACHED) this.#limits.clear();
    this.#limits.set(key, { defaults, sandboxLimits: l.sandboxLimits, orgLimits: l.orgLimits, limits });
    return limits;
  }

  /**
   * Admits the connection or resets it at once (counted, and logged once a second per
   * sandbox and reason). `source` is the canonical client address.
   */
  admit(socket: Resettable, kind: ListenerKind, source: string): Ticket | null {
    const l = this.#lookup(source);
    const a = this.#admission.admit(this.#tenantOf(l.sandbox, source), this.limitsOf(l), this.memory.sheddingNow());
    if (a.ok) {
      const t = new PeekingTicket(a.ticket, this.#peeking, socket);
      this.#peeking.add(t);
      return t;
    }
    socket.resetAndDestroy();
    this.#refused(kind, l, source, a.reason, a.detail);
    return null;
  }

  /**
   * A connection the listener could not take for want of descriptors (EMFILE/ENFILE; the native
   * accept resets it with its reserve descriptor): counted as `global-limit`, one by one.
   */
  shedAtAccept(kind: ListenerKind, source: string, code: string): void {
    this.#metrics.instruments.acceptErrors.inc({ code });
    this.#refused(kind, this.#lookup(source), source, 'global-limit', `accept(2) failed with ${code}: out of descriptors`);
  }

  /** Counts one refusal at accept, logged once a second per sandbox and reason. */
  #refused(kind: ListenerKind, l: SourceLimits, source: string, reason: ShedReason, detail: string): void {
    this.#metrics.shed(kind, reason, l.sandbox);
    let k = `${this.#tenantOf(l.sandbox, source)}\u0000${reason}`;
    let e = this.#shed.get(k);
    // A source of no sandbox is named, unless it is unknown ('': a client gone before its address was read).
    let own = l.sandbox === null && source !== '' ? this.#named(source) : null;
    if (e === undefined && own !== null && this.#shedSources >= SOURCES_LOGGED) {
      k = `${OTHER_SOURCES}\u0000${reason}`;
      e = this.#shed.get(k);
      own = null;
    }
    if (e) e.count++;
    else {
      if (own !== null) this.#shedSources++;
      this.#shed.set(k, { sandbox: l.sandbox, source: own, reason, count: 1, detail });
    }
    this.#shedTimer ??= setTimeout(() => this.#flushShed(), SHED_LOG_MS).unref();
  }

  /** Critical memory pressure: resets every connection still being peeked (they end as peek-closed). */
  #resetUndecided(s: MemorySample): void {
    const n = this.#peeking.size;
    if (n === 0) return;
    for (const socket of this.#peeking.takeAll()) socket.resetAndDestroy();
    this.#log.warn(
      { event: { action: 'overload-reset-undecided' }, count: n, monitor: s.monitor, pressure: round(s.pressure) },
      'Critical memory pressure: reset the connections still being peeked',
    );
  }

  #flushShed(): void {
    if (this.#shedTimer !== null) clearTimeout(this.#shedTimer);
    this.#shedTimer = null;
    for (const [k, e] of this.#shed) {
      this.#log.warn(
        {
          event: { action: 'connections-shed' },
          sandbox: e.sandbox,
          // ECS's source.ip, as on the connection line: the address of a source that belongs to no sandbox.
          ...(e.source !== null ? { source: { ip: ecsIp(e.source.ip) }, source_block: e.source.block } : {}),
          ...(k.startsWith(OTHER_SOURCES) ? { other_sources: true } : {}),
          verdict: 'refuse',
          reason: e.reason,
          count: e.count,
          detail: e.detail,
        },
        'connections refused at accept',
      );
    }
    this.#shed.clear();
    this.#shedSources = 0;
  }

  /** accept(2) failed (EMFILE, ENFILE): counted, logged at most once a second. */
  acceptError(err: NodeJS.ErrnoException, kind: ListenerKind): void {
    const code = err.code ?? 'EUNKNOWN';
    this.#metrics.instruments.acceptErrors.inc({ code });
    const now = performance.now();
    if (now - this.#acceptErrorsLogged >= 1000) {
      this.#acceptErrorsLogged = now;
      this.#log.warn({ event: { action: 'accept-failed' }, listener: kind, code }, 'accept failed; waiting connections are shed until descriptors free up');
    }
  }

  /** The host's settings read at start that lose connections in a rolling restart (for /readyz), each as its reason. */
  get hostWarnings(): string[] {
    return this.#migrateReq === null ? [] : [this.#migrateReq];
  }

  /** Why new connections are being shed now (for /readyz), or null when they are not. */
  overloadReason(): string | null {
    if (this.memory.shedding) {
      const s = this.memory.last;
      return `memory pressure ${round(s.pressure)} (${s.monitor}) at or above ${this.#config().memory.shedAt}: new connections are shed`;
    }
    const g = this.#admission.globalConnections;
    const a = this.#admission;
    if (a.budgetFull)
      return `connection budget full (${a.open} of ${g}), with ${a.lingering} refusals lingering and ${a.attemptsHeld} extra dial attempts: new connections are shed`;
    return null;
  }

  /** A sandbox's current counts and the limits that apply to it. */
  sandboxView(id: string, l: SourceLimits): { open: number; undecided: number; limits: SandboxLimits } {
    const v = this.#admission.view(id);
    return { open: v.open, undecided: v.undecided, limits: this.limitsOf(l) };
  }

  top(n = TOP_N): { key: string; open: number; undecided: number }[] {
    return this.#admission.top(n);
  }

  snapshot(): LimitsSnapshot {
    const g = this.#admission.globalConnections;
    return {
      nofileSoft: this.#nofile.soft,
      nofileHard: this.#nofile.hard,
      openDescriptors: openDescriptors(),
      globalConnections: g,
      sandboxShare: this.#admission.sandboxShare,
      open: this.#admission.open,
      undecided: this.#admission.undecided,
      lingering: this.#admission.lingering,
      dialAttempts: this.#admission.attemptsHeld,
      dnsTcp: this.#admission.dnsTcpHeld,
      memoryPressure: round(this.memory.last.pressure),
      memoryLimitBytes: this.memory.cgroupLimitBytes,
      overloaded: { memory: this.memory.shedding, descriptors: this.#admission.budgetFull },
    };
  }
}

const round = (x: number): number => Math.round(x * 1000) / 1000;

/** The key prefix of the entries that count sources of no sandbox past SOURCES_LOGGED (no sandbox id or source starts so). */
const OTHER_SOURCES = '\u0000other sources';

const DNS_TCP_DETAIL: Record<DnsTcpRefusal, string> = {
  sandbox: 'the sandbox holds dns.limits.tcpPerSandbox connections, or its share of the descriptor budget',
  total: 'the DNS listener holds dns.limits.tcpTotal connections, none of them idle',
  budget: "DNS's part of the descriptor budget is taken, no connection of it idle",
};

/** Sandboxes whose effective limits are kept (limitsOf); past it, the cache starts over. */
const LIMITS_CACHED = 10_000;

/** Admission's ticket for a connection that also counts among those still being peeked. */
class PeekingTicket implements Ticket {
  readonly #ticket: Ticket;
  readonly #peeking: PeekingList;
  readonly socket: Resettable;
  /** PeekingList's links. */
  prev: PeekingTicket | null = null;
  next: PeekingTicket | null = null;
  listed = false;

  constructor(ticket: Ticket, peeking: PeekingList, socket: Resettable) {
    this.#ticket = ticket;
    this.#peeking = peeking;
    this.socket = socket;
  }

  decided(): void {
    this.#peeking.remove(this);
    this.#ticket.decided();
  }

  linger(): LingerHold | null {
    return this.#ticket.linger();
  }

  attempts(wanted: number): number {
    return this.#ticket.attempts(wanted);
  }

  attemptsDone(): void {
    this.#ticket.attemptsDone();
  }

  release(): void {
    this.#peeking.remove(this);
    this.#ticket.release();
  }
}

/**
 * The admitted connections with no verdict yet, linked through their tickets: taking one on and
 * letting it go allocate nothing and rehash no table (issue 12). Walked only under critical
 * memory pressure.
 */
class PeekingList {
  #head: PeekingTicket | null = null;
  size = 0;

  add(t: PeekingTicket): void {
    if (t.listed) return;
    t.listed = true;
    t.prev = null;
    t.next = this.#head;
    if (this.#head !== null) this.#head.prev = t;
    this.#head = t;
    this.size++;
  }

  remove(t: PeekingTicket): void {
    if (!t.listed) return;
    t.listed = false;
    if (t.prev !== null) t.prev.next = t.next;
    else this.#head = t.next;
    if (t.next !== null) t.next.prev = t.prev;
    t.prev = t.next = null;
    this.size--;
  }

  /** Empties the list; returns the sockets it held, oldest first. */
  takeAll(): Resettable[] {
    const out: Resettable[] = [];
    for (let t = this.#head; t !== null;) {
      const next = t.next;
      out.push(t.socket);
      t.listed = false;
      t.prev = t.next = null;
      t = next;
    }
    this.#head = null;
    this.size = 0;
    return out.reverse();
  }
}
