// `egressd iptables`: the firewall rules that send a sandbox's traffic to egressd. Prints them
// (a shell script for iptables, an `nft -f` file for nftables), or with --apply / --remove changes
// the kernel's tables. The rule set is plain data built by a pure function, so the unit tests
// pin what is installed and the renderers only spell it.
//
// Everything lives in egressd's own chains (EGRESSD-*) or, for nftables, its own tables
// (`ip egressd`, `ip6 egressd`), reached from the built-in chains by one jump each: applying
// again refills the chains and adds no jump; removing deletes the jumps and the chains and
// leaves every other rule where it was.
//
// This file: the rule set as plain data, built from the parsed options by a pure function.

export type Family = 4 | 6;
export type Backend = 'iptables' | 'nft';
export type Mode = 'host' | 'sidecar';
export type UdpPolicy = 'drop' | 'reject';
/** What becomes of a sandbox's packets of IP protocols other than TCP and UDP (--other-protocols). */
export type OtherProtocolsPolicy = 'drop' | 'pass';
export type Table = 'nat' | 'filter';
export type BuiltinChain = 'PREROUTING' | 'INPUT' | 'FORWARD' | 'OUTPUT';

export interface IptablesOptions {
  readonly action: 'print' | 'apply' | 'remove';
  readonly mode: Mode;
  readonly backend: Backend;
  readonly families: readonly Family[];
  readonly interfaces: readonly string[];
  /** Canonical CIDRs (network address, explicit prefix length). */
  readonly sources: readonly string[];
  readonly dnsServers: readonly string[];
  readonly uid: number | null;
  readonly udp: UdpPolicy;
  /**
   * drop: a sandbox's own packets of every other IP protocol (ICMP, ICMPv6, GRE, SCTP, ESP, raw
   * IP) are dropped, except ICMP errors of a connection conntrack knows (RELATED) and, to the
   * host itself or in sidecar mode, ICMPv6 neighbour discovery and MLD. pass: left untouched.
   */
  readonly otherProtocols: OtherProtocolsPolicy;
  readonly ports: { readonly http: number; readonly tls: number; readonly tcp: number };
  /**
   * egressd's DNS listener (`listen.dns`): UDP and TCP port 53, whatever server is addressed,
   * are redirected there, and `dnsServers` open nothing. Null: port 53 is treated as before.
   */
  readonly dnsPort: number | null;
  /**
   * Destinations never redirected nor rejected (istio-init's --exclude-outbound-ip-ranges): a
   * cluster's service range, a node-local metadata proxy. Canonical CIDRs. Their traffic is not
   * filtered at all.
   */
  readonly excludeCidrs: readonly string[];
  /** TCP destination ports never redirected (istio-init's --exclude-outbound-ports). */
  readonly excludePorts: readonly number[];
  /**
   * host mode: each source address may open at most this many new connections to egressd's
   * listeners (and with `dnsPort` null to a `dnsServers` port 53) a second, beyond a burst; the
   * rest are reset before conntrack confirms them, so they take no entry in the host's
   * connection-tracking table. Null: no limit.
   */
  readonly newConnections: NewConnectionLimit | null;
  /**
   * host mode: each source address may start at most this many new UDP flows to DNS a second
   * (to egressd's DNS listener, or with `dnsPort` null to a `dnsServers` port 53), beyond a burst;
   * the first datagrams of the rest are dropped before conntrack confirms them, so they take no
   * entry in the host's connection-tracking table. Null: no limit.
   */
  readonly newDnsFlows: NewConnectionLimit | null;
  /**
   * host mode: each source address may send at most this many UDP datagrams a second to egressd's
   * DNS listener (or with `dnsPort` null to a `dnsServers` port 53), beyond a burst, new flows or
   * not; the rest are dropped in filter INPUT (or the udp chain), before the listener's socket,
   * which every sandbox's queries share. Null: no limit.
   */
  readonly dnsPackets: NewConnectionLimit | null;
  /** --remove only: the backend was named, so its tool must be installed (both backends' rules are removed either way). */
  readonly backendGiven: boolean;
}

/** A token bucket per source address (hashlimit's --hashlimit-above and --hashlimit-burst). */
export interface NewConnectionLimit {
  /** Connections a second, refilled continuously. */
  readonly perSecond: number;
  /** Connections a source may open at once before the rate applies. */
  readonly burst: number;
}

/**
 * Which per-source buckets a limit takes from: one set of buckets per flag, so that a sandbox's
 * DNS queries do not spend its connections' allowance, nor the reverse.
 */
export type PerSourceBucket = 'new-connections' | 'new-dns-flows' | 'dns-packets';

export interface PerSourceLimit extends NewConnectionLimit {
  readonly bucket: PerSourceBucket;
}

export type ChainId =
  'nat-prerouting' | 'nat-output' | 'redirect' | 'filter-input' | 'filter-forward' | 'filter-output' | 'udp' | 'tcp' | 'untracked' | 'local-tcp' | 'other';

interface ChainInfo {
  readonly table: Table;
  /** The built-in chain (iptables) or hook (nftables) that jumps here; null for a chain only jumped to. */
  readonly hook: BuiltinChain | null;
  readonly iptables: string;
  readonly nft: string;
}

// nft reserves words like `redirect` and `udp`, so its chain names differ from iptables' ones.
export const CHAINS: Readonly<Record<ChainId, ChainInfo>> = Object.freeze({
  'nat-prerouting': { table: 'nat', hook: 'PREROUTING', iptables: 'EGRESSD-PREROUTING', nft: 'nat_prerouting' },
  'nat-output': { table: 'nat', hook: 'OUTPUT', iptables: 'EGRESSD-OUTPUT', nft: 'nat_output' },
  redirect: { table: 'nat', hook: null, iptables: 'EGRESSD-REDIRECT', nft: 'redirect_tcp' },
  'filter-input': { table: 'filter', hook: 'INPUT', iptables: 'EGRESSD-INPUT', nft: 'filter_input' },
  'filter-forward': { table: 'filter', hook: 'FORWARD', iptables: 'EGRESSD-FORWARD', nft: 'filter_forward' },
  'filter-output': { table: 'filter', hook: 'OUTPUT', iptables: 'EGRESSD-OUTPUT', nft: 'filter_output' },
  udp: { table: 'filter', hook: null, iptables: 'EGRESSD-UDP', nft: 'limit_udp' },
  tcp: { table: 'filter', hook: null, iptables: 'EGRESSD-TCP', nft: 'unredirected_tcp' },
  untracked: { table: 'filter', hook: null, iptables: 'EGRESSD-UNTRACKED', nft: 'untracked_tcp' },
  'local-tcp': { table: 'filter', hook: null, iptables: 'EGRESSD-LOCAL-TCP', nft: 'local_tcp' },
  other: { table: 'filter', hook: null, iptables: 'EGRESSD-OTHER', nft: 'other_protocols' },
});

export interface Match {
  readonly inInterface?: string;
  readonly outInterface?: string;
  readonly source?: string;
  readonly destination?: string;
  readonly protocol?: 'tcp' | 'udp' | 'icmpv6';
  readonly dport?: number;
  /** With protocol icmpv6: the ICMPv6 message type (RFC 4443 §2.1). */
  readonly icmpv6Type?: number;
  readonly uid?: number;
  /** Only packets in the direction of the connection's first packet (conntrack's ORIGINAL). */
  readonly originalDirection?: true;
  /** Only a connection's first packet (conntrack's NEW: a SYN and its retransmissions). */
  readonly newConnection?: true;
  /** The destination as the connection's first packet had it, before any NAT (conntrack's original tuple). */
  readonly originalDestination?: string;
  readonly originalDport?: number;
  /**
   * Only packets conntrack holds no connection for: INVALID (a segment no TCP state allows, e.g.
   * SYN|FIN) or UNTRACKED (a raw-table NOTRACK). The NAT tables never see them.
   */
  readonly untracked?: true;
  /**
   * Only packets conntrack relates to a connection it knows without being part of it (RELATED):
   * an ICMP error quoting one of its packets (port unreachable, fragmentation needed, ICMPv6
   * packet too big).
   */
  readonly related?: true;
  /** A TCP segment whose only flag of SYN, ACK, FIN and RST is SYN: a connection's opening (iptables' --syn). */
  readonly syn?: true;
  /**
   * Only the packets of a source beyond this rate: one bucket per source address (full length),
   * shared by every rule that names the same `bucket`.
   */
  readonly overPerSource?: PerSourceLimit;
}

export type Target =
  | { readonly kind: 'jump'; readonly chain: ChainId }
  | { readonly kind: 'return' }
  | { readonly kind: 'redirect'; readonly port: number }
  /** ICMP (v6: ICMPv6) port unreachable: the client's connect fails at once instead of timing out. */
  | { readonly kind: 'reject' }
  /** A TCP reset: the client's connect fails at once, and an open connection ends. */
  | { readonly kind: 'reset' }
  | { readonly kind: 'drop' };

export interface Rule {
  readonly match: Match;
  readonly target: Target;
}

export interface Chain {
  readonly id: ChainId;
  readonly rules: readonly Rule[];
}

export interface RuleSet {
  readonly family: Family;
  readonly mode: Mode;
  /** In dependency order: a chain comes after the chains it jumps to. */
  readonly chains: readonly Chain[];
}

export const DEFAULT_PORTS = Object.freeze({ http: 15080, tls: 15443, tcp: 15001 });
/** The DNS listener's port in DEFAULT_DOCUMENT (`listen.dns`). */
export const DEFAULT_DNS_PORT = 15053;

/**
 * The rules for one address family, in evaluation order.
 *
 * Excluded CIDRs (--exclude-cidr) return first from both chains, excluded TCP ports
 * (--exclude-port) first from the redirect chain: that traffic leaves as if egressd were absent.
 *
 * With the DNS listener (`dnsPort`): UDP and TCP to port 53, whatever the server, are redirected
 * to it (first rules of the redirect chain, which UDP 53 also enters), no DNS server is left
 * reachable, and filter INPUT lets the redirected UDP reach the listener. Without it:
 * redirect chain (nat): TCP to a listed DNS server's port 53 returns untouched; then 80 → http
 * listener, 443 → tls listener, every other TCP port → tcp listener.
 * udp chain (filter): UDP to a listed DNS server's port 53 returns; UDP 443 is rejected so QUIC
 * clients fall back to TCP at once; every other UDP is rejected or dropped (`--udp`).
 * host mode: traffic that arrives through a listed interface or from a listed source CIDR
 * enters those chains from nat PREROUTING (TCP, and UDP 53) and filter INPUT and FORWARD (UDP).
 * With a new-connection limit (host mode), a source's opening SYNs to the listeners beyond its
 * rate are reset in filter INPUT, before conntrack confirms them, and those to a listed DNS
 * server in the tcp chain. With a new-DNS-flow limit (host mode), a source's first datagrams of
 * UDP flows beyond its rate are dropped at the same point: to the DNS listener in filter INPUT,
 * or to a listed DNS server in the udp chain.
 * sidecar mode: locally generated traffic enters them from nat OUTPUT and filter OUTPUT, except
 * egressd's own (its uid) and traffic to loopback.
 */
export function buildRuleSet(options: IptablesOptions, family: Family): RuleSet {
  const dnsPort = options.dnsPort;
  // While egressd answers port 53, no server is reachable there: raw UDP to 8.8.8.8:53 would
  // otherwise carry any payload out.
  const dns = dnsPort === null ? options.dnsServers.filter((a) => cidrFamily(a) === family) : [];
  const excluded = options.excludeCidrs.filter((c) => cidrFamily(c) === family);
  const dnsFlows: PerSourceLimit | null = options.newDnsFlows === null ? null : { bucket: 'new-dns-flows', ...options.newDnsFlows };
  const dnsPackets: PerSourceLimit | null = options.dnsPackets === null ? null : { bucket: 'dns-packets', ...options.dnsPackets };
  // Exclusions come first, so nothing below (a redirect, a reject) ever sees that traffic.
  const redirect: Rule[] = [
    ...excluded.map((c): Rule => ({ match: { destination: c, protocol: 'tcp' }, target: { kind: 'return' } })),
    // UDP 53 enters this chain too while the DNS listener answers port 53: an excluded server keeps it.
    ...(dnsPort === null ? [] : excluded.map((c): Rule => ({ match: { destination: c, protocol: 'udp', dport: 53 }, target: { kind: 'return' } }))),
    ...options.excludePorts.map((p): Rule => ({ match: { protocol: 'tcp', dport: p }, target: { kind: 'return' } })),
    ...(dnsPort === null
      ? []
      : (['udp', 'tcp'] as const).map((protocol): Rule => ({ match: { protocol, dport: 53 }, target: { kind: 'redirect', port: dnsPort } }))),
    ...dns.map((a): Rule => ({ match: { destination: hostCidr(a), protocol: 'tcp', dport: 53 }, target: { kind: 'return' } })),
    { match: { protocol: 'tcp', dport: 80 }, target: { kind: 'redirect', port: options.ports.http } },
    { match: { protocol: 'tcp', dport: 443 }, target: { kind: 'redirect', port: options.ports.tls } },
    { match: { protocol: 'tcp' }, target: { kind: 'redirect', port: options.ports.tcp } },
  ];
  // Exclusions are judged on the destination the sandbox sent to: filter runs after every NAT,
  // and another tool's DNAT (kube-proxy's, for a service range excluded here or a --dns-server that
  // is a service address) has by then replaced it with an endpoint no exclusion names. A datagram
  // conntrack does not track met no NAT, so its destination is the one sent to.
  const udp: Rule[] = [
    ...excluded.flatMap((c): Rule[] => [
      { match: { protocol: 'udp', originalDestination: c }, target: { kind: 'return' } },
      { match: { destination: c, protocol: 'udp', untracked: true }, target: { kind: 'return' } },
    ]),
    ...dns.flatMap((a): Rule[] => [
      // A DNS server left reachable is every sandbox's as the listener is: one source's flood
      // from one socket is limited by its datagrams, as there (host mode only).
      ...(dnsPackets === null || options.mode !== 'host'
        ? []
        : [
            {
              match: { protocol: 'udp', originalDestination: hostCidr(a), originalDport: 53, overPerSource: dnsPackets },
              target: { kind: 'drop' },
            } satisfies Rule,
          ]),
      // A query to a DNS server left reachable is a flow, and an entry, of the host's table as
      // much as one to the listener; dropped before the confirm as there (host mode only).
      ...(dnsFlows === null || options.mode !== 'host'
        ? []
        : [
            {
              match: { protocol: 'udp', originalDestination: hostCidr(a), originalDport: 53, newConnection: true, overPerSource: dnsFlows },
              target: { kind: 'drop' },
            } satisfies Rule,
          ]),
      { match: { protocol: 'udp', originalDestination: hostCidr(a), originalDport: 53 }, target: { kind: 'return' } },
      // A datagram conntrack does not track (a host's NOTRACK for a node-local DNS cache) has no
      // original destination for the rule above to meet: limited by its destination, same buckets.
      ...(dnsPackets === null || options.mode !== 'host'
        ? []
        : [
            {
              match: { destination: hostCidr(a), protocol: 'udp', dport: 53, untracked: true, overPerSource: dnsPackets },
              target: { kind: 'drop' },
            } satisfies Rule,
          ]),
      { match: { destination: hostCidr(a), protocol: 'udp', dport: 53, untracked: true }, target: { kind: 'return' } },
    ]),
    { match: { protocol: 'udp', dport: 443 }, target: { kind: 'reject' } },
    { match: { protocol: 'udp' }, target: { kind: options.udp } },
  ];
  // TCP from a sandbox that reaches the forward path (host mode) or leaves for another host
  // (sidecar mode) was not redirected to egressd: another tool's DNAT ran before egressd's redirect
  // (kube-proxy and Docker put theirs first when they start), or the connection predates the
  // rules (NAT is decided at a connection's first packet, so an --apply never catches a
  // connection already open). It is reset, unless the redirect chain would have let it pass: the
  // same exclusions, judged on the destination the connection was opened to.
  const tcp: Rule[] = [
    ...excluded.map((c): Rule => ({ match: { protocol: 'tcp', originalDestination: c }, target: { kind: 'return' } })),
    ...options.excludePorts.map((p): Rule => ({ match: { protocol: 'tcp', originalDport: p }, target: { kind: 'return' } })),
    ...dns.flatMap((a): Rule[] => [
      // A connection to a DNS server left reachable is forwarded, never seen by the listeners'
      // limit, and an entry of the host's table all the same: its SYN over the rate is reset
      // here, before the confirm (host mode only).
      ...(options.newConnections === null || options.mode !== 'host'
        ? []
        : [
            {
              match: {
                protocol: 'tcp',
                originalDestination: hostCidr(a),
                originalDport: 53,
                syn: true,
                newConnection: true,
                overPerSource: { bucket: 'new-connections', ...options.newConnections },
              },
              target: { kind: 'reset' },
            } satisfies Rule,
          ]),
      { match: { protocol: 'tcp', originalDestination: hostCidr(a), originalDport: 53 }, target: { kind: 'return' } },
    ]),
    { match: { protocol: 'tcp' }, target: { kind: 'reset' } },
  ];
  // TCP conntrack holds no connection for skips NAT, so no redirect catches it, and it carries no
  // direction or state for the tcp chain's entry to match: a sandbox with CAP_NET_RAW (container
  // runtimes grant it by default) sends such segments, data and all, to any address. No connection
  // needs them: they are dropped (kube-proxy drops INVALID too), not reset, because a reset for an
  // out-of-window segment of a connection made to the sandbox would cut that connection. Without
  // NAT the destination is the one sent to, so the exclusions are judged on it directly.
  const untracked: Rule[] = [
    ...excluded.map((c): Rule => ({ match: { protocol: 'tcp', destination: c }, target: { kind: 'return' } })),
    ...options.excludePorts.map((p): Rule => ({ match: { protocol: 'tcp', dport: p }, target: { kind: 'return' } })),
    ...dns.map((a): Rule => ({ match: { protocol: 'tcp', destination: hostCidr(a), dport: 53 }, target: { kind: 'return' } })),
    { match: { protocol: 'tcp' }, target: { kind: 'drop' } },
  ];
  // Every other IP protocol (ICMP, GRE, SCTP, ESP, raw IP) a sandbox sends: no listener of
  // egressd's takes it, and ICMP echo and GRE carry any payload to any address (ICMP tunnels are
  // a known exfiltration channel). A sandbox's own packets are dropped: those of a flow it opened
  // (conntrack's ORIGINAL direction, whatever their state, so that a flow older than the rules is
  // caught too) and those conntrack does not track (an ICMP type it has no flow for, an error
  // quoting no known connection). The answers of a flow another host opened to the sandbox (an
  // echo reply to a platform's ping) travel in the REPLY direction and pass, as for UDP. ICMP
  // errors about a connection conntrack knows (RELATED) pass: a port unreachable for a late DNS
  // answer, a fragmentation needed (RFC 1191) or packet too big (RFC 8201) that path MTU discovery
  // needs. conntrack relates an error only when it goes to the peer of the connection it quotes
  // (nf_conntrack_inet_error; any other is INVALID, and dropped below), NAT rewriting it as it
  // rewrote the connection; but any connection the host tracks will do, another sandbox's or
  // egressd's own upstream dials too, and no rule can tie it to the sender (docs/limits.md).
  // The exclusions leave their destinations unfiltered, as for TCP.
  const other: Rule[] = [
    { match: { protocol: 'tcp' }, target: { kind: 'return' } },
    { match: { protocol: 'udp' }, target: { kind: 'return' } },
    ...excluded.flatMap((c): Rule[] => [
      { match: { originalDestination: c }, target: { kind: 'return' } },
      { match: { destination: c, untracked: true }, target: { kind: 'return' } },
    ]),
    { match: { related: true }, target: { kind: 'return' } },
    { match: { originalDirection: true }, target: { kind: 'drop' } },
    { match: { untracked: true }, target: { kind: 'drop' } },
  ];
  const dropOther = options.otherProtocols === 'drop';
  // ICMPv6 the link needs (RFC 4861 neighbour discovery; RFC 3810 MLD, which keeps a snooping
  // bridge forwarding the solicited-node groups). conntrack leaves them UNTRACKED
  // (nf_conntrack_proto_icmpv6.c, noct_valid_new), so the drop above would take them. They
  // return only where they are addressed to this host or leave the pod (INPUT, sidecar OUTPUT):
  // they are link-scoped, and a router never forwards them for a sandbox, so FORWARD keeps none.
  const neighbourDiscovery = (m: Match): Rule[] =>
    family === 6 && dropOther ? ICMPV6_LINK_TYPES.map((t): Rule => ({ match: { ...m, protocol: 'icmpv6', icmpv6Type: t }, target: { kind: 'return' } })) : [];
  const chains: Chain[] = [
    { id: 'redirect', rules: redirect },
    { id: 'udp', rules: udp },
    { id: 'tcp', rules: tcp },
    { id: 'untracked', rules: untracked },
    ...(dropOther ? [{ id: 'other', rules: other } satisfies Chain] : []),
  ];
  // A sandbox's own UDP: the direction of a flow's first datagram, so the answers of a UDP service
  // in the sandbox (a platform querying it) pass, and datagrams conntrack does not track, which
  // have no direction.
  const ownUdp: Match[] = [
    { protocol: 'udp', originalDirection: true },
    { protocol: 'udp', untracked: true },
  ];
  if (options.mode === 'host') {
    const selectors: Match[] = [
      ...options.interfaces.map((i): Match => ({ inInterface: i })),
      ...options.sources.filter((c) => cidrFamily(c) === family).map((c): Match => ({ source: c })),
    ];
    const to = (protocol: 'tcp' | 'udp', chain: ChainId, dport?: number): Rule[] =>
      selectors.map((m) => ({ match: { ...m, protocol, ...(dport !== undefined ? { dport } : {}) }, target: { kind: 'jump', chain } }));
    const udpOut: Rule[] = selectors.flatMap((m) => ownUdp.map((u): Rule => ({ match: { ...m, ...u }, target: { kind: 'jump', chain: 'udp' } })));
    // Only the sandbox's own connections: the answers of a connection made to a sandbox (a
    // platform reaching a service in it) travel in the reply direction and pass.
    const unredirected: Rule[] = selectors.flatMap((m): Rule[] => [
      { match: { ...m, protocol: 'tcp', originalDirection: true }, target: { kind: 'jump', chain: 'tcp' } },
      { match: { ...m, protocol: 'tcp', untracked: true }, target: { kind: 'jump', chain: 'untracked' } },
    ]);
    // A redirected query reaches INPUT with the listener's port as its destination; only INPUT
    // (the host itself), never FORWARD, lets that port through. A flow's first datagram over the
    // source's rate is dropped here, before conntrack confirms its entry (at the end of INPUT), so
    // it takes none: every query from a fresh source port is otherwise an entry for
    // nf_conntrack_udp_timeout (30 s), made before egressd reads the query. Dropped, not rejected
    // as the TCP limit's SYNs are: a stub resolver retransmits a lost query after its timeout
    // (glibc's 5 s, RFC 1123 §6.1.3.3), by when the bucket has refilled, while an ICMP port
    // unreachable reaches its connected socket as ECONNREFUSED at once (measured through this
    // redirect), which glibc takes for a failed server (res_send.c, send_dg): it tries the next,
    // or again at once, and fails the lookup within milliseconds. A burst over the rate would fail
    // lookups instead of slowing them. Each selector's limit comes right before its return, so a
    // query takes a token once, from the first selector it matches.
    // The flow limit meets a flow's first datagram only: one socket sending 300,000 queries in 5 s
    // is one flow, never limited, and filled the listener's receive buffer, which every sandbox's
    // queries share (another sandbox lost 44 of 200). The packet limit counts every datagram of
    // the source, before the flow limit (a datagram it drops takes no flow token either), and
    // drops the excess here, before the socket.
    const dnsIn: Rule[] =
      dnsPort === null
        ? []
        : selectors.flatMap((m): Rule[] => [
            ...(dnsPackets === null
              ? []
              : [{ match: { ...m, protocol: 'udp', dport: dnsPort, overPerSource: dnsPackets }, target: { kind: 'drop' } } satisfies Rule]),
            ...(dnsFlows === null
              ? []
              : [{ match: { ...m, protocol: 'udp', dport: dnsPort, newConnection: true, overPerSource: dnsFlows }, target: { kind: 'drop' } } satisfies Rule]),
            { match: { ...m, protocol: 'udp', dport: dnsPort }, target: { kind: 'return' } },
          ]);
    // TCP a DNAT ahead of egressd's redirect sent to the host itself (a service whose endpoint is
    // on the host's network: the API server on a control-plane node) reaches INPUT, never FORWARD.
    // A connection egressd's redirect took arrives at one of its listeners; any other the
    // sandbox opened goes to the tcp chain, which keeps the exclusions.
    const listeners = [options.ports.http, options.ports.tls, options.ports.tcp, ...(dnsPort === null ? [] : [dnsPort])];
    // A redirected connection's opening SYN reaches filter INPUT before conntrack confirms its
    // entry (at the end of INPUT): a reset here leaves no entry, so a source over the rate cannot
    // fill the host's table, shared by every sandbox. Excluded traffic never gets here.
    const limit = options.newConnections;
    const localTcp: Rule[] = [
      ...(limit === null
        ? []
        : [...new Set(listeners)].map((p): Rule => ({
            match: { protocol: 'tcp', dport: p, syn: true, newConnection: true, overPerSource: { bucket: 'new-connections', ...limit } },
            target: { kind: 'reset' },
          }))),
      ...[...new Set(listeners)].map((p): Rule => ({ match: { protocol: 'tcp', dport: p }, target: { kind: 'return' } })),
      { match: { protocol: 'tcp' }, target: { kind: 'jump', chain: 'tcp' } },
    ];
    const toLocal: Rule[] = selectors.map((m) => ({ match: { ...m, protocol: 'tcp', originalDirection: true }, target: { kind: 'jump', chain: 'local-tcp' } }));
    // Every packet of the selectors enters, whatever its protocol: the chain returns TCP and UDP
    // first (iptables cannot match "neither TCP nor UDP" in one rule).
    const toOther: Rule[] = dropOther ? selectors.map((m): Rule => ({ match: m, target: { kind: 'jump', chain: 'other' } })) : [];
    chains.push(
      { id: 'local-tcp', rules: localTcp },
      { id: 'nat-prerouting', rules: [...(dnsPort === null ? [] : to('udp', 'redirect', 53)), ...to('tcp', 'redirect')] },
      { id: 'filter-input', rules: [...dnsIn, ...udpOut, ...toLocal, ...selectors.flatMap(neighbourDiscovery), ...toOther] },
      { id: 'filter-forward', rules: [...udpOut, ...unredirected, ...toOther] },
    );
  } else {
    // REDIRECT in OUTPUT rewrites to a loopback address, so egressd's own dials (its uid) and
    // loopback traffic must be left alone or every connection would loop back into egressd.
    const exempt: Rule[] = [
      { match: { uid: options.uid ?? 0 }, target: { kind: 'return' } },
      { match: { outInterface: 'lo' }, target: { kind: 'return' } },
      { match: { destination: family === 4 ? '127.0.0.0/8' : '::1/128' }, target: { kind: 'return' } },
    ];
    chains.push(
      {
        id: 'nat-output',
        rules: [
          ...exempt,
          ...(dnsPort === null ? [] : [{ match: { protocol: 'udp', dport: 53 }, target: { kind: 'jump', chain: 'redirect' } } satisfies Rule]),
          { match: { protocol: 'tcp' }, target: { kind: 'jump', chain: 'redirect' } },
        ],
      },
      {
        id: 'filter-output',
        rules: [
          ...exempt,
          ...ownUdp.map((match): Rule => ({ match, target: { kind: 'jump', chain: 'udp' } })),
          // A redirected connection goes to loopback, exempt above. Only opening packets: what
          // the kernel sends for egressd's own connections without their socket (a reset for a
          // closed one, a TIME_WAIT's ACK) carries no uid for the exemption, and a pod's
          // connections all start after the rules (the init container runs first).
          { match: { protocol: 'tcp', newConnection: true }, target: { kind: 'jump', chain: 'tcp' } },
          { match: { protocol: 'tcp', untracked: true }, target: { kind: 'jump', chain: 'untracked' } },
          // After the exemptions: egressd's own and loopback traffic is never judged here.
          ...neighbourDiscovery({}),
          ...(dropOther ? [{ match: {}, target: { kind: 'jump', chain: 'other' } } satisfies Rule] : []),
        ],
      },
    );
  }
  return { family, mode: options.mode, chains };
}

/**
 * ICMPv6 types a link needs, returned before the other-protocols drop: MLD query, report and done
 * (130-132, RFC 2710), router solicitation and advertisement, neighbour solicitation and
 * advertisement, redirect (133-137, RFC 4861), MLDv2 report (143, RFC 3810).
 */
export const ICMPV6_LINK_TYPES: readonly number[] = Object.freeze([130, 131, 132, 133, 134, 135, 136, 137, 143]);

/** The family of a canonical CIDR or address. */
export function cidrFamily(cidr: string): Family {
  return cidr.includes(':') ? 6 : 4;
}

function hostCidr(addr: string): string {
  return cidrFamily(addr) === 4 ? `${addr}/32` : `${addr}/128`;
}
