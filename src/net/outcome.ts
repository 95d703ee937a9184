// One record per connection, built as the connection moves down the pipeline and emitted
// exactly once when it ends. The log line and every counter hang off this one place.

import type { ListenerKind } from './listener.ts';
import type { PeekReason } from '../peek/peek-steps.ts';
import type { DecisionReason } from '../policy/decide.ts';
import type { Verdict } from '../policy/verdict.ts';
import type { LifecycleReason } from './registry.ts';
import type { ShedReason } from '../limits/admission.ts';
import type { UpstreamReason } from './upstream-target.ts';

export type Protocol = 'tls' | 'http' | 'unknown' | 'none';

/**
 * Why a connection ended the way it did: a small fixed set, safe as a metric label, composed
 * from the parts that own each reason — the decision (policy/decide.ts), the peek
 * (peek/peek-steps.ts), the upstream (net/upstream-target.ts), the connection's lifecycle
 * (net/registry.ts) and admission at accept (limits/admission.ts).
 */
export type OutcomeReason = DecisionReason | PeekReason | UpstreamReason | LifecycleReason | ShedReason;

/**
 * Which side ended the connection (Pingora's error source): the client (it left, stalled, or
 * sent what cannot be read), the policy (a refusal, or a change that closed it), the upstream
 * (it could not be reached, or it closed or reset first), or egressd itself (shutdown, the
 * idle timeout, an internal error). A client hanging up is never counted as a refusal.
 */
export type EndedBy = 'client' | 'policy' | 'upstream' | 'egressd';

export interface ConnectionOutcome {
  readonly listener: ListenerKind;
  sandbox: string | null;
  readonly source: string;
  readonly sourcePort: number;
  /** Where the client was going (SO_ORIGINAL_DST), null when it was not redirected. */
  destination: string | null;
  destinationPort: number | null;
  /** The normalized name the client asked for (SNI or Host), null when none. */
  name: string | null;
  /** The raw name as sent, only when it failed normalization (not matched) or spells an IP address (judged by address). */
  rawName?: string;
  /**
   * The names this sandbox resolved through egressd to the destination, when a connection that
   * carried no name was judged with them (`matchedBy: dns`).
   */
  dnsNames?: readonly string[];
  /** `dns` when the verdict came from those names rather than the connection's own facts. */
  matchedBy?: 'dns';
  protocol: Protocol;
  alpn?: readonly string[];
  ech?: boolean;
  /**
   * `would-refuse`: the policy refused and report-only mode let it through (policy/verdict.ts);
   * `reason` and `rule` are the refusal's.
   */
  verdict: 'allow' | 'refuse' | 'would-refuse' | 'error';
  reason: OutcomeReason;
  endedBy: EndedBy;
  rule: string | null;
  /**
   * The verdict that decided, with the layer and rules behind it (policy/verdict.ts): counted
   * once when the connection ends, for the per-rule hit counts. Absent when none was made.
   */
  decided?: Verdict;
  /** The upstream address that answered, when one did. */
  dialed: string | null;
  /** Every address a connection was attempted to, in order, when more than the one that answered (RFC 8305 §5). */
  tried?: readonly string[];
  dialFailure?: string;
  bytesUp: number;
  bytesDown: number;
  /** How the splice ended (SpliceEnd: closed, a reset, the idle timeout...; docs/logs.md "How a splice ends"). */
  end?: string;
  /** When the connection was accepted: wall-clock ms (Date.now()), for timestamps only. */
  readonly startedAt: number;
  /** Accept to close, in ms, on the monotonic clock (performance.now()): never moved by a step of the wall clock. */
  durationMs: number;
  /** When the outcome was made: wall-clock ms (Date.now()), the line's @timestamp; absent: startedAt + durationMs. */
  endedAt?: number;
  /** Accept until the first flight was judged, in ms, on the monotonic clock. */
  peekMs?: number;
  /** Time to connect to the upstream, in ms, on the monotonic clock. */
  connectMs?: number;
}

export type OutcomeListener = (o: Readonly<ConnectionOutcome>) => void;
