// The native data phase (native/splice_loop.c through native/data_plane.c): once the verdict is
// made and the upstream is connected, the two sockets leave Node. Their descriptors are
// duplicated into an epoll loop (one per core) that moves the bytes with splice(2), so they stay
// in the kernel, and the outcome comes back once, for the log line and the metrics. Loop 0 runs
// on Node's own event loop (its reports and our answers cross no thread), the others on threads.
//
// Leaving Node safely: reading is stopped on both handles first, what Node had already read
// (and not yet given anyone) is taken from the streams and handed over to be written first, the
// descriptors are duplicated, and only then are Node's sockets destroyed. Destroying them closes
// Node's descriptors, and libuv removes a descriptor from its epoll set before closing it
// (uv__platform_invalidate_fd), so Node never sees an event for the connection again, and a
// later socket that reuses the number is a new registration. The duplicates keep the
// connections open: close(2) on one of two descriptors sends nothing.
//
// Where the addon cannot run (not Linux, not built, a loop that cannot start) or a socket is in
// a state the hand-off does not carry (already ended, writes still queued), spliceNative
// returns null and the caller uses the JavaScript path (splice.ts), which carries the same
// semantics and passes the same tests.

import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import type { Side, SpliceEnd, SpliceOptions, SpliceResult } from './splice.ts';

/**
 * A connection's end in the loop: (id, bytesUp, bytesDown, end, errno, dialed, connectUs,
 * attemptErrnos, firstFin: FIN_SIDES' index or -1, sinceEndMs: how long ago (ms, µs precision) the
 * loop ended it: the report waits in the queue to Node's thread).
 */
export type OutcomeFn = (
  id: number,
  up: number,
  down: number,
  end: number,
  errno: number,
  dialed: number,
  connectUs: number,
  attempts: number[],
  firstFin: number,
  sinceEndMs: number,
) => void;
/** A set-up report (native/data_plane.c's onSetup). */
export type SetupFn = (
  kind: number,
  id: number,
  loop: number,
  tag: number,
  err: number,
  state: number,
  connectUs: number,
  peer: string | null,
  peerPort: number,
  orig: string | null,
  origPort: number,
  bytes: Buffer | null,
  /** ACCEPTED: how long ago (ms) the loop accepted the connection; its first report can come 50 ms or more after. */
  sinceAcceptMs: number,
) => void;

export interface DataPlaneAddon {
  /** `hosted`: loop 0 runs on Node's event loop (this thread), the others on threads of their own. */
  start(threads: number, onOutcome: OutcomeFn, onSetup?: SetupFn, peekCap?: number, hosted?: boolean): void;
  /** Whether the addon was built able to host a loop on Node's event loop (libuv's header found). */
  hostedAvailable?(): boolean;
  /**
   * Whether libuv's idle-time metrics are on for Node's event loop; null where the addon cannot
   * read them (built without libuv's header, or a libuv whose layout it could not confirm). A
   * hosted loop turns them off (native/data_plane.c): `performance.eventLoopUtilization()` then
   * reads no idle time.
   */
  idleTimeMetrics?(): boolean | null;
  handoff(loop: number, id: number, clientFd: number, upstreamFd: number, up: Buffer | null, down: Buffer | null, idleMs: number): void;
  abort(loop: number, id: number): void;
  /** The set-up connection was admitted and will be commanded later: its loop's slot among the unanswered is free. */
  answered(loop: number, id: number): void;
  /**
   * The client's FIN ends the set-up connection while it waits for its command or its dial, before
   * an upstream connected (native/splice_loop.h sl_loop_fin_ends): a TLS client's. A command.
   */
  finEnds(loop: number, id: number): void;
  /** Every loop's cap of accepted connections not yet answered (1 to 512). */
  acceptCap(perLoop: number): void;
  /** The listeners' pauses so far, all loops: [at the cap, out of descriptors]. */
  acceptPauses(): [number, number];
  active(): number;
  /** Connections the loops accepted whose report has not reached onSetup yet: their first flight still read, or on its way. */
  undelivered(): number;
  listen(host: string, port: number, ipv6Only: boolean, backlog: number, tag: number): number;
  unlisten(tag: number): void;
  peek(loop: number, id: number, deadlineMs: number, firstByteMs: number, stallMs: number, reportAt: number): void;
  /** The loops read each accepted connection's first flight themselves under these times (0: off). */
  peekRules(tag: number, deadlineMs: number, firstByteMs: number, stallMs: number): void;
  dial(
    loop: number,
    id: number,
    addresses: string[],
    port: number,
    connectMs: number,
    attemptDelayMs: number,
    /** The most attempts in flight at once (1 to 16): the rule at the cap is dial-first.ts's. */
    parallel: number,
    idleMs: number,
    version: number,
    tell: boolean,
    validMs: number,
    /** As finEnds(), from this command on. */
    finEnds: boolean,
  ): void;
  splice(loop: number, id: number, idleMs: number): void;
  refuse(loop: number, id: number, how: number, bytes: Buffer | null, lingerMs: number, lingerMaxBytes: number): void;
  setPolicyVersion(version: number): void;
  /** Blocks until every loop ran the commands posted before (aborts included), at most timeoutMs; the loops that had not answered. */
  sync(timeoutMs: number): number;
}

/** Where set-up reports and the outcomes of set-up connections go (native-setup.ts). */
export interface SetupSink {
  readonly event: SetupFn;
  readonly outcome: OutcomeFn;
  readonly peekCap: number;
}

interface Handle {
  fd?: unknown;
  readStop?: () => number;
  reading?: boolean;
}

// The order of sl_end in native/splice_loop.h, up to the last that can end a splice.
export const ENDS: readonly SpliceEnd[] = ['closed', 'client-reset', 'upstream-reset', 'idle-timeout', 'aborted', 'error'];
/** sl_end's SL_END_CLIENT_FIN: ends no splice, only a set-up connection waiting for its upstream (sl_loop_fin_ends). */
export const END_CLIENT_FIN = 6;
// sl_outcome.first_fin: the side whose FIN the loop passed on first (-1: neither's, or an older addon).
const FIN_SIDES: readonly Side[] = ['client', 'upstream'];
/** The loop's first_fin as SpliceResult.firstFin. */
export const firstFinOf = (i: number | undefined): Side | null => (i === undefined ? null : (FIN_SIDES[i] ?? null));
/** The loop's end as SpliceResult.endedAt (performance.now() ms); an addon that does not say how long ago: now. */
export const endedAt = (sinceEndMs: number | undefined): number => performance.now() - (sinceEndMs ?? 0);
// The addon's idleMs is a uint32; longer timeouts are capped (49 days).
const MAX_IDLE_MS = 2 ** 32 - 1;

interface Pending {
  readonly resolve: (r: SpliceResult) => void;
  readonly loop: number;
}

type State =
  | { readonly ok: true; readonly addon: DataPlaneAddon; readonly threads: number; readonly hosted: boolean; readonly pending: Map<number, Pending> }
  | { readonly ok: false; readonly reason: string };

let state: State | undefined;
let threadsWanted: number | undefined;
let hostedWanted = true;
let setupSink: SetupSink | null = null;
let setupWanted = true;
let nextId = 1;
let nextLoop = 0;
let handoffs = 0;

/** How the data phase should run: the options of configureNativeSplice. */
export interface DataPlaneChoice {
  readonly enabled: boolean;
  readonly setup: boolean;
  readonly threads?: number;
  readonly hosted?: boolean;
}

/**
 * The data path the environment asks for. EGRESSD_DATA_PLANE: `native-setup` (the default)
 * accepts and sets up connections in the native loops too (native-setup.ts); `native` keeps the
 * set-up on Node's sockets and only the data phase in the loops; `js` keeps everything in
 * JavaScript. EGRESSD_DATA_PLANE_THREADS: the number of native loops, 1 to 64 (default: one per
 * core). EGRESSD_DATA_PLANE_HOST: `event-loop` (the default) runs loop 0 on Node's event loop and
 * the others on threads of their own, `threads` gives every loop a thread.
 * @throws Error naming the variable when its value is invalid.
 */
export function dataPlaneFromEnv(env: NodeJS.ProcessEnv): DataPlaneChoice {
  // Set but empty is unset, as for the other two variables: a manifest's `value: ""` or a
  // compose file's `${EGRESSD_DATA_PLANE:-}` stopped egressd from starting.
  const raw = env['EGRESSD_DATA_PLANE'];
  const mode = raw === '' ? undefined : raw;
  if (mode !== undefined && mode !== 'native' && mode !== 'js' && mode !== 'native-setup') {
    throw new Error(`EGRESSD_DATA_PLANE must be "native", "native-setup" or "js", got "${mode}"`);
  }
  const t = env['EGRESSD_DATA_PLANE_THREADS'];
  // Decimal digits alone: Number() also takes " 4", "0x4", "4.0", "1e1" and "0b11", each a
  // count its writer may not have meant.
  const threads = t === undefined || t === '' ? undefined : /^\d{1,3}$/.test(t) ? Number(t) : NaN;
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1 && threads <= 64)) {
    throw new Error(`EGRESSD_DATA_PLANE_THREADS must be an integer from 1 to 64, got "${t}"`);
  }
  const h = env['EGRESSD_DATA_PLANE_HOST'];
  if (h !== undefined && h !== '' && h !== 'event-loop' && h !== 'threads') {
    throw new Error(`EGRESSD_DATA_PLANE_HOST must be "event-loop" or "threads", got "${h}"`);
  }
  return {
    enabled: mode !== 'js',
    setup: mode === undefined || mode === 'native-setup',
    ...(threads !== undefined ? { threads } : {}),
    ...(h === 'threads' || h === 'event-loop' ? { hosted: h === 'event-loop' } : {}),
  };
}

// The environment's choice is the default of every daemon in this process, so an in-process
// daemon (the integration tests) runs the data path the variable names, set-up and data phase
// alike, as `egressd serve` does. An invalid value leaves the defaults: main.ts reports it and exits.
try {
  const choice = dataPlaneFromEnv(process.env);
  setupWanted = choice.setup;
  if (!choice.enabled) state = { ok: false, reason: 'disabled by configuration' };
  if (choice.threads !== undefined) threadsWanted = choice.threads;
  if (choice.hosted !== undefined) hostedWanted = choice.hosted;
} catch {
  // main.ts validates the variables before serving.
}

/**
 * Sets how the data phase runs, before the first connection: `threads` loops (default: one
 * per core), or `enabled: false` for the JavaScript path only; `setup: true` has the loops
 * also accept and set up connections (native-setup.ts); `hosted: false` gives loop 0 a thread of
 * its own instead of Node's event loop.
 * @throws Error when called after the data plane has started.
 */
export function configureNativeSplice(o: { enabled?: boolean; threads?: number; setup?: boolean; hosted?: boolean }): void {
  if (state?.ok) throw new Error('The native data plane is already running; configure it before the first connection');
  if (o.setup !== undefined) setupWanted = o.setup;
  if (o.hosted !== undefined) hostedWanted = o.hosted;
  if (o.enabled === false) state = { ok: false, reason: 'disabled by configuration' };
  else if (state && !state.ok && state.reason === 'disabled by configuration') state = undefined;
  if (o.threads !== undefined) {
    if (!Number.isInteger(o.threads) || o.threads < 1 || o.threads > 64) throw new Error(`Data-plane threads must be 1 to 64, got ${o.threads}`);
    threadsWanted = o.threads;
  }
}

function load(): State {
  if (state) return state;
  if (process.platform !== 'linux') return (state = { ok: false, reason: `splice(2) is Linux-only (platform "${process.platform}")` });
  let addon: Partial<DataPlaneAddon>;
  try {
    addon = createRequire(import.meta.url)('../../native/build/data_plane.node') as Partial<DataPlaneAddon>;
  } catch (err) {
    return (state = { ok: false, reason: `native/build/data_plane.node: ${err instanceof Error ? err.message : String(err)} (npm ci builds it)` });
  }
  if (typeof addon.start !== 'function' || typeof addon.handoff !== 'function' || typeof addon.abort !== 'function') {
    return (state = { ok: false, reason: 'native/build/data_plane.node exports no start/handoff/abort' });
  }
  const threads = threadsWanted ?? Math.min(64, availableParallelism());
  const pending = new Map<number, Pending>();
  const sink = setupSink;
  const onOutcome: OutcomeFn = (id, up, down, end, errno, dialed, connectUs, attempts, firstFin, sinceEndMs) => {
    const p = pending.get(id);
    if (!p) return sink?.outcome(id, up, down, end, errno, dialed, connectUs, attempts, firstFin, sinceEndMs);
    pending.delete(id);
    p.resolve({ bytesUp: up, bytesDown: down, end: ENDS[end] ?? 'error', firstFin: firstFinOf(firstFin), endedAt: endedAt(sinceEndMs) });
  };
  const hosted = hostedWanted && addon.hostedAvailable?.() === true;
  try {
    addon.start(threads, onOutcome, sink?.event, sink?.peekCap ?? 0, hosted);
  } catch (err) {
    return (state = { ok: false, reason: `the data-plane threads did not start: ${err instanceof Error ? err.message : String(err)}` });
  }
  return (state = { ok: true, addon: addon as DataPlaneAddon, threads, hosted, pending });
}

/** Whether the native loops are running (started by a first use; never starts them). */
export function nativeSpliceStarted(): boolean {
  return state?.ok === true;
}

/** Whether connections should be set up in the native loops (EGRESSD_DATA_PLANE=native-setup, the default). */
export function nativeSetupWanted(): boolean {
  return setupWanted;
}

/**
 * Has the loops also accept and set up connections (native-setup.ts), reporting to `sink`.
 * @throws Error when the data plane has already started.
 */
export function enableNativeSetup(sink: SetupSink): void {
  if (state?.ok) throw new Error('The native data plane is already running; enable set-up before the first connection');
  setupSink = sink;
}

/** The running addon with set-up enabled, or why there is none. */
export function nativeSetupPlane(): { ok: true; addon: DataPlaneAddon; threads: number } | { ok: false; reason: string } {
  const s = load();
  if (!s.ok) return { ok: false, reason: s.reason };
  if (setupSink === null) return { ok: false, reason: 'set-up was not enabled before the data plane started' };
  if (typeof s.addon.listen !== 'function') return { ok: false, reason: 'native/build/data_plane.node has no set-up functions (rebuild it: npm ci)' };
  return { ok: true, addon: s.addon, threads: s.threads };
}

/**
 * Whether connections go to the native data plane, and if not, why. `hosted`: loop 0 runs on
 * Node's event loop (EGRESSD_DATA_PLANE_HOST=event-loop, the default where the addon can);
 * `idleTimeMetrics`: whether libuv's idle-time metrics are on for Node's event loop (off once a
 * loop is hosted there, where the addon could confirm libuv's layout; null: not known).
 */
export function nativeSpliceStatus(): { ok: true; threads: number; hosted: boolean; idleTimeMetrics: boolean | null } | { ok: false; reason: string } {
  const s = load();
  return s.ok ? { ok: true, threads: s.threads, hosted: s.hosted, idleTimeMetrics: s.addon.idleTimeMetrics?.() ?? null } : { ok: false, reason: s.reason };
}

/**
 * The hand-off of a policy change: returns once every running loop has run the commands posted
 * to it before this call — each abort has closed its connection's sockets — or after
 * `timeoutMs`, blocking the calling thread meanwhile (a loop answers within one turn, in
 * microseconds). Returns how many loops had not answered; 0 when there are no loops.
 */
export function syncNativeLoops(timeoutMs: number): number {
  if (!state?.ok) return 0;
  return state.addon.sync(Math.max(0, Math.min(2 ** 32 - 1, Math.ceil(timeoutMs))));
}

/** How many connections have been handed to the native data plane since start (for tests and metrics). */
export function nativeHandoffs(): number {
  return handoffs;
}

function handleOf(s: Socket): Handle | null {
  const h = (s as unknown as { _handle?: Handle | null })._handle;
  return h && typeof h.fd === 'number' && h.fd >= 0 && typeof h.readStop === 'function' ? h : null;
}

// A socket the hand-off can carry: connected, not closed, nothing written or queued to write.
// A FIN Node has already read is fine: TCP keeps answering reads with end-of-file, so the loop
// reads it again and passes it on after the bytes before it.
function eligible(s: Socket): boolean {
  return !s.destroyed && !s.connecting && !s.writableEnded && s.writableLength === 0 && handleOf(s) !== null;
}

/**
 * The data phase in the native loop, with splice()'s contract (splice.ts): `initial` goes
 * upstream first, resolves once with the byte counts and how it ended, never rejects. Returns
 * null, having touched nothing, when the connection must take the JavaScript path instead.
 */
export function spliceNative(client: Socket, upstream: Socket, o: SpliceOptions): Promise<SpliceResult> | null {
  if (o.signal.aborted || !eligible(client) || !eligible(upstream)) return null;
  const s = load();
  if (!s.ok) return null;
  const ch = handleOf(client)!;
  const uh = handleOf(upstream)!;
  // What Node already read but nobody consumed: after the peeked bytes on the way up; whatever
  // a server-first upstream sent while being dialed, on the way down. read() may restart the
  // handle's reading, so reading is stopped only after it, with no turn of the loop between.
  const clientHeld = client.readableLength > 0 ? (client.read() as Buffer | null) : null;
  const upstreamHeld = upstream.readableLength > 0 ? (upstream.read() as Buffer | null) : null;
  ch.readStop!();
  uh.readStop!();
  ch.reading = false;
  uh.reading = false;
  const up = clientHeld ? (o.initial.length > 0 ? Buffer.concat([o.initial, clientHeld]) : clientHeld) : o.initial.length > 0 ? o.initial : null;
  const id = nextId++;
  const loop = nextLoop++ % s.threads;
  try {
    s.addon.handoff(loop, id, ch.fd as number, uh.fd as number, up, upstreamHeld, Math.min(MAX_IDLE_MS, Math.max(1, Math.ceil(o.idleTimeoutMs))));
  } catch {
    // Nothing was handed over (out of descriptors, most likely): give the streams back what
    // was taken from them and let the JavaScript path carry the connection.
    if (clientHeld) client.unshift(clientHeld);
    if (upstreamHeld) upstream.unshift(upstreamHeld);
    return null;
  }
  handoffs++;
  const result = new Promise<SpliceResult>((resolve) => {
    s.pending.set(id, { resolve, loop });
  });
  const onAbort = (): void => s.addon.abort(loop, id);
  o.signal.addEventListener('abort', onAbort, { once: true });
  // Node's descriptors close now; the loop holds its duplicates.
  client.destroy();
  upstream.destroy();
  return result.then((r) => {
    o.signal.removeEventListener('abort', onAbort);
    return r;
  });
}
