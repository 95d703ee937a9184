// `egressd iptables` arguments: the command line read into IptablesOptions, every value checked,
// with a usage error naming the flag and the value.

import { parseArgs } from 'node:util';
import { formatCidr, formatIp, parseCidr, parseIp } from '../../match/ip.ts';
import { cidrFamily, DEFAULT_DNS_PORT, DEFAULT_PORTS, type Family, type IptablesOptions, type NewConnectionLimit } from './rules.ts';

export type ParsedArgs = { readonly ok: true; readonly options: IptablesOptions } | { readonly ok: false; readonly help: boolean; readonly error: string };

/** hashlimit takes up to 100,000/s and a burst as large here (iptables 1.8.9, Linux 6.18); no sandbox needs more. */
export const MAX_NEW_CONNECTIONS = 100_000;

export const IPTABLES_USAGE = `Usage: egressd iptables [--apply | --remove] [options]

Prints the rules that send sandbox traffic to egressd; --apply installs them (idempotent),
--remove deletes egressd's jumps and chains and nftables tables, and nothing else.

  --mode host|sidecar      host (default): redirect traffic forwarded from sandboxes
                           (nat PREROUTING); sidecar: redirect this host's own traffic
                           (nat OUTPUT) except egressd's --uid and loopback
  --interface IF           host mode: a sandbox-facing interface (repeatable; "veth+" = prefix)
  --source CIDR            host mode: a sandbox source range (repeatable)
  --uid N                  sidecar mode: egressd's user id (required there)
  --dns-port N|off         egressd's DNS listener (default ${DEFAULT_DNS_PORT}): UDP and TCP port 53,
                           whatever the server, go there; "off" leaves port 53 to --dns-server
  --dns-server ADDR        with --dns-port off only: the sandboxes' DNS server, left
                           reachable on port 53 (repeatable)
  --udp reject|drop        other UDP (default reject: ICMP port unreachable, so clients fail
                           at once instead of waiting out a timeout); UDP 443 is always rejected
  --other-protocols drop|pass
                           IP protocols other than TCP and UDP (ICMP, ICMPv6, GRE, SCTP,
                           ESP, raw IP) a sandbox sends (default drop: ping and tunnels
                           over ICMP are refused); ICMP errors of allowed connections and
                           IPv6 neighbour discovery always pass; "pass" leaves them unfiltered
  --family 4|6|both        default both
  --backend iptables|nft   default iptables (chains EGRESSD-*); nft uses tables ip/ip6 egressd
  --http-port N            default ${DEFAULT_PORTS.http} (TCP 80 goes here)
  --tls-port N             default ${DEFAULT_PORTS.tls} (TCP 443 goes here)
  --tcp-port N             default ${DEFAULT_PORTS.tcp} (every other TCP port goes here)
  --exclude-cidr CIDR      never redirect nor reject traffic to this range (repeatable): a
                           cluster's service range, a node-local metadata proxy; not filtered
  --exclude-port N         never redirect TCP to this destination port (repeatable)
  --new-connections-per-source RATE[/s]
                           host mode: reset a source's new connections to egressd (or
                           a --dns-server's port 53) beyond RATE a second
                           (1-${MAX_NEW_CONNECTIONS}), so that no sandbox fills the host's
                           connection-tracking table (default: no limit)
  --new-connections-burst N
                           with the above: connections a source may open at once before
                           the rate applies (1-${MAX_NEW_CONNECTIONS}; default RATE)
  --new-dns-flows-per-source RATE[/s]
                           host mode: drop a source's new UDP flows to DNS (the DNS
                           listener, or a --dns-server's port 53) beyond RATE a second
                           (1-${MAX_NEW_CONNECTIONS}): each query from a fresh source port is a
                           connection-tracking entry for 30 s (default: no limit)
  --new-dns-flows-burst N  with the above: flows a source may start at once before the
                           rate applies (1-${MAX_NEW_CONNECTIONS}; default RATE)
  --dns-packets-per-source RATE[/s]
                           host mode: drop a source's UDP datagrams to DNS (the DNS
                           listener, or a --dns-server's port 53) beyond RATE a second
                           (1-${MAX_NEW_CONNECTIONS}), new flows or not: one socket's flood is
                           one flow, which the flow limit never meets, and fills the
                           listener's socket for every sandbox (default: no limit)
  --dns-packets-burst N    with the above: datagrams a source may send at once before the
                           rate applies (1-${MAX_NEW_CONNECTIONS}; default RATE)

--apply with one backend also removes what the other backend installed. --remove removes
what either backend installed (iptables chains and nft tables); it needs no other option
(with --backend, that backend's tool must be installed).

Exit 0 done, 1 a command failed (printed with its error), 2 usage error.
`;

const INTERFACE_RE = /^(?=.{1,15}$)[A-Za-z0-9_.@][A-Za-z0-9_.@-]*\+?$/;

export function parseIptablesArgs(argv: readonly string[]): ParsedArgs {
  const fail = (error: string): ParsedArgs => ({ ok: false, help: false, error });
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        apply: { type: 'boolean' },
        remove: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        mode: { type: 'string' },
        backend: { type: 'string' },
        family: { type: 'string' },
        interface: { type: 'string', multiple: true },
        source: { type: 'string', multiple: true },
        'dns-server': { type: 'string', multiple: true },
        'dns-port': { type: 'string' },
        uid: { type: 'string' },
        udp: { type: 'string' },
        'other-protocols': { type: 'string' },
        'http-port': { type: 'string' },
        'tls-port': { type: 'string' },
        'tcp-port': { type: 'string' },
        'exclude-cidr': { type: 'string', multiple: true },
        'exclude-port': { type: 'string', multiple: true },
        'new-connections-per-source': { type: 'string' },
        'new-connections-burst': { type: 'string' },
        'new-dns-flows-per-source': { type: 'string' },
        'new-dns-flows-burst': { type: 'string' },
        'dns-packets-per-source': { type: 'string' },
        'dns-packets-burst': { type: 'string' },
      },
    }));
  } catch (e) {
    return fail((e as Error).message);
  }
  if (values['help'] === true) return { ok: false, help: true, error: '' };
  const str = (k: string): string | undefined => values[k] as string | undefined;
  const list = (k: string): string[] => (values[k] as string[] | undefined) ?? [];

  if (values['apply'] === true && values['remove'] === true) return fail('--apply and --remove are mutually exclusive');
  const action = values['apply'] === true ? 'apply' : values['remove'] === true ? 'remove' : 'print';

  const mode = str('mode') ?? 'host';
  if (mode !== 'host' && mode !== 'sidecar') return fail(`--mode: expected "host" or "sidecar", got "${mode}"`);
  const backend = str('backend') ?? 'iptables';
  if (backend !== 'iptables' && backend !== 'nft') return fail(`--backend: expected "iptables" or "nft", got "${backend}"`);
  const familyArg = str('family') ?? 'both';
  const families: Family[] = familyArg === '4' ? [4] : familyArg === '6' ? [6] : familyArg === 'both' ? [4, 6] : [];
  if (families.length === 0) return fail(`--family: expected "4", "6" or "both", got "${familyArg}"`);
  const udp = str('udp') ?? 'reject';
  if (udp !== 'drop' && udp !== 'reject') return fail(`--udp: expected "reject" or "drop", got "${udp}"`);
  const otherProtocols = str('other-protocols') ?? 'drop';
  if (otherProtocols !== 'drop' && otherProtocols !== 'pass') return fail(`--other-protocols: expected "drop" or "pass", got "${otherProtocols}"`);

  const ports: Record<'http' | 'tls' | 'tcp', number> = { ...DEFAULT_PORTS };
  for (const key of ['http', 'tls', 'tcp'] as const) {
    const raw = str(`${key}-port`);
    if (raw === undefined) continue;
    if (!/^\d{1,5}$/.test(raw) || Number(raw) < 1 || Number(raw) > 65535) {
      return fail(`--${key}-port: expected an integer from 1 to 65535, got "${raw}"`);
    }
    ports[key] = Number(raw);
  }

  const interfaces = list('interface');
  for (const i of interfaces) {
    if (!INTERFACE_RE.test(i))
      return fail(`--interface: expected an interface name of at most 15 characters (letters, digits, "_.@-", optional trailing "+"), got "${i}"`);
  }
  const sources: string[] = [];
  for (const raw of list('source')) {
    const c = parseSourceCidr(raw);
    if (!c.ok) return fail(`--source: ${c.error}`);
    if (!families.includes(cidrFamily(c.cidr))) return fail(`--source: "${raw}" is IPv${cidrFamily(c.cidr)} but --family is ${familyArg}`);
    sources.push(c.cidr);
  }
  const dnsServers: string[] = [];
  for (const a of list('dns-server')) {
    const ip = parseIp(a);
    if (ip === null) return fail(`--dns-server: expected an IPv4 or IPv6 address, got "${a}"`);
    if (!families.includes(ip.family)) return fail(`--dns-server: "${a}" is IPv${ip.family} but --family is ${familyArg}`);
    dnsServers.push(formatIp(ip.family, ip.words));
  }
  const dnsPortArg = str('dns-port') ?? String(DEFAULT_DNS_PORT);
  let dnsPort: number | null = null;
  if (dnsPortArg !== 'off') {
    if (!/^\d{1,5}$/.test(dnsPortArg) || Number(dnsPortArg) < 1 || Number(dnsPortArg) > 65535) {
      return fail(`--dns-port: expected an integer from 1 to 65535 or "off", got "${dnsPortArg}"`);
    }
    dnsPort = Number(dnsPortArg);
  }
  const excludeCidrs: string[] = [];
  for (const raw of list('exclude-cidr')) {
    const c = parseSourceCidr(raw);
    if (!c.ok) return fail(`--exclude-cidr: ${c.error}`);
    if (!families.includes(cidrFamily(c.cidr))) return fail(`--exclude-cidr: "${raw}" is IPv${cidrFamily(c.cidr)} but --family is ${familyArg}`);
    if (!excludeCidrs.includes(c.cidr)) excludeCidrs.push(c.cidr);
  }
  const excludePorts: number[] = [];
  for (const raw of list('exclude-port')) {
    if (!/^\d{1,5}$/.test(raw) || Number(raw) < 1 || Number(raw) > 65535) return fail(`--exclude-port: expected an integer from 1 to 65535, got "${raw}"`);
    if (!excludePorts.includes(Number(raw))) excludePorts.push(Number(raw));
  }
  const newConnections = perSourceLimit('new-connections', 'connections', str('new-connections-per-source'), str('new-connections-burst'));
  if (typeof newConnections === 'string') return fail(newConnections);
  const newDnsFlows = perSourceLimit('new-dns-flows', 'flows', str('new-dns-flows-per-source'), str('new-dns-flows-burst'));
  if (typeof newDnsFlows === 'string') return fail(newDnsFlows);
  const dnsPackets = perSourceLimit('dns-packets', 'datagrams', str('dns-packets-per-source'), str('dns-packets-burst'));
  if (typeof dnsPackets === 'string') return fail(dnsPackets);
  let uid: number | null = null;
  const uidArg = str('uid');
  if (uidArg !== undefined) {
    if (!/^\d{1,10}$/.test(uidArg) || Number(uidArg) > 4294967294) return fail(`--uid: expected a numeric user id, got "${uidArg}"`);
    uid = Number(uidArg);
  }

  // Removal needs no selectors: it deletes whatever egressd installed, in either mode.
  if (action !== 'remove') {
    if (mode === 'host') {
      if (uid !== null) return fail('--uid applies to sidecar mode only');
      if (interfaces.length === 0 && sources.length === 0) {
        return fail('host mode needs --interface or --source: without one every forwarded connection would be redirected');
      }
      // A DNS limit with no DNS to carry it renders no rule: accepted, it would read as a limit in force.
      if (dnsPort === null && dnsServers.length === 0) {
        for (const [flag, limit] of [
          ['--new-dns-flows-per-source', newDnsFlows],
          ['--dns-packets-per-source', dnsPackets],
        ] as const) {
          if (limit !== null)
            return fail(`${flag} limits DNS to the listener or a --dns-server, and with --dns-port off there is no --dns-server: add one or drop ${flag}`);
        }
      }
      // A family with no selector would leave that family's sandbox traffic unfiltered, silently.
      if (interfaces.length === 0) {
        for (const f of families) {
          if (!sources.some((c) => cidrFamily(c) === f))
            return fail(`host mode: no --source is IPv${f} and no --interface was given; add one or pass --family ${f === 4 ? 6 : 4}`);
        }
      }
    } else {
      if (uid === null) return fail("sidecar mode needs --uid: egressd's own connections must not be redirected back to it");
      if (interfaces.length > 0 || sources.length > 0) return fail('--interface and --source apply to host mode only');
      // A pod's own namespace has its own table and one source: the pod.
      for (const [flag, limit] of [
        ['--new-connections-per-source', newConnections],
        ['--new-dns-flows-per-source', newDnsFlows],
        ['--dns-packets-per-source', dnsPackets],
      ] as const) {
        if (limit !== null) return fail(`${flag} applies to host mode only: in sidecar mode each pod has a connection-tracking table of its own`);
      }
    }
  }
  return {
    ok: true,
    options: {
      action,
      mode,
      backend,
      families,
      interfaces,
      sources,
      dnsServers,
      uid,
      udp,
      otherProtocols,
      ports,
      dnsPort,
      excludeCidrs,
      excludePorts,
      newConnections,
      newDnsFlows,
      dnsPackets,
      backendGiven: str('backend') !== undefined,
    },
  };
}

/**
 * `--PREFIX-per-source RATE[/s]` and `--PREFIX-burst N` (burst RATE when not given) read into a
 * limit, null when neither is given, or the usage error naming the flag and its value.
 */
function perSourceLimit(prefix: string, unit: string, rateArg: string | undefined, burstArg: string | undefined): NewConnectionLimit | null | string {
  if (rateArg === undefined) return burstArg === undefined ? null : `--${prefix}-burst needs --${prefix}-per-source`;
  const m = /^(\d{1,6})(?:\/s)?$/.exec(rateArg);
  const perSecond = m ? Number(m[1]) : 0;
  if (perSecond < 1 || perSecond > MAX_NEW_CONNECTIONS)
    return `--${prefix}-per-source: expected ${unit} a second, an integer from 1 to ${MAX_NEW_CONNECTIONS} (optionally with "/s"), got "${rateArg}"`;
  if (burstArg === undefined) return { perSecond, burst: perSecond };
  const burst = /^\d{1,6}$/.test(burstArg) ? Number(burstArg) : 0;
  if (burst < 1 || burst > MAX_NEW_CONNECTIONS) return `--${prefix}-burst: expected an integer from 1 to ${MAX_NEW_CONNECTIONS}, got "${burstArg}"`;
  return { perSecond, burst };
}

/**
 * A `--source` value: an address or CIDR in canonical form (RFC 5952 for IPv6). Host bits set are
 * refused, not cleared: they usually mean a mistyped prefix.
 */
export function parseSourceCidr(raw: string): { ok: true; cidr: string } | { ok: false; error: string } {
  const c = parseCidr(raw);
  if (!c.ok) return { ok: false, error: c.reason };
  const text = formatCidr(c.block);
  if (c.hostBitsSet) return { ok: false, error: `"${raw}" has host bits set; did you mean "${text}"?` };
  return { ok: true, cidr: text };
}
