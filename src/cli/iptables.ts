// `egressd iptables`: the firewall rules that send a sandbox's traffic to egressd. Prints them
// (a shell script for iptables, an `nft -f` file for nftables), or with --apply / --remove changes
// the kernel's tables. The rule set is plain data built by a pure function, so the unit tests
// pin what is installed and the renderers only spell it.
//
// Everything lives in egressd's own chains (EGRESSD-*) or, for nftables, its own tables
// (`ip egressd`, `ip6 egressd`), reached from the built-in chains by one jump each: applying
// again refills the chains and adds no jump; removing deletes the jumps and the chains and
// leaves every other rule where it was.

import { spawn } from 'node:child_process';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';

export type Family = 4 | 6;
export type Backend = 'iptables' | 'nft';
export type Mode = 'host' | 'sidecar';
export type UdpPolicy = 'drop' | 'reject';
type Table = 'nat' | 'filter';
type BuiltinChain = 'PREROUTING' | 'INPUT' | 'FORWARD' | 'OUTPUT';

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
  readonly ports: { readonly http: number; readonly tls: number; readonly tcp: number };
}

export type ChainId = 'nat-prerouting' | 'nat-output' | 'redirect' | 'filter-input' | 'filter-forward' | 'filter-output' | 'udp';

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
});

export interface Match {
  readonly inInterface?: string;
  readonly outInterface?: string;
  readonly source?: string;
  readonly destination?: string;
  readonly protocol?: 'tcp' | 'udp';
  readonly dport?: number;
  readonly uid?: number;
}

export type Target =
  | { readonly kind: 'jump'; readonly chain: ChainId }
  | { readonly kind: 'return' }
  | { readonly kind: 'redirect'; readonly port: number }
  /** ICMP (v6: ICMPv6) port unreachable: the client's connect fails at once instead of timing out. */
  | { readonly kind: 'reject' }
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

/**
 * The rules for one address family, in evaluation order.
 *
 * redirect chain (nat): TCP to a listed DNS server's port 53 returns untouched; then 80 → http
 * listener, 443 → tls listener, every other TCP port → tcp listener.
 * udp chain (filter): UDP to a listed DNS server's port 53 returns; UDP 443 is rejected so QUIC
 * clients fall back to TCP at once; every other UDP is rejected or dropped (`--udp`).
 * host mode: traffic that arrives through a listed interface or from a listed source CIDR
 * enters those chains from nat PREROUTING (TCP) and filter INPUT and FORWARD (UDP).
 * sidecar mode: locally generated traffic enters them from nat OUTPUT and filter OUTPUT, except
 * egressd's own (its uid) and traffic to loopback.
 */
export function buildRuleSet(options: IptablesOptions, family: Family): RuleSet {
  const dns = options.dnsServers.filter((a) => isIP(a) === family);
  const redirect: Rule[] = [
    ...dns.map((a): Rule => ({ match: { destination: hostCidr(a), protocol: 'tcp', dport: 53 }, target: { kind: 'return' } })),
    { match: { protocol: 'tcp', dport: 80 }, target: { kind: 'redirect', port: options.ports.http } },
    { match: { protocol: 'tcp', dport: 443 }, target: { kind: 'redirect', port: options.ports.tls } },
    { match: { protocol: 'tcp' }, target: { kind: 'redirect', port: options.ports.tcp } },
  ];
  const udp: Rule[] = [
    ...dns.map((a): Rule => ({ match: { destination: hostCidr(a), protocol: 'udp', dport: 53 }, target: { kind: 'return' } })),
    { match: { protocol: 'udp', dport: 443 }, target: { kind: 'reject' } },
    { match: { protocol: 'udp' }, target: { kind: options.udp } },
  ];
  const chains: Chain[] = [
    { id: 'redirect', rules: redirect },
    { id: 'udp', rules: udp },
  ];
  if (options.mode === 'host') {
    const selectors: Match[] = [
      ...options.interfaces.map((i): Match => ({ inInterface: i })),
      ...options.sources.filter((c) => cidrFamily(c) === family).map((c): Match => ({ source: c })),
    ];
    const to = (protocol: 'tcp' | 'udp', chain: ChainId): Rule[] => selectors.map((m) => ({ match: { ...m, protocol }, target: { kind: 'jump', chain } }));
    chains.push(
      { id: 'nat-prerouting', rules: to('tcp', 'redirect') },
      { id: 'filter-input', rules: to('udp', 'udp') },
      { id: 'filter-forward', rules: to('udp', 'udp') },
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
      { id: 'nat-output', rules: [...exempt, { match: { protocol: 'tcp' }, target: { kind: 'jump', chain: 'redirect' } }] },
      { id: 'filter-output', rules: [...exempt, { match: { protocol: 'udp' }, target: { kind: 'jump', chain: 'udp' } }] },
    );
  }
  return { family, mode: options.mode, chains };
}

// ---------------------------------------------------------------------------------------------
// Arguments

export type ParsedArgs = { readonly ok: true; readonly options: IptablesOptions } | { readonly ok: false; readonly help: boolean; readonly error: string };

export const IPTABLES_USAGE = `Usage: egressd iptables [--apply | --remove] [options]

Prints the rules that send sandbox traffic to egressd; --apply installs them (idempotent),
--remove deletes egressd's jumps and chains (or nftables tables) and nothing else.

  --mode host|sidecar      host (default): redirect traffic forwarded from sandboxes
                           (nat PREROUTING); sidecar: redirect this host's own traffic
                           (nat OUTPUT) except egressd's --uid and loopback
  --interface IF           host mode: a sandbox-facing interface (repeatable; "veth+" = prefix)
  --source CIDR            host mode: a sandbox source range (repeatable)
  --uid N                  sidecar mode: egressd's user id (required there)
  --dns-server ADDR        the sandboxes' DNS server, left reachable on port 53 (repeatable)
  --udp reject|drop        other UDP (default reject: ICMP port unreachable, so clients fail
                           at once instead of waiting out a timeout); UDP 443 is always rejected
  --family 4|6|both        default both
  --backend iptables|nft   default iptables (chains EGRESSD-*); nft uses tables ip/ip6 egressd
  --http-port N            default ${DEFAULT_PORTS.http} (TCP 80 goes here)
  --tls-port N             default ${DEFAULT_PORTS.tls} (TCP 443 goes here)
  --tcp-port N             default ${DEFAULT_PORTS.tcp} (every other TCP port goes here)

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
        uid: { type: 'string' },
        udp: { type: 'string' },
        'http-port': { type: 'string' },
        'tls-port': { type: 'string' },
        'tcp-port': { type: 'string' },
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
    const c = parseCidr(raw);
    if (!c.ok) return fail(`--source: ${c.error}`);
    if (!families.includes(cidrFamily(c.cidr))) return fail(`--source: "${raw}" is IPv${cidrFamily(c.cidr)} but --family is ${familyArg}`);
    sources.push(c.cidr);
  }
  const dnsServers = list('dns-server');
  for (const a of dnsServers) {
    const f = isIP(a);
    if (f === 0) return fail(`--dns-server: expected an IPv4 or IPv6 address, got "${a}"`);
    if (!families.includes(f as Family)) return fail(`--dns-server: "${a}" is IPv${f} but --family is ${familyArg}`);
  }
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
    }
  }
  return {
    ok: true,
    options: { action, mode, backend, families, interfaces, sources, dnsServers, uid, udp, ports },
  };
}

type CidrResult = { ok: true; cidr: string } | { ok: false; error: string };

/** Parses `ADDR[/LEN]`; rejects host bits set, which usually means a mistyped prefix. */
export function parseCidr(raw: string): CidrResult {
  const slash = raw.indexOf('/');
  const addr = slash < 0 ? raw : raw.slice(0, slash);
  const family = isIP(addr);
  if (family === 0) return { ok: false, error: `expected an IPv4 or IPv6 CIDR, got "${raw}"` };
  const bits = family === 4 ? 32 : 128;
  const lenText = slash < 0 ? String(bits) : raw.slice(slash + 1);
  if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > bits) return { ok: false, error: `prefix length must be 0 to ${bits}, got "${raw}"` };
  const len = Number(lenText);
  const value = family === 4 ? v4ToBigInt(addr) : v6ToBigInt(addr);
  const mask = len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << BigInt(bits - len);
  const network = value & mask;
  const text = family === 4 ? bigIntToV4(network) : bigIntToV6(network);
  if (network !== value) return { ok: false, error: `"${raw}" has host bits set; did you mean "${text}/${len}"?` };
  return { ok: true, cidr: `${text}/${len}` };
}

function cidrFamily(cidr: string): Family {
  return cidr.includes(':') ? 6 : 4;
}

function hostCidr(addr: string): string {
  return isIP(addr) === 4 ? `${addr}/32` : `${addr}/128`;
}

function v4ToBigInt(a: string): bigint {
  return a.split('.').reduce((n, part) => (n << 8n) | BigInt(Number(part)), 0n);
}

function bigIntToV4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((n >> s) & 255n)).join('.');
}

function v6ToBigInt(a: string): bigint {
  let text = a;
  // An embedded dotted quad (::ffff:1.2.3.4) is two more 16-bit groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const v4 = v4ToBigInt(dotted[1]!);
    text = `${text.slice(0, dotted.index)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  return groups.reduce((n, g) => (n << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function bigIntToV6(n: bigint): string {
  const groups: string[] = [];
  for (let s = 112n; s >= 0n; s -= 16n) groups.push(((n >> s) & 0xffffn).toString(16));
  // The URL parser writes the RFC 5952 canonical form (longest zero run as ::).
  return new URL(`http://[${groups.join(':')}]`).hostname.slice(1, -1);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function iptablesMatch(m: Match): string[] {
  const a: string[] = [];
  if (m.inInterface !== undefined) a.push('-i', m.inInterface);
  if (m.outInterface !== undefined) a.push('-o', m.outInterface);
  if (m.source !== undefined) a.push('-s', m.source);
  if (m.destination !== undefined) a.push('-d', m.destination);
  if (m.protocol !== undefined) a.push('-p', m.protocol);
  if (m.dport !== undefined) a.push('--dport', String(m.dport));
  if (m.uid !== undefined) a.push('-m', 'owner', '--uid-owner', String(m.uid));
  return a;
}

function iptablesTarget(t: Target, family: Family): string[] {
  switch (t.kind) {
    case 'jump':
      return ['-j', CHAINS[t.chain].iptables];
    case 'return':
      return ['-j', 'RETURN'];
    case 'redirect':
      return ['-j', 'REDIRECT', '--to-ports', String(t.port)];
    case 'reject':
      return ['-j', 'REJECT', '--reject-with', family === 4 ? 'icmp-port-unreachable' : 'icmp6-port-unreachable'];
    case 'drop':
      return ['-j', 'DROP'];
  }
}

/** The input for `iptables-restore --noflush`: declaring a chain creates it or flushes it. */
export function renderIptablesRestore(rs: RuleSet): string {
  const out: string[] = [];
  for (const table of ['nat', 'filter'] as const) {
    const chains = rs.chains.filter((c) => CHAINS[c.id].table === table);
    if (chains.length === 0) continue;
    out.push(`*${table}`);
    for (const c of chains) out.push(`:${CHAINS[c.id].iptables} - [0:0]`);
    for (const c of chains) {
      for (const r of c.rules) out.push(['-A', CHAINS[c.id].iptables, ...iptablesMatch(r.match), ...iptablesTarget(r.target, rs.family)].join(' '));
    }
    out.push('COMMIT');
  }
  return `${out.join('\n')}\n`;
}

/** The jumps from built-in chains: `[table, builtin, chain name]`. */
export function iptablesJumps(rs: RuleSet): Array<readonly [Table, BuiltinChain, string]> {
  return rs.chains.flatMap((c) => {
    const info = CHAINS[c.id];
    return info.hook === null ? [] : [[info.table, info.hook, info.iptables] as const];
  });
}

function nftMatch(m: Match, family: Family): string[] {
  const ip = family === 4 ? 'ip' : 'ip6';
  const a: string[] = [];
  // iptables spells an interface prefix "veth+", nftables "veth*".
  if (m.inInterface !== undefined) a.push(`iifname "${m.inInterface.replace(/\+$/, '*')}"`);
  if (m.outInterface !== undefined) a.push(`oifname "${m.outInterface.replace(/\+$/, '*')}"`);
  if (m.uid !== undefined) a.push(`meta skuid ${m.uid}`);
  if (m.source !== undefined) a.push(`${ip} saddr ${m.source}`);
  if (m.destination !== undefined) a.push(`${ip} daddr ${m.destination}`);
  if (m.protocol !== undefined) a.push(m.dport !== undefined ? `${m.protocol} dport ${m.dport}` : `meta l4proto ${m.protocol}`);
  return a;
}

function nftTarget(t: Target, family: Family): string {
  switch (t.kind) {
    case 'jump':
      return `jump ${CHAINS[t.chain].nft}`;
    case 'return':
      return 'return';
    case 'redirect':
      return `redirect to :${t.port}`;
    case 'reject':
      return family === 4 ? 'reject with icmp type port-unreachable' : 'reject with icmpv6 type port-unreachable';
    case 'drop':
      return 'drop';
  }
}

const NFT_HOOK: Readonly<Record<BuiltinChain, string>> = { PREROUTING: 'prerouting', INPUT: 'input', FORWARD: 'forward', OUTPUT: 'output' };

export function nftTableName(family: Family): string {
  return `${family === 4 ? 'ip' : 'ip6'} egressd`;
}

/**
 * An `nft -f` input that replaces egressd's table atomically: declaring the table first makes
 * the delete valid when it does not exist yet, and all three lines are one transaction.
 * One table per family (not `inet`) so that --family 4 and --family 6 are applied and removed
 * independently, as with iptables and ip6tables.
 */
export function renderNft(rs: RuleSet): string {
  const table = nftTableName(rs.family);
  const out = [`table ${table}`, `delete table ${table}`, `table ${table} {`];
  for (const c of rs.chains) {
    const info = CHAINS[c.id];
    out.push(`\tchain ${info.nft} {`);
    if (info.hook !== null) {
      // -100 is "dstnat", spelled numerically because nft 1.0 rejects the name on the output hook.
      const priority = info.table === 'nat' ? '-100' : '0';
      out.push(`\t\ttype ${info.table} hook ${NFT_HOOK[info.hook]} priority ${priority}; policy accept;`);
    }
    for (const r of c.rules) out.push(`\t\t${[...nftMatch(r.match, rs.family), nftTarget(r.target, rs.family)].join(' ')}`);
    out.push('\t}');
  }
  out.push('}');
  return `${out.join('\n')}\n`;
}

export function renderNftRemove(family: Family): string {
  return `table ${nftTableName(family)}\ndelete table ${nftTableName(family)}\n`;
}

/** What `--apply` does, as a shell script an operator can read or run. */
export function renderScript(options: IptablesOptions): string {
  const out: string[] = [
    `# egressd iptables: ${options.mode} mode, ${options.families.map((f) => `IPv${f}`).join(' and ')}, backend ${options.backend}`,
    '# Install with `egressd iptables --apply` and the same options; remove with `egressd iptables --remove`.',
  ];
  for (const family of options.families) {
    const rs = buildRuleSet(options, family);
    if (options.backend === 'nft') {
      out.push(`nft -f - <<'EOF'`, renderNft(rs).trimEnd(), 'EOF');
      continue;
    }
    const tool = family === 4 ? 'iptables' : 'ip6tables';
    out.push(`${tool}-restore -w 10 --noflush <<'EOF'`, renderIptablesRestore(rs).trimEnd(), 'EOF');
    for (const [table, builtin, chain] of iptablesJumps(rs)) {
      out.push(`${tool} -w 10 -t ${table} -C ${builtin} -j ${chain} 2>/dev/null || ${tool} -w 10 -t ${table} -I ${builtin} 1 -j ${chain}`);
    }
  }
  return `${out.join('\n')}\n`;
}

/**
 * The `iptables-restore --noflush` input that deletes every jump to one of a table's `chains`,
 * then flushes and deletes those chains, as found in `iptables-save -t TABLE` output; null when
 * there is nothing to remove. One transaction per table: all or nothing.
 */
export function renderIptablesRemoval(saved: Readonly<Record<Table, string>>, chains: Readonly<Record<Table, ReadonlySet<string>>>): string | null {
  const out: string[] = [];
  for (const table of ['nat', 'filter'] as const) {
    const lines = saved[table].split('\n');
    const doomed = chains[table];
    const present = lines.flatMap((l) => {
      const m = /^:(\S+) /.exec(l);
      return m && doomed.has(m[1]!) ? [m[1]!] : [];
    });
    const jumps = lines.filter((l) => {
      const m = /^-A (\S+) .*-j (\S+)$/.exec(l);
      return m !== null && !doomed.has(m[1]!) && doomed.has(m[2]!);
    });
    if (present.length === 0 && jumps.length === 0) continue;
    out.push(`*${table}`, ...jumps.map((l) => `-D${l.slice(2)}`), ...present.map((c) => `-F ${c}`), ...present.map((c) => `-X ${c}`), 'COMMIT');
  }
  return out.length === 0 ? null : `${out.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// Running

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export type Runner = (cmd: string, args: readonly string[], input?: string) => Promise<RunResult>;

const COMMAND_TIMEOUT_MS = 30_000;

// Operators often run this through sudo or cron, whose PATH may lack the sbin directories.
const SBIN_PATH = [process.env['PATH'] ?? '', '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean).join(':');

export const runCommand: Runner = (cmd, args, input) =>
  new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PATH: SBIN_PATH }, timeout: COMMAND_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'ENOENT' ? 'not found (is it installed and on PATH?)' : e.message;
      resolve({ code: null, stdout, stderr: `${stderr}Cannot run "${cmd}": ${why}` });
    });
    child.on('close', (code, signal) => resolve({ code: code ?? null, stdout, stderr: signal ? `${stderr}killed by ${signal}` : stderr }));
    // A tool that exits before reading its input makes the write fail with EPIPE; its exit says why.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });

class CommandFailed extends Error {
  readonly detail: string;
  constructor(cmd: string, args: readonly string[], r: RunResult, input?: string) {
    const shown = [cmd, ...args].join(' ');
    const stdin = input === undefined ? '' : `\nits input was:\n${input.replace(/^/gm, '  ')}`;
    super(`Command failed (exit ${r.code ?? 'none'}): ${shown}`);
    this.detail = `${this.message}\n${r.stderr.trim()}${stdin}`;
  }
}

async function must(run: Runner, cmd: string, args: readonly string[], input?: string): Promise<RunResult> {
  const r = await run(cmd, args, input);
  if (r.code !== 0) throw new CommandFailed(cmd, args, r, input);
  return r;
}

const ALL_IPTABLES_CHAINS: ReadonlySet<string> = new Set(Object.values(CHAINS).map((c) => c.iptables));

async function removeIptablesChains(run: Runner, family: Family, chains: Readonly<Record<Table, ReadonlySet<string>>>): Promise<void> {
  const save = family === 4 ? 'iptables-save' : 'ip6tables-save';
  const saved = {
    nat: (await must(run, save, ['-t', 'nat'])).stdout,
    filter: (await must(run, save, ['-t', 'filter'])).stdout,
  };
  const input = renderIptablesRemoval(saved, chains);
  if (input !== null) await must(run, family === 4 ? 'iptables-restore' : 'ip6tables-restore', ['-w', '10', '--noflush'], input);
}

async function applyIptables(run: Runner, rs: RuleSet): Promise<void> {
  const tool = rs.family === 4 ? 'iptables' : 'ip6tables';
  await must(run, `${tool}-restore`, ['-w', '10', '--noflush'], renderIptablesRestore(rs));
  for (const [table, builtin, chain] of iptablesJumps(rs)) {
    const check = await run(tool, ['-w', '10', '-t', table, '-C', builtin, '-j', chain]);
    if (check.code !== 0) await must(run, tool, ['-w', '10', '-t', table, '-I', builtin, '1', '-j', chain]);
  }
  // The other mode's chains, left by an earlier --apply, would still catch traffic. EGRESSD-OUTPUT
  // names a chain in both nat and filter, so staleness is decided per table.
  const staleIn = (table: Table): ReadonlySet<string> => {
    const mine = new Set(rs.chains.filter((c) => CHAINS[c.id].table === table).map((c) => CHAINS[c.id].iptables));
    return new Set([...ALL_IPTABLES_CHAINS].filter((c) => !mine.has(c)));
  };
  await removeIptablesChains(run, rs.family, { nat: staleIn('nat'), filter: staleIn('filter') });
}

/** `egressd iptables ...`; `run` is replaceable so tests can watch the commands. */
export async function iptablesCommand(argv: string[], run: Runner = runCommand): Promise<{ code: 0 | 1 | 2; stdout: string; stderr: string }> {
  const parsed = parseIptablesArgs(argv);
  if (!parsed.ok) {
    if (parsed.help) return { code: 0, stdout: IPTABLES_USAGE, stderr: '' };
    return { code: 2, stdout: '', stderr: `egressd iptables: ${parsed.error}\n\n${IPTABLES_USAGE}` };
  }
  const o = parsed.options;
  if (o.action === 'print') return { code: 0, stdout: renderScript(o), stderr: '' };
  const done: string[] = [];
  try {
    for (const family of o.families) {
      if (o.action === 'apply') {
        const rs = buildRuleSet(o, family);
        if (o.backend === 'nft') await must(run, 'nft', ['-f', '-'], renderNft(rs));
        else await applyIptables(run, rs);
      } else if (o.backend === 'nft') {
        await must(run, 'nft', ['-f', '-'], renderNftRemove(family));
      } else {
        await removeIptablesChains(run, family, { nat: ALL_IPTABLES_CHAINS, filter: ALL_IPTABLES_CHAINS });
      }
      done.push(`IPv${family}`);
    }
  } catch (e) {
    if (!(e instanceof CommandFailed)) throw e;
    const partial = done.length > 0 ? `\n(${done.join(' and ')} already ${o.action === 'apply' ? 'applied' : 'removed'})` : '';
    return { code: 1, stdout: '', stderr: `egressd iptables: ${e.detail}${partial}\n` };
  }
  const what = o.action === 'apply' ? `applied ${o.mode}-mode rules` : 'removed egressd rules';
  return { code: 0, stdout: `egressd iptables: ${what} for ${done.join(' and ')} (${o.backend})\n`, stderr: '' };
}
