// Renders model values back into the sandbox0 wire vocabulary, for GET answers and logs.

import type { DialectResult, DomainPortRange, Mode, PortRange } from './model.ts';

/** `[{from:443,to:443},{from:8000,to:8999}]` → `[443, "8000-8999"]`. */
export function formatPorts(ports: readonly PortRange[]): (number | string)[] {
  return ports.map(formatPort);
}

const formatPort = (p: PortRange): number | string => (p.from === p.to ? p.from : `${p.from}-${p.to}`);

/**
 * One entry of `allowed_domain_ports`: the port (443 or "8000-8999") and how the name is read
 * there: `tls` the SNI, `http` the Host, `any` either (and a name remembered from DNS).
 */
export interface DomainPortView {
  readonly port: number | string;
  readonly via: 'tls' | 'http' | 'any';
}

/** A network policy in the sandbox0 wire shape (sandbox0 "Network Policy"), as `GET .../network` answers it. */
export interface NetworkView {
  readonly mode: Mode;
  readonly egress: {
    readonly allowed_domains: readonly string[];
    readonly denied_domains: readonly string[];
    readonly allowed_cidrs: readonly string[];
    readonly denied_cidrs: readonly string[];
    readonly allowed_ports: (number | string)[];
    readonly denied_ports: (number | string)[];
    /**
     * The ports on which allowed_domains match and how each reads the name (Side.domainPorts:
     * Novita's 80 by the HTTP Host and 443 by the TLS SNI); absent when they match on every port,
     * however the name is read. On other ports, or for a name read otherwise, only the CIDRs allow.
     */
    readonly allowed_domain_ports?: DomainPortView[];
  };
  /** Whether the essential-services catalog joins the allow side (Daytona, Daytona "Network Limits (Firewall)"). */
  readonly essential_services: boolean;
  /** The body's inbound-side settings as sent (Novita/E2B), kept and returned, not enforced. */
  readonly ingress?: Readonly<Record<string, string | boolean>>;
  /** Accepted settings egressd does not enforce: `{ field, message }`, field relative to the body. */
  readonly warnings?: readonly { readonly field: string; readonly message: string }[];
}

/**
 * What applies, whatever dialect it was written in. Both sides are shown whatever the mode:
 * decide.ts enforces both (allow beats deny), and the dialects leave a side empty when it can
 * change nothing, so a list shown here is a list that acts. sandbox0 "Network Policy" writes the allowed_* lists
 * as used only in block-all mode; a Novita policy is the one that can carry them under
 * allow-all (an exception inside a denied range, Novita "Internet access" "Priority rules").
 */
export function renderNetwork(result: DialectResult): NetworkView {
  const { mode, allow, deny } = result.policy;
  return {
    mode,
    egress: {
      allowed_domains: [...allow.domains],
      denied_domains: [...deny.domains],
      allowed_cidrs: [...allow.cidrs],
      denied_cidrs: [...deny.cidrs],
      allowed_ports: formatPorts(allow.ports),
      denied_ports: formatPorts(deny.ports),
      ...(allow.domainPorts !== undefined ? { allowed_domain_ports: allow.domainPorts.map(domainPortView) } : {}),
    },
    essential_services: result.essentialServices,
    ...(result.ingress ? { ingress: { ...result.ingress } } : {}),
    ...(result.warnings && result.warnings.length > 0 ? { warnings: result.warnings.map((w) => ({ field: w.field, message: w.reason })) } : {}),
  };
}

function domainPortView(p: DomainPortRange): DomainPortView {
  return { port: formatPort(p), via: p.via ?? 'any' };
}
