// The canonical policy model. Every dialect (sandbox0, Daytona, Novita/E2B) is translated into
// this shape by src/policy/dialects/, validated by one code path, then compiled once per change
// (src/policy/compile.ts) and evaluated many times (src/policy/decide.ts).

import type { FieldIssue } from '../util/issues.ts';

export type Mode = 'allow-all' | 'block-all';

/** How a connection's name was read: a TLS SNI, an HTTP Host, or egressd's DNS memory (none sent). */
export type NameSource = 'tls' | 'http' | 'dns';

/**
 * How a name asked about (the check API's `via`, `egressd check`/`decide --via`) is sent: a
 * TLS SNI or an HTTP Host, the two a client can send; DNS memory is the data path's own.
 */
export type CheckVia = 'tls' | 'http';
export const isCheckVia = (v: unknown): v is CheckVia => v === 'tls' || v === 'http';
/** Why any other value is refused, in the schema's words (src/schema/define/bodies.ts CheckRequest). */
export const CHECK_VIA_REASON = 'Expected tls (the name is a TLS SNI) or http (an HTTP Host)';

/** A port range on which a side's domains match; `via`: only for a name read from that protocol. */
export interface DomainPortRange extends PortRange {
  readonly via?: 'tls' | 'http';
}

/** An inclusive port range, 1 <= from <= to <= 65535. A single port has from === to. */
export interface PortRange {
  readonly from: number;
  readonly to: number;
}

/**
 * One side of a policy (allow or deny). Every entry is already normalized:
 * domains are lowercase ASCII (punycode) patterns — `name`, `*.name`, or `*`;
 * cidrs are canonical `network/prefix` strings (host bits cleared, IPv6 compressed).
 */
export interface Side {
  readonly domains: readonly string[];
  readonly cidrs: readonly string[];
  readonly ports: readonly PortRange[];
  /**
   * The ports on which the side's DOMAIN entries match; absent: every port. Novita inspects names
   * on HTTP port 80 and TLS port 443 only (Novita "Internet access": "Any other port falls back
   * to CIDR-based matching"), so its allow side sets 80 and 443. On any other port the side is
   * judged as if the connection carried no name: by its CIDRs (and ports). CIDR and port
   * entries are not restricted by it. A range with `via` matches only a name read from that
   * protocol (Novita: the HTTP Host header on 80, the TLS SNI on 443), never one read from the
   * other protocol nor one remembered from egressd's DNS for a client that sent none.
   */
  readonly domainPorts?: readonly DomainPortRange[];
}

export interface Policy {
  readonly mode: Mode;
  readonly allow: Side;
  readonly deny: Side;
}

export type Parsed<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly issues: readonly FieldIssue[] };

export const EMPTY_SIDE: Side = Object.freeze({ domains: [], cidrs: [], ports: [] });

/**
 * A policy body in any dialect, translated: the policy plus the two platform behaviours that
 * sit beside it — the essential-services catalog joining the allow side (Daytona), and the
 * sandbox's DNS servers allowed on port 53 (Novita, when a policy names a domain).
 */
export interface DialectResult {
  readonly dialect: 'sandbox0' | 'daytona' | 'novita';
  readonly policy: Policy;
  readonly essentialServices: boolean;
  readonly dnsServersAllowed: boolean;
  /**
   * Settings of the sandbox's inbound side that a platform's body carries beside its egress
   * policy (Novita/E2B `network.maskRequestHost`, `network.allowPublicTraffic`). egressd keeps
   * and returns them so that a control plane can pass the body through verbatim; it does not
   * enforce them (it filters outbound traffic only). Absent when the body has none.
   */
  readonly ingress?: Readonly<Record<string, string | boolean>>;
  /** What egressd accepted but does not act on, each with its field path; absent when none. */
  readonly warnings?: readonly FieldIssue[];
}
