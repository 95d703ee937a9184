// Connection set-up in the native loops (issue 12; EGRESSD_DATA_PLANE=native-setup): each loop
// accepts on its own SO_REUSEPORT socket, reads SO_ORIGINAL_DST and the first bytes already
// there, and reports once (native/splice_loop.h). TypeScript stays the brain: connection.ts runs
// the same pipeline as for a Node socket against a NativeClient, whose operations are commands
// to the loop — peek more (only when the first report did not decide), dial (non-blocking,
// RFC 8305 staggered, the next address on failure), splice, refuse — and the outcome comes back
// once at the end. A connection whose policy did not change while it was dialed is spliced by
// the loop at once, without asking again (the policy version, native/splice_loop.h), unless the
// verdict's own deadline passed meanwhile (a remembered DNS name it rested on expired).
//
// accept(2) failing for want of descriptors is handled in the loop (a reserve descriptor, then a
// pause; never a busy loop) and each refused connection is reported here, to be counted as
// `global-limit`. The loops themselves never cause it: each holds at most its cap of accepted
// connections not yet admitted (setAcceptCap, sized from the descriptor budget), and a
// connection admitted without a command yet (its flight still coming, its name being resolved)
// is answered at once (`answered`), so that its slot is free for the next accept.

import { constants } from 'node:os';
import type { Socket } from 'node:net';
import { OriginalDstError } from '../errors.ts';
import { canonicalSource } from '../match/ip.ts';
import type { Peeked, PeekStepper } from '../peek/peek-steps.ts';
import { PEEK_CAPS } from '../peek/peek-steps.ts';
import { goneAlready, MAX_DIAL_ADDRESSES, type ClientSide, type ConnectOptions, type ConnectResult, type GoneHow, type Refusal } from './client-side.ts';
import { CONNECTION_ATTEMPT_DELAY_MS, type Attempt } from './dial-first.ts';
import { causeOf } from './dial.ts';
import type { Endpoint, ListenerKind, ListenerStatus } from './listener.ts';
import {
  enableNativeSetup,
  END_CLIENT_FIN,
  endedAt,
  ENDS,
  firstFinOf,
  nativeSetupPlane,
  type DataPlaneAddon,
  type OutcomeFn,
  type SetupFn,
} from './native-splice.ts';
import type { OriginalDestination } from './original-dst.ts';
import { PeekBuffer, type PeekOptions, type PeekOutcome } from './peek-socket.ts';
import { ACCESS_DENIED_ALERT, httpRefusalBytes, lingerSlot } from './refuse.ts';

// native/splice_loop.h
const EV_ACCEPTED = 1;
const EV_PEEK = 2;
const EV_CONNECTED = 3;
const EV_SHED = 4;
const PEEK_MORE = 0;
const PEEK_FULL = 1;
const PEEK_TIMEOUT = 2;
const PEEK_SILENT = 3;
const PEEK_STALLED = 4;
const PEEK_CLOSED = 5;
const PEEK_WAITING = 6;
const REFUSE_RESET = 0;
const REFUSE_DROP = 1;
const REFUSE_ANSWER = 2;
const ATTEMPT_CANCELLED = -1;
const MAX_U32 = 2 ** 32 - 1;
/** Accepted connections handed to the pipeline per turn of the event loop. */
const ACCEPT_CHUNK = 64;

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));
const errnoName = (n: number): string => ERRNO_NAMES.get(n) ?? `errno ${n}`;

/** What one listener does with its connections (one daemon's). */
export interface ListenerHandlers {
  readonly onAccept: (client: NativeClient, kind: ListenerKind) => void;
  /** A connection accept(2) could not take (EMFILE/ENFILE): reset by the loop, to be counted. */
  readonly onShed: (kind: ListenerKind, source: string, code: string) => void;
  /** Replaces SO_ORIGINAL_DST (loopback tests without iptables), given the client's address. */
  readonly originalDst?: ((socket: Socket) => OriginalDestination) | undefined;
  /**
   * The peek's times (config `peek`), read at listen and by peekRulesChanged: the loops then read
   * each connection's first flight themselves, under the same deadlines as connection.ts's peek,
   * and report it once (native/splice_loop.h sl_loop_rules). Without it, every accept is reported
   * at once and the pipeline asks for more.
   */
  readonly peek?: (() => { readonly timeoutMs: number; readonly firstByteTimeoutMs: number }) | undefined;
}

let the: { ok: true; plane: NativeSetup } | { ok: false; reason: string } | undefined;
let plane: NativeSetup | null = null;
let enabled: string | null = null;
// The loops are started with the set-up reports wired whenever this module is loaded first, so
// that Node-socket and native daemons can share one process (the tests).
try {
  enableNativeSetup({
    peekCap: PEEK_CAPS.any,
    event: (...a) => plane?.event(...a),
    outcome: (...a) => plane?.outcome(...a),
  });
} catch (err) {
  enabled = err instanceof Error ? err.message : String(err);
}

/**
 * The process's set-up plane (one, like the loops), started on first use, or why there is none
 * (another OS, the addon not built, the data plane started before set-up was wired): the
 * caller then keeps Node's listeners.
 */
export function nativeSetup(): { ok: true; plane: NativeSetup } | { ok: false; reason: string } {
  if (the) return the;
  if (enabled !== null) return (the = { ok: false, reason: enabled });
  const p = nativeSetupPlane();
  if (!p.ok) return (the = p);
  plane = new NativeSetup(p.addon, p.threads);
  return (the = { ok: true, plane });
}

/** The native set-up plane: listeners, and the connections between accept and outcome. */
export class NativeSetup {
  readonly #addon: DataPlaneAddon;
  readonly threads: number;
  readonly #conns = new Map<number, NativeClient>();
  readonly #listeners = new Map<number, { kind: ListenerKind; handlers: ListenerHandlers }>();
  /** Accepted connections not yet given to their listener's handler (see #drain). */
  readonly #accepted: { client: NativeClient; kind: ListenerKind; handlers: ListenerHandlers }[] = [];
  #draining = false;
  /** Connections handed to their handler since the last #answerAdmitted (see #hand). */
  #handed: NativeClient[] = [];
  /** Connections handed to their handler during the current batch of reports (see `event`). */
  #handledNow = 0;
  #nextTag = 1;
  #version = 0;

  constructor(addon: DataPlaneAddon, threads: number) {
    this.#addon = addon;
    this.threads = threads;
  }

  /**
   * The loops' reports so far, by kind: an accept with its first flight, an accept before any
   * byte (acceptedEarly, the flight follows as a peek report), a peek, a dial that needs judging
   * again, a connection shed at accept, an outcome. What crosses to JavaScript per connection
   * (bench/conn-js.ts prints it).
   */
  readonly reports = { accepted: 0, acceptedEarly: 0, peek: 0, connected: 0, shed: 0, outcome: 0 };

  /** Connections accepted and not yet ended. */
  get size(): number {
    return this.#conns.size;
  }

  /**
   * The most accepted connections each loop holds before admission has answered them (1 to 512):
   * past it a loop leaves new connections in the kernel's queue (native/splice_loop.h).
   */
  setAcceptCap(perLoop: number): void {
    this.#addon.acceptCap(Math.max(1, Math.min(512, Math.floor(perLoop))));
  }

  /**
   * Connections the loops accepted that this thread has not heard of yet: each loop reads a
   * connection's first flight before it reports it (peek's deadlines bound that), and the report
   * then waits its turn on this thread. A stop's drain waits for them.
   */
  get undelivered(): number {
    return this.#addon.undelivered();
  }

  /** How many times the loops' listeners stopped accepting: at the cap, and out of descriptors. */
  acceptPauses(): { cap: number; descriptors: number } {
    const [cap, descriptors] = this.#addon.acceptPauses();
    return { cap, descriptors };
  }

  /**
   * A policy changed (anywhere in the process): a dial that connects after this is judged again
   * on the policy in force before any byte goes upstream. Call synchronously with the change.
   */
  policyChanged(): void {
    this.#version++;
    this.#addon.setPolicyVersion(this.#version);
  }

  get policyVersion(): number {
    return this.#version;
  }

  /** Listens on `endpoint` in every loop; returns the tag that unlisten takes and the port bound. */
  listen(kind: ListenerKind, endpoint: Endpoint, handlers: ListenerHandlers): { tag: number; port: number } {
    const tag = this.#nextTag++;
    const port = this.#addon.listen(endpoint.host, endpoint.port, endpoint.host.includes(':'), 1024, tag);
    this.#listeners.set(tag, { kind, handlers });
    this.#pushRules(tag, handlers);
    return { tag, port };
  }

  /** The peek's times changed (a reload): every listener's loops read by the new ones from their next accept. */
  peekRulesChanged(): void {
    for (const [tag, l] of this.#listeners) this.#pushRules(tag, l.handlers);
  }

  #pushRules(tag: number, handlers: ListenerHandlers): void {
    const p = handlers.peek?.();
    if (!p) return;
    const ms = (n: number): number => Math.min(MAX_U32, Math.max(1, Math.ceil(n)));
    // connection.ts: the deadline from the start, the first-byte wait, and the same wait as the
    // stall for bytes that could still open a request line (mayStall).
    this.#addon.peekRules(tag, ms(p.timeoutMs), ms(p.firstByteTimeoutMs), ms(p.firstByteTimeoutMs));
  }

  unlisten(tag: number): void {
    this.#addon.unlisten(tag);
    // Reports already queued for it still find their handlers; the entry is small.
  }

  /**
   * A set-up report from a loop (native-splice.ts routes them here). Typed by SetupFn, the one
   * declaration of the addon's report, so the two cannot disagree on an argument.
   */
  readonly event: SetupFn = (kind, id, loop, tag, err, state, connectUs, peer, peerPort, orig, origPort, bytes, sinceAcceptMs) => {
    this.reports[
      kind === EV_ACCEPTED ? (state === PEEK_WAITING ? 'acceptedEarly' : 'accepted') : kind === EV_PEEK ? 'peek' : kind === EV_CONNECTED ? 'connected' : 'shed'
    ]++;
    try {
      if (kind === EV_ACCEPTED) {
        const l = this.#listeners.get(tag);
        const od = this.#od(l?.handlers.originalDst, peer ?? '', peerPort, err, orig, origPort);
        const c = new NativeClient(this.#addon, this, id, loop, peer ?? '', peerPort, od, bytes, state, performance.now() - sinceAcceptMs);
        this.#conns.set(id, c);
        if (!l) return c.reset();
        // Judged in this very call when nothing waits before it: the verdict and the dial command
        // leave with the report that brought the first flight, without another turn of the event
        // loop. Past ACCEPT_CHUNK in one batch of reports (a flood), the rest wait their turn.
        if (!this.#draining && this.#handledNow < ACCEPT_CHUNK) {
          if (this.#handledNow++ === 0) queueMicrotask(this.#endBatch);
          return this.#hand(c, l.kind, l.handlers);
        }
        this.#accepted.push({ client: c, kind: l.kind, handlers: l.handlers });
        if (!this.#draining) {
          this.#draining = true;
          setImmediate(() => this.#drain());
        }
      } else if (kind === EV_SHED) {
        const l = this.#listeners.get(tag);
        l?.handlers.onShed(l.kind, canonicalSource(peer ?? '') ?? String(peer), errnoName(err));
      } else {
        const c = this.#conns.get(id);
        if (kind === EV_PEEK) c?.onPeek(state, bytes);
        else if (kind === EV_CONNECTED) c?.onConnected(state, connectUs, err !== 0);
      }
    } catch (e) {
      // A report must never throw back into the addon; the connection is reset and its outcome
      // (internal-error) comes from the pipeline.
      this.#addon.abort(loop, id);
      queueMicrotask(() => {
        throw e;
      });
    }
  };

  /**
   * Hands the accepted connections a batch of reports brought beyond its first ACCEPT_CHUNK to
   * their handlers ACCEPT_CHUNK at a time, one chunk per turn of the event loop: a flood's reports
   * arrive in large batches, and the admin listener (/healthz) must get its turn between chunks,
   * as it does between Node's own accepts.
   */
  #drain(): void {
    const chunk = this.#accepted.splice(0, ACCEPT_CHUNK);
    for (const a of chunk) this.#hand(a.client, a.kind, a.handlers);
    if (this.#accepted.length > 0) setImmediate(() => this.#drain());
    else this.#draining = false;
  }

  /** One batch of reports is over (its microtasks run after it): the next may judge at once again. */
  readonly #endBatch = (): void => {
    this.#handledNow = 0;
  };

  #hand(client: NativeClient, kind: ListenerKind, handlers: ListenerHandlers): void {
    try {
      handlers.onAccept(client, kind);
    } catch (e) {
      client.reset();
      queueMicrotask(() => {
        throw e;
      });
    }
    if (this.#handed.push(client) === 1) setImmediate(this.#answerAdmitted);
  }

  /**
   * Tells the loops which connections handed over were taken on without a command yet (the loop
   * reads their flight on, or the verdict waits for DNS): their slots among the loop's
   * unanswered connections are free, and so a slow client or a slow name holds one only until
   * admission, as every other connection does. After the handler's own continuations (the next
   * turn), so that a connection commanded by then costs nothing more.
   */
  readonly #answerAdmitted = (): void => {
    const handed = this.#handed;
    this.#handed = [];
    for (const c of handed) c.answerIfSilent();
  };

  /** A set-up connection's end (typed by OutcomeFn, as `event` is by SetupFn). */
  readonly outcome: OutcomeFn = (id, up, down, end, errno, dialed, connectUs, attempts, firstFin, sinceEndMs) => {
    this.reports.outcome++;
    const c = this.#conns.get(id);
    if (!c) return;
    this.#conns.delete(id);
    c.onOutcome(up, down, end, errno, dialed, connectUs, attempts, firstFin, sinceEndMs);
  };

  #od(
    replace: ListenerHandlers['originalDst'],
    peer: string,
    peerPort: number,
    err: number,
    orig: string | null,
    origPort: number,
  ): OriginalDestination | Error {
    if (replace) return replace({ remoteAddress: peer, remotePort: peerPort } as Socket);
    if (err === 0 && orig !== null) return { kind: 'redirected', address: orig, port: origPort };
    if (err === -1) return { kind: 'not-redirected', why: `The original destination "${orig}:${origPort}" is the listener itself` };
    const code = errnoName(err);
    if (code === 'ENOENT') return { kind: 'not-redirected', why: 'No NAT entry for this connection (ENOENT)' };
    if (code === 'ENOPROTOOPT') return { kind: 'not-redirected', why: 'Connection tracking is not loaded (ENOPROTOOPT)' };
    if (code === 'ENOTCONN' || code === 'EBADF') return { kind: 'not-redirected', why: 'The socket is already closed' };
    return new OriginalDstError(code);
  }
}

/**
 * What a dial's reports read of its ConnectOptions, kept for the connection's whole life (the
 * outcome settles the dial). Not the options themselves: their `initial` is the peeked first
 * flight, which the loop holds and writes itself (issue 12: RSS per held connection).
 */
type DialWait = Pick<ConnectOptions, 'port' | 'connectTimeoutMs' | 'idleTimeoutMs' | 'closing' | 'recheck' | 'onConnected'>;

type Pending =
  // `resolve` is null while peekNow's caller has not yet taken the wait over (peek()).
  | { kind: 'peek'; buf: PeekBuffer<Peeked>; opts: PeekOptions; resolve: ((o: PeekOutcome<Peeked>) => void) | null }
  | { kind: 'connect'; o: DialWait; resolve: (r: ConnectResult) => void }
  | null;

/** A client connection held by a native loop (client-side.ts's contract). */
export class NativeClient implements ClientSide {
  readonly #addon: DataPlaneAddon;
  readonly #plane: NativeSetup;
  readonly id: number;
  readonly loop: number;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly #od: OriginalDestination | Error;
  /** When the loop accepted the connection (performance.now() ms): its first report may come 50 ms or more after (ClientSide.acceptedAt). */
  readonly acceptedAt: number;
  #first: Buffer | null;
  #firstState: number;
  #pending: Pending = null;
  /** A peek settled while no one waited on it yet (see onPeek); peek() answers with it. */
  #settledEarly: PeekOutcome<Peeked> | null = null;
  #ended = false;
  /**
   * egressd reset it (reset()): the abort is on its way to the loop, which may still report what
   * it read before running it (see onPeek). Never cleared.
   */
  #reset = false;
  #addresses: readonly string[] = [];
  #releaseLinger: (() => void) | null = null;
  /** A command (or `answered`) went to the loop: the connection no longer holds an unanswered slot. */
  #answered = false;
  /** How the client went, as the loop reported it while no step of the pipeline waited on the loop (see onOutcome); null while it has not. */
  #gone: GoneHow | null = null;
  /** watchGone's callback while it watches. */
  #onGone: ((how: GoneHow) => void) | null = null;

  constructor(
    addon: DataPlaneAddon,
    plane: NativeSetup,
    id: number,
    loop: number,
    remoteAddress: string,
    remotePort: number,
    od: OriginalDestination | Error,
    first: Buffer | null,
    firstState: number,
    acceptedAt: number,
  ) {
    this.#addon = addon;
    this.acceptedAt = acceptedAt;
    this.#plane = plane;
    this.id = id;
    this.loop = loop;
    this.remoteAddress = remoteAddress;
    this.remotePort = remotePort;
    this.#od = od;
    this.#first = first;
    this.#firstState = firstState;
  }

  /** Tells the loop the connection was taken on, when no command did yet (NativeSetup's #answerAdmitted). */
  answerIfSilent(): void {
    if (this.#answered || this.#ended) return;
    this.#answered = true;
    this.#addon.answered(this.loop, this.id);
  }

  /** Admission's handle: reset at once (critical memory pressure, a limit). */
  resetAndDestroy(): void {
    this.reset();
  }

  originalDst(): OriginalDestination {
    if (this.#od instanceof Error) throw this.#od;
    return this.#od;
  }

  peekNow(step: PeekStepper<Peeked>, opts: PeekOptions): PeekOutcome<Peeked> | null {
    const p: Pending & { kind: 'peek' } = { kind: 'peek', buf: new PeekBuffer(step, opts.maxBytes), opts, resolve: null };
    this.#pending = p;
    const first = this.#first;
    this.#first = null;
    const o = this.#peekStep(p, this.#firstState, first);
    // Unsettled, the peek stays pending (the loop reads on, or was asked for more): peek() takes it over.
    if (o !== null) this.#pending = null;
    return o;
  }

  peek(step: PeekStepper<Peeked>, opts: PeekOptions): Promise<PeekOutcome<Peeked>> {
    return new Promise((resolve) => {
      const early = this.#settledEarly;
      if (early !== null) {
        this.#settledEarly = null;
        return resolve(early);
      }
      const started = this.#pending;
      if (started?.kind === 'peek') {
        started.resolve = resolve;
        return;
      }
      const p: Pending & { kind: 'peek' } = { kind: 'peek', buf: new PeekBuffer(step, opts.maxBytes), opts, resolve };
      this.#pending = p;
      const first = this.#first;
      this.#first = null;
      const o = this.#peekStep(p, this.#firstState, first);
      if (o !== null) {
        this.#pending = null;
        resolve(o);
      }
    });
  }

  /**
   * Feeds a report's bytes to the parser: the peek's outcome when it is settled (the caller then
   * lets the pending peek go), else null, having asked the loop for more when it needs asking.
   */
  #peekStep(p: Pending & { kind: 'peek' }, state: number, bytes: Buffer | null): PeekOutcome<Peeked> | null {
    let r = bytes && bytes.length > 0 ? p.buf.push(bytes) : null;
    if (r === 'too-large') return { kind: 'too-large', bytes: p.buf.bytes() };
    // The loop's read ended without the parser's answer (a deadline, the client's close, a
    // stall, the cap): the bytes may have one it was not asked for yet (PeekBuffer.settle).
    if (r === null && state !== PEEK_MORE && state !== PEEK_WAITING) r = p.buf.settle();
    if (r !== null) return { kind: 'done', result: r.result, bytes: p.buf.bytes() };
    switch (state) {
      case PEEK_CLOSED:
        return { kind: 'closed', bytes: allOf(p.buf) };
      case PEEK_TIMEOUT:
        return { kind: 'timeout', bytes: allOf(p.buf) };
      case PEEK_SILENT:
        return { kind: 'silent', bytes: Buffer.alloc(0) };
      case PEEK_STALLED:
        return { kind: 'stalled', bytes: allOf(p.buf) };
      case PEEK_FULL:
        return { kind: 'too-large', bytes: allOf(p.buf) };
      case PEEK_WAITING:
        // The loop reads on by itself and reports once more (sl_loop_rules).
        return null;
    }
    // PEEK_MORE: the parser wants more. The deadlines count from the accept, as peekSocket's
    // count from the pipeline's start.
    const remaining = p.opts.deadline - this.acceptedAt;
    if (remaining <= 0 || p.opts.deadline <= performance.now()) return { kind: 'timeout', bytes: allOf(p.buf) };
    const first = p.opts.firstByteTimeoutMs !== undefined && p.opts.firstByteTimeoutMs < remaining ? Math.max(1, p.opts.firstByteTimeoutMs) : 0;
    const stall = p.opts.stall !== undefined && p.buf.total > 0 && p.opts.stall.undecided(p.buf.view()) ? Math.max(1, p.opts.stall.ms) : 0;
    // While a stall is possible every byte may change it (mayStall), so every byte is reported.
    const reportAt = stall > 0 ? p.buf.total + 1 : Math.max(p.buf.total + 1, p.buf.wantsAt);
    this.#answered = true;
    this.#addon.peek(this.loop, this.id, Math.min(MAX_U32, Math.ceil(remaining)), first, stall, reportAt);
    return null;
  }

  /**
   * Answers a pending peek that was let go. peekNow's caller takes its wait over (peek()) within
   * the same turn, before any report can come; should one come first, peek() answers with it.
   */
  #settle(p: Pending & { kind: 'peek' }, o: PeekOutcome<Peeked>): void {
    if (p.resolve !== null) p.resolve(o);
    else this.#settledEarly = o;
  }

  onPeek(state: number, bytes: Buffer | null): void {
    // After egressd's own reset (critical memory pressure, shutdown) the peek ends as it is, at the
    // outcome, as on Node's sockets, where no byte comes after resetAndDestroy (peek-socket.ts
    // onClose). The loop runs the abort after its turn's events, so a report may come between:
    // the bytes before the client's own going (client_left), or the rest of a flight. Judged, a
    // bad request or a denied name reset under pressure was logged as refused, not peek-closed.
    if (this.#reset) return;
    const p = this.#pending;
    if (p?.kind === 'peek') {
      const o = this.#peekStep(p, state, bytes);
      if (o === null) return;
      this.#pending = null;
      this.#settle(p, o);
      return;
    }
    // The loop's own report came before the pipeline asked (it reads the first flight by itself
    // after an early accept report): kept for peek(). After a dial or a refusal it is moot.
    if (this.#pending !== null || this.#ended) return;
    if (bytes && bytes.length > 0) this.#first = this.#first && this.#first.length > 0 ? Buffer.concat([this.#first, bytes]) : bytes;
    this.#firstState = state;
  }

  watchGone(gone: (how: GoneHow) => void, finEnds = false): () => void {
    const already = this.#gone;
    if (already !== null) return goneAlready(gone, already);
    this.#onGone = gone;
    // The loop watches the client throughout; told that its FIN ends it, it ends the connection on
    // it (or at once, when it came already) and reports `client-fin` (onOutcome).
    if (finEnds && !this.#ended) {
      this.#answered = true;
      this.#addon.finEnds(this.loop, this.id);
    }
    return () => {
      if (this.#onGone === gone) this.#onGone = null;
    };
  }

  connect(o: ConnectOptions): Promise<ConnectResult> {
    return new Promise((resolve) => {
      if (o.closing.closed) return resolve({ kind: 'dial-failed', cause: 'aborted', detail: 'Dialing was aborted', attempts: [] });
      // The loop closed the connection while the pipeline waited (the client's reset, reported
      // at once: native/splice_loop.c client_left): nothing to dial for.
      if (this.#ended) {
        return resolve(
          this.#gone !== null
            ? { kind: 'client-gone', how: this.#gone, attempts: [] }
            : { kind: 'dial-failed', cause: 'aborted', detail: 'Dialing was aborted', attempts: [] },
        );
      }
      // The loop takes 16 addresses at most; RFC 8305 needs far fewer to find one that answers.
      this.#addresses = o.addresses.slice(0, MAX_DIAL_ADDRESSES);
      const wait: DialWait = {
        port: o.port,
        connectTimeoutMs: o.connectTimeoutMs,
        idleTimeoutMs: o.idleTimeoutMs,
        closing: o.closing,
        recheck: o.recheck,
        ...(o.onConnected ? { onConnected: o.onConnected } : {}),
      };
      this.#pending = { kind: 'connect', o: wait, resolve };
      o.closing.onClose = this.reset;
      const od = this.#od instanceof Error ? null : this.#od;
      // The loop tells which address answered only when the caller cannot know it already.
      const tell = !(this.#addresses.length === 1 && od?.kind === 'redirected' && od.address === this.#addresses[0]);
      this.#answered = true;
      this.#addon.dial(
        this.loop,
        this.id,
        // Read during the call, never kept (data_plane.c copies the addresses).
        this.#addresses as string[],
        o.port,
        Math.min(MAX_U32, Math.max(1, Math.ceil(o.connectTimeoutMs))),
        CONNECTION_ATTEMPT_DELAY_MS,
        Math.min(MAX_DIAL_ADDRESSES, Math.max(1, Math.floor(o.parallel ?? MAX_DIAL_ADDRESSES))),
        Math.min(MAX_U32, Math.max(1, Math.ceil(o.idleTimeoutMs))),
        this.#plane.policyVersion,
        tell,
        // The verdict's own deadline (a remembered DNS name expiring), from now; -1: none.
        o.validUntil === undefined || o.validUntil === Infinity ? -1 : Math.max(0, o.validUntil - performance.now()),
        o.finEnds === true,
      );
    });
  }

  /**
   * The dial connected: `spliced` when the loop went on (the policy did not change and the
   * verdict's deadline had not passed), else judge again.
   */
  onConnected(index: number, _connectUs: number, spliced: boolean): void {
    // After egressd's own reset (a close meanwhile: shutdown, a policy change; memory pressure) the
    // dial ends as it is, at the outcome, as a Node socket's dial ends on its abort (client-side.ts):
    // the loop may report the connect it made before it ran the abort, and judged then, the
    // connection was logged by a verdict made after its end (refused, or allowed again), and
    // asked to splice or refuse once it was gone.
    if (this.#reset) return;
    const p = this.#pending;
    if (p?.kind !== 'connect') return;
    const address = this.#addresses[index] ?? '';
    p.o.onConnected?.(address);
    if (spliced) return;
    const r = p.o.recheck(address);
    if (!r.refuse) return this.#addon.splice(this.loop, this.id, Math.min(MAX_U32, Math.max(1, Math.ceil(p.o.idleTimeoutMs))));
    this.#pending = null;
    if (p.o.closing.onClose === this.reset) p.o.closing.onClose = null;
    p.resolve({ kind: 'refused', why: r.why, address, connectMs: _connectUs / 1000, attempts: this.#attempts([], index) });
  }

  #attempts(errnos: readonly number[], connected: number): Attempt[] {
    const n = Math.max(errnos.length, connected + 1);
    const out: Attempt[] = [];
    for (let i = 0; i < n && i < this.#addresses.length; i++) {
      const e = i === connected ? 0 : (errnos[i] ?? ATTEMPT_CANCELLED);
      out.push({ address: this.#addresses[i]!, result: e === 0 ? 'connected' : e === ATTEMPT_CANCELLED ? 'cancelled' : causeOf(errnoName(e)) });
    }
    return out;
  }

  onOutcome(up: number, down: number, end: number, errno: number, dialed: number, connectUs: number, errnos: number[], firstFin: number, sinceEndMs = 0): void {
    this.#ended = true;
    this.#releaseLinger?.();
    this.#releaseLinger = null;
    const p = this.#pending;
    this.#pending = null;
    const went: GoneHow | null = end === END_CLIENT_FIN ? 'fin' : ENDS[end] === 'client-reset' ? 'reset' : null;
    if (p === null) {
      // Nothing asked of the loop waits (a lookup on the wire, the verdict): the loop ended the
      // connection by itself, on the client's reset (or its FIN, told finEnds), and the
      // pipeline's wait is told.
      this.#gone = went;
      const gone = this.#onGone;
      this.#onGone = null;
      if (went !== null) gone?.(went);
      return;
    }
    if (p.kind === 'peek') return this.#settle(p, { kind: 'closed', bytes: allOf(p.buf) });
    if (p.o.closing.onClose === this.reset) p.o.closing.onClose = null;
    const attempts = this.#attempts(errnos, dialed);
    // The client went while its upstream was dialed: the loop cancelled every attempt.
    if (dialed < 0 && went !== null) return p.resolve({ kind: 'client-gone', how: went, attempts });
    if (dialed < 0) {
      const aborted = ENDS[end] === 'aborted';
      const cause = aborted ? 'aborted' : causeOf(errnoName(errno));
      const target = (a: string): string => `${a.includes(':') ? `[${a}]` : a}:${p.o.port}`;
      const detail = aborted
        ? 'Dialing was aborted'
        : cause === 'timeout'
          ? `No address answered within ${p.o.connectTimeoutMs} ms (tried ${this.#addresses.slice(0, Math.max(1, attempts.length)).join(', ')})`
          : attempts.length > 1
            ? `Every address failed; last: Connecting to "${target(this.#addresses[attempts.length - 1]!)}" failed: ${errnoName(errno)}`
            : `Connecting to "${target(this.#addresses[0] ?? '')}" failed: ${errnoName(errno)}`;
      return p.resolve({ kind: 'dial-failed', cause, detail, attempts });
    }
    p.resolve({
      kind: 'spliced',
      address: this.#addresses[dialed] ?? '',
      connectMs: Math.round(connectUs) / 1000,
      attempts,
      splice: { bytesUp: up, bytesDown: down, end: ENDS[end] ?? 'error', firstFin: firstFinOf(firstFin), endedAt: endedAt(sinceEndMs) },
    });
  }

  refuse(r: Refusal): void {
    if (this.#ended) return;
    this.#answered = true;
    switch (r.kind) {
      case 'reset':
        return this.#addon.refuse(this.loop, this.id, REFUSE_RESET, null, 0, 0);
      case 'drop':
        return this.#addon.refuse(this.loop, this.id, REFUSE_DROP, null, 0, 0);
      case 'tls':
      case 'http': {
        const linger = r.kind === 'tls' ? r.linger : r.http.linger;
        const bytes = r.kind === 'tls' ? (ACCESS_DENIED_ALERT as Buffer) : httpRefusalBytes(r.http);
        const slot = lingerSlot(linger);
        this.#releaseLinger = () => slot.release();
        return this.#addon.refuse(this.loop, this.id, REFUSE_ANSWER, bytes, Math.min(MAX_U32, slot.ms), linger.lingerMaxBytes);
      }
    }
  }

  /** Closes the connection in its loop, at whatever stage (an arrow: also the dial's close hook). */
  readonly reset = (): void => {
    if (this.#ended) return;
    this.#reset = true;
    this.#answered = true;
    this.#addon.abort(this.loop, this.id);
  };
}

/** Every byte a peek read, or an empty buffer when it read none. */
function allOf(buf: PeekBuffer<Peeked>): Buffer {
  return buf.total > 0 ? buf.bytes() : Buffer.alloc(0);
}

/** A listener whose sockets the native loops own (one per loop, SO_REUSEPORT): listener.ts's shape. */
export class NativeListener {
  readonly kind: ListenerKind;
  readonly endpoint: Endpoint;
  readonly #plane: NativeSetup;
  readonly #handlers: ListenerHandlers;
  #status: ListenerStatus = { state: 'idle' };
  #tag: number | null = null;

  constructor(kind: ListenerKind, endpoint: Endpoint, plane: NativeSetup, handlers: ListenerHandlers) {
    this.kind = kind;
    this.endpoint = endpoint;
    this.#plane = plane;
    this.#handlers = handlers;
  }

  get status(): ListenerStatus {
    return this.#status;
  }

  get port(): number | null {
    return this.#status.state === 'listening' ? this.#status.port : null;
  }

  listen(): Promise<void> {
    try {
      const r = this.#plane.listen(this.kind, this.endpoint, this.#handlers);
      this.#tag = r.tag;
      this.#status = { state: 'listening', address: this.endpoint.host, port: r.port };
      return Promise.resolve();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#status = { state: 'failed', error: `${this.endpoint.text}: ${message}` };
      return Promise.reject(new Error(`Cannot listen on ${this.kind} ${this.endpoint.text}: ${message}`, { cause: err }));
    }
  }

  close(): Promise<void> {
    if (this.#tag !== null) this.#plane.unlisten(this.#tag);
    this.#tag = null;
    this.#status = { state: 'closed' };
    return Promise.resolve();
  }
}
