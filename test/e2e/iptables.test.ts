// `egressd iptables --apply/--remove` against a real kernel, inside a throwaway namespace of the
// rig (the router's), so the host's own tables are never touched: removal restores the tables
// exactly, applying twice changes nothing, and the installed rules do what they claim.

import type { ChildProcess } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRig, type Rig, rigUnavailableReason } from '../helpers/netns-rig.ts';
import { MAIN, NODE } from '../helpers/e2e-daemon.ts';
import { startCatcher, stopCatcher } from '../helpers/port-catcher.ts';

const S4 = '198.18.1.2';
const S6 = '2001:db8:0:2::2';
const NO_HOST4 = '198.18.1.99';
const NO_HOST6 = '2001:db8:0:2::99';
const PORTS = { http: 25080, tls: 25443, tcp: 25001 };

// Connects as user argv[3] ("-": as is), sends argv[4] if given, prints what arrives until close.
const TCP_CLIENT = `
const [host, port, uid, send] = process.argv.slice(1);
if (uid !== '-') { process.setgid(Number(uid)); process.setuid(Number(uid)); }
const s = require('node:net').connect({ host, port: Number(port) });
let got = '';
s.setTimeout(5000, () => { process.stderr.write('timeout'); process.exit(3); });
s.on('connect', () => { if (send) s.write(send); });
s.on('data', (d) => { got += d; });
s.on('close', () => { process.stdout.write(got); process.exit(0); });
s.on('error', (e) => { process.stderr.write(e.code || e.message); process.exit(2); });
`;

/**
 * Stops a catcher and waits until it is gone: the next describe's catcher listens on the same
 * ports, and one started while this one still held them never said "ready".
 */
const haveDig = spawnSync('dig', ['-v'], { stdio: 'ignore' }).status === 0;
const skip = rigUnavailableReason() ?? (haveDig ? null : 'dig is missing (bash scripts/ensure-test-tools.sh installs bind9-dnsutils)');
if (skip) console.warn(`e2e iptables tests skipped: ${skip}`);

/**
 * The rule set as text without counters and generated-on comments, and without empty
 * policy-accept base chains: iptables-nft creates a built-in chain in nftables on first use and
 * never deletes it, though iptables-save shows it the same before and after.
 */
function normalize(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]').replace(/counter packets \d+ bytes \d+/g, 'counter'))
    .join('\n')
    .replace(/\n*\tchain (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) \{\n\t\ttype [^\n]*policy accept;\n\t\}/g, '')
    .replace(/table ip6? (nat|filter) \{\n\}\n?/g, '');
}

describe.skipIf(skip !== null)('egressd iptables on a live kernel', () => {
  let rig: Rig;

  beforeAll(async () => {
    rig = await createRig();
    await rig.servers([S4, S6]);
    // Rules that belong to someone else, which apply and remove must leave exactly as they are.
    const foreign: Array<[string, string[]]> = [
      ['iptables', ['-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '9', '-j', 'RETURN']],
      ['iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '--dport', '9', '-j', 'RETURN']],
      ['iptables', ['-A', 'FORWARD', '-p', 'icmp', '-j', 'ACCEPT']],
      ['iptables', ['-A', 'INPUT', '-p', 'icmp', '-j', 'ACCEPT']],
      ['iptables', ['-A', 'OUTPUT', '-p', 'icmp', '-j', 'ACCEPT']],
      ['ip6tables', ['-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '9', '-j', 'RETURN']],
      ['ip6tables', ['-A', 'FORWARD', '-p', 'ipv6-icmp', '-j', 'ACCEPT']],
      ['nft', ['add', 'table', 'inet', 'other']],
      ['nft', ['add', 'chain', 'inet', 'other', 'in', '{ type filter hook input priority 10; policy accept; }']],
      ['nft', ['add', 'rule', 'inet', 'other', 'in', 'tcp', 'dport', '9', 'accept']],
    ];
    for (const [cmd, args] of foreign) {
      const r = await rig.execIn('router', cmd, args);
      expect(r.code, `${cmd} ${args.join(' ')}: ${r.stderr}`).toBe(0);
    }
  });
  afterAll(async () => {
    await rig?.teardown();
  });

  const egressd = (args: string[]) => rig.execIn('router', NODE, [MAIN, 'iptables', ...args], { timeoutMs: 30_000 });
  const snapshot = async (): Promise<string> => {
    const parts = await Promise.all([
      rig.execIn('router', 'iptables-save', []),
      rig.execIn('router', 'ip6tables-save', []),
      rig.execIn('router', 'nft', ['list', 'ruleset']),
    ]);
    for (const p of parts) expect(p.code, p.stderr).toBe(0);
    return parts.map((p) => normalize(p.stdout)).join('\n----\n');
  };
  const ok = async (args: string[]): Promise<void> => {
    const r = await egressd(args);
    expect(r.code, `egressd iptables ${args.join(' ')}\n${r.stderr}`).toBe(0);
  };

  const MODES: Record<string, string[]> = {
    host: [
      '--mode',
      'host',
      '--interface',
      'veth+',
      '--source',
      '198.18.0.0/24',
      '--source',
      '2001:db8:0:1::/64',
      '--dns-server',
      '198.18.1.53',
      '--dns-server',
      '2001:db8:0:2::53',
    ],
    sidecar: ['--mode', 'sidecar', '--uid', '1000', '--dns-server', '198.18.1.53'],
  };

  describe.each(['iptables', 'nft'])('with the %s backend', (backend) => {
    it.each(['host', 'sidecar'])('in %s mode, applying twice adds nothing and removing restores the tables exactly', async (mode) => {
      const before = await snapshot();
      await ok(['--apply', '--backend', backend, ...MODES[mode]!]);
      const applied = await snapshot();
      expect(applied).not.toBe(before);
      expect(applied).toMatch(backend === 'nft' ? /table ip6? egressd/ : /EGRESSD-/);
      await ok(['--apply', '--backend', backend, ...MODES[mode]!]);
      expect(await snapshot()).toBe(applied);
      await ok(['--remove', '--backend', backend]);
      expect(await snapshot()).toBe(before);
      await ok(['--remove', '--backend', backend]);
      expect(await snapshot()).toBe(before);
    });

    it('switching from host to sidecar mode leaves no host-mode rule behind', async () => {
      const before = await snapshot();
      await ok(['--apply', '--backend', backend, ...MODES['host']!]);
      await ok(['--apply', '--backend', backend, ...MODES['sidecar']!]);
      const state = await snapshot();
      expect(state).not.toMatch(/EGRESSD-PREROUTING|EGRESSD-FORWARD|nat_prerouting|filter_forward/);
      expect(state).toMatch(/EGRESSD-OUTPUT|nat_output/);
      await ok(['--remove', '--backend', backend]);
      expect(await snapshot()).toBe(before);
    });
  });

  it('applies only the requested family', async () => {
    const before = await snapshot();
    await ok(['--apply', '--family', '6', '--interface', 'veth+']);
    const v4 = await rig.execIn('router', 'iptables-save', []);
    const v6 = await rig.execIn('router', 'ip6tables-save', []);
    expect(v4.stdout).not.toContain('EGRESSD');
    expect(v6.stdout).toContain('EGRESSD-PREROUTING');
    await ok(['--remove', '--family', '6']);
    expect(await snapshot()).toBe(before);
  });

  it.each(['iptables', 'nft'])('--remove without --backend removes what the %s backend installed', async (backend) => {
    const before = await snapshot();
    await ok(['--apply', '--backend', backend, ...MODES['host']!]);
    expect(await snapshot()).not.toBe(before);
    const r = await egressd(['--remove']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(backend);
    expect(await snapshot()).toBe(before);
    // Nothing left: removing again succeeds and says so.
    const again = await egressd(['--remove']);
    expect(again.code, again.stderr).toBe(0);
    expect(await snapshot()).toBe(before);
  });

  it.each([
    ['iptables', 'nft'],
    ['nft', 'iptables'],
  ])("switching from the %s backend to %s, --apply takes out the first one's rules in the same run and says so", async (first, second) => {
    const before = await snapshot();
    await ok(['--apply', '--backend', first!, ...MODES['host']!]);
    const r = await egressd(['--apply', '--backend', second!, ...MODES['host']!]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`removed what the ${first} backend had installed: `);
    expect(r.stdout).toContain(first === 'nft' ? 'nft table ip egressd, nft table ip6 egressd' : 'iptables chains EGRESSD-');
    // The iptables here is the nf_tables variant, as the host's other rules: nothing to warn of.
    expect(r.stderr).not.toContain('variant');
    const switched = await snapshot();
    // Exactly what the second backend installs on a host that never had the first.
    await ok(['--remove']);
    expect(await snapshot()).toBe(before);
    await ok(['--apply', '--backend', second!, ...MODES['host']!]);
    expect(switched).toBe(await snapshot());
    await ok(['--remove']);
    expect(await snapshot()).toBe(before);
  });

  it.each(['iptables', 'nft'])("--remove --backend %s also removes the other backend's rules, and names what it removed", async (named) => {
    const before = await snapshot();
    // One family each, so that neither apply takes the other's out.
    await ok(['--apply', '--backend', 'iptables', '--family', '4', '--interface', 'veth+']);
    await ok(['--apply', '--backend', 'nft', '--family', '6', '--interface', 'veth+']);
    const r = await egressd(['--remove', '--backend', named]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^egressd iptables: removed egressd rules for IPv4 and IPv6: iptables chains EGRESSD-[^\n]*, nft table ip6 egressd\n$/);
    expect(await snapshot()).toBe(before);
  });

  describe('when the iptables egressd drives is not the variant the host uses', () => {
    let shim: string;
    beforeAll(() => {
      // iptables-save and -restore that are the legacy variant, first on PATH (xtables-legacy-multi
      // acts by the name it is called with).
      shim = mkdtempSync(join(tmpdir(), 'egressd-legacy-'));
      for (const tool of ['iptables', 'ip6tables']) {
        for (const verb of ['save', 'restore']) symlinkSync(`/usr/sbin/${tool}-legacy-${verb}`, join(shim, `${tool}-${verb}`));
      }
    });
    afterAll(() => {
      if (shim) rmSync(shim, { recursive: true, force: true });
    });
    const withLegacy = (args: string[]) =>
      rig.execIn('router', 'env', [`PATH=${shim}:${process.env['PATH'] ?? ''}:/usr/sbin:/sbin`, NODE, MAIN, 'iptables', ...args], { timeoutMs: 30_000 });
    const HOST4 = ['--family', '4', '--mode', 'host', '--interface', 'veth+', '--dns-port', 'off', '--dns-server', '198.18.1.53'];

    it('warns in one line when it is legacy and the rules are in nftables', async () => {
      const before = await snapshot();
      // The router's other rules (beforeAll's) are in nftables: iptables-nft's tables and `inet other`.
      const r = await withLegacy(['--apply', ...HOST4]);
      try {
        expect(r.code, r.stderr).toBe(0);
        const lines = r.stderr.trimEnd().split('\n');
        expect(lines).toHaveLength(1);
        expect(lines[0]).toMatch(/^egressd iptables: warning: iptables here is the legacy variant, but this host's other rules are in nftables/);
        expect((await rig.execIn('router', 'iptables-legacy-save', [])).stdout).toContain('EGRESSD-PREROUTING');
      } finally {
        const removed = await withLegacy(['--remove', '--family', '4']);
        expect(removed.code, removed.stderr).toBe(0);
      }
      expect((await rig.execIn('router', 'iptables-legacy-save', [])).stdout).not.toContain('EGRESSD');
      expect(await snapshot()).toBe(before);
    });

    it('warns in one line when it is nf_tables and the rules are in the legacy tables', async () => {
      const before = await snapshot();
      const rule = ['-A', 'INPUT', '-p', 'udp', '--dport', '9', '-j', 'ACCEPT'];
      const added = await rig.execIn('router', 'iptables-legacy', rule);
      expect(added.code, added.stderr).toBe(0);
      try {
        const r = await egressd(['--apply', ...HOST4]);
        expect(r.code, r.stderr).toBe(0);
        const lines = r.stderr.trimEnd().split('\n');
        expect(lines).toHaveLength(1);
        expect(lines[0]).toMatch(/^egressd iptables: warning: iptables here is the nf_tables variant, but this host's other rules are in the legacy tables/);
      } finally {
        await ok(['--remove', '--family', '4']);
        await rig.execIn('router', 'iptables-legacy', ['-D', ...rule.slice(1)]);
      }
      expect(await snapshot()).toBe(before);
    });
  });

  describe.each(['iptables', 'nft'] as const)('--exclude-cidr and --exclude-port with the %s backend', (backend) => {
    const XPORTS = { http: 26080, tls: 26443, tcp: 26001 };
    let catcher: ChildProcess;
    beforeAll(async () => {
      await rig.servers([S4, S6]);
      catcher = await startCatcher(rig, 'router', [XPORTS.http, XPORTS.tls, XPORTS.tcp]);
      await ok([
        '--apply',
        '--backend',
        backend,
        '--mode',
        'host',
        '--interface',
        rig.sandboxIf,
        '--http-port',
        String(XPORTS.http),
        '--tls-port',
        String(XPORTS.tls),
        '--tcp-port',
        String(XPORTS.tcp),
        '--dns-server',
        rig.dnsServer,
        '--dns-server',
        rig.dnsServerV6,
        '--exclude-cidr',
        `${S6}/128`,
        '--exclude-cidr',
        `${rig.dnsServer}/32`,
        '--exclude-port',
        '7000',
      ]);
    });
    afterAll(async () => {
      await ok(['--remove']);
      await stopCatcher(catcher);
    });
    const tcp = (host: string, port: number, send?: string) =>
      rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, host, String(port), '-', ...(send !== undefined ? [send] : [])], { timeoutMs: 15_000 });
    const accepts = (local: string): number => rig.events().filter((e) => e.event === 'accept' && e.local === local).length;

    it('lets traffic to an excluded port or range reach the real server, and still redirects the rest', async () => {
      const echoBefore = accepts(`${S4}:7000`);
      const viaPort = rig.execIn(
        'sandbox',
        NODE,
        ['-e', TCP_CLIENT.replace('if (send) s.write(send);', 'if (send) s.write(send); setTimeout(() => s.end(), 300);'), S4, '7000', '-', 'ping'],
        { timeoutMs: 15_000 },
      );
      expect((await viaPort).stdout).toBe('ping');
      expect(accepts(`${S4}:7000`)).toBe(echoBefore + 1);
      const v6Before = accepts(`[${S6}]:7000`);
      const viaRange = rig.execIn(
        'sandbox',
        NODE,
        ['-e', TCP_CLIENT.replace('if (send) s.write(send);', 'if (send) s.write(send); setTimeout(() => s.end(), 300);'), S6, '7000', '-', 'pong'],
        { timeoutMs: 15_000 },
      );
      expect((await viaRange).stdout).toBe('pong');
      expect(accepts(`[${S6}]:7000`)).toBe(v6Before + 1);
      // The same range on another port is still excluded; another address is still caught.
      const banner = await rig.execIn(
        'sandbox',
        NODE,
        ['-e', TCP_CLIENT.replace('if (send) s.write(send);', 'if (send) s.write(send); setTimeout(() => s.end(), 300);'), S6, '2525', '-', 'x'],
        { timeoutMs: 15_000 },
      );
      expect(banner.stdout).toContain('220 hello');
      expect((await tcp(S4, 2525)).stdout).toBe(`caught ${XPORTS.tcp}\n`);
      expect((await tcp(S4, 80)).stdout).toBe(`caught ${XPORTS.http}\n`);
    });

    // UDP 53 is redirected to the DNS listener (--dns-port, on by default) from the same chain as
    // TCP: an excluded server must get its queries over UDP as over TCP, not the listener.
    it('lets DNS over UDP to an excluded server reach it', async () => {
      const r = await rig.execIn('sandbox', 'dig', ['+time=3', '+tries=1', `@${rig.dnsServer}`, 'nothere.test'], { timeoutMs: 15_000 });
      expect(r.stdout).toContain('status: NXDOMAIN');
    });
  });

  describe.each(['iptables', 'nft'] as const)('rules applied with the %s backend', (backend) => {
    let catcher: ChildProcess;

    beforeAll(async () => {
      catcher = await startCatcher(rig, 'router', [PORTS.http, PORTS.tls, PORTS.tcp]);
      await rig.redirect(PORTS, { backend });
    });
    afterAll(async () => {
      await ok(['--remove', '--backend', backend]);
      await stopCatcher(catcher);
    });

    const tcp = (host: string, port: number) => rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, host, String(port), '-'], { timeoutMs: 15_000 });
    const udp = (server: string, port: number) =>
      rig.execIn('sandbox', 'dig', ['+time=3', '+tries=1', '-p', String(port), `@${server}`, 'probe.test'], { timeoutMs: 15_000 });

    it("redirect the sandbox's TCP by port, over IPv4 and IPv6, before it reaches any server", async () => {
      const before = rig.events().length;
      expect((await tcp(S4, 80)).stdout).toBe(`caught ${PORTS.http}\n`);
      expect((await tcp(S6, 443)).stdout).toBe(`caught ${PORTS.tls}\n`);
      expect((await tcp(S4, 22)).stdout).toBe(`caught ${PORTS.tcp}\n`);
      expect((await tcp(S6, 7000)).stdout).toBe(`caught ${PORTS.tcp}\n`);
      // Port 53 is exempt for the DNS server only.
      expect((await tcp(S4, 53)).stdout).toBe(`caught ${PORTS.tcp}\n`);
      expect(rig.events().length).toBe(before);
    });

    it('leave the DNS server reachable on 53 over UDP and TCP', async () => {
      const r4 = await rig.execIn('sandbox', 'dig', ['+time=3', '+tries=1', `@${rig.dnsServer}`, 'nothere.test'], { timeoutMs: 15_000 });
      expect(r4.stdout).toContain('status: NXDOMAIN');
      const r6 = await rig.execIn('sandbox', 'dig', ['+time=3', '+tries=1', '+tcp', `@${rig.dnsServerV6}`, 'nothere.test'], { timeoutMs: 15_000 });
      expect(r6.stdout).toContain('status: NXDOMAIN');
    });

    // Nothing listens at these addresses: without the REJECT the router could only answer
    // "host unreachable" after neighbour discovery fails, never "connection refused".
    it('reject UDP 443 and other UDP at once with port unreachable, over IPv4 and IPv6', async () => {
      for (const [server, port] of [
        [NO_HOST4, 443],
        [NO_HOST6, 443],
        [NO_HOST4, 5353],
        [NO_HOST6, 5353],
      ] as const) {
        const r = await udp(server, port);
        expect(`${r.stdout}${r.stderr}`, `${server}#${port}`).toMatch(/connection refused/);
      }
    });
  });

  describe.each(['iptables', 'nft'] as const)('sidecar rules applied with the %s backend', (backend) => {
    const NOBODY = '65534';
    const LOOPBACK_ONLY = 25999;
    let catcher: ChildProcess;

    beforeAll(async () => {
      catcher = await startCatcher(rig, 'sandbox', [PORTS.http, PORTS.tls, PORTS.tcp, LOOPBACK_ONLY]);
      const portArgs = ['--http-port', String(PORTS.http), '--tls-port', String(PORTS.tls), '--tcp-port', String(PORTS.tcp)];
      // egressd's uid is root's here, so the test's root clients play egressd and nobody plays the sandbox.
      const r = await rig.execIn('sandbox', NODE, [MAIN, 'iptables', '--apply', '--backend', backend, '--mode', 'sidecar', '--uid', '0', ...portArgs], {
        timeoutMs: 30_000,
      });
      expect(r.code, r.stderr).toBe(0);
    });
    afterAll(async () => {
      await rig.execIn('sandbox', NODE, [MAIN, 'iptables', '--remove', '--backend', backend], { timeoutMs: 30_000 });
      await stopCatcher(catcher);
    });

    const tcpAs = (uid: string, host: string, port: number, send?: string) =>
      rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, host, String(port), uid, ...(send !== undefined ? [send] : [])], { timeoutMs: 15_000 });

    it("redirect other users' TCP to the local listeners by port, over IPv4 and IPv6", async () => {
      expect((await tcpAs(NOBODY, S4, 80)).stdout).toBe(`caught ${PORTS.http}\n`);
      expect((await tcpAs(NOBODY, S6, 443)).stdout).toBe(`caught ${PORTS.tls}\n`);
      expect((await tcpAs(NOBODY, S4, 7000)).stdout).toBe(`caught ${PORTS.tcp}\n`);
    });

    it("leave egressd's own connections and loopback traffic alone", async () => {
      const direct = await tcpAs('0', S4, 80, 'GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n');
      expect(direct.stdout, direct.stderr).toContain(`"server":"${S4}"`);
      expect((await tcpAs(NOBODY, '127.0.0.1', LOOPBACK_ONLY)).stdout).toBe(`caught ${LOOPBACK_ONLY}\n`);
      expect((await tcpAs(NOBODY, '::1', LOOPBACK_ONLY)).stdout).toBe(`caught ${LOOPBACK_ONLY}\n`);
    });

    it("reset a connection that a NAT rule ahead of egressd's sent elsewhere", async () => {
      const service = '198.18.1.79';
      const dnat = ['-t', 'nat', 'OUTPUT', '-d', `${service}/32`, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${S4}:7000`];
      const at = (op: string[]) => [...dnat.slice(0, 2), ...op, ...dnat.slice(3)];
      const before = rig.events().filter((e) => e.event === 'accept' && e.local === `${S4}:7000`).length;
      // iptables' nat OUTPUT sits at dstnat (-100); the nft backend's chain at -110 runs first,
      // so the other tool's rule goes ahead of it in a chain of its own at -120.
      const add =
        backend === 'nft'
          ? await rig.execIn('sandbox', 'nft', ['-f', '-'], {
              input: `table ip foreign {\n\tchain out {\n\t\ttype nat hook output priority -120; policy accept;\n\t\tip daddr ${service} tcp dport 80 dnat to ${S4}:7000\n\t}\n}\n`,
            })
          : await rig.execIn('sandbox', 'iptables', at(['-I', 'OUTPUT', '1']));
      expect(add.code, add.stderr).toBe(0);
      try {
        const c = await tcpAs(NOBODY, service, 80, 'x');
        expect(c.stderr).toMatch(/ECONNREFUSED|ECONNRESET/);
        expect(rig.events().filter((e) => e.event === 'accept' && e.local === `${S4}:7000`).length).toBe(before);
      } finally {
        if (backend === 'nft') await rig.execIn('sandbox', 'nft', ['delete', 'table', 'ip', 'foreign']);
        else await rig.execIn('sandbox', 'iptables', at(['-D', 'OUTPUT']));
      }
    });
  });

  // kube-proxy and Docker put their NAT rules first when they start (kube-proxy: `-I PREROUTING 1
  // -j KUBE-SERVICES`, or a table of its own under nftables): a DNAT evaluated before egressd's
  // redirect takes the connection, and the sandbox reaches the DNAT's target unfiltered.
  describe.each(['iptables', 'nft'] as const)('a NAT rule another tool adds later, with the %s backend', (backend) => {
    const FPORTS = { http: 27080, tls: 27443, tcp: 27001 };
    // A "service address" no host has, sent by the DNAT to the rig's echo server.
    const SERVICE = '198.18.1.77';
    const DNAT = ['-d', `${SERVICE}/32`, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${S4}:7000`];
    let catcher: ChildProcess;
    beforeAll(async () => {
      catcher = await startCatcher(rig, 'router', [FPORTS.http, FPORTS.tls, FPORTS.tcp]);
      await rig.redirect(FPORTS, { backend });
    });
    afterAll(async () => {
      if (backend === 'nft') await rig.execIn('router', 'nft', ['delete', 'table', 'ip', 'foreign']);
      else await rig.execIn('router', 'iptables', ['-t', 'nat', '-D', 'PREROUTING', ...DNAT]);
      await ok(['--remove', '--backend', backend]);
      await stopCatcher(catcher);
    });
    const toService = () => rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, SERVICE, '80', '-'], { timeoutMs: 15_000 });

    it('cannot take a sandbox connection from egressd', async () => {
      if (backend === 'nft') {
        // A table made after egressd's, its NAT chain at the usual dstnat priority.
        const r = await rig.execIn('router', 'nft', ['-f', '-'], {
          input: `table ip foreign {\n\tchain pre {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tip daddr ${SERVICE} tcp dport 80 dnat to ${S4}:7000\n\t}\n}\n`,
        });
        expect(r.code, r.stderr).toBe(0);
        expect((await toService()).stdout).toBe(`caught ${FPORTS.http}\n`);
      } else {
        const r = await rig.execIn('router', 'iptables', ['-t', 'nat', '-I', 'PREROUTING', '1', ...DNAT]);
        expect(r.code, r.stderr).toBe(0);
      }
      // Applying again, as an operator repairs: egressd's jump goes back in front, and only one.
      await rig.redirect(FPORTS, { backend });
      expect((await toService()).stdout).toBe(`caught ${FPORTS.http}\n`);
      if (backend === 'iptables') {
        const nat = (await rig.execIn('router', 'iptables-save', ['-t', 'nat'])).stdout;
        expect(nat.split('\n').filter((l) => l.startsWith('-A PREROUTING '))[0]).toBe('-A PREROUTING -j EGRESSD-PREROUTING');
        expect(nat.split('\n').filter((l) => l === '-A PREROUTING -j EGRESSD-PREROUTING')).toHaveLength(1);
      }
    });
  });

  // Whatever got ahead of egressd's redirect (a DNAT of a tool that started since the last
  // --apply, one placed deliberately earlier) or predates it (a connection the sandbox opened
  // before the rules went in: NAT is decided at a connection's first packet), a sandbox's TCP that
  // was not redirected to egressd must not be forwarded.
  describe.each(['iptables', 'nft'] as const)('TCP that escaped the redirect, with the %s backend', (backend) => {
    const FPORTS = { http: 28080, tls: 28443, tcp: 28001 };
    const SERVICE = '198.18.1.78';
    const DNAT = ['-d', `${SERVICE}/32`, '-p', 'tcp', '--dport', '80', '-j', 'DNAT', '--to-destination', `${S4}:7000`];
    // Connects, says "connected", then sends each line of its stdin and reports what comes back.
    const HELD_CLIENT = `
const s = require('node:net').connect({ host: process.argv[1], port: Number(process.argv[2]) });
s.on('connect', () => console.log('connected'));
process.stdin.setEncoding('utf8').on('data', (d) => s.write(d));
s.on('data', (d) => { console.log('got ' + String(d).trim()); process.exit(0); });
s.on('error', (e) => { console.log('error ' + e.code); process.exit(0); });
s.on('close', () => { console.log('closed'); process.exit(0); });
setTimeout(() => { console.log('timeout'); process.exit(0); }, 10000).unref();
`;
    const echoAccepts = (): number => rig.events().filter((e) => e.event === 'accept' && e.local === `${S4}:7000`).length;
    afterAll(async () => {
      if (backend === 'nft') await rig.execIn('router', 'nft', ['delete', 'table', 'ip', 'foreign']);
      else await rig.execIn('router', 'iptables', ['-t', 'nat', '-D', 'PREROUTING', ...DNAT]);
      await ok(['--remove', '--backend', backend]);
    });

    it('is reset when a DNAT ahead of egressd would send it elsewhere', async () => {
      await rig.redirect(FPORTS, { backend });
      // In front of egressd's NAT: inserted after the apply (iptables), or at an earlier priority (nft).
      const r =
        backend === 'nft'
          ? await rig.execIn('router', 'nft', ['-f', '-'], {
              input: `table ip foreign {\n\tchain pre {\n\t\ttype nat hook prerouting priority -120; policy accept;\n\t\tip daddr ${SERVICE} tcp dport 80 dnat to ${S4}:7000\n\t}\n}\n`,
            })
          : await rig.execIn('router', 'iptables', ['-t', 'nat', '-I', 'PREROUTING', '1', ...DNAT]);
      expect(r.code, r.stderr).toBe(0);
      const before = echoAccepts();
      const c = await rig.execIn('sandbox', NODE, ['-e', TCP_CLIENT, SERVICE, '80', '-', 'x'], { timeoutMs: 15_000 });
      expect(c.stderr).toMatch(/ECONNREFUSED|ECONNRESET/);
      expect(echoAccepts()).toBe(before);
    });

    it('cuts a connection the sandbox opened before the rules went in', async () => {
      await ok(['--remove', '--backend', backend]);
      const client = rig.spawnIn('sandbox', NODE, ['-e', HELD_CLIENT, S4, '7000']);
      const lines = createInterface({ input: client.stdout! });
      const next = (): Promise<string> => new Promise((got) => lines.once('line', got));
      expect(await next()).toBe('connected');
      await rig.redirect(FPORTS, { backend });
      client.stdin!.write('ping\n');
      expect(await next()).toMatch(/^error (ECONNRESET|EPIPE)$/);
    });
  });
});
