// The path of one redirected connection, top to bottom:
//   original destination → sandbox by source → peek (name) → verdict → resolve → dial → splice | refuse
// and exactly one outcome record at the end. Nothing here throws to the listener: every
// failure becomes an outcome with a reason and the side that ended it, and the daemon keeps
// serving everyone else.
//
// The policy is looked up again at every stage before the splice (after the peek, after the
// resolve, after the dial), so a change acknowledged while a connection waits reaches it before
// any byte goes upstream; `onPolicyChange: close` covers decided connections (daemon.ts).

import type { Socket } from 'node:net';
import { canonicalSource, withoutZone } from '../match/ip.ts';
import { anyStepper, PEEK_CAPS, type Peeked, type PeekReason, stallCheck } from '../peek/peek-steps.ts';
import { judgedDnsName, normalizeWireName } from '../match/names.ts';
import type { TenantKeyOf } from '../match/tenant-key.ts';
import type { OriginalDestination } from './original-dst.ts';
import type { PeekOptions, PeekOutcome } from './peek-socket.ts';
import type { ListenerKind } from './listener.ts';
import type { ConnectionOutcome, EndedBy, OutcomeReason, Protocol } from './outcome.ts';
import { chooseUpstream, chooseUpstreamNow, type DialMode, type TargetReason, type UpstreamQuery, type UpstreamTarget } from './upstream-target.ts';
import type { NameResolver, ResolveResult } from './resolve.ts';
import type { BlockMode, Linger, LingerHold } from './refuse.ts';
import { MAX_DIAL_ADDRESSES, SocketClient, type ClientSide, type ConnectResult, type GoneHow } from './client-side.ts';
import type { PolicyLookup } from '../control/store.ts';
import { countVerdict, verdict, type PolicyChain, type Verdict } from '../policy/verdict.ts';
import type { DecideTrace, Facts } from '../policy/decide.ts';
import type { NameSource } from '../policy/model.ts';
import { LiveConnection, isRejudged, type ConnectionRegistry } from './registry.ts';
import type { RememberedName, ResolvedNames } from '../dns/memory.ts';
import { flatText } from '../util/flat-text.ts';

/** The settings a connection reads (the daemon passes its Config, which has these and more). */
export interface PipelineSettings {
  readonly peek: { readonly timeoutMs: number; readonly firstByteTimeoutMs: number };
  readonly upstream: { readonly dial: DialMode; readonly connectTimeoutMs: number; readonly idleTimeoutMs: number };
  readonly block: BlockMode;
  readonly refusal: Linger;
}

export interface PipelineDeps {
  readonly config: () => PipelineSettings;
  readonly policies: PolicyLookup;
  readonly resolver: NameResolver;
  readonly registry: ConnectionRegistry;
  /** Which names gave which addresses to each sandbox (judges connections that carry no name). */
  readonly dnsMemory?: Pick<ResolvedNames, 'chainsFor' | 'expiryOf'>;
  /** The key a source's limits are counted under (match/tenant-key.ts): whose lookup a dialed name's is. */
  readonly tenantOf: TenantKeyOf;
  /** SO_ORIGINAL_DST; replaceable so loopback tests can run without iptables. */
  readonly originalDst: (socket: Socket) => OriginalDestination;
  readonly emit: (o: ConnectionOutcome) => void;
}

/** Admission's hold on one connection (limits/admission.ts's Ticket). */
export interface AdmissionTicket {
  /** The verdict is made: the connection stops counting as undecided. */
  decided(): void;
  /** The connection is over (called before its outcome is emitted). */
  release(): void;
  /** A lingering place for a refusal, or null: given up (limits/admission.ts). */
  linger?(): LingerHold | null;
  /** Up to `wanted` dial attempts beyond the first, each a descriptor: how many are granted. */
  attempts?(wanted: number): number;
  /** The dial is over: the attempts granted are given back. */
  attemptsDone?(): void;
}

/** One connection on a Node socket (the JavaScript path). */
export function handleConnection(socket: Socket, listener: ListenerKind, deps: PipelineDeps): Promise<void> {
  return handleClient(new SocketClient(socket, deps.originalDst), listener, deps);
}

/**
 * One connection, wherever its socket lives (client-side.ts): the pipeline above, and its outcome.
 * `source` is the client's canonical address when the caller already has it (admission did);
 * `ticket` is admission's hold, told of the verdict and released at the end. `deps` is the
 * daemon's, the same for every connection.
 */
export function handleClient(socket: ClientSide, listener: ListenerKind, deps: PipelineDeps, source?: string, ticket?: AdmissionTicket): Promise<void> {
  const config = deps.config();
  // Durations and deadlines on the monotonic clock (a step of the wall clock, NTP's, would make a
  // duration negative or a deadline early); the wall clock only for the log's timestamps.
  const t0 = socket.acceptedAt ?? performance.now();
  const startedAt = Math.round(Date.now() - (performance.now() - t0));
  const deadline = t0 + config.peek.timeoutMs;

  const o: ConnectionOutcome = {
    listener,
    sandbox: null,
    source: source ?? canonicalSource(socket.remoteAddress) ?? socket.remoteAddress,
    sourcePort: socket.remotePort,
    destination: null,
    destinationPort: null,
    name: null,
    protocol: 'none',
    verdict: 'error',
    reason: 'internal-error',
    endedBy: 'egressd',
    rule: null,
    dialed: null,
    bytesUp: 0,
    bytesDown: 0,
    startedAt,
    durationMs: 0,
    endedAt: startedAt, // set by ended()
  };
  const live = deps.registry.add(new LiveConnection(o, ticket));

  const failed = (err: unknown): void => {
    o.verdict = 'error';
    o.reason = 'internal-error';
    o.endedBy = 'egressd';
    o.end = err instanceof Error ? err.message : String(err);
    socket.reset();
    ended(deps, o, live, ticket, t0);
  };
  // The pipeline runs in this very call as far as it can; only a wait (the client's bytes, a
  // lookup on the wire, the dial and the splice) makes a promise, and the outcome follows the
  // last one. Chained, not awaited: a held connection keeps no suspended frame (issue 12: RSS per
  // held connection), and no async function's promise adds turns of the microtask queue.
  let waiting: Promise<void> | undefined;
  try {
    waiting = run(socket, listener, deps, config, t0, deadline, o, live);
  } catch (err) {
    failed(err);
    return DONE;
  }
  if (waiting === undefined) {
    ended(deps, o, live, ticket, t0);
    return DONE;
  }
  return waiting.then(() => ended(deps, o, live, ticket, t0), failed);
}

/** handleClient's answer for a connection that ended within the call. */
const DONE: Promise<void> = Promise.resolve();

/**
 * The connection is over: its duration (from `t0`, the accept on the performance.now() clock), its
 * verdict counted, admission's hold and the registry's entry let go, its outcome emitted.
 */
function ended(deps: PipelineDeps, o: ConnectionOutcome, live: LiveConnection, ticket: AdmissionTicket | undefined, t0: number): void {
  // At the splice's end, where its report came later (a native loop's queue), else now.
  const now = performance.now();
  const end = live.endedAt ?? now;
  o.durationMs = end - t0;
  o.endedAt = Math.round(Date.now() - (now - end));
  // Each connection counts once, for the verdict that last applied to it.
  if (o.decided !== undefined) countVerdict(o.decided);
  ticket?.release();
  deps.registry.remove(live);
  deps.emit(o);
}

/**
 * The pipeline up to the peek's outcome: undefined when the connection ended within the call,
 * else the promise of its end. Throws only on a fault of egressd's own (handleClient's `failed`).
 */
function run(
  socket: ClientSide,
  listener: ListenerKind,
  deps: PipelineDeps,
  config: PipelineSettings,
  t0: number,
  deadline: number,
  o: ConnectionOutcome,
  live: LiveConnection,
): Promise<void> | undefined {
  const od = socket.originalDst();
  if (od.kind === 'not-redirected') {
    // A direct connection to a listener is a loop or a probe: nowhere legitimate to go.
    o.end = od.why;
    return cut(socket, o, 'refuse', 'not-redirected', 'client');
  }
  o.destination = od.address;
  o.destinationPort = od.port;
  const ip = od.address;
  const port = od.port;
  const chain = deps.policies.lookup(o.source);
  o.sandbox = chain.sandbox;

  // (1) The peek. Every listener reads TLS and HTTP/1.x alike (the REDIRECT sorts by port, not
  // by protocol). When no name can change the verdict made on address and port and that
  // verdict allows, it is made at once, so server-first protocols (SSH, SMTP, MySQL) are not
  // delayed; otherwise a client silent for peek.firstByteTimeoutMs is judged by address and
  // port (Envoy's continue_on_listener_filters_timeout).
  // One verdict on address and port answers both questions: whether a name could change it
  // (nameMatters: the evaluation reached a domain rule) and whether it refuses.
  const byAddress: DecideTrace = { nameConsulted: false };
  const refusedByAddress = verdict(chain, { name: null, ip, port }, byAddress).verdict === 'refuse';
  const mustPeek = byAddress.nameConsulted || (refusedByAddress && config.block !== 'drop');
  if (!mustPeek) return judged(socket, listener, deps, config, o, live, ip, port, null);
  // From the accept (t0, ClientSide.acceptedAt): a native loop read the first flight before this call.
  const step = anyStepper();
  const opts: PeekOptions = {
    deadline,
    maxBytes: PEEK_CAPS.any,
    firstByteTimeoutMs: config.peek.firstByteTimeoutMs,
    // Bytes that could still open an HTTP request line, then silence: judged as not TLS and
    // not HTTP after the same wait (a client that sent "ping" and waits for a reply).
    stall: { ms: config.peek.firstByteTimeoutMs, undecided: stallCheck() },
  };
  // A first flight already here is judged in this same turn; only a wait for bytes yields.
  const now = socket.peekNow?.(step, opts) ?? null;
  if (now !== null) {
    o.peekMs = performance.now() - t0;
    return judged(socket, listener, deps, config, o, live, ip, port, now);
  }
  return socket.peek(step, opts).then((peek) => {
    o.peekMs = performance.now() - t0;
    return judged(socket, listener, deps, config, o, live, ip, port, peek);
  });
}

/**
 * The pipeline from the peek's outcome (null: no peek was needed) to the dial: undefined when
 * the connection ended within the call, else the promise of its end.
 */
function judged(
  socket: ClientSide,
  listener: ListenerKind,
  deps: PipelineDeps,
  config: PipelineSettings,
  o: ConnectionOutcome,
  live: LiveConnection,
  ip: string,
  port: number,
  peek: PeekOutcome<Peeked> | null,
): Promise<void> | undefined {
  const policyNow = () => deps.policies.lookup(o.source);
  let initial: Buffer = NO_BYTES;
  let rawName: string | null = null;
  /** How rawName was read (decide.ts Facts.via): a Novita domain matches a Host on 80 and an SNI on 443 only. */
  let via: 'tls' | 'http' = 'tls';
  // The client's first flight was a TLS ClientHello: it cannot finish a handshake once it has sent
  // its FIN (every TLS version needs more from it after the hello: RFC 8446 §2, RFC 5246 §7.3), so
  // a FIN before the upstream is reached is its going, as a reset is. Known only when the hello
  // was read before the verdict: one made on address and port alone reads no first flight.
  let finEnds = false;
  if (peek) {
    initial = peek.bytes;
    switch (peek.kind) {
      case 'timeout':
        return cut(socket, o, 'refuse', 'peek-timeout', 'client');
      case 'closed':
        // The client went (its FIN or reset) before its bytes decided anything: a flight not yet
        // whole and not malformed. Its own doing, not a refusal. The rule on both paths: the
        // bytes received decide where they alone decide (a malformed flight, a refused name, a
        // whole flight: the peek asks the parser once more at the going, peek-socket.ts and
        // native-setup.ts #peekStep, and the loop reports what it read before a reset,
        // splice_loop.c client_left), and the going only what they left open.
        return cut(socket, o, 'error', 'peek-closed', 'client');
      case 'too-large':
        return refuseMalformed(socket, live, protocolOfListener(listener), config, o, 'too-large');
      case 'silent':
        o.protocol = 'none';
        break;
      case 'stalled':
        o.protocol = 'unknown';
        break;
      case 'done': {
        const p = peek.result;
        if (p.kind === 'unknown') {
          o.protocol = 'unknown';
        } else if (p.kind === 'tls') {
          o.protocol = p.result.kind === 'not-tls' ? 'unknown' : 'tls';
          if (p.result.kind === 'malformed') {
            o.end = p.result.detail;
            return refuseMalformed(socket, live, 'tls', config, o, p.result.reason === 'too-large' ? 'too-large' : 'malformed-tls');
          }
          if (p.result.kind === 'hello') {
            finEnds = true;
            o.alpn = p.result.alpn;
            o.ech = p.result.ech;
            rawName = p.result.sni;
            via = 'tls';
          }
        } else {
          o.protocol = p.result.kind === 'not-http' ? 'unknown' : 'http';
          if (p.result.kind === 'malformed') {
            o.end = p.result.detail;
            return refuseMalformed(socket, live, 'http', config, o, p.result.reason === 'too-large' ? 'too-large' : 'malformed-http');
          }
          if (p.result.kind === 'head') {
            rawName = p.result.host;
            via = 'http';
          }
        }
      }
    }
  }

  // A name in any spelling of an IP address is not a name: only address rules apply to it. It is
  // still what the client sent, and the log keeps it (egressd.raw_name), not "no name".
  if (rawName !== null) {
    const n = normalizeWireName(rawName);
    if (!n.ok) {
      o.rawName = rawName;
      o.end = n.reason;
      return refuseMalformed(socket, live, o.protocol, config, o, 'invalid-name');
    }
    if ('name' in n) o.name = n.name;
    else o.rawName = rawName;
  }

  // (2) The verdict, on the policy in force now. A connection that carries no name, to an
  // address this sandbox resolved through egressd, is judged with the names that gave it the
  // address (Cilium's FQDN policy): allowed when one of them is allowed, refused when every one
  // is refused, so a domain deny rule also holds against clients that send no name. A name whose
  // remembered chain runs through an alias a deny rule names on this port counts as refused (as a
  // live answer's chain is, below at the dial): the rule may have come after the answer.
  // When the first remembered name a verdict rested on expires (dns/memory.ts's clock,
  // performance.now()): the dial judges again if it connects later (ConnectOptions.validUntil).
  let namesUntil = Infinity;
  const remembered = (): RememberedName[] => {
    const id = policyNow().sandbox;
    if (id === null || !deps.dnsMemory) return [];
    // Remembered as the answer gave it, without the zone a link-local destination carries.
    const at = canonicalSource(withoutZone(ip)) ?? ip;
    const names = deps.dnsMemory.chainsFor(id, at);
    if (names.length > 0) namesUntil = Math.min(namesUntil, deps.dnsMemory.expiryOf(id, at));
    return names;
  };
  let dnsName: string | null = null;
  /** The chain of the name chosen (dnsName), judged again with it on a policy change (live.aliases). */
  let dnsAliases: readonly string[] = [];
  const judge = (address: string): Verdict => {
    const chain = policyNow();
    const names = o.name === null ? remembered() : [];
    if (names.length === 0) return verdict(chain, { name: o.name, ip: address, port, ...(o.name !== null ? { via } : {}) });
    o.dnsNames = names.map((n) => n.name);
    o.matchedBy = 'dns';
    let chosen: { name: string; aliases: readonly string[]; d: Verdict } | null = null;
    for (let i = names.length - 1; i >= 0; i--) {
      const { name, aliases } = names[i]!;
      let d = verdict(chain, { name, ip: address, port, via: 'dns' });
      if (d.verdict === 'allow') {
        const denied = deniedAlias(chain, aliases, address, port);
        if (denied === null) {
          chosen = { name, aliases, d };
          break;
        }
        d = denied;
      }
      chosen ??= { name, aliases, d };
    }
    dnsName = chosen!.name;
    dnsAliases = chosen!.aliases;
    return { ...chosen!.d, rule: flatText(['dns ', JSON.stringify(chosen!.name), ': ', chosen!.d.rule ?? chosen!.d.reason]) };
  };
  const decision = judge(ip);
  const viaNow = (): NameSource => (o.name !== null ? via : 'dns');
  let facts: Facts = { name: o.name ?? dnsName, ip, port, via: viaNow() };
  live.ticket?.decided();
  live.facts = facts;
  if (o.name === null) live.aliases = dnsAliases;
  if (decision.verdict === 'refuse') return refuse(socket, live, o.protocol, config, o, decision);
  admit(o, decision);

  // (3) Where to dial: a presented name is dialed as upstream.dial says, every candidate
  // judged on its own address by the policy in force while resolving.
  // An address egressd's DNS listener gave this very sandbox for this name is one of the name's
  // addresses, whatever a later lookup would answer (rotation, geo-DNS, a short TTL).
  // `waited`: the connection waited (a lookup on the wire) since the verdict. Only then can the
  // policy, the DNS memory or the connection's own state have changed (nothing else runs within
  // this turn), and only then is the verdict made again before the dial.
  // The first flight is an argument, never captured: the closures the dial keeps for the
  // connection's life (onConnected, recheck) share this function's context, and a held
  // connection must not keep its peeked bytes through it (held-connection.test.ts).
  const dial = (target: UpstreamTarget, waited: boolean, first: Buffer): Promise<void> | undefined => {
    if (!target.ok) {
      o.end = target.detail;
      return refuseUpstream(socket, live, config, o, target.reason, decision.rule);
    }
    if (waited) {
      if (live.closed) return cut(socket, o, 'refuse', live.closeReason ?? 'policy-changed', endedByClose(live));
      const afterResolve = judge(ip);
      if (afterResolve.verdict === 'refuse') return refuse(socket, live, o.protocol, config, o, afterResolve);
      admit(o, afterResolve);
    }
    // A name whose chain runs through an alias (CNAME) a deny rule names on this port is refused,
    // as the DNS listener refuses its answer (dns/service.ts #deniedTarget): whichever resolver
    // the sandbox used, a deny rule holds for the host behind an allowed name. An alias no rule
    // names (a CDN's) is no reason; a would-refuse (report-only) lets it through, reported, as there.
    // Kept for the recheck at connect, which judges the chain again (a rule may come meanwhile);
    // the aliases alone, not the whole target (a held connection keeps what its closures name).
    const aliases = target.aliases;
    if (aliases !== undefined) {
      live.aliases = aliases;
      const denied = deniedAlias(policyNow(), aliases, ip, port);
      if (denied?.verdict === 'refuse') return refuse(socket, live, o.protocol, config, o, denied);
      if (denied !== null) admit(o, denied);
    }

    // (4) The dial: the candidates in order, RFC 8305 §5 staggered attempts within one budget;
    // then the policy in force on the address actually dialed, the last stage before any byte goes
    // upstream; then (5) the splice.
    // The dial's answer and, once spliced, the connection's end come with this promise, hours later
    // for a held connection. It is chained, not awaited: the pipeline's frames (the peeked bytes,
    // the parsed first flight, the resolve's answer, the verdicts on the way) are let go once the
    // dial is under way, and a held connection keeps its outcome record and what the dial's
    // callbacks below need (issue 12: RSS per held connection).
    // Attempts past the first hold descriptors of their own: admission grants what the budget
    // and the sandbox's share leave free, given back once an address answered (or at the end).
    // Both paths try MAX_DIAL_ADDRESSES at most (the native loop's bound).
    const t = live.ticket;
    const addresses = target.addresses.length > MAX_DIAL_ADDRESSES ? target.addresses.slice(0, MAX_DIAL_ADDRESSES) : target.addresses;
    const wanted = addresses.length - 1;
    const extra = wanted > 0 && t?.attempts ? t.attempts(wanted) : wanted;
    const connecting = socket.connect({
      addresses,
      port,
      connectTimeoutMs: config.upstream.connectTimeoutMs,
      parallel: 1 + Math.max(0, extra),
      idleTimeoutMs: config.upstream.idleTimeoutMs,
      initial: first,
      closing: live,
      finEnds,
      validUntil: namesUntil,
      onConnected: (address) => {
        t?.attemptsDone?.();
        o.dialed = address;
        facts = { name: o.name ?? dnsName, ip: address, port, via: viaNow() };
        live.facts = facts;
        if (o.name === null) live.aliases = dnsAliases;
      },
      recheck: (address) => {
        let v = judge(address);
        // The chain as at (3): a refusal stands, a would-refuse is reported unless the name's own is.
        if (v.verdict !== 'refuse' && aliases !== undefined) {
          const a = deniedAlias(policyNow(), aliases, address, port);
          if (a !== null && (a.verdict === 'refuse' || v.verdict === 'allow')) v = a;
        }
        if (v.verdict === 'refuse') return { refuse: true, why: v };
        admit(o, v);
        return { refuse: false };
      },
    });
    return connecting.then((c) => dialed(socket, config, o, live, c));
  };
  if (o.name === null || config.upstream.dial === 'original') return dial({ ok: true, addresses: [ip], how: 'original' }, false, initial);
  {
    // The remembered chain goes with it: the dial judges its aliases as a live answer's.
    const rememberedHere = (name: string): ResolveResult | null => {
      const given = remembered().find((n) => n.name === name);
      if (given === undefined) return null;
      return given.aliases.length > 0 ? { ok: true, addresses: [ip], cached: true, aliases: given.aliases } : { ok: true, addresses: [ip], cached: true };
    };
    const query: UpstreamQuery = {
      mode: config.upstream.dial,
      name: o.name,
      original: ip,
      port,
      resolver: {
        resolve: async (name, _tenant, signal) => rememberedHere(name) ?? deps.resolver.resolve(name, deps.tenantOf(o.sandbox, o.source), signal),
        cached: (name) => rememberedHere(name) ?? deps.resolver.cached(name),
      },
      // A would-refuse address is dialed as an allowed one (report-only); a refused one never.
      allows: (address) => verdict(policyNow(), { name: o.name, ip: address, port, via }).verdict !== 'refuse',
    };
    // A cached name is dialed in this same turn; only a lookup on the wire is waited for.
    const now = chooseUpstreamNow(query);
    if (now !== null) return dial(now, false, initial);
    // In a block of its own, so that only the wait's callback keeps it (see `dial`).
    // A client that goes meanwhile (its reset; its FIN after a ClientHello, `finEnds`) ends the
    // connection at once (its client socket, its log line); so does a close meanwhile (a policy
    // change that refuses it, shutdown), as it ends a dial under way. Either way the connection
    // leaves the lookup: a lookup every waiter left is cancelled, its socket closed
    // (NameResolver.resolve), and one others still wait on is held by their places. So its own
    // place is given back at once, and a sandbox that leaves each connection as its name is asked
    // holds no lookup once its connections are gone.
    {
      const first = initial;
      return new Promise<void>((resolve, reject) => {
        let waiting = true;
        const leaving = new AbortController();
        const closing = live.signal;
        /** The wait is over; `left`: the connection ends before the lookup settles. */
        const done = (left: boolean): boolean => {
          if (!waiting) return false;
          waiting = false;
          unwatch();
          closing.removeEventListener('abort', onClose);
          if (left) leaving.abort();
          return true;
        };
        const onClose = (): void => {
          if (done(true)) resolve(cut(socket, o, 'refuse', live.closeReason ?? 'policy-changed', endedByClose(live)));
        };
        const unwatch = socket.watchGone((how) => {
          if (!done(true)) return;
          clientGone(socket, o, how);
          resolve();
        }, finEnds);
        if (closing.aborted) return onClose();
        closing.addEventListener('abort', onClose, { once: true });
        chooseUpstream(query, leaving.signal).then((target) => {
          if (!done(false)) return;
          try {
            resolve(dial(target, true, first));
          } catch (err) {
            reject(err);
          }
        }, reject);
      });
    }
  }
}

/** The first flight of a connection that sent none (never written to). */
const NO_BYTES: Buffer = Buffer.alloc(0);

/** What the dial's answer and the splice's end make of the outcome (see the end of `run`). */
function dialed(socket: ClientSide, config: PipelineSettings, o: ConnectionOutcome, live: LiveConnection, c: ConnectResult): void {
  if (c.attempts.length > 1) o.tried = c.attempts.map((a) => flatText([a.address, ' ', a.result]));
  if (c.kind === 'client-gone') {
    // The dial was cancelled for it (HAProxy's abortonclose, for a reset only).
    if (c.attempts.length > 0) o.dialFailure = 'aborted';
    return clientGone(socket, o, c.how);
  }
  if (c.kind === 'dial-failed') {
    o.verdict = 'error';
    o.dialFailure = c.cause;
    o.end = c.detail;
    if (c.cause === 'aborted') {
      o.reason = live.closeReason ?? 'shutdown';
      o.endedBy = endedByClose(live);
      if (isRejudged(live.closeReason)) o.verdict = 'refuse';
    } else {
      o.reason = 'upstream-failed';
      o.endedBy = 'upstream';
    }
    socket.reset();
    return;
  }
  if (c.kind === 'refused') {
    o.dialed = null;
    return refuse(socket, live, o.protocol, config, o, c.why as Verdict);
  }
  o.dialed = c.address;
  o.connectMs = c.connectMs;
  const s = c.splice;
  if (s.endedAt !== undefined) live.endedAt = s.endedAt;
  o.bytesUp = s.bytesUp;
  o.bytesDown = s.bytesDown;
  o.end = s.end;
  if (s.end === 'aborted' && live.closeReason) {
    o.verdict = isRejudged(live.closeReason) ? 'refuse' : o.verdict;
    o.reason = live.closeReason;
    o.endedBy = endedByClose(live);
  } else {
    o.endedBy =
      s.end === 'client-reset'
        ? 'client'
        : s.end === 'upstream-reset'
          ? 'upstream'
          : // A clean close whose FIN order is unknown (neither FIN was passed on) is put on the client.
            s.end === 'closed'
            ? (s.firstFin ?? 'client')
            : 'egressd';
  }
}

/**
 * The client went after its verdict, before anything was carried: it reset (or its socket
 * failed), or it sent its FIN after a ClientHello (`fin`: it can never finish the handshake).
 * Its lookup or its dial was let go, and the connection ends as its doing (its verdict stands:
 * not a refusal nor a failure of the upstream): `client-reset`, or `client-fin`. The client is
 * reset either way: nothing it sent was carried, and a FIN would pass for an answer that ended.
 */
function clientGone(socket: ClientSide, o: ConnectionOutcome, how: GoneHow): void {
  o.end = how === 'fin' ? 'client-fin' : 'client-reset';
  o.endedBy = 'client';
  socket.reset();
}

/**
 * The refusal of the first alias (a CNAME or DNAME target the name's chain ran through) that a
 * deny rule names on this port, its rule read `alias "name": ...`; else the would-refuse of the
 * first one report-only mode lets through, which the caller admits, so the connection's line
 * reports it; null when none. An alias no rule names (a CDN's) is no reason, as the DNS listener
 * judges a chain (dns/service.ts #deniedTarget).
 */
export function deniedAlias(chain: PolicyChain, aliases: readonly string[], ip: string, port: number): Verdict | null {
  let would: Verdict | null = null;
  for (const alias of aliases) {
    // As the listener judged it: an alias that is no host name, as a child of the one above it.
    const n = judgedDnsName(alias);
    if (n === null) continue;
    const v = verdict(chain, { name: n, ip, port });
    if (v.reason !== 'deny-rule' || v.verdict === 'allow') continue;
    const named = { ...v, rule: flatText(['alias ', JSON.stringify(n), ': ', v.rule ?? v.reason]) };
    if (v.verdict === 'refuse') return named;
    would ??= named;
  }
  return would;
}

/**
 * Records the verdict that lets the connection through: `allow`, or `would-refuse` (report-only
 * mode) with the reason and rule that would have refused it. The latest stage's verdict wins,
 * so a change made while the connection waited is what its log line shows.
 */
function admit(o: ConnectionOutcome, v: Verdict): void {
  o.decided = v;
  o.verdict = v.verdict === 'would-refuse' ? 'would-refuse' : 'allow';
  o.reason = v.reason;
  o.rule = v.rule;
}

function protocolOfListener(l: ListenerKind): Protocol {
  return l === 'tls' ? 'tls' : l === 'http' ? 'http' : 'unknown';
}

function endedByClose(live: LiveConnection): EndedBy {
  return isRejudged(live.closeReason) ? 'policy' : 'egressd';
}

/** Cut a connection that never got as far as a verdict: no bytes, a reset. */
function cut(socket: ClientSide, o: ConnectionOutcome, v: ConnectionOutcome['verdict'], reason: OutcomeReason, endedBy: EndedBy): undefined {
  o.verdict = v;
  o.reason = reason;
  o.endedBy = endedBy;
  socket.reset();
  return undefined;
}

/** The client sent what cannot be read: refused in its protocol, the client's doing. */
function refuseMalformed(
  socket: ClientSide,
  live: LiveConnection,
  protocol: Protocol,
  config: PipelineSettings,
  o: ConnectionOutcome,
  reason: PeekReason,
): undefined {
  return answer(socket, live, protocol, config, o, { reason, rule: null, endedBy: 'client' });
}

/** No address could be chosen: a DNS failure is the upstream side's, the rest the policy's. */
function refuseUpstream(
  socket: ClientSide,
  live: LiveConnection,
  config: PipelineSettings,
  o: ConnectionOutcome,
  reason: TargetReason,
  rule: string | null,
): undefined {
  return answer(socket, live, o.protocol, config, o, { reason, rule, endedBy: reason === 'dns-failure' ? 'upstream' : 'policy' });
}

/** The policy refused. */
function refuse(socket: ClientSide, live: LiveConnection, protocol: Protocol, config: PipelineSettings, o: ConnectionOutcome, v: Verdict): undefined {
  o.decided = v;
  return answer(socket, live, protocol, config, o, { reason: v.reason, rule: v.rule, endedBy: 'policy', portDecided: v.matchedBy === 'port' });
}

/**
 * Refuse after accept in a way the client understands — a TLS access_denied alert, an HTTP
 * 403 naming the host and the reason, a reset for anything else (a client that sent nothing
 * included) — or, with `block: drop`, close without a byte. No byte of a refused connection
 * ever reaches an upstream.
 */
function answer(
  socket: ClientSide,
  live: LiveConnection,
  protocol: Protocol,
  config: PipelineSettings,
  o: ConnectionOutcome,
  r: { reason: OutcomeReason; rule: string | null; endedBy: EndedBy; portDecided?: boolean },
): undefined {
  o.verdict = 'refuse';
  o.reason = r.reason;
  o.rule = r.rule;
  o.endedBy = r.endedBy;
  if (config.block === 'drop') {
    socket.refuse({ kind: 'drop' });
    return undefined;
  }
  // The linger holds the client's descriptor: admission places it in the budget, or gives it up.
  const t = live.ticket;
  const linger = t?.linger === undefined ? config.refusal : { ...config.refusal, hold: () => t.linger!() };
  if (protocol === 'tls') socket.refuse({ kind: 'tls', linger });
  else if (protocol === 'http') {
    socket.refuse({
      kind: 'http',
      http: {
        host: o.name ?? o.rawName ?? o.destination ?? '',
        reason: o.reason,
        rule: o.rule,
        port: o.destinationPort,
        portDecided: r.portDecided ?? false,
        linger,
      },
    });
  } else socket.refuse({ kind: 'reset' });
  return undefined;
}
