// One record per connection, built as the connection moves down the pipeline and emitted
// exactly once when it ends. The log line and every counter hang off this one place.

import type { ListenerKind } from './listener.ts';

export type Protocol = 'tls' | 'http' | 'unknown' | 'none';

/**
 * Why a connection ended the way it did. A small fixed set, safe as a metric label: the
 * decision reasons from policy/decide plus the data path's own.
 */
export type OutcomeReason =
  | 'allow-rule'
  | 'deny-rule'
  | 'default-allow'
  | 'default-block'
  | 'protected-address'
  | 'not-redirected'
  | 'peek-timeout'
  | 'peek-closed'
  | 'too-large'
  | 'malformed-tls'
  | 'malformed-http'
  | 'invalid-name'
  | 'dns-failure'
  | 'dns-mismatch'
  | 'no-allowed-address'
  | 'upstream-failed'
  | 'policy-changed'
  | 'shutdown'
  | 'internal-error'
  // Refused at accept by admission control (limits/admission.ts), before a byte was read.
  | 'sandbox-limit'
  | 'global-limit'
  | 'overload';

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
  /** The raw name as sent, only when it failed normalization (quoted in the log, not matched). */
  rawName?: string;
  protocol: Protocol;
  alpn?: readonly string[];
  ech?: boolean;
  verdict: 'allow' | 'refuse' | 'error';
  reason: OutcomeReason;
  rule: string | null;
  /**
   * The names this sandbox resolved through egressd to the destination, when a connection that
   * carried no name was judged with them (`matchedBy: dns`).
   */
  dnsNames?: readonly string[];
  /** `dns` when the verdict came from those names rather than the connection's own facts. */
  matchedBy?: 'dns';
  /** The upstream address actually dialed, when one was. */
  dialed: string | null;
  dialFailure?: string;
  bytesUp: number;
  bytesDown: number;
  /** How the splice ended (closed, a reset, the idle timeout...). */
  end?: string;
  readonly startedAt: number;
  durationMs: number;
  peekMs?: number;
  connectMs?: number;
}

export type OutcomeListener = (o: Readonly<ConnectionOutcome>) => void;
