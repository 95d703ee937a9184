// The end-to-end rig: three network namespaces joined by veth pairs, with egressd's REDIRECT
// rules installed by the real `egressd iptables --apply`.
//
//  sandbox ns  ── veth ──  router ns (egressd runs here)  ── veth ──  internet ns
//  198.18.0.2/24           198.18.0.1/24 | 198.18.1.1/24              198.18.1.2..9/24 (servers)
//  2001:db8:0:1::2/64      2001:db8:0:1::1 | 2001:db8:0:2::1          2001:db8:0:2::2..9/64
//  (198.18.0.3, 2001:db8:0:1::3: a second sandbox's source addresses on the same veth)
//                                                                     DNS 198.18.1.53, 2001:db8:0:2::53
//
// `rig.beyond` adds a hop at either end, for a path of more than one router (path MTU):
//  client ns ── veth ── sandbox ns (its gateway)      internet ns (its gateway) ── veth ── origin ns
//  198.18.4.2/24 | 198.18.4.1/24                      198.18.5.1/24 | 198.18.5.2/24
//  2001:db8:0:4::2/64 | ::1                           2001:db8:0:5::1 | 2001:db8:0:5::2/64
//
// Every address is from 198.18.0.0/15 (RFC 2544 benchmarking) or 2001:db8::/32 (RFC 3849
// documentation); every name is under .test (RFC 6761) and answered by the rig's own dnsmasq,
// which forwards nothing. Nothing leaves the namespaces.
//
// Names carry a per-rig prefix `eg` + owner PID (base 36) + a sequence number, and a marker file
// in /run/egressd-rig names the owning process and its start time. A namespace whose owner is
// gone is a leftover of a crashed run and is removed when the next rig is created; a live run's
// namespaces (another test process on the same machine) are never touched.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

export interface UpstreamEvent {
  readonly event: 'accept' | 'data' | 'close';
  readonly service: 'http' | 'tls' | 'banner' | 'echo';
  /** `198.18.1.2:443` or `[2001:db8:0:2::2]:443` */
  readonly local: string;
  readonly remote: string;
  /** data: this chunk's size; close: every byte the connection received. */
  readonly bytes?: number;
  readonly sni?: string | null;
  readonly host?: string | null;
}

export type RigNamespace = 'sandbox' | 'router' | 'internet' | BeyondNamespace;
/** The namespaces `rig.beyond` adds: behind the sandbox, and behind the internet namespace. */
export type BeyondNamespace = 'client' | 'origin';

/** A record of any type dnsmasq serves as given (`dns-rr`): RDATA in hex. */
export interface DnsRawRecord {
  readonly name: string;
  readonly type: number;
  readonly hex: string;
}

export interface ExecResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Rig {
  readonly prefix: string;
  /** Every namespace's name; `client` and `origin` exist once `beyond` has made them. */
  readonly ns: { readonly [K in RigNamespace]: string };
  readonly sandboxV4: string;
  readonly sandboxV6: string;
  /**
   * A second sandbox's source addresses (198.18.0.3, 2001:db8:0:1::3), on the same interface
   * and so redirected by the same rules: a client picks one with its bind address.
   */
  readonly sandbox2V4: string;
  readonly sandbox2V6: string;
  /** 198.18.1.53 (dnsmasq also listens on dnsServerV6). */
  readonly dnsServer: string;
  readonly dnsServerV6: string;
  /** The router's veth facing the sandbox: what `egressd iptables --interface` names. */
  readonly sandboxIf: string;
  /**
   * Starts upstream-server.ts on these addresses of the internet namespace (198.18.1.x or
   * 2001:db8:0:2::x, not the router's or the DNS server's); resolves once listening. Addresses
   * already served are skipped, so calling it again with more addresses is fine.
   */
  servers(addresses: string[]): Promise<void>;
  /** Everything the upstream servers saw so far, in order. */
  events(): UpstreamEvent[];
  /**
   * Replaces the records dnsmasq answers: a name gets A/AAAA records for its addresses; a key
   * `*.name` answers every subdomain of name (not name itself). Other .test names are NXDOMAIN,
   * names outside .test are REFUSED. Resolves once dnsmasq answers the new set.
   */
  dns(records: Record<string, string[]>, opts?: { rr?: readonly DnsRawRecord[] }): Promise<void>;
  /** dnsmasq's query log since it was last (re)started: one `query[TYPE] name from ADDR` line per query. */
  dnsLog(): string;
  execIn(ns: RigNamespace, cmd: string, args: string[], opts?: { timeoutMs?: number; input?: string | Buffer }): Promise<ExecResult>;
  /** A long-running process in a namespace, in its own process group; killed at teardown. */
  spawnIn(ns: RigNamespace, cmd: string, args: string[], opts?: { env?: Record<string, string> }): ChildProcess;
  /**
   * Runs `egressd iptables --apply --mode host --interface <sandboxIf>` in the router namespace.
   * With `ports.dns`, port 53 goes to egressd's DNS listener there; without, `--dns-port off`
   * leaves the rig's dnsmasq reachable on 53.
   */
  redirect(ports: { http: number; tls: number; tcp: number; dns?: number }, opts?: { backend?: 'iptables' | 'nft' }): Promise<void>;
  /**
   * Adds the namespace `which` one hop beyond an end of the rig: `client` behind the sandbox
   * namespace (clientV4, clientV6), or `origin` behind the internet namespace (originV4,
   * originV6), that end forwarding for it and the router routing to it. Every link is 1500
   * octets; the gateway's routes both ways (to the new namespace, and its default route) carry
   * `mtu`, locked, so that it forwards as the entry of a tunnel of that MTU does: a larger IPv4
   * datagram with DF set, and every larger IPv6 one, is dropped and answered with ICMP
   * fragmentation needed (RFC 1191) or packet too big (RFC 8201), while the endpoints' own links
   * (and so the MSS they announce) stay at 1500. Called again, it only sets the new `mtu`.
   */
  beyond(which: BeyondNamespace, opts: { mtu: number }): Promise<void>;
  readonly clientV4: string;
  readonly clientV6: string;
  readonly originV4: string;
  readonly originV6: string;
  /** Kills every process the rig started and deletes its namespaces; safe to call twice. */
  teardown(): Promise<void>;
}

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const MAIN = join(ROOT, 'src/main.ts');
const UPSTREAM = join(ROOT, 'test/helpers/upstream-server.ts');
const MARKER_DIR = '/run/egressd-rig';
const NAME_RE = /^(eg[0-9a-z]{7})-(sbx|rtr|net|cli|org)$/;
const LINK_RE = /^(eg[0-9a-z]{7})(sb|rs|ri|in|cl|gc|or|go)$/;
const SBIN_PATH = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'].filter(Boolean).join(delimiter);
const ENV = { ...process.env, PATH: SBIN_PATH };
const OUTPUT_CAP = 8 * 1024 * 1024;

const REQUIRED_TOOLS = ['ip', 'iptables', 'ip6tables', 'iptables-restore', 'ip6tables-restore', 'iptables-save', 'ip6tables-save', 'nft', 'dnsmasq', 'curl'];

function which(tool: string): string | null {
  for (const dir of SBIN_PATH.split(delimiter)) {
    try {
      accessSync(join(dir, tool), constants.X_OK);
      return join(dir, tool);
    } catch {
      // keep looking
    }
  }
  return null;
}

/** Why the rig cannot run here, or null when it can. */
export function rigUnavailableReason(): string | null {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces and iptables need root (run the e2e suite as root)';
  const missing = REQUIRED_TOOLS.filter((t) => which(t) === null);
  if (missing.length > 0) return `missing tools: ${missing.join(', ')} (bash scripts/ensure-test-tools.sh installs them)`;
  try {
    accessSync(NODE, constants.X_OK);
  } catch {
    return `${NODE} is missing (run npm ci)`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Running commands

/** Runs a command in the root namespace, bounded by a timeout; never rejects. */
function run(
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; input?: string | Buffer; track?: (c: ChildProcess) => () => void } = {},
): Promise<ExecResult> {
  return new Promise((resolveRun) => {
    const child = spawn(cmd, args, { env: ENV, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const untrack = opts.track?.(child) ?? (() => {});
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (stdout.length < OUTPUT_CAP) stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      if (stderr.length < OUTPUT_CAP) stderr += d;
    });
    const timer = setTimeout(() => {
      stderr += `\n[rig] ${cmd} timed out after ${opts.timeoutMs ?? 10_000} ms, killed`;
      killGroup(child, 'SIGKILL');
    }, opts.timeoutMs ?? 10_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      untrack();
      resolveRun({ code: null, stdout, stderr: `${stderr}${e.message}` });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      untrack();
      resolveRun({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

async function must(cmd: string, args: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`Rig command failed (exit ${r.code}): ${cmd} ${args.join(' ')}\n${r.stderr.trim()}`);
  return r.stdout;
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Signals the child's process group (every child is spawned detached, so it leads one). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      process.kill(child.pid, signal);
    } catch {
      // already gone
    }
  }
}

function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (!isRunning(child)) return Promise.resolve(true);
  return new Promise((resolveWait) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolveWait(false);
    }, timeoutMs);
    const onExit = (): void => {
      clearTimeout(timer);
      resolveWait(true);
    };
    child.once('exit', onExit);
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (!isRunning(child)) return;
  killGroup(child, 'SIGTERM');
  if (await waitExit(child, 2000)) return;
  killGroup(child, 'SIGKILL');
  await waitExit(child, 2000);
}

// ---------------------------------------------------------------------------------------------
// Names, markers and leftovers

function processStart(pid: number): string | null {
  try {
    // Field 22 (starttime) follows the parenthesised command name, which may contain spaces.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function ownerAlive(prefix: string): boolean {
  try {
    const m = JSON.parse(readFileSync(join(MARKER_DIR, `${prefix}.json`), 'utf8')) as { pid: number; start: string };
    return processStart(m.pid) === m.start;
  } catch {
    // No marker: markers are written before anything is created and removed after everything
    // is deleted, so a namespace without one belongs to no live run.
    return false;
  }
}

let sequence = 0;

/** Claims a prefix by creating its marker; run after cleanLeftovers, so taken markers are live. */
function allocatePrefix(): string {
  mkdirSync(MARKER_DIR, { recursive: true });
  const start = processStart(process.pid) ?? '0';
  for (let i = 0; i < 1296; i++) {
    const prefix = `eg${process.pid.toString(36).padStart(5, '0')}${(sequence++ % 1296).toString(36).padStart(2, '0')}`;
    try {
      writeFileSync(join(MARKER_DIR, `${prefix}.json`), JSON.stringify({ pid: process.pid, start }), { flag: 'wx' });
      return prefix;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  throw new Error('No free rig prefix: 1296 rigs of this process are alive');
}

async function namespacePids(ns: string): Promise<number[]> {
  const r = await run('ip', ['netns', 'pids', ns]);
  return r.stdout
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isInteger(n) && n > 0);
}

async function deleteNamespace(ns: string): Promise<void> {
  // A namespace dies with its last process: kill what is still inside (all started by a rig).
  for (let round = 0; round < 3; round++) {
    const pids = await namespacePids(ns);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const r = await run('ip', ['netns', 'del', ns]);
  if (r.code !== 0 && (await listNamespaces()).includes(ns)) throw new Error(`Cannot delete namespace "${ns}": ${r.stderr.trim()}`);
}

async function listNamespaces(): Promise<string[]> {
  const r = await run('ip', ['netns', 'list']);
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

/** Removes the namespaces, links and markers of rigs whose process is gone. */
export async function cleanLeftovers(): Promise<string[]> {
  const removed: string[] = [];
  for (const ns of await listNamespaces()) {
    const m = NAME_RE.exec(ns);
    if (!m || ownerAlive(m[1]!)) continue;
    await deleteNamespace(ns);
    removed.push(ns);
  }
  const links = await run('ip', ['-o', 'link', 'show']);
  for (const line of links.stdout.split('\n')) {
    const name = /^\d+:\s+([^:@\s]+)/.exec(line)?.[1];
    const m = name ? LINK_RE.exec(name) : null;
    if (!m || ownerAlive(m[1]!)) continue;
    await run('ip', ['link', 'del', name!]);
    removed.push(name!);
  }
  let markers: string[] = [];
  try {
    markers = readdirSync(MARKER_DIR);
  } catch {
    // no marker directory yet
  }
  for (const f of markers) {
    const prefix = f.replace(/\.json$/, '');
    if (/^eg[0-9a-z]{7}$/.test(prefix) && !ownerAlive(prefix)) rmSync(join(MARKER_DIR, f), { force: true });
  }
  return removed;
}

// A test process that exits without teardown (an uncaught error, process.exit) still removes
// its namespaces; a killed one is cleaned by the next createRig through the markers.
const liveRigs = new Set<{ namespaces: string[]; children: Set<ChildProcess>; marker: string }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const rig of liveRigs) {
      for (const c of rig.children) if (isRunning(c)) killGroup(c, 'SIGKILL');
      for (const ns of rig.namespaces) {
        try {
          const pids = execFileSync('ip', ['netns', 'pids', ns], { env: ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
          for (const pid of pids.split(/\s+/).filter(Boolean)) {
            try {
              process.kill(Number(pid), 'SIGKILL');
            } catch {
              // gone
            }
          }
          execFileSync('ip', ['netns', 'del', ns], { env: ENV, stdio: 'ignore' });
        } catch {
          // best effort on the way out
        }
      }
      rmSync(rig.marker, { force: true });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Addresses

const SANDBOX_V4 = '198.18.0.2';
const SANDBOX_V6 = '2001:db8:0:1::2';
const SANDBOX2_V4 = '198.18.0.3';
const SANDBOX2_V6 = '2001:db8:0:1::3';
const ROUTER_SANDBOX_V4 = '198.18.0.1';
const ROUTER_SANDBOX_V6 = '2001:db8:0:1::1';
const ROUTER_INTERNET_V4 = '198.18.1.1';
const ROUTER_INTERNET_V6 = '2001:db8:0:2::1';
const DNS_V4 = '198.18.1.53';
const DNS_V6 = '2001:db8:0:2::53';
/** `beyond`: the routing table of the gateway that packets from the new namespace take. */
const BEYOND_TABLE = '100';
/** `beyond`: each new namespace's subnet, its gateway's end, the router's route to it. */
const BEYOND = {
  client: {
    gateway: 'sandbox',
    v4: { self: '198.18.4.2', gateway: '198.18.4.1', net: '198.18.4.0/24', via: SANDBOX_V4, up: ROUTER_SANDBOX_V4 },
    v6: { self: '2001:db8:0:4::2', gateway: '2001:db8:0:4::1', net: '2001:db8:0:4::/64', via: SANDBOX_V6, up: ROUTER_SANDBOX_V6 },
  },
  origin: {
    gateway: 'internet',
    v4: { self: '198.18.5.2', gateway: '198.18.5.1', net: '198.18.5.0/24', via: DNS_V4, up: ROUTER_INTERNET_V4 },
    v6: { self: '2001:db8:0:5::2', gateway: '2001:db8:0:5::1', net: '2001:db8:0:5::/64', via: DNS_V6, up: ROUTER_INTERNET_V6 },
  },
} as const;

/** A server address the internet namespace may take: its subnets, minus the router and DNS. */
function checkServerAddress(a: string): string | null {
  if (isIP(a) === 4) {
    const m = /^198\.18\.1\.(\d{1,3})$/.exec(a);
    const host = m ? Number(m[1]) : -1;
    if (host < 2 || host > 254 || host === 53) return `"${a}" is not a server address in 198.18.1.0/24 (router .1 and DNS .53 are taken)`;
    return null;
  }
  if (isIP(a) === 6) {
    const m = /^2001:db8:0:2::([0-9a-f]{1,4})$/i.exec(a);
    const host = m ? parseInt(m[1]!, 16) : -1;
    if (host < 2 || host === 0x53) return `"${a}" is not a server address 2001:db8:0:2::N (router ::1 and DNS ::53 are taken)`;
    return null;
  }
  return `"${a}" is not an IP address`;
}

const DNS_NAME_RE = /^(\*\.)?([a-z0-9-]+\.)*test$/;

// Polls dnsmasq from inside the internet namespace until it answers the expected TXT record.
const DNS_PROBE = `
const { Resolver } = require('node:dns').promises;
const [server, want] = process.argv.slice(1);
const r = new Resolver({ timeout: 200, tries: 1 });
r.setServers([server]);
(async () => {
  for (let i = 0; i < 100; i++) {
    try {
      const txt = await r.resolveTxt('rig-ready.test');
      if (txt.some((t) => t.join('') === want)) process.exit(0);
    } catch {}
    await new Promise((res) => setTimeout(res, 50));
  }
  process.exit(1);
})();
`;

// ---------------------------------------------------------------------------------------------
// The rig

export async function createRig(): Promise<Rig> {
  const why = rigUnavailableReason();
  if (why !== null) throw new Error(`The netns rig cannot run: ${why}`);
  installExitHook();
  await cleanLeftovers();

  const prefix = allocatePrefix();
  const marker = join(MARKER_DIR, `${prefix}.json`);
  const ns = { sandbox: `${prefix}-sbx`, router: `${prefix}-rtr`, internet: `${prefix}-net`, client: `${prefix}-cli`, origin: `${prefix}-org` } as const;
  const ifs = { sandbox: `${prefix}sb`, routerSandbox: `${prefix}rs`, routerInternet: `${prefix}ri`, internet: `${prefix}in` };
  /** `beyond`: the new namespace's end of its veth, and its gateway's end. */
  const beyondIfs = { client: { self: `${prefix}cl`, gateway: `${prefix}gc` }, origin: { self: `${prefix}or`, gateway: `${prefix}go` } } as const;
  const beyondMade = new Set<BeyondNamespace>();
  const children = new Set<ChildProcess>();
  const created: string[] = [];
  const record = { namespaces: created, children, marker };
  liveRigs.add(record);
  const cleanups: Array<() => Promise<void> | void> = [];
  const events: UpstreamEvent[] = [];
  const assigned = new Set<string>();
  const served = new Set<string>();
  let dnsmasq: ChildProcess | null = null;
  let dnsGeneration = 0;
  let dnsmasqLog = '';
  const dir = mkdtempSync(join(tmpdir(), `egressd-rig-${prefix}-`));
  // dnsmasq reads its hosts file after dropping to nobody.
  chmodSync(dir, 0o755);
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));

  const track = (c: ChildProcess): (() => void) => {
    children.add(c);
    return () => children.delete(c);
  };
  const inNs = (which: RigNamespace): string => ns[which];

  let teardownPromise: Promise<void> | null = null;
  const teardown = (): Promise<void> => {
    teardownPromise ??= (async () => {
      await Promise.all([...children].map((c) => stopChild(c)));
      const errors: string[] = [];
      for (const c of cleanups.reverse()) {
        try {
          await c();
        } catch (e) {
          errors.push((e as Error).message);
        }
      }
      rmSync(marker, { force: true });
      liveRigs.delete(record);
      if (errors.length > 0) throw new Error(`Rig teardown left something behind:\n${errors.join('\n')}`);
    })();
    return teardownPromise;
  };

  const execIn = (which: RigNamespace, cmd: string, args: string[], opts: { timeoutMs?: number; input?: string | Buffer } = {}): Promise<ExecResult> =>
    run('ip', ['netns', 'exec', inNs(which), cmd, ...args], { ...opts, track });

  const spawnIn = (which: RigNamespace, cmd: string, args: string[], opts: { env?: Record<string, string> } = {}): ChildProcess => {
    const child = spawn('ip', ['netns', 'exec', inNs(which), cmd, ...args], {
      env: { ...ENV, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    children.add(child);
    child.once('exit', () => children.delete(child));
    // An unhandled 'error' (e.g. ENOENT) would crash the test process; the exit says enough.
    child.on('error', () => {});
    return child;
  };

  const sh = (which: RigNamespace, script: string): Promise<string> => must('ip', ['netns', 'exec', inNs(which), 'sh', '-c', script]);

  const startDnsmasq = async (records: Record<string, string[]>, rr: readonly DnsRawRecord[] = []): Promise<void> => {
    const generation = `gen-${++dnsGeneration}`;
    const hosts: string[] = [];
    const wildcards: string[] = [];
    for (const [name, addresses] of Object.entries(records)) {
      const lower = name.toLowerCase();
      if (!DNS_NAME_RE.test(lower)) throw new Error(`rig.dns: "${name}" is not a name under .test`);
      for (const a of addresses) {
        if (isIP(a) === 0) throw new Error(`rig.dns: "${a}" (for "${name}") is not an IP address`);
        if (lower.startsWith('*.')) wildcards.push(`address=/${lower}/${a}`);
        else hosts.push(`${a} ${lower}`);
      }
    }
    writeFileSync(join(dir, 'hosts'), `${hosts.join('\n')}\n`, { mode: 0o644 });
    writeFileSync(
      join(dir, 'dnsmasq.conf'),
      [
        'no-resolv',
        'no-hosts',
        'bind-interfaces',
        `listen-address=${DNS_V4}`,
        `listen-address=${DNS_V6}`,
        // Unknown .test names are NXDOMAIN; anything else is REFUSED (no upstream exists).
        'local=/test/',
        `addn-hosts=${join(dir, 'hosts')}`,
        ...wildcards,
        `txt-record=rig-ready.test,"${generation}"`,
        ...rr.map((r) => {
          if (!DNS_NAME_RE.test(r.name) || r.name.startsWith('*.') || !Number.isInteger(r.type) || !/^(?:[0-9a-f]{2})*$/i.test(r.hex)) {
            throw new Error(`rig.dns: bad raw record ${JSON.stringify(r)}`);
          }
          return `dns-rr=${r.name},${r.type},${r.hex}`;
        }),
        'log-facility=-',
        // One line per query received: how a test shows that a refused name never arrived.
        'log-queries',
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    if (dnsmasq !== null) await stopChild(dnsmasq);
    dnsmasqLog = '';
    const child = spawnIn('internet', 'dnsmasq', ['--keep-in-foreground', `--conf-file=${join(dir, 'dnsmasq.conf')}`]);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      if (dnsmasqLog.length < 4 * 1_048_576) dnsmasqLog += d;
    });
    child.stdout!.resume();
    dnsmasq = child;
    const probe = await execIn('internet', NODE, ['-e', DNS_PROBE, DNS_V4, generation], { timeoutMs: 15_000 });
    if (probe.code !== 0) throw new Error(`dnsmasq did not answer the new records (${generation}):\n${dnsmasqLog.trim()}\n${probe.stderr}`);
  };

  const addr = async (n: string, dev: string, a: string, len: number): Promise<void> => {
    await must('ip', ['-n', n, 'addr', 'add', `${a}/${len}`, 'dev', dev, ...(isIP(a) === 6 ? ['nodad'] : [])]);
  };

  try {
    for (const which of ['sandbox', 'router', 'internet'] as const) {
      await must('ip', ['netns', 'add', ns[which]]);
      created.push(ns[which]);
      cleanups.push(() => deleteNamespace(ns[which]));
      // Without DAD, IPv6 addresses are usable the moment they are added (no 1-2 s tentative phase).
      await sh(which, 'echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad');
      await must('ip', ['-n', ns[which], 'link', 'set', 'lo', 'up']);
    }
    // Created directly inside the namespaces, so no end ever appears in the root namespace.
    await must('ip', ['link', 'add', ifs.sandbox, 'netns', ns.sandbox, 'type', 'veth', 'peer', 'name', ifs.routerSandbox, 'netns', ns.router]);
    await must('ip', ['link', 'add', ifs.routerInternet, 'netns', ns.router, 'type', 'veth', 'peer', 'name', ifs.internet, 'netns', ns.internet]);
    await addr(ns.sandbox, ifs.sandbox, SANDBOX_V4, 24);
    await addr(ns.sandbox, ifs.sandbox, SANDBOX_V6, 64);
    await addr(ns.sandbox, ifs.sandbox, SANDBOX2_V4, 24);
    // Deprecated (preferred_lft 0): never chosen as a source unless a client binds it, so the
    // first sandbox's connections keep coming from SANDBOX_V6 (RFC 6724 rule 3).
    await must('ip', ['-n', ns.sandbox, 'addr', 'add', `${SANDBOX2_V6}/64`, 'dev', ifs.sandbox, 'nodad', 'preferred_lft', '0']);
    await addr(ns.router, ifs.routerSandbox, ROUTER_SANDBOX_V4, 24);
    await addr(ns.router, ifs.routerSandbox, ROUTER_SANDBOX_V6, 64);
    await addr(ns.router, ifs.routerInternet, ROUTER_INTERNET_V4, 24);
    await addr(ns.router, ifs.routerInternet, ROUTER_INTERNET_V6, 64);
    await addr(ns.internet, ifs.internet, DNS_V4, 24);
    await addr(ns.internet, ifs.internet, DNS_V6, 64);
    for (const [n, dev] of [
      [ns.sandbox, ifs.sandbox],
      [ns.router, ifs.routerSandbox],
      [ns.router, ifs.routerInternet],
      [ns.internet, ifs.internet],
    ] as const) {
      await must('ip', ['-n', n, 'link', 'set', dev, 'up']);
    }
    await must('ip', ['-n', ns.sandbox, 'route', 'add', 'default', 'via', ROUTER_SANDBOX_V4]);
    await must('ip', ['-n', ns.sandbox, '-6', 'route', 'add', 'default', 'via', ROUTER_SANDBOX_V6]);
    // The default route also sends e.g. 169.254.169.254 towards the router, where REDIRECT catches it.
    await must('ip', ['-n', ns.internet, 'route', 'add', 'default', 'via', ROUTER_INTERNET_V4]);
    await must('ip', ['-n', ns.internet, '-6', 'route', 'add', 'default', 'via', ROUTER_INTERNET_V6]);
    await sh('router', 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding');
    await startDnsmasq({});
  } catch (e) {
    await teardown().catch(() => {});
    throw e;
  }

  const beyond = async (which: BeyondNamespace, opts: { mtu: number }): Promise<void> => {
    if (!Number.isInteger(opts.mtu) || opts.mtu < 1280 || opts.mtu > 1500) throw new Error(`rig.beyond: MTU ${opts.mtu} is not from 1280 to 1500`);
    const hop = BEYOND[which];
    const gw = ns[hop.gateway];
    const links = beyondIfs[which];
    if (!beyondMade.has(which)) {
      beyondMade.add(which);
      await must('ip', ['netns', 'add', ns[which]]);
      created.push(ns[which]);
      cleanups.push(() => deleteNamespace(ns[which]));
      await sh(which, 'echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad');
      await must('ip', ['-n', ns[which], 'link', 'set', 'lo', 'up']);
      await must('ip', ['link', 'add', links.self, 'netns', ns[which], 'type', 'veth', 'peer', 'name', links.gateway, 'netns', gw]);
      await addr(ns[which], links.self, hop.v4.self, 24);
      await addr(ns[which], links.self, hop.v6.self, 64);
      await addr(gw, links.gateway, hop.v4.gateway, 24);
      await addr(gw, links.gateway, hop.v6.gateway, 64);
      await must('ip', ['-n', ns[which], 'link', 'set', links.self, 'up']);
      await must('ip', ['-n', gw, 'link', 'set', links.gateway, 'up']);
      await must('ip', ['-n', ns[which], 'route', 'add', 'default', 'via', hop.v4.gateway]);
      await must('ip', ['-n', ns[which], '-6', 'route', 'add', 'default', 'via', hop.v6.gateway]);
      await must('ip', ['-n', ns.router, 'route', 'add', hop.v4.net, 'via', hop.v4.via]);
      await must('ip', ['-n', ns.router, '-6', 'route', 'add', hop.v6.net, 'via', hop.v6.via]);
      await sh(hop.gateway, 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding');
    }
    // Locked: IPv4 forwarding honours a route's MTU either way, IPv6 forwarding only a locked one
    // (ip6_dst_mtu_maybe_forward); the interfaces stay at 1500. Towards the rig, only what comes
    // from the new namespace takes the small route (a table of its own, chosen by the incoming
    // interface): the gateway's own packets keep its 1500 route, since a locked one would make
    // its IPv4 datagrams leave without DF (ip_dont_fragment).
    const mtu = ['mtu', 'lock', String(opts.mtu)];
    await must('ip', ['-n', gw, 'route', 'replace', hop.v4.net, 'dev', links.gateway, 'src', hop.v4.gateway, ...mtu]);
    // Metric 256: the kernel's own route for the subnet, which a route of the default 1024 would not replace.
    await must('ip', ['-n', gw, '-6', 'route', 'replace', hop.v6.net, 'dev', links.gateway, 'metric', '256', ...mtu]);
    for (const [v, up] of [
      ['-4', hop.v4.up],
      ['-6', hop.v6.up],
    ] as const) {
      await must('ip', ['-n', gw, v, 'route', 'replace', 'default', 'via', up, 'table', BEYOND_TABLE, ...mtu]);
      await run('ip', ['-n', gw, v, 'rule', 'del', 'iif', links.gateway, 'lookup', BEYOND_TABLE]);
      await must('ip', ['-n', gw, v, 'rule', 'add', 'iif', links.gateway, 'lookup', BEYOND_TABLE]);
    }
  };

  const rig: Rig = {
    prefix,
    beyond,
    clientV4: BEYOND.client.v4.self,
    clientV6: BEYOND.client.v6.self,
    originV4: BEYOND.origin.v4.self,
    originV6: BEYOND.origin.v6.self,
    ns,
    sandboxV4: SANDBOX_V4,
    sandboxV6: SANDBOX_V6,
    sandbox2V4: SANDBOX2_V4,
    sandbox2V6: SANDBOX2_V6,
    dnsServer: DNS_V4,
    dnsServerV6: DNS_V6,
    sandboxIf: ifs.routerSandbox,

    async servers(addresses) {
      for (const a of addresses) {
        const bad = checkServerAddress(a);
        if (bad !== null) throw new Error(`rig.servers: ${bad}`);
      }
      // An address already served keeps its server; only new ones get one.
      const fresh = [...new Set(addresses)].filter((a) => !served.has(a));
      if (fresh.length === 0) return;
      for (const a of fresh) {
        if (assigned.has(a)) continue;
        await addr(ns.internet, ifs.internet, a, isIP(a) === 4 ? 24 : 64);
        assigned.add(a);
      }
      const child = spawnIn('internet', NODE, [UPSTREAM, ...fresh]);
      let stderr = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        if (stderr.length < 65_536) stderr += d;
      });
      await new Promise<void>((resolveListening, reject) => {
        const timer = setTimeout(() => fail(new Error(`upstream-server did not start listening within 15 s\n${stderr}`)), 15_000);
        const fail = (e: Error): void => {
          clearTimeout(timer);
          reject(e);
        };
        child.once('exit', (code) => fail(new Error(`upstream-server exited (${code}) before listening\n${stderr}`)));
        createInterface({ input: child.stdout! }).on('line', (line) => {
          let e: { event?: string };
          try {
            e = JSON.parse(line) as { event?: string };
          } catch {
            return;
          }
          if (e.event === 'listening') {
            clearTimeout(timer);
            for (const a of fresh) served.add(a);
            resolveListening();
          } else if (e.event === 'accept' || e.event === 'data' || e.event === 'close') {
            events.push(e as UpstreamEvent);
          }
        });
      });
    },

    events: () => [...events],

    dns: (records, opts = {}) => startDnsmasq(records, opts.rr ?? []),
    dnsLog: () => dnsmasqLog,

    execIn,
    spawnIn,

    async redirect(ports, opts = {}) {
      const r = await execIn(
        'router',
        NODE,
        [
          MAIN,
          'iptables',
          '--apply',
          '--mode',
          'host',
          '--interface',
          ifs.routerSandbox,
          '--http-port',
          String(ports.http),
          '--tls-port',
          String(ports.tls),
          '--tcp-port',
          String(ports.tcp),
          '--dns-server',
          DNS_V4,
          '--dns-server',
          DNS_V6,
          '--dns-port',
          ports.dns === undefined ? 'off' : String(ports.dns),
          '--backend',
          opts.backend ?? 'iptables',
        ],
        { timeoutMs: 30_000 },
      );
      if (r.code !== 0) throw new Error(`egressd iptables --apply failed (exit ${r.code}):\n${r.stderr}${r.stdout}`);
    },

    teardown,
  };
  return rig;
}
