// The path of one redirected connection, top to bottom:
//   original destination → sandbox by source → peek (name) → decide → dial → splice | refuse
// and exactly one outcome record at the end. Nothing here throws to the listener: every
// failure becomes an outcome with a reason, and the daemon keeps serving everyone else.

import type { Socket } from 'node:net';
import { canonicalSource } from '../match/ip.ts';
import { anyStepper, httpStepper, PEEK_CAPS, tlsStep, type Peeked } from '../peek/peek-steps.ts';
import type { Decision } from '../policy/decide.ts';
import { normalizeWireName } from '../match/names.ts';
import type { OriginalDestination } from './original-dst.ts';
import { peekSocket, type PeekOutcome } from './peek-socket.ts';
import type { ListenerKind } from './listener.ts';
import type { ConnectionOutcome, OutcomeReason, Protocol } from './outcome.ts';
import { chooseUpstream, type DialMode } from './upstream-target.ts';
import type { NameResolver } from './resolve.ts';
import { dial } from './dial.ts';
import { splice } from './splice.ts';
import { refuseHttp, refuseTcp, refuseTls, dropSilently, type BlockMode, type Linger } from './refuse.ts';
import type { PolicyLookup } from '../control/store.ts';
import { nameMatters, verdict } from '../policy/verdict.ts';
import type { ConnectionRegistry, LiveConnection } from './registry.ts';
import type { ResolvedNames } from '../dns/memory.ts';

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
  readonly dnsMemory?: Pick<ResolvedNames, 'namesFor'>;
  /** SO_ORIGINAL_DST; replaceable so loopback tests can run without iptables. */
  readonly originalDst: (socket: Socket) => OriginalDestination;
  readonly emit: (o: ConnectionOutcome) => void;
  /** Called once the verdict is made (the connection stops counting as undecided). */
  readonly onDecided?: () => void;
}

export async function handleConnection(socket: Socket, listener: ListenerKind, deps: PipelineDeps): Promise<void> {
  const config = deps.config();
  const startedAt = Date.now();
  const deadline = startedAt + config.peek.timeoutMs;
  // Errors surface through the socket's state and the steps below; an unhandled 'error'
  // event must never take the process down.
  socket.on('error', () => {});
  socket.setNoDelay(true);

  const o: ConnectionOutcome = {
    listener,
    sandbox: null,
    source: canonicalSource(socket.remoteAddress ?? '') ?? String(socket.remoteAddress),
    sourcePort: socket.remotePort ?? 0,
    destination: null,
    destinationPort: null,
    name: null,
    protocol: 'none',
    verdict: 'refuse',
    reason: 'internal-error',
    rule: null,
    dialed: null,
    bytesUp: 0,
    bytesDown: 0,
    startedAt,
    durationMs: 0,
  };
  const live: LiveConnection = deps.registry.add({ outcome: o, abort: new AbortController(), facts: null });
  const finish = (): void => {
    o.durationMs = Date.now() - startedAt;
    deps.registry.remove(live);
    deps.emit(o);
  };

  try {
    await run(socket, listener, deps, config, deadline, o, live);
  } catch (err) {
    o.verdict = 'error';
    o.reason = 'internal-error';
    o.end = err instanceof Error ? err.message : String(err);
    if (!socket.destroyed) socket.resetAndDestroy();
  }
  finish();
}

async function run(
  socket: Socket,
  listener: ListenerKind,
  deps: PipelineDeps,
  config: PipelineSettings,
  deadline: number,
  o: ConnectionOutcome,
  live: LiveConnection,
): Promise<void> {
  const od = deps.originalDst(socket);
  if (od.kind === 'not-redirected') {
    // A direct connection to a listener is a loop or a probe: nowhere legitimate to go.
    o.end = od.why;
    return cut(socket, o, 'not-redirected');
  }
  o.destination = od.address;
  o.destinationPort = od.port;

  // The chain is looked up again at every stage below (peek, resolve, dial): a policy change
  // made while this connection waits reaches it before any byte goes upstream.
  o.sandbox = deps.policies.lookup(o.source).sandbox;
  const ip = od.address;
  const port = od.port;

  // On the tcp listener the verdict is made by address and port first; the client is peeked
  // only when a name could change it, so server-first protocols (SSH, SMTP) are not delayed.
  let peek: PeekOutcome<Peeked> | null = null;
  const peekStart = Date.now();
  if (listener === 'tls') {
    peek = await peekSocket(socket, tlsStep, { deadline, maxBytes: PEEK_CAPS.tls });
  } else if (listener === 'http') {
    peek = await peekSocket(socket, httpStepper(), { deadline, maxBytes: PEEK_CAPS.http });
  } else if (nameMatters(deps.policies.lookup(o.source), { ip, port })) {
    peek = await peekSocket(socket, anyStepper(), {
      deadline,
      maxBytes: PEEK_CAPS.any,
      firstByteTimeoutMs: config.peek.firstByteTimeoutMs,
    });
  }
  if (peek) o.peekMs = Date.now() - peekStart;

  let initial: Buffer = Buffer.alloc(0);
  let rawName: string | null = null;
  if (peek) {
    initial = peek.bytes;
    switch (peek.kind) {
      case 'timeout':
        return cut(socket, o, 'peek-timeout');
      case 'closed':
        return cut(socket, o, 'peek-closed');
      case 'too-large':
        return refuse(socket, protocolOfListener(listener), config, o, { verdict: 'refuse', reason: 'too-large', rule: null });
      case 'silent':
        o.protocol = 'none';
        break;
      case 'done': {
        const p = peek.result;
        if (p.kind === 'unknown') {
          o.protocol = 'unknown';
        } else if (p.kind === 'tls') {
          o.protocol = p.result.kind === 'not-tls' ? 'unknown' : 'tls';
          if (p.result.kind === 'malformed') {
            const reason: OutcomeReason = p.result.reason === 'too-large' ? 'too-large' : 'malformed-tls';
            o.end = p.result.detail;
            return refuse(socket, 'tls', config, o, { verdict: 'refuse', reason, rule: null });
          }
          if (p.result.kind === 'hello') {
            o.alpn = p.result.alpn;
            o.ech = p.result.ech;
            rawName = p.result.sni;
          }
        } else {
          o.protocol = p.result.kind === 'not-http' ? 'unknown' : 'http';
          if (p.result.kind === 'malformed') {
            const reason: OutcomeReason = p.result.reason === 'too-large' ? 'too-large' : 'malformed-http';
            o.end = p.result.detail;
            return refuse(socket, 'http', config, o, { verdict: 'refuse', reason, rule: null });
          }
          if (p.result.kind === 'head') rawName = p.result.host;
        }
      }
    }
  }

  // A name in any spelling of an IP address is not a name: only address rules apply to it.
  if (rawName !== null) {
    const n = normalizeWireName(rawName);
    if (!n.ok) {
      o.rawName = rawName;
      o.end = n.reason;
      return refuse(socket, o.protocol, config, o, { verdict: 'refuse', reason: 'invalid-name', rule: null });
    }
    if ('name' in n) o.name = n.name;
  }

  let facts: { name: string | null; ip: string; port: number } = { name: o.name, ip, port };
  let decision: Decision = verdict(deps.policies.lookup(o.source), facts);
  // A connection that carries no name, to an address this sandbox resolved through egressd, is
  // judged with the names that gave it the address (Cilium's FQDN policy): allowed when one of
  // them is allowed, refused when every one is refused, so a domain deny rule also holds
  // against clients that send no name.
  const remembered = (): string[] => {
    const id = deps.policies.lookup(o.source).sandbox;
    return id === null || !deps.dnsMemory ? [] : deps.dnsMemory.namesFor(id, canonicalSource(ip) ?? ip);
  };
  let viaDns = false;
  if (o.name === null) {
    const names = remembered();
    if (names.length > 0) {
      o.dnsNames = names;
      o.matchedBy = 'dns';
      let chosen: { name: string; d: Decision } | null = null;
      for (let i = names.length - 1; i >= 0; i--) {
        const d = verdict(deps.policies.lookup(o.source), { name: names[i]!, ip, port });
        if (d.verdict === 'allow') {
          chosen = { name: names[i]!, d };
          break;
        }
        chosen ??= { name: names[i]!, d };
      }
      facts = { name: chosen!.name, ip, port };
      decision = { ...chosen!.d, rule: `dns ${JSON.stringify(chosen!.name)}: ${chosen!.d.rule ?? chosen!.d.reason}` };
      viaDns = true;
    }
  }
  deps.onDecided?.();
  live.facts = facts;
  if (decision.verdict === 'refuse') return refuse(socket, o.protocol, config, o, decision);
  o.verdict = 'allow';
  o.reason = decision.reason as OutcomeReason;
  o.rule = decision.rule;

  // An address egressd's DNS listener gave this very sandbox for this name is one of the name's
  // addresses, whatever a later lookup would answer (rotation, geo-DNS, a short TTL).
  const target = viaDns
    ? ({ ok: true, address: ip, how: 'original' } as const)
    : await chooseUpstream({
        mode: config.upstream.dial,
        name: o.name,
        byName: decision.matchedBy === 'name',
        original: ip,
        port,
        resolver: {
          resolve: async (name: string) => (remembered().includes(name) ? { ok: true, addresses: [ip], cached: true } : deps.resolver.resolve(name)),
        },
        allows: (addr) => verdict(deps.policies.lookup(o.source), { name: o.name, ip: addr, port }).verdict === 'allow',
      });
  if (!target.ok) {
    o.end = target.detail;
    return refuse(socket, o.protocol, config, o, { verdict: 'refuse', reason: target.reason, rule: decision.rule });
  }
  if (live.abort.signal.aborted) return cut(socket, o, 'policy-changed');

  o.dialed = target.address;
  const d = await dial({
    address: target.address,
    port,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    signal: live.abort.signal,
  });
  if (!d.ok) {
    o.verdict = 'error';
    o.reason = d.cause === 'aborted' ? (live.closeReason ?? 'shutdown') : 'upstream-failed';
    o.dialFailure = d.cause;
    o.end = d.detail;
    if (!socket.destroyed) socket.resetAndDestroy();
    return;
  }
  o.connectMs = d.connectMs;
  const s = await splice(socket, d.socket, {
    initial,
    idleTimeoutMs: config.upstream.idleTimeoutMs,
    signal: live.abort.signal,
  });
  o.bytesUp = s.bytesUp;
  o.bytesDown = s.bytesDown;
  o.end = s.end;
  if (s.end === 'aborted' && live.closeReason) {
    o.verdict = live.closeReason === 'policy-changed' ? 'refuse' : o.verdict;
    o.reason = live.closeReason;
  }
}

function protocolOfListener(l: ListenerKind): Protocol {
  return l === 'tls' ? 'tls' : l === 'http' ? 'http' : 'unknown';
}

/** Cut a connection that never got as far as a decision: no bytes, a reset. */
function cut(socket: Socket, o: ConnectionOutcome, reason: OutcomeReason): void {
  o.verdict = 'refuse';
  o.reason = reason;
  if (!socket.destroyed) socket.resetAndDestroy();
}

/**
 * Refuse after accept in a way the client understands — a TLS access_denied alert, an HTTP
 * 403 naming the host and the reason, a reset for anything else — or, with `block: drop`,
 * close without a byte. No byte of a refused connection ever reaches an upstream: nothing is
 * dialed before this point.
 */
function refuse(
  socket: Socket,
  protocol: Protocol,
  config: PipelineSettings,
  o: ConnectionOutcome,
  decision: Pick<Decision, 'verdict' | 'rule'> & { reason: string; matchedBy?: Decision['matchedBy'] },
): void {
  o.verdict = 'refuse';
  o.reason = decision.reason as OutcomeReason;
  o.rule = decision.rule;
  if (config.block === 'drop') return dropSilently(socket);
  if (protocol === 'tls') return refuseTls(socket, config.refusal);
  if (protocol === 'http') {
    return refuseHttp(socket, {
      host: o.name ?? o.rawName ?? o.destination ?? '',
      reason: o.reason,
      rule: o.rule,
      port: o.destinationPort,
      portDecided: decision.matchedBy === 'port',
      linger: config.refusal,
    });
  }
  refuseTcp(socket);
}
