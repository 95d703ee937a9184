import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IPTABLES_USAGE, parseIptablesArgs, parseSourceCidr } from '../../../src/cli/iptables/args.ts';
import { ALL_IPTABLES_CHAINS, type Runner } from '../../../src/cli/iptables/apply.ts';
import { iptablesCommand } from '../../../src/cli/iptables/command.ts';
import { renderIptablesRemoval, renderIptablesRestore } from '../../../src/cli/iptables/render-iptables.ts';
import { nftHasOtherRules } from '../../../src/cli/iptables/variant.ts';
import { renderNft } from '../../../src/cli/iptables/render-nft.ts';
import { buildRuleSet, type IptablesOptions, type RuleSet } from '../../../src/cli/iptables/rules.ts';

/** The options argv gives; the DNS listener's redirect is off unless argv names --dns-port. */
function options(argv: string[]): IptablesOptions {
  const r = parseIptablesArgs(argv.includes('--dns-port') ? argv : [...argv, '--dns-port', 'off']);
  if (!r.ok) throw new Error(r.error);
  return r.options;
}

function chain(rs: RuleSet, id: string): string[] {
  const c = rs.chains.find((x) => x.id === id);
  if (!c) throw new Error(`no chain ${id}`);
  return c.rules.map((r) => JSON.stringify([r.match, r.target]));
}

/** A fake runner that records commands and answers from `respond`. */
function recorder(respond: (cmd: string, args: readonly string[], input?: string) => { code: number; stdout?: string; stderr?: string } = () => ({ code: 0 })) {
  const calls: Array<{ cmd: string; args: readonly string[]; input?: string }> = [];
  const run: Runner = async (cmd, args, input) => {
    calls.push({ cmd, args, ...(input !== undefined ? { input } : {}) });
    const r = respond(cmd, args, input);
    return { code: r.code, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  };
  return { calls, run };
}

/** `--interface veth0 EXTRA` is refused: the parser's error matches `message`, and the command exits 2 printing it. */
async function expectRefused(extra: string[], message: RegExp): Promise<void> {
  const p = parseIptablesArgs(['--interface', 'veth0', ...extra]);
  expect(p.ok ? '' : p.error).toMatch(message);
  const r = await iptablesCommand(['--interface', 'veth0', ...extra], recorder().run);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain(p.ok ? '-' : p.error);
}

/** A per-source limit `flag` given in sidecar mode: exit 2, saying it applies to host mode only. */
async function expectRefusedInSidecar(flag: string): Promise<void> {
  const r = await iptablesCommand(['--mode', 'sidecar', '--uid', '1000', flag, '5'], recorder().run);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain(`${flag} applies to host mode only`);
}

/** Every chain of `plain` but `changed` is the same in `limited`. */
function expectOtherChainsAsIn(limited: RuleSet, plain: RuleSet, changed: string): void {
  for (const c of plain.chains) if (c.id !== changed) expect(chain(limited, c.id)).toEqual(chain(plain, c.id));
}

/** The lines an nft table declares a per-source set of token buckets with, for `family`. */
function nftPerSourceSet(name: string, family: 4 | 6): string[] {
  return [`\tset ${name} {`, `\t\ttype ${family === 4 ? 'ipv4_addr' : 'ipv6_addr'}`, '\t\tsize 65536', '\t\tflags dynamic,timeout', '\t\ttimeout 10s', '\t}'];
}

describe('buildRuleSet with the DNS listener', () => {
  it('is on by default, on port 15053', () => {
    const r = parseIptablesArgs(['--interface', 'veth0']);
    expect(r.ok && r.options.dnsPort).toBe(15053);
    expect(parseIptablesArgs(['--dns-port', '0'])).toMatchObject({ ok: false, error: expect.stringContaining('--dns-port') });
  });

  it('redirects UDP and TCP 53 to the listener, whatever the server, and opens no DNS server', () => {
    for (const family of [4, 6] as const) {
      const rs = buildRuleSet(
        options(['--interface', 'veth0', '--source', '198.18.0.0/24', '--dns-port', '5353', '--dns-server', '198.18.1.53', '--dns-server', '2001:db8::53']),
        family,
      );
      expect(chain(rs, 'redirect').slice(0, 2)).toEqual([
        JSON.stringify([
          { protocol: 'udp', dport: 53 },
          { kind: 'redirect', port: 5353 },
        ]),
        JSON.stringify([
          { protocol: 'tcp', dport: 53 },
          { kind: 'redirect', port: 5353 },
        ]),
      ]);
      expect(JSON.stringify(rs)).not.toMatch(/198\.18\.1\.53|2001:db8::53/);
      // UDP 53 enters the nat redirect chain from PREROUTING, for every selector of the family.
      expect(chain(rs, 'nat-prerouting')).toContain(
        JSON.stringify([
          { inInterface: 'veth0', protocol: 'udp', dport: 53 },
          { kind: 'jump', chain: 'redirect' },
        ]),
      );
      // Only INPUT lets the redirected query reach the listener's port; FORWARD never does.
      expect(chain(rs, 'filter-input')[0]).toBe(JSON.stringify([{ inInterface: 'veth0', protocol: 'udp', dport: 5353 }, { kind: 'return' }]));
      expect(chain(rs, 'filter-forward').join()).not.toContain('5353');
    }
  });

  it('in sidecar mode, redirects local UDP 53 after the uid and loopback exemptions', () => {
    const rs = buildRuleSet(options(['--mode', 'sidecar', '--uid', '1000', '--dns-port', '15053']), 4);
    const out = chain(rs, 'nat-output');
    expect(out.slice(0, 3).join()).toContain('"uid":1000');
    expect(out[3]).toBe(
      JSON.stringify([
        { protocol: 'udp', dport: 53 },
        { kind: 'jump', chain: 'redirect' },
      ]),
    );
  });

  it('renders the UDP redirect for iptables and nft', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--dns-port', '15053']), 6);
    expect(renderIptablesRestore(rs)).toContain('-A EGRESSD-REDIRECT -p udp --dport 53 -j REDIRECT --to-ports 15053');
    expect(renderNft(rs)).toContain('udp dport 53 redirect to :15053');
  });
});

describe('buildRuleSet', () => {
  it('sends 80 to the http port, 443 to the tls port and every other TCP port to the tcp port, in that order', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--http-port', '1', '--tls-port', '2', '--tcp-port', '3']), 4);
    expect(chain(rs, 'redirect')).toEqual([
      JSON.stringify([
        { protocol: 'tcp', dport: 80 },
        { kind: 'redirect', port: 1 },
      ]),
      JSON.stringify([
        { protocol: 'tcp', dport: 443 },
        { kind: 'redirect', port: 2 },
      ]),
      JSON.stringify([{ protocol: 'tcp' }, { kind: 'redirect', port: 3 }]),
    ]);
  });

  it('leaves the DNS servers of its family reachable on 53 before any redirect or reject', () => {
    const o = options(['--interface', 'veth0', '--dns-server', '198.18.1.53', '--dns-server', '2001:db8::53']);
    const v4 = buildRuleSet(o, 4);
    const v6 = buildRuleSet(o, 6);
    expect(v4.chains.find((c) => c.id === 'redirect')!.rules[0]).toEqual({
      match: { destination: '198.18.1.53/32', protocol: 'tcp', dport: 53 },
      target: { kind: 'return' },
    });
    // Filter runs after every NAT: judged on the server the sandbox addressed, as conntrack recorded it.
    expect(v4.chains.find((c) => c.id === 'udp')!.rules.slice(0, 2)).toEqual([
      { match: { protocol: 'udp', originalDestination: '198.18.1.53/32', originalDport: 53 }, target: { kind: 'return' } },
      { match: { destination: '198.18.1.53/32', protocol: 'udp', dport: 53, untracked: true }, target: { kind: 'return' } },
    ]);
    expect(JSON.stringify(v4)).not.toContain('2001:db8::53');
    expect(v6.chains.find((c) => c.id === 'udp')!.rules[0]!.match.originalDestination).toBe('2001:db8::53/128');
    expect(JSON.stringify(v6)).not.toContain('198.18.1.53');
  });

  it('rejects UDP 443 even when other UDP is dropped, so QUIC falls back to TCP at once', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--udp', 'drop']), 4);
    expect(chain(rs, 'udp')).toEqual([
      JSON.stringify([{ protocol: 'udp', dport: 443 }, { kind: 'reject' }]),
      JSON.stringify([{ protocol: 'udp' }, { kind: 'drop' }]),
    ]);
  });

  it('rejects other UDP by default', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0']), 4);
    expect(rs.chains.find((c) => c.id === 'udp')!.rules.at(-1)!.target).toEqual({ kind: 'reject' });
  });

  it('resets TCP that was not redirected, except what the redirect chain lets pass, judged on the original destination', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--dns-server', '198.18.1.53', '--exclude-cidr', '10.96.0.0/12', '--exclude-port', '7000']), 4);
    expect(chain(rs, 'tcp')).toEqual([
      JSON.stringify([{ protocol: 'tcp', originalDestination: '10.96.0.0/12' }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp', originalDport: 7000 }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp', originalDestination: '198.18.1.53/32', originalDport: 53 }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp' }, { kind: 'reset' }]),
    ]);
    const text = renderIptablesRestore(rs);
    expect(text).toContain('-A EGRESSD-TCP -p tcp -m conntrack --ctorigdst 198.18.1.53/32 --ctorigdstport 53 -j RETURN');
    expect(text).toContain('-A EGRESSD-TCP -p tcp -j REJECT --reject-with tcp-reset');
    expect(text).toContain('-A EGRESSD-FORWARD -i veth0 -p tcp -m conntrack --ctdir ORIGINAL -j EGRESSD-TCP');
    const nft = renderNft(rs);
    expect(nft).toContain('meta l4proto tcp ct original ip daddr 198.18.1.53/32 ct original proto-dst 53 return');
    expect(nft).toContain('iifname "veth0" meta l4proto tcp ct direction original jump unredirected_tcp');
  });

  // Such a segment never met NAT: its destination is the one the sandbox sent to.
  it('drops TCP conntrack holds no connection for, except what the redirect chain lets pass, judged on the destination', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--dns-server', '198.18.1.53', '--exclude-cidr', '10.96.0.0/12', '--exclude-port', '7000']), 4);
    expect(chain(rs, 'untracked')).toEqual([
      JSON.stringify([{ protocol: 'tcp', destination: '10.96.0.0/12' }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp', dport: 7000 }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp', destination: '198.18.1.53/32', dport: 53 }, { kind: 'return' }]),
      JSON.stringify([{ protocol: 'tcp' }, { kind: 'drop' }]),
    ]);
    expect(renderIptablesRestore(rs)).toContain('-A EGRESSD-UNTRACKED -d 10.96.0.0/12 -p tcp -j RETURN');
    expect(renderNft(rs)).toContain('iifname "veth0" meta l4proto tcp ct state invalid,untracked jump untracked_tcp');
  });

  it('in host mode, selects sandbox traffic by interface and by the sources of its own family only', () => {
    const o = options(['--interface', 'veth+', '--source', '10.0.0.0/8', '--source', '2001:db8:1::/48']);
    const v4 = buildRuleSet(o, 4);
    expect(v4.chains.map((c) => c.id).sort()).toEqual([
      'filter-forward',
      'filter-input',
      'local-tcp',
      'nat-prerouting',
      'other',
      'redirect',
      'tcp',
      'udp',
      'untracked',
    ]);
    expect(chain(v4, 'nat-prerouting')).toEqual([
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'tcp' },
        { kind: 'jump', chain: 'redirect' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'tcp' },
        { kind: 'jump', chain: 'redirect' },
      ]),
    ]);
    // The sandbox's own UDP flows and untracked datagrams: the answers of a UDP service in it pass.
    const udpJumps = [
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'udp', originalDirection: true },
        { kind: 'jump', chain: 'udp' },
      ]),
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'udp', untracked: true },
        { kind: 'jump', chain: 'udp' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'udp', originalDirection: true },
        { kind: 'jump', chain: 'udp' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'udp', untracked: true },
        { kind: 'jump', chain: 'udp' },
      ]),
    ];
    // Every other protocol, whatever its state: the other chain returns TCP and UDP first.
    const otherJumps = [
      JSON.stringify([{ inInterface: 'veth+' }, { kind: 'jump', chain: 'other' }]),
      JSON.stringify([{ source: '10.0.0.0/8' }, { kind: 'jump', chain: 'other' }]),
    ];
    // TCP the sandbox opened to the host itself goes to the local-tcp chain, which lets egressd's listeners through.
    expect(chain(v4, 'filter-input')).toEqual([
      ...udpJumps,
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'tcp', originalDirection: true },
        { kind: 'jump', chain: 'local-tcp' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'tcp', originalDirection: true },
        { kind: 'jump', chain: 'local-tcp' },
      ]),
      ...otherJumps,
    ]);
    expect(chain(v4, 'local-tcp')).toEqual([
      ...[15080, 15443, 15001].map((dport) => JSON.stringify([{ protocol: 'tcp', dport }, { kind: 'return' }])),
      JSON.stringify([{ protocol: 'tcp' }, { kind: 'jump', chain: 'tcp' }]),
    ]);
    // TCP that reaches FORWARD was not redirected: the sandbox's own connections go to the tcp
    // chain, segments conntrack holds no connection for to the untracked chain.
    expect(chain(v4, 'filter-forward')).toEqual([
      ...udpJumps,
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'tcp', originalDirection: true },
        { kind: 'jump', chain: 'tcp' },
      ]),
      JSON.stringify([
        { inInterface: 'veth+', protocol: 'tcp', untracked: true },
        { kind: 'jump', chain: 'untracked' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'tcp', originalDirection: true },
        { kind: 'jump', chain: 'tcp' },
      ]),
      JSON.stringify([
        { source: '10.0.0.0/8', protocol: 'tcp', untracked: true },
        { kind: 'jump', chain: 'untracked' },
      ]),
      ...otherJumps,
    ]);
    expect(chain(buildRuleSet(o, 6), 'nat-prerouting')[1]).toContain('2001:db8:1::/48');
  });

  it("in sidecar mode, exempts egressd's uid and loopback before redirecting local TCP and limiting local UDP", () => {
    const o = options(['--mode', 'sidecar', '--uid', '1337']);
    for (const [family, loopback] of [
      [4, '127.0.0.0/8'],
      [6, '::1/128'],
    ] as const) {
      const rs = buildRuleSet(o, family);
      expect(rs.chains.map((c) => c.id).sort()).toEqual(['filter-output', 'nat-output', 'other', 'redirect', 'tcp', 'udp', 'untracked']);
      const exempt = [
        JSON.stringify([{ uid: 1337 }, { kind: 'return' }]),
        JSON.stringify([{ outInterface: 'lo' }, { kind: 'return' }]),
        JSON.stringify([{ destination: loopback }, { kind: 'return' }]),
      ];
      expect(chain(rs, 'nat-output')).toEqual([...exempt, JSON.stringify([{ protocol: 'tcp' }, { kind: 'jump', chain: 'redirect' }])]);
      expect(chain(rs, 'filter-output')).toEqual([
        ...exempt,
        JSON.stringify([
          { protocol: 'udp', originalDirection: true },
          { kind: 'jump', chain: 'udp' },
        ]),
        JSON.stringify([
          { protocol: 'udp', untracked: true },
          { kind: 'jump', chain: 'udp' },
        ]),
        JSON.stringify([
          { protocol: 'tcp', newConnection: true },
          { kind: 'jump', chain: 'tcp' },
        ]),
        JSON.stringify([
          { protocol: 'tcp', untracked: true },
          { kind: 'jump', chain: 'untracked' },
        ]),
        // The pod's neighbour discovery, then every other protocol.
        ...(family === 6
          ? [130, 131, 132, 133, 134, 135, 136, 137, 143].map((t) => JSON.stringify([{ protocol: 'icmpv6', icmpv6Type: t }, { kind: 'return' }]))
          : []),
        JSON.stringify([{}, { kind: 'jump', chain: 'other' }]),
      ]);
    }
  });
});

describe('parseIptablesArgs', () => {
  it('defaults to printing host-mode rules for both families with the iptables backend and the standard ports', () => {
    expect(options(['--interface', 'veth0'])).toMatchObject({
      action: 'print',
      mode: 'host',
      backend: 'iptables',
      families: [4, 6],
      udp: 'reject',
      ports: { http: 15080, tls: 15443, tcp: 15001 },
    });
  });

  it.each([
    [['--apply', '--remove', '--interface', 'x'], /mutually exclusive/],
    [['--interface', 'x', '--bogus'], /bogus/],
    [['--interface', 'x', 'extra'], /positional/i],
    [['--interface', 'x', '--http-port', '0'], /--http-port.*"0"/],
    [['--interface', 'x', '--tcp-port', '65536'], /--tcp-port/],
    [['--interface', 'x', '--mode', 'bridge'], /--mode.*"bridge"/],
    [['--interface', 'x', '--backend', 'pf'], /--backend.*"pf"/],
    [['--interface', 'x', '--family', '5'], /--family.*"5"/],
    [['--interface', 'x', '--udp', 'allow'], /--udp.*"allow"/],
    [['--interface', 'averyverylongname0'], /--interface/],
    [['--interface', '-i'], /--interface/],
    [['--source', '10.0.0.1/8', '--family', '4'], /host bits.*"10\.0\.0\.0\/8"/],
    [['--source', '10.0.0.0/33', '--family', '4'], /prefix length/],
    [['--source', 'example.test', '--family', '4'], /CIDR/],
    [['--source', '2001:db8::/32', '--family', '4'], /IPv6 but --family is 4/],
    [['--interface', 'x', '--dns-server', '10.0.0.0/8'], /--dns-server/],
    [['--interface', 'x', '--family', '6', '--dns-server', '10.0.0.53'], /IPv4 but --family is 6/],
    [[], /host mode needs --interface or --source/],
    [['--source', '10.0.0.0/8'], /no --source is IPv6/],
    [['--interface', 'x', '--uid', '0'], /--uid applies to sidecar mode only/],
    [['--mode', 'sidecar'], /sidecar mode needs --uid/],
    [['--mode', 'sidecar', '--uid', '-1'], /--uid|uid/],
    [['--mode', 'sidecar', '--uid', '5', '--interface', 'x'], /host mode only/],
  ])('refuses %j as a usage error', async (argv, message) => {
    const r = await iptablesCommand(argv, recorder().run);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it('removes without any selector, since removal deletes whatever was installed', () => {
    expect(options(['--remove'])).toMatchObject({ action: 'remove' });
  });

  it('says on stderr that --dns-server is ignored while the DNS listener is on, and not when it is off', async () => {
    const on = await iptablesCommand(['--interface', 'veth0', '--dns-server', '198.18.1.53'], recorder().run);
    expect(on.code).toBe(0);
    expect(on.stderr).toBe(
      "egressd iptables: --dns-server is ignored while egressd's DNS listener is on (--dns-port 15053): every query to port 53 is redirected to it, whatever server it addresses\n",
    );
    const off = await iptablesCommand(['--interface', 'veth0', '--dns-port', 'off', '--dns-server', '198.18.1.53'], recorder().run);
    expect(off.code).toBe(0);
    expect(off.stderr).toBe('');
  });

  it("warns on stderr that --uid 0 exempts every root process, the sandbox's too if it runs as root", async () => {
    const root = await iptablesCommand(['--mode', 'sidecar', '--uid', '0'], recorder().run);
    expect(root.code).toBe(0);
    expect(root.stderr).toContain('--uid 0');
    expect(root.stderr).toContain('unfiltered');
    expect((await iptablesCommand(['--mode', 'sidecar', '--uid', '10001'], recorder().run)).stderr).toBe('');
  });

  it('answers --help with the usage and exit 0', async () => {
    const r = await iptablesCommand(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('--dns-server');
  });
});

describe('parseSourceCidr', () => {
  it.each([
    ['10.0.0.0/8', '10.0.0.0/8'],
    ['198.18.0.2', '198.18.0.2/32'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['2001:0db8:0000:0001::/64', '2001:db8:0:1::/64'],
    ['2001:db8::1', '2001:db8::1/128'],
    ['::/0', '::/0'],
    // RFC 5952 §5: an IPv4-mapped address keeps its dotted quad.
    ['::ffff:198.18.0.0/112', '::ffff:198.18.0.0/112'],
    ['::ffff:c612:0/112', '::ffff:198.18.0.0/112'],
  ])('reads %s as %s', (raw, cidr) => {
    expect(parseSourceCidr(raw)).toEqual({ ok: true, cidr });
  });

  it('suggests the network when host bits are set', () => {
    expect(parseSourceCidr('2001:db8:0:1::5/64')).toEqual({ ok: false, error: '"2001:db8:0:1::5/64" has host bits set; did you mean "2001:db8:0:1::/64"?' });
  });

  it('writes a canonical form that reads back as itself', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }), fc.integer({ min: 0, max: 128 }), (value, len) => {
        const masked = len === 0 ? 0n : value & (((1n << BigInt(len)) - 1n) << BigInt(128 - len));
        const groups = Array.from({ length: 8 }, (_, i) => ((masked >> BigInt(112 - 16 * i)) & 0xffffn).toString(16));
        const first = parseSourceCidr(`${groups.join(':')}/${len}`);
        expect(first.ok).toBe(true);
        if (first.ok) expect(parseSourceCidr(first.cidr)).toEqual(first);
      }),
    );
  });
});

describe('renderIptablesRestore', () => {
  it('declares each chain (create or flush) and then appends its rules, per table', () => {
    const text = renderIptablesRestore(buildRuleSet(options(['--interface', 'veth0', '--dns-server', '198.18.1.53', '--udp', 'drop']), 4));
    expect(text).toBe(
      [
        '*nat',
        ':EGRESSD-REDIRECT - [0:0]',
        ':EGRESSD-PREROUTING - [0:0]',
        '-A EGRESSD-REDIRECT -d 198.18.1.53/32 -p tcp --dport 53 -j RETURN',
        '-A EGRESSD-REDIRECT -p tcp --dport 80 -j REDIRECT --to-ports 15080',
        '-A EGRESSD-REDIRECT -p tcp --dport 443 -j REDIRECT --to-ports 15443',
        '-A EGRESSD-REDIRECT -p tcp -j REDIRECT --to-ports 15001',
        '-A EGRESSD-PREROUTING -i veth0 -p tcp -j EGRESSD-REDIRECT',
        'COMMIT',
        '*filter',
        ':EGRESSD-UDP - [0:0]',
        ':EGRESSD-TCP - [0:0]',
        ':EGRESSD-UNTRACKED - [0:0]',
        ':EGRESSD-OTHER - [0:0]',
        ':EGRESSD-LOCAL-TCP - [0:0]',
        ':EGRESSD-INPUT - [0:0]',
        ':EGRESSD-FORWARD - [0:0]',
        '-A EGRESSD-UDP -p udp -m conntrack --ctorigdst 198.18.1.53/32 --ctorigdstport 53 -j RETURN',
        '-A EGRESSD-UDP -d 198.18.1.53/32 -p udp --dport 53 -m conntrack --ctstate INVALID,UNTRACKED -j RETURN',
        '-A EGRESSD-UDP -p udp --dport 443 -j REJECT --reject-with icmp-port-unreachable',
        '-A EGRESSD-UDP -p udp -j DROP',
        '-A EGRESSD-TCP -p tcp -m conntrack --ctorigdst 198.18.1.53/32 --ctorigdstport 53 -j RETURN',
        '-A EGRESSD-TCP -p tcp -j REJECT --reject-with tcp-reset',
        '-A EGRESSD-UNTRACKED -d 198.18.1.53/32 -p tcp --dport 53 -j RETURN',
        '-A EGRESSD-UNTRACKED -p tcp -j DROP',
        '-A EGRESSD-OTHER -p tcp -j RETURN',
        '-A EGRESSD-OTHER -p udp -j RETURN',
        '-A EGRESSD-OTHER -m conntrack --ctstate RELATED -j RETURN',
        '-A EGRESSD-OTHER -m conntrack --ctdir ORIGINAL -j DROP',
        '-A EGRESSD-OTHER -m conntrack --ctstate INVALID,UNTRACKED -j DROP',
        '-A EGRESSD-LOCAL-TCP -p tcp --dport 15080 -j RETURN',
        '-A EGRESSD-LOCAL-TCP -p tcp --dport 15443 -j RETURN',
        '-A EGRESSD-LOCAL-TCP -p tcp --dport 15001 -j RETURN',
        '-A EGRESSD-LOCAL-TCP -p tcp -j EGRESSD-TCP',
        '-A EGRESSD-INPUT -i veth0 -p udp -m conntrack --ctdir ORIGINAL -j EGRESSD-UDP',
        '-A EGRESSD-INPUT -i veth0 -p udp -m conntrack --ctstate INVALID,UNTRACKED -j EGRESSD-UDP',
        '-A EGRESSD-INPUT -i veth0 -p tcp -m conntrack --ctdir ORIGINAL -j EGRESSD-LOCAL-TCP',
        '-A EGRESSD-INPUT -i veth0 -j EGRESSD-OTHER',
        '-A EGRESSD-FORWARD -i veth0 -p udp -m conntrack --ctdir ORIGINAL -j EGRESSD-UDP',
        '-A EGRESSD-FORWARD -i veth0 -p udp -m conntrack --ctstate INVALID,UNTRACKED -j EGRESSD-UDP',
        '-A EGRESSD-FORWARD -i veth0 -p tcp -m conntrack --ctdir ORIGINAL -j EGRESSD-TCP',
        '-A EGRESSD-FORWARD -i veth0 -p tcp -m conntrack --ctstate INVALID,UNTRACKED -j EGRESSD-UNTRACKED',
        '-A EGRESSD-FORWARD -i veth0 -j EGRESSD-OTHER',
        'COMMIT',
        '',
      ].join('\n'),
    );
  });

  it('rejects with the ICMPv6 code in the IPv6 rules and matches the uid with the owner module', () => {
    const text = renderIptablesRestore(buildRuleSet(options(['--mode', 'sidecar', '--uid', '7']), 6));
    expect(text).toContain('-A EGRESSD-UDP -p udp --dport 443 -j REJECT --reject-with icmp6-port-unreachable');
    expect(text).toContain('-A EGRESSD-OUTPUT -m owner --uid-owner 7 -j RETURN');
    expect(text).toContain('-A EGRESSD-OUTPUT -d ::1/128 -j RETURN');
  });
});

describe('renderNft', () => {
  it('replaces its own per-family table in one transaction, spelling interface prefixes with *', () => {
    const text = renderNft(buildRuleSet(options(['--interface', 'veth+', '--source', '2001:db8:1::/48', '--family', '6']), 6));
    expect(text).toBe(
      [
        'table ip6 egressd',
        'delete table ip6 egressd',
        'table ip6 egressd {',
        '\tchain redirect_tcp {',
        '\t\ttcp dport 80 redirect to :15080',
        '\t\ttcp dport 443 redirect to :15443',
        '\t\tmeta l4proto tcp redirect to :15001',
        '\t}',
        '\tchain limit_udp {',
        '\t\tudp dport 443 reject with icmpv6 type port-unreachable',
        '\t\tmeta l4proto udp reject with icmpv6 type port-unreachable',
        '\t}',
        '\tchain unredirected_tcp {',
        '\t\tmeta l4proto tcp reject with tcp reset',
        '\t}',
        '\tchain untracked_tcp {',
        '\t\tmeta l4proto tcp drop',
        '\t}',
        '\tchain other_protocols {',
        '\t\tmeta l4proto tcp return',
        '\t\tmeta l4proto udp return',
        '\t\tct state related return',
        '\t\tct direction original drop',
        '\t\tct state invalid,untracked drop',
        '\t}',
        '\tchain local_tcp {',
        '\t\ttcp dport 15080 return',
        '\t\ttcp dport 15443 return',
        '\t\ttcp dport 15001 return',
        '\t\tmeta l4proto tcp jump unredirected_tcp',
        '\t}',
        '\tchain nat_prerouting {',
        '\t\ttype nat hook prerouting priority -110; policy accept;',
        '\t\tiifname "veth*" meta l4proto tcp jump redirect_tcp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto tcp jump redirect_tcp',
        '\t}',
        '\tchain filter_input {',
        '\t\ttype filter hook input priority 0; policy accept;',
        '\t\tiifname "veth*" meta l4proto udp ct direction original jump limit_udp',
        '\t\tiifname "veth*" meta l4proto udp ct state invalid,untracked jump limit_udp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto udp ct direction original jump limit_udp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto udp ct state invalid,untracked jump limit_udp',
        '\t\tiifname "veth*" meta l4proto tcp ct direction original jump local_tcp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto tcp ct direction original jump local_tcp',
        ...[130, 131, 132, 133, 134, 135, 136, 137, 143].flatMap((t) => [`\t\tiifname "veth*" icmpv6 type ${t} return`]),
        ...[130, 131, 132, 133, 134, 135, 136, 137, 143].flatMap((t) => [`\t\tip6 saddr 2001:db8:1::/48 icmpv6 type ${t} return`]),
        '\t\tiifname "veth*" jump other_protocols',
        '\t\tip6 saddr 2001:db8:1::/48 jump other_protocols',
        '\t}',
        '\tchain filter_forward {',
        '\t\ttype filter hook forward priority 0; policy accept;',
        '\t\tiifname "veth*" meta l4proto udp ct direction original jump limit_udp',
        '\t\tiifname "veth*" meta l4proto udp ct state invalid,untracked jump limit_udp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto udp ct direction original jump limit_udp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto udp ct state invalid,untracked jump limit_udp',
        '\t\tiifname "veth*" meta l4proto tcp ct direction original jump unredirected_tcp',
        '\t\tiifname "veth*" meta l4proto tcp ct state invalid,untracked jump untracked_tcp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto tcp ct direction original jump unredirected_tcp',
        '\t\tip6 saddr 2001:db8:1::/48 meta l4proto tcp ct state invalid,untracked jump untracked_tcp',
        '\t\tiifname "veth*" jump other_protocols',
        '\t\tip6 saddr 2001:db8:1::/48 jump other_protocols',
        '\t}',
        '}',
        '',
      ].join('\n'),
    );
  });
});

describe('renderIptablesRemoval', () => {
  const nat = [
    '*nat',
    ':PREROUTING ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':EGRESSD-PREROUTING - [0:0]',
    ':EGRESSD-REDIRECT - [0:0]',
    ':DOCKER - [0:0]',
    '-A PREROUTING -j EGRESSD-PREROUTING',
    '-A PREROUTING -p tcp -m tcp --dport 9 -j ACCEPT',
    '-A PREROUTING -s 10.0.0.0/8 -j EGRESSD-PREROUTING',
    '-A PREROUTING -j DOCKER',
    '-A EGRESSD-PREROUTING -i veth0 -p tcp -j EGRESSD-REDIRECT',
    '-A EGRESSD-REDIRECT -p tcp -j REDIRECT --to-ports 15001',
    'COMMIT',
  ].join('\n');
  const doomed = new Set(['EGRESSD-PREROUTING', 'EGRESSD-REDIRECT']);

  it('deletes every jump into its chains, then flushes and deletes them, leaving other rules alone', () => {
    expect(renderIptablesRemoval({ nat, filter: '*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n' }, { nat: doomed, filter: doomed })).toBe(
      [
        '*nat',
        '-D PREROUTING -j EGRESSD-PREROUTING',
        '-D PREROUTING -s 10.0.0.0/8 -j EGRESSD-PREROUTING',
        '-F EGRESSD-PREROUTING',
        '-F EGRESSD-REDIRECT',
        '-X EGRESSD-PREROUTING',
        '-X EGRESSD-REDIRECT',
        'COMMIT',
        '',
      ].join('\n'),
    );
  });

  it('has nothing to do when none of its chains exist', () => {
    expect(
      renderIptablesRemoval({ nat: '*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n', filter: '' }, { nat: doomed, filter: doomed }),
    ).toBeNull();
  });
});

describe('iptablesCommand', () => {
  it('prints the apply script and runs nothing without --apply or --remove', async () => {
    const { calls, run } = recorder();
    const r = await iptablesCommand(['--interface', 'veth0', '--family', '4'], run);
    expect(r.code).toBe(0);
    expect(calls).toEqual([]);
    expect(r.stdout).toContain("iptables-restore -w 10 --noflush <<'EOF'");
    expect(r.stdout).toContain(
      'iptables -w 10 -t nat -C PREROUTING -j EGRESSD-PREROUTING 2>/dev/null || iptables -w 10 -t nat -I PREROUTING 1 -j EGRESSD-PREROUTING',
    );
    expect(r.stdout).not.toContain('ip6tables');
  });

  it('puts each jump first in its built-in chain, once, in the same transaction as the chains, and leaves one already first alone', async () => {
    const saved = {
      // Another tool's rule went in front of the jump, which a racing apply also added twice.
      nat: '*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.96.0.1/32 -p tcp -j DNAT --to-destination 10.0.0.5:443\n-A PREROUTING -j EGRESSD-PREROUTING\n-A PREROUTING -j EGRESSD-PREROUTING\nCOMMIT\n',
      // INPUT's jump is first (after the policy line); FORWARD has none yet.
      filter: '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A INPUT -j EGRESSD-INPUT\n-A INPUT -p icmp -j ACCEPT\n-A FORWARD -j DOCKER-USER\nCOMMIT\n',
    };
    const { calls, run } = recorder((cmd, args) => (cmd === 'iptables-save' ? { code: 0, stdout: saved[args[1] as 'nat' | 'filter'] } : { code: 0 }));
    const r = await iptablesCommand(['--apply', '--interface', 'veth0', '--family', '4'], run);
    expect(r.code, r.stderr).toBe(0);
    const restore = calls.find((c) => c.cmd === 'iptables-restore')!;
    expect(restore.args).toEqual(['-w', '10', '--noflush']);
    const [nat, filter] = restore.input!.split('COMMIT\n');
    expect(nat).toContain(':EGRESSD-PREROUTING - [0:0]');
    expect(nat!.split('\n').filter((l) => /^-[DI] /.test(l))).toEqual([
      '-D PREROUTING -j EGRESSD-PREROUTING',
      '-D PREROUTING -j EGRESSD-PREROUTING',
      '-I PREROUTING 1 -j EGRESSD-PREROUTING',
    ]);
    expect(filter!.split('\n').filter((l) => /^-[DI] /.test(l))).toEqual(['-I FORWARD 1 -j EGRESSD-FORWARD']);
    // No separate -C/-I commands: the jumps are in the restore's transactions.
    expect(calls.filter((c) => c.cmd === 'iptables')).toEqual([]);
  });

  it("on apply, takes out the other mode's chains left by an earlier apply", async () => {
    const saved = {
      nat: ':EGRESSD-OUTPUT - [0:0]\n:EGRESSD-PREROUTING - [0:0]\n-A OUTPUT -j EGRESSD-OUTPUT\n',
      filter: ':EGRESSD-OUTPUT - [0:0]\n-A OUTPUT -j EGRESSD-OUTPUT\n',
    };
    const { calls, run } = recorder((cmd, args) => (cmd === 'iptables-save' ? { code: 0, stdout: saved[args[1] as 'nat' | 'filter'] } : { code: 0 }));
    expect((await iptablesCommand(['--apply', '--interface', 'veth0', '--family', '4'], run)).code).toBe(0);
    const removal = calls.filter((c) => c.cmd === 'iptables-restore').at(-1)!.input!;
    expect(removal).toContain('-D OUTPUT -j EGRESSD-OUTPUT');
    expect(removal).toContain('-X EGRESSD-OUTPUT');
    expect(removal).not.toContain('EGRESSD-PREROUTING');
  });

  it('applies nftables rules as one nft -f transaction per family', async () => {
    const { calls, run } = recorder();
    const r = await iptablesCommand(['--apply', '--backend', 'nft', '--mode', 'sidecar', '--uid', '0'], run);
    expect(r.code).toBe(0);
    const nft = calls.filter((c) => c.cmd === 'nft');
    expect(nft.map((c) => [c.cmd, ...c.args].join(' '))).toEqual(['nft -f -', 'nft -f -']);
    expect(nft[0]!.input).toMatch(/^table ip egressd\ndelete table ip egressd\n/);
    expect(nft[1]!.input).toMatch(/^table ip6 egressd\ndelete table ip6 egressd\n/);
    // Nothing of the iptables backend was there: nothing restored, nothing said.
    expect(calls.filter((c) => c.cmd.endsWith('-restore'))).toEqual([]);
    expect(r.stdout).toBe('egressd iptables: applied sidecar-mode rules for IPv4 and IPv6 (nft)\n');
  });

  it('removes the nftables tables without needing the options they were applied with', async () => {
    const { calls, run } = recorder();
    expect((await iptablesCommand(['--remove', '--backend', 'nft', '--family', '6'], run)).code).toBe(0);
    expect(calls.filter((c) => c.cmd === 'nft' && c.args[0] === '-f')).toEqual([
      { cmd: 'nft', args: ['-f', '-'], input: 'table ip6 egressd\ndelete table ip6 egressd\n' },
    ]);
  });

  const leftovers = {
    nat: '*nat\n:PREROUTING ACCEPT [0:0]\n:EGRESSD-PREROUTING - [0:0]\n:EGRESSD-REDIRECT - [0:0]\n-A PREROUTING -j EGRESSD-PREROUTING\n-A PREROUTING -j DOCKER\nCOMMIT\n',
    filter: '*filter\n:FORWARD ACCEPT [0:0]\n:EGRESSD-FORWARD - [0:0]\n-A FORWARD -j EGRESSD-FORWARD\nCOMMIT\n',
  };

  it("on apply with nft, takes out the iptables backend's chains in the same run, after its own rules, and says so", async () => {
    const { calls, run } = recorder((cmd, args) => (cmd === 'iptables-save' ? { code: 0, stdout: leftovers[args[1] as 'nat' | 'filter'] ?? '' } : { code: 0 }));
    const r = await iptablesCommand(['--apply', '--backend', 'nft', '--interface', 'veth0', '--family', '4'], run);
    expect(r.code, r.stderr).toBe(0);
    const nft = calls.findIndex((c) => c.cmd === 'nft' && c.args[0] === '-f');
    const restore = calls.findIndex((c) => c.cmd === 'iptables-restore');
    expect(nft).toBeGreaterThanOrEqual(0);
    expect(restore).toBeGreaterThan(nft);
    const removal = calls[restore]!.input!;
    expect(removal).toContain('-D PREROUTING -j EGRESSD-PREROUTING');
    expect(removal).toContain('-X EGRESSD-FORWARD');
    expect(removal).not.toContain('DOCKER');
    expect(r.stdout).toBe(
      'egressd iptables: applied host-mode rules for IPv4 (nft); removed what the iptables backend had installed: iptables chains EGRESSD-PREROUTING, EGRESSD-REDIRECT, EGRESSD-FORWARD\n',
    );
  });

  it("on apply with iptables, deletes the nft backend's table in the same run, and says so", async () => {
    const { calls, run } = recorder((cmd, args) =>
      cmd === 'nft' && args[0] === 'list' ? { code: 0, stdout: `table ${args[2]} filter\ntable ${args[2]} egressd\n` } : { code: 0 },
    );
    const r = await iptablesCommand(['--apply', '--interface', 'veth0'], run);
    expect(r.code, r.stderr).toBe(0);
    expect(calls.filter((c) => c.cmd === 'nft' && c.args[0] === '-f').map((c) => c.input)).toEqual([
      'table ip egressd\ndelete table ip egressd\n',
      'table ip6 egressd\ndelete table ip6 egressd\n',
    ]);
    expect(r.stdout).toBe(
      'egressd iptables: applied host-mode rules for IPv4 and IPv6 (iptables); removed what the nft backend had installed: nft table ip egressd, nft table ip6 egressd\n',
    );
  });

  it('on remove, removes both backends whichever is named, and names what it removed', async () => {
    const { run } = recorder((cmd, args) =>
      cmd === 'iptables-save'
        ? { code: 0, stdout: leftovers[args[1] as 'nat' | 'filter'] ?? '' }
        : cmd === 'nft' && args[0] === 'list'
          ? { code: 0, stdout: `table ${args[2]} egressd\n` }
          : { code: 0 },
    );
    for (const named of [[], ['--backend', 'nft'], ['--backend', 'iptables']]) {
      const r = await iptablesCommand(['--remove', '--family', '4', ...named], run);
      expect(r.stdout, named.join(' ')).toBe(
        'egressd iptables: removed egressd rules for IPv4: iptables chains EGRESSD-PREROUTING, EGRESSD-REDIRECT, EGRESSD-FORWARD, nft table ip egressd\n',
      );
    }
    const none = await iptablesCommand(['--remove'], recorder().run);
    expect(none.stdout).toBe('egressd iptables: removed egressd rules for IPv4 and IPv6: none were installed\n');
  });

  it('on remove, a backend not installed has nothing to remove unless it was named', async () => {
    const missing = (cmd: string) => (cmd.startsWith('iptables') ? { code: null as unknown as number, stderr: 'not found' } : { code: 0 });
    expect((await iptablesCommand(['--remove', '--family', '4'], recorder(missing).run)).code).toBe(0);
    expect((await iptablesCommand(['--remove', '--family', '4', '--backend', 'iptables'], recorder(missing).run)).code).toBe(1);
  });

  it('says, when removing the other backend fails, that the new rules are in beside it', async () => {
    // Switching to nft: its table is in, then iptables-restore cannot delete the old chains.
    const saved = '*nat\n:PREROUTING ACCEPT [0:0]\n:EGRESSD-PREROUTING - [0:0]\n-A PREROUTING -j EGRESSD-PREROUTING\nCOMMIT\n';
    const { run, calls } = recorder((cmd) =>
      cmd === 'iptables-save' ? { code: 0, stdout: saved } : cmd === 'iptables-restore' ? { code: 4, stderr: 'iptables-restore: resource busy' } : { code: 0 },
    );
    const r = await iptablesCommand(['--apply', '--interface', 'veth0', '--family', '4', '--backend', 'nft'], run);
    expect(calls[0]).toMatchObject({ cmd: 'nft', args: ['-f', '-'] });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('iptables-restore: resource busy');
    expect(r.stderr).toContain(
      "(IPv4's nft rules are in, and what the iptables backend had installed is still there: both catch traffic until an --apply succeeds)",
    );
    // The new backend's own failure leaves nothing of it in: no such line.
    const own = await iptablesCommand(
      ['--apply', '--interface', 'veth0', '--family', '4', '--backend', 'nft'],
      recorder((cmd) => (cmd === 'nft' ? { code: 1 } : { code: 0 })).run,
    );
    expect(own.code).toBe(1);
    expect(own.stderr).not.toContain('still there');
  });

  it('exits 1 naming the failed command and its error, and says which family was already done', async () => {
    const { run } = recorder((cmd) => (cmd === 'ip6tables-restore' ? { code: 2, stderr: 'ip6tables-restore: line 3 failed' } : { code: 0 }));
    const r = await iptablesCommand(['--apply', '--interface', 'veth0'], run);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('Command failed (exit 2): ip6tables-restore -w 10 --noflush');
    expect(r.stderr).toContain('ip6tables-restore: line 3 failed');
    expect(r.stderr).toContain('(IPv4 already applied)');
  });
});

describe('--exclude-cidr and --exclude-port', () => {
  it('return excluded ranges first from both chains and excluded ports first from the redirect chain', () => {
    const p = parseIptablesArgs([
      '--interface',
      'veth0',
      '--family',
      '4',
      '--exclude-cidr',
      '10.96.0.0/12',
      '--exclude-cidr',
      '169.254.169.254',
      '--exclude-port',
      '15020',
    ]);
    if (!p.ok) throw new Error(p.error);
    const rs = buildRuleSet(p.options, 4);
    const chain = (id: string) => rs.chains.find((c) => c.id === id)!.rules;
    expect(chain('redirect').slice(0, 5)).toEqual([
      { match: { destination: '10.96.0.0/12', protocol: 'tcp' }, target: { kind: 'return' } },
      { match: { destination: '169.254.169.254/32', protocol: 'tcp' }, target: { kind: 'return' } },
      // UDP 53 enters the redirect chain for the DNS listener: an excluded range keeps it too.
      { match: { destination: '10.96.0.0/12', protocol: 'udp', dport: 53 }, target: { kind: 'return' } },
      { match: { destination: '169.254.169.254/32', protocol: 'udp', dport: 53 }, target: { kind: 'return' } },
      { match: { protocol: 'tcp', dport: 15020 }, target: { kind: 'return' } },
    ]);
    // Judged on the destination the sandbox sent to (filter sees another tool's DNAT done).
    expect(chain('udp').slice(0, 4)).toEqual([
      { match: { protocol: 'udp', originalDestination: '10.96.0.0/12' }, target: { kind: 'return' } },
      { match: { destination: '10.96.0.0/12', protocol: 'udp', untracked: true }, target: { kind: 'return' } },
      { match: { protocol: 'udp', originalDestination: '169.254.169.254/32' }, target: { kind: 'return' } },
      { match: { destination: '169.254.169.254/32', protocol: 'udp', untracked: true }, target: { kind: 'return' } },
    ]);
  });

  it.each([
    [['--exclude-cidr', '10.0.0.1/8'], /^--exclude-cidr: "10.0.0.1\/8" has host bits set/],
    [['--exclude-cidr', 'fd00::/8', '--family', '4'], /^--exclude-cidr: "fd00::\/8" is IPv6 but --family is 4/],
    [['--exclude-port', '0'], /^--exclude-port: expected an integer from 1 to 65535, got "0"/],
  ])('refuses %j, naming the flag', (extra, message) => {
    const p = parseIptablesArgs(['--interface', 'veth0', ...extra]);
    expect(p.ok ? '' : p.error).toMatch(message);
  });

  it('--remove records whether the backend was named', () => {
    const bare = parseIptablesArgs(['--remove']);
    const named = parseIptablesArgs(['--remove', '--backend', 'nft']);
    expect(bare.ok && bare.options.backendGiven).toBe(false);
    expect(named.ok && named.options.backendGiven).toBe(true);
  });
});

describe('the iptables variant', () => {
  const ruleset = (table: string, body: string) => `table ${table} {\n\tchain c {\n${body}\t}\n}\n`;

  it.each([
    ['no table', '', false],
    ['an empty base chain', ruleset('ip filter', '\t\ttype filter hook input priority filter; policy accept;\n'), false],
    ["a rule in egressd's own table", ruleset('ip egressd', '\t\ttcp dport 80 redirect to :15080\n'), false],
    ['a rule in another table', ruleset('inet other', '\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 9 accept\n'), true],
    [
      'an iptables-nft rule',
      ruleset('ip nat', '\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tcounter packets 0 bytes 0 jump DOCKER\n'),
      true,
    ],
  ])('nftHasOtherRules: %s', (_what, text, has) => {
    expect(nftHasOtherRules(text)).toBe(has);
  });

  const host = (version: string, nftRules: string, legacySave: string) =>
    recorder((cmd, args) => {
      if (args[0] === '--version') return { code: 0, stdout: `${cmd} v1.8.9 ${version}\n` };
      if (cmd === 'nft' && args[0] === 'list' && args[1] === 'ruleset') return { code: 0, stdout: nftRules };
      if (cmd.endsWith('-legacy-save')) return { code: 0, stdout: legacySave };
      return { code: 0 };
    });
  const nftRule = ruleset('inet other', '\t\ttcp dport 9 accept\n');
  const legacyRule = '*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j ACCEPT\nCOMMIT\n';

  it.each([
    ['(legacy)', nftRule, '', /iptables here is the legacy variant, but this host's other rules are in nftables/],
    ['(nf_tables)', '', legacyRule, /iptables here is the nf_tables variant, but this host's other rules are in the legacy tables/],
    ['(legacy)', '', legacyRule, null],
    ['(nf_tables)', nftRule, '', null],
  ])('iptables %s, nft rules %j, legacy rules %j: warns in one line on apply when they differ', async (version, nft, legacy, warning) => {
    const r = await iptablesCommand(['--apply', '--interface', 'veth0', '--family', '4'], host(version, nft, legacy).run);
    expect(r.code, r.stderr).toBe(0);
    if (warning === null) expect(r.stderr).toBe('');
    else {
      expect(r.stderr).toMatch(warning);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    }
  });

  it('asks nothing about variants for the nft backend', async () => {
    const { calls, run } = host('(legacy)', nftRule, '');
    expect((await iptablesCommand(['--apply', '--backend', 'nft', '--interface', 'veth0'], run)).stderr).toBe('');
    expect(calls.filter((c) => c.args[0] === '--version')).toEqual([]);
  });
});

describe('--new-connections-per-source', () => {
  const LIMITED = ['--interface', 'veth0', '--new-connections-per-source', '20/s', '--new-connections-burst', '40'];

  it('is off by default, takes RATE or RATE/s, and defaults the burst to one second of the rate', () => {
    expect(options(['--interface', 'veth0']).newConnections).toBeNull();
    expect(options(['--interface', 'veth0', '--new-connections-per-source', '50']).newConnections).toEqual({ perSecond: 50, burst: 50 });
    expect(options(LIMITED).newConnections).toEqual({ perSecond: 20, burst: 40 });
  });

  it.each([
    [['--new-connections-per-source', '0'], /^--new-connections-per-source: .*from 1 to 100000.*got "0"$/],
    [['--new-connections-per-source', '100001'], /^--new-connections-per-source: .*got "100001"$/],
    [['--new-connections-per-source', '5/min'], /^--new-connections-per-source: .*got "5\/min"$/],
    [['--new-connections-per-source', '2.5'], /^--new-connections-per-source: .*got "2.5"$/],
    [['--new-connections-per-source', '5', '--new-connections-burst', '0'], /^--new-connections-burst: .*from 1 to 100000, got "0"$/],
    [['--new-connections-per-source', '5', '--new-connections-burst', 'x'], /^--new-connections-burst: .*got "x"$/],
    [['--new-connections-burst', '5'], /^--new-connections-burst needs --new-connections-per-source$/],
  ])('refuses %j with exit 2, naming the flag and the value', async (extra, message) => {
    await expectRefused(extra, message);
  });

  it('is refused in sidecar mode, where each pod has a table of its own', async () => {
    await expectRefusedInSidecar('--new-connections-per-source');
  });

  it("resets a source's opening SYN beyond the rate, at each listener, before the listener lets it in; nothing else changes", () => {
    for (const family of [4, 6] as const) {
      const plain = buildRuleSet(options(['--interface', 'veth0', '--dns-port', '15053']), family);
      const limited = buildRuleSet(options([...LIMITED, '--dns-port', '15053']), family);
      const limit = { bucket: 'new-connections', perSecond: 20, burst: 40 };
      expect(chain(limited, 'local-tcp')).toEqual([
        ...[15080, 15443, 15001, 15053].map((dport) =>
          JSON.stringify([{ protocol: 'tcp', dport, syn: true, newConnection: true, overPerSource: limit }, { kind: 'reset' }]),
        ),
        ...chain(plain, 'local-tcp'),
      ]);
      // The excluded traffic's returns, the redirects and every other chain are as without it.
      expectOtherChainsAsIn(limited, plain, 'local-tcp');
    }
  });

  it("with --dns-port off, resets a source's opening SYN to a --dns-server's port 53 beyond the rate, in the tcp chain after the exclusions", () => {
    const base = ['--interface', 'veth0', '--dns-server', '10.96.0.10', '--dns-server', '10.96.0.11', '--exclude-port', '22'];
    const plain = buildRuleSet(options(base), 4);
    const limited = buildRuleSet(options([...base, '--new-connections-per-source', '20', '--new-connections-burst', '40']), 4);
    const tcp = chain(plain, 'tcp');
    const at = tcp.findIndex((r) => r.includes('"originalDport":53'));
    expect(at).toBeGreaterThan(0);
    expect(chain(limited, 'tcp')).toEqual([
      ...tcp.slice(0, at),
      ...['10.96.0.10/32', '10.96.0.11/32'].flatMap((d) => [
        JSON.stringify([
          {
            protocol: 'tcp',
            originalDestination: d,
            originalDport: 53,
            syn: true,
            newConnection: true,
            overPerSource: { bucket: 'new-connections', perSecond: 20, burst: 40 },
          },
          { kind: 'reset' },
        ]),
        ...tcp.filter((r) => r.includes(`"originalDestination":"${d}"`)),
      ]),
      ...tcp.slice(at + 2),
    ]);
    expect(renderIptablesRestore(limited)).toContain(
      '-A EGRESSD-TCP -p tcp --syn -m conntrack --ctstate NEW --ctorigdst 10.96.0.10/32 --ctorigdstport 53 -m hashlimit --hashlimit-above 20/sec --hashlimit-burst 40 --hashlimit-mode srcip --hashlimit-srcmask 32 --hashlimit-name egressd-20-40 -j REJECT --reject-with tcp-reset\n',
    );
  });

  it('renders hashlimit keyed on the whole source address, named by its settings', () => {
    const first = (text: string) => text.split('\n').find((l) => l.includes('hashlimit'));
    expect(first(renderIptablesRestore(buildRuleSet(options(LIMITED), 4)))).toBe(
      '-A EGRESSD-LOCAL-TCP -p tcp --dport 15080 --syn -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 20/sec --hashlimit-burst 40 --hashlimit-mode srcip --hashlimit-srcmask 32 --hashlimit-name egressd-20-40 -j REJECT --reject-with tcp-reset',
    );
    expect(first(renderIptablesRestore(buildRuleSet(options(LIMITED), 6)))).toContain('--hashlimit-srcmask 128 --hashlimit-name egressd-20-40 ');
    expect(renderIptablesRestore(buildRuleSet(options(['--interface', 'veth0']), 4))).not.toContain('hashlimit');
  });

  it('renders an nft dynamic set of token buckets per source, declared only when used', () => {
    for (const family of [4, 6] as const) {
      const ip = family === 4 ? 'ip' : 'ip6';
      const text = renderNft(buildRuleSet(options([...LIMITED, '--backend', 'nft']), family));
      const lines = text.split('\n');
      expect(lines.slice(3, 9)).toEqual(nftPerSourceSet('new_tcp_per_source', family));
      expect(lines.filter((l) => l.includes('@new_tcp_per_source'))[0]).toBe(
        `\t\ttcp dport 15080 tcp flags & (fin | syn | rst | ack) == syn ct state new update @new_tcp_per_source { ${ip} saddr limit rate over 20/second burst 40 packets } reject with tcp reset`,
      );
      expect(renderNft(buildRuleSet(options(['--interface', 'veth0', '--backend', 'nft']), family))).not.toContain('new_tcp_per_source');
    }
  });
});

describe('--new-dns-flows-per-source', () => {
  const LIMITED = ['--interface', 'veth0', '--source', '10.1.0.0/16', '--new-dns-flows-per-source', '30/s', '--new-dns-flows-burst', '60'];
  const limit = { bucket: 'new-dns-flows', perSecond: 30, burst: 60 };

  it('is off by default, takes RATE or RATE/s, defaults the burst to the rate, and is apart from the connections limit', () => {
    expect(options(['--interface', 'veth0']).newDnsFlows).toBeNull();
    expect(options(['--interface', 'veth0', '--dns-port', '15053', '--new-dns-flows-per-source', '50/s']).newDnsFlows).toEqual({ perSecond: 50, burst: 50 });
    expect(options([...LIMITED, '--dns-port', '15053'])).toMatchObject({ newDnsFlows: { perSecond: 30, burst: 60 }, newConnections: null });
    expect(options(['--interface', 'veth0', '--new-connections-per-source', '5'])).toMatchObject({ newDnsFlows: null });
  });

  it.each([
    [['--new-dns-flows-per-source', '0'], /^--new-dns-flows-per-source: expected flows a second, an integer from 1 to 100000.*got "0"$/],
    [['--new-dns-flows-per-source', '100001'], /^--new-dns-flows-per-source: .*got "100001"$/],
    [['--new-dns-flows-per-source', '5/min'], /^--new-dns-flows-per-source: .*got "5\/min"$/],
    [['--new-dns-flows-per-source', '5', '--new-dns-flows-burst', '0'], /^--new-dns-flows-burst: .*from 1 to 100000, got "0"$/],
    [['--new-dns-flows-per-source', '5', '--new-dns-flows-burst', '1e3'], /^--new-dns-flows-burst: .*got "1e3"$/],
    [['--new-dns-flows-burst', '5'], /^--new-dns-flows-burst needs --new-dns-flows-per-source$/],
    [['--new-connections-per-source', '5', '--new-dns-flows-burst', '5'], /^--new-dns-flows-burst needs --new-dns-flows-per-source$/],
  ])('refuses %j with exit 2, naming the flag and the value', async (extra, message) => {
    await expectRefused(extra, message);
  });

  it('is refused in sidecar mode, where each pod has a table of its own', async () => {
    await expectRefusedInSidecar('--new-dns-flows-per-source');
  });

  it("drops a source's new flows to the DNS listener beyond the rate, right before each selector's return in filter INPUT; nothing else changes", () => {
    for (const family of [4, 6] as const) {
      const plain = buildRuleSet(options([...LIMITED.slice(0, 4), '--source', 'fd00::/64', '--dns-port', '15053']), family);
      const limited = buildRuleSet(options([...LIMITED, '--source', 'fd00::/64', '--dns-port', '15053']), family);
      const selectors = [{ inInterface: 'veth0' }, { source: family === 4 ? '10.1.0.0/16' : 'fd00::/64' }];
      expect(chain(limited, 'filter-input')).toEqual([
        ...selectors.flatMap((sel) => [
          JSON.stringify([{ ...sel, protocol: 'udp', dport: 15053, newConnection: true, overPerSource: limit }, { kind: 'drop' }]),
          JSON.stringify([{ ...sel, protocol: 'udp', dport: 15053 }, { kind: 'return' }]),
        ]),
        ...chain(plain, 'filter-input').slice(2),
      ]);
      expectOtherChainsAsIn(limited, plain, 'filter-input');
    }
  });

  it("with --dns-port off, drops a source's new flows to each --dns-server's port 53 beyond the rate, after the exclusions", () => {
    const base = ['--interface', 'veth0', '--dns-port', 'off', '--dns-server', '10.96.0.10', '--dns-server', '10.96.0.11', '--exclude-cidr', '10.0.0.0/8'];
    const plain = buildRuleSet(options(base), 4);
    const limited = buildRuleSet(options([...base, '--new-dns-flows-per-source', '30', '--new-dns-flows-burst', '60']), 4);
    const udp = chain(plain, 'udp');
    const isDnsReturn = (r: string): boolean => r.includes('"originalDport":53');
    const at = udp.findIndex(isDnsReturn);
    expect(at).toBeGreaterThan(0);
    expect(chain(limited, 'udp')).toEqual([
      ...udp.slice(0, at),
      ...['10.96.0.10/32', '10.96.0.11/32'].flatMap((d) => [
        JSON.stringify([{ protocol: 'udp', originalDestination: d, originalDport: 53, newConnection: true, overPerSource: limit }, { kind: 'drop' }]),
        ...udp.filter((r) => isDnsReturn(r) && r.includes(d)),
        ...udp.filter((r) => !isDnsReturn(r) && r.includes(`"destination":"${d}"`)),
      ]),
      ...udp.slice(at + 4),
    ]);
    expectOtherChainsAsIn(limited, plain, 'udp');
  });

  it('renders hashlimit in a table of its own, named apart from the connections limit at the same settings', () => {
    const argv = [...LIMITED, '--dns-port', '15053', '--new-connections-per-source', '30', '--new-connections-burst', '60'];
    for (const family of [4, 6] as const) {
      const lines = renderIptablesRestore(buildRuleSet(options(argv), family)).split('\n');
      const dns = lines.filter((l) => l.includes('--hashlimit-name egressd-dns-30-60'));
      // One per selector: the interface, and the --source of this family (IPv4 only).
      expect(dns).toHaveLength(family === 4 ? 2 : 1);
      expect(dns[0]).toBe(
        `-A EGRESSD-INPUT -i veth0 -p udp --dport 15053 -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 30/sec --hashlimit-burst 60 --hashlimit-mode srcip --hashlimit-srcmask ${family === 4 ? 32 : 128} --hashlimit-name egressd-dns-30-60 -j DROP`,
      );
      expect(lines.filter((l) => l.includes('--hashlimit-name egressd-30-60 '))).toHaveLength(4);
    }
  });

  it('renders an nft set of its own, declared only when used', () => {
    for (const family of [4, 6] as const) {
      const ip = family === 4 ? 'ip' : 'ip6';
      const lines = renderNft(buildRuleSet(options([...LIMITED, '--dns-port', '15053', '--backend', 'nft']), family)).split('\n');
      expect(lines.slice(3, 9)).toEqual(nftPerSourceSet('new_dns_per_source', family));
      expect(lines.filter((l) => l.includes('@new_dns_per_source'))[0]).toBe(
        `\t\tiifname "veth0" udp dport 15053 ct state new update @new_dns_per_source { ${ip} saddr limit rate over 30/second burst 60 packets } drop`,
      );
      expect(lines.join('\n')).not.toContain('new_tcp_per_source');
      const both = renderNft(buildRuleSet(options([...LIMITED, '--dns-port', '15053', '--new-connections-per-source', '5']), family));
      expect(both).toContain('set new_tcp_per_source {');
      expect(both).toContain('set new_dns_per_source {');
    }
  });
});

describe('--dns-packets-per-source', () => {
  const LIMITED = ['--interface', 'veth0', '--source', '10.1.0.0/16', '--dns-packets-per-source', '600/s', '--dns-packets-burst', '1200'];
  const limit = { bucket: 'dns-packets', perSecond: 600, burst: 1200 };

  it('is off by default, takes RATE or RATE/s, defaults the burst to the rate, and is apart from the flow limit', () => {
    expect(options(['--interface', 'veth0']).dnsPackets).toBeNull();
    expect(options(['--interface', 'veth0', '--dns-port', '15053', '--dns-packets-per-source', '50/s']).dnsPackets).toEqual({ perSecond: 50, burst: 50 });
    expect(options([...LIMITED, '--dns-port', '15053'])).toMatchObject({ dnsPackets: { perSecond: 600, burst: 1200 }, newDnsFlows: null });
  });

  it.each([
    [['--dns-packets-per-source', '0'], /^--dns-packets-per-source: expected datagrams a second, an integer from 1 to 100000.*got "0"$/],
    [['--dns-packets-per-source', '5', '--dns-packets-burst', 'x'], /^--dns-packets-burst: .*got "x"$/],
    [['--dns-packets-burst', '5'], /^--dns-packets-burst needs --dns-packets-per-source$/],
  ])('refuses %j with exit 2, naming the flag and the value', async (extra, message) => {
    await expectRefused(extra, message);
  });

  it.each([['--dns-packets-per-source'], ['--new-dns-flows-per-source']])(
    '%s is refused with --dns-port off and no --dns-server: no rule would carry it, and no DNS is reachable to limit',
    async (flag) => {
      const argv = ['--interface', 'veth0', '--dns-port', 'off', flag, '5'];
      const r = await iptablesCommand(argv, recorder().run);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`${flag} limits DNS to the listener or a --dns-server, and with --dns-port off there is no --dns-server`);
      expect(options([...argv, '--dns-server', '10.96.0.10'])).toMatchObject({ dnsPort: null });
    },
  );

  it('is refused in sidecar mode', async () => {
    await expectRefusedInSidecar('--dns-packets-per-source');
  });

  it("drops a source's datagrams to the DNS listener beyond the rate, new flows or not, before the flow limit and each selector's return", () => {
    for (const family of [4, 6] as const) {
      const plain = buildRuleSet(options([...LIMITED.slice(0, 4), '--source', 'fd00::/64', '--dns-port', '15053']), family);
      const limited = buildRuleSet(
        options([...LIMITED, '--source', 'fd00::/64', '--dns-port', '15053', '--new-dns-flows-per-source', '30', '--new-dns-flows-burst', '60']),
        family,
      );
      const selectors = [{ inInterface: 'veth0' }, { source: family === 4 ? '10.1.0.0/16' : 'fd00::/64' }];
      const flows = { bucket: 'new-dns-flows', perSecond: 30, burst: 60 };
      expect(chain(limited, 'filter-input')).toEqual([
        ...selectors.flatMap((sel) => [
          JSON.stringify([{ ...sel, protocol: 'udp', dport: 15053, overPerSource: limit }, { kind: 'drop' }]),
          JSON.stringify([{ ...sel, protocol: 'udp', dport: 15053, newConnection: true, overPerSource: flows }, { kind: 'drop' }]),
          JSON.stringify([{ ...sel, protocol: 'udp', dport: 15053 }, { kind: 'return' }]),
        ]),
        ...chain(plain, 'filter-input').slice(2),
      ]);
      expectOtherChainsAsIn(limited, plain, 'filter-input');
    }
  });

  it("with --dns-port off, drops a source's datagrams to each --dns-server's port 53 beyond the rate, before the flow limit", () => {
    const base = ['--interface', 'veth0', '--dns-port', 'off', '--dns-server', '10.96.0.10'];
    const plain = buildRuleSet(options(base), 4);
    const limited = buildRuleSet(options([...base, '--dns-packets-per-source', '600', '--dns-packets-burst', '1200', '--new-dns-flows-per-source', '30']), 4);
    const udp = chain(plain, 'udp');
    const at = udp.findIndex((r) => r.includes('"originalDport":53'));
    expect(chain(limited, 'udp')).toEqual([
      ...udp.slice(0, at),
      JSON.stringify([{ protocol: 'udp', originalDestination: '10.96.0.10/32', originalDport: 53, overPerSource: limit }, { kind: 'drop' }]),
      JSON.stringify([
        {
          protocol: 'udp',
          originalDestination: '10.96.0.10/32',
          originalDport: 53,
          newConnection: true,
          overPerSource: { bucket: 'new-dns-flows', perSecond: 30, burst: 30 },
        },
        { kind: 'drop' },
      ]),
      udp[at],
      // And the untracked ones (the next test).
      JSON.stringify([{ destination: '10.96.0.10/32', protocol: 'udp', dport: 53, untracked: true, overPerSource: limit }, { kind: 'drop' }]),
      ...udp.slice(at + 1),
    ]);
  });

  it("limits a source's untracked datagrams to a --dns-server's port 53 too, in the same buckets, before their return", () => {
    // A host may take DNS to a node-local cache out of conntrack (NodeLocal DNSCache's NOTRACK):
    // those datagrams have no original destination, and met only the untracked return.
    const base = ['--interface', 'veth0', '--dns-port', 'off', '--dns-server', '10.96.0.10'];
    const plain = chain(buildRuleSet(options(base), 4), 'udp');
    const limited = chain(buildRuleSet(options([...base, '--dns-packets-per-source', '600', '--dns-packets-burst', '1200']), 4), 'udp');
    const untrackedReturn = JSON.stringify([{ destination: '10.96.0.10/32', protocol: 'udp', dport: 53, untracked: true }, { kind: 'return' }]);
    const at = plain.indexOf(untrackedReturn);
    expect(at).toBeGreaterThan(0);
    expect(limited.slice(limited.indexOf(untrackedReturn) - 1)).toEqual([
      JSON.stringify([{ destination: '10.96.0.10/32', protocol: 'udp', dport: 53, untracked: true, overPerSource: limit }, { kind: 'drop' }]),
      ...plain.slice(at),
    ]);
    const rs = buildRuleSet(options([...base, '--dns-packets-per-source', '600', '--dns-packets-burst', '1200']), 4);
    expect(renderIptablesRestore(rs)).toMatch(
      /-A EGRESSD-UDP -d 10\.96\.0\.10\/32 -p udp --dport 53 -m conntrack --ctstate INVALID,UNTRACKED -m hashlimit --hashlimit-above 600\/sec --hashlimit-burst 1200 .*--hashlimit-name egressd-dnsp-600-1200 -j DROP/,
    );
    expect(renderNft(rs)).toMatch(
      /ip daddr 10\.96\.0\.10\/32 udp dport 53 ct state invalid,untracked update @dns_packets_per_source \{ ip saddr limit rate over 600\/second burst 1200 packets \} drop/,
    );
  });

  it('renders hashlimit without a conntrack state, and an nft set of its own', () => {
    const lines = renderIptablesRestore(buildRuleSet(options([...LIMITED, '--dns-port', '15053']), 4)).split('\n');
    expect(lines.filter((l) => l.includes('--hashlimit-name egressd-dnsp-600-1200'))[0]).toBe(
      '-A EGRESSD-INPUT -i veth0 -p udp --dport 15053 -m hashlimit --hashlimit-above 600/sec --hashlimit-burst 1200 --hashlimit-mode srcip --hashlimit-srcmask 32 --hashlimit-name egressd-dnsp-600-1200 -j DROP',
    );
    const nft = renderNft(buildRuleSet(options([...LIMITED, '--dns-port', '15053', '--backend', 'nft']), 4)).split('\n');
    expect(nft).toContain('\tset dns_packets_per_source {');
    expect(nft.filter((l) => l.includes('@dns_packets_per_source'))[0]).toBe(
      '\t\tiifname "veth0" udp dport 15053 update @dns_packets_per_source { ip saddr limit rate over 600/second burst 1200 packets } drop',
    );
  });
});

describe('--other-protocols', () => {
  const ND = [130, 131, 132, 133, 134, 135, 136, 137, 143];
  const drops = [
    JSON.stringify([{ protocol: 'tcp' }, { kind: 'return' }]),
    JSON.stringify([{ protocol: 'udp' }, { kind: 'return' }]),
    JSON.stringify([{ related: true }, { kind: 'return' }]),
    JSON.stringify([{ originalDirection: true }, { kind: 'drop' }]),
    JSON.stringify([{ untracked: true }, { kind: 'drop' }]),
  ];

  it('is "drop" by default, takes "pass", and names the flag and the value when it is neither', () => {
    expect(options(['--interface', 'veth0']).otherProtocols).toBe('drop');
    expect(options(['--interface', 'veth0', '--other-protocols', 'pass']).otherProtocols).toBe('pass');
    expect(parseIptablesArgs(['--interface', 'veth0', '--other-protocols', 'accept'])).toEqual({
      ok: false,
      help: false,
      error: '--other-protocols: expected "drop" or "pass", got "accept"',
    });
    expect(IPTABLES_USAGE).toContain('--other-protocols drop|pass');
  });

  it("drops a sandbox's own packets of other protocols, in its flows' direction or untracked, after ICMP errors of known connections", () => {
    for (const family of [4, 6] as const) {
      expect(chain(buildRuleSet(options(['--interface', 'veth0', '--source', '198.18.0.0/24', '--source', '2001:db8::/64']), family), 'other')).toEqual(drops);
      expect(chain(buildRuleSet(options(['--mode', 'sidecar', '--uid', '7']), family), 'other')).toEqual(drops);
    }
  });

  it('leaves the excluded destinations unfiltered, judged as the sandbox sent to them', () => {
    const rs = buildRuleSet(options(['--interface', 'veth0', '--exclude-cidr', '198.18.9.0/24', '--exclude-cidr', '2001:db8:9::/48']), 4);
    expect(chain(rs, 'other')).toEqual([
      ...drops.slice(0, 2),
      JSON.stringify([{ originalDestination: '198.18.9.0/24' }, { kind: 'return' }]),
      JSON.stringify([{ destination: '198.18.9.0/24', untracked: true }, { kind: 'return' }]),
      ...drops.slice(2),
    ]);
    expect(renderIptablesRestore(rs)).toContain('-A EGRESSD-OTHER -m conntrack --ctorigdst 198.18.9.0/24 -j RETURN');
    expect(renderNft(rs)).toContain('ct original ip daddr 198.18.9.0/24 return');
  });

  it('keeps IPv6 neighbour discovery and MLD to the host itself and from a pod, never forwarded', () => {
    const host6 = buildRuleSet(options(['--interface', 'veth0']), 6);
    expect(chain(host6, 'filter-input').slice(-ND.length - 1)).toEqual([
      ...ND.map((t) => JSON.stringify([{ inInterface: 'veth0', protocol: 'icmpv6', icmpv6Type: t }, { kind: 'return' }])),
      JSON.stringify([{ inInterface: 'veth0' }, { kind: 'jump', chain: 'other' }]),
    ]);
    expect(chain(host6, 'filter-forward').some((r) => r.includes('icmpv6'))).toBe(false);
    expect(JSON.stringify(buildRuleSet(options(['--interface', 'veth0']), 4))).not.toContain('icmpv6');
    expect(renderIptablesRestore(host6)).toContain('-A EGRESSD-INPUT -i veth0 -p icmpv6 --icmpv6-type 135 -j RETURN');
    expect(renderNft(host6)).toContain('iifname "veth0" icmpv6 type 135 return');
    const sidecar6 = renderIptablesRestore(buildRuleSet(options(['--mode', 'sidecar', '--uid', '7']), 6));
    expect(sidecar6).toContain('-A EGRESSD-OUTPUT -p icmpv6 --icmpv6-type 136 -j RETURN\n-A EGRESSD-OUTPUT -p icmpv6 --icmpv6-type 137 -j RETURN');
    expect(sidecar6).toMatch(/-A EGRESSD-OUTPUT -p icmpv6 --icmpv6-type 143 -j RETURN\n-A EGRESSD-OUTPUT -j EGRESSD-OTHER\nCOMMIT/);
  });

  it('with "pass", installs no chain and no jump for them, in either mode or family', () => {
    for (const argv of [
      ['--interface', 'veth0', '--other-protocols', 'pass'],
      ['--mode', 'sidecar', '--uid', '7', '--other-protocols', 'pass'],
    ]) {
      for (const family of [4, 6] as const) {
        const rs = buildRuleSet(options(argv), family);
        expect(rs.chains.map((c) => c.id)).not.toContain('other');
        expect(JSON.stringify(rs)).not.toMatch(/"other"|icmpv6/);
        expect(renderIptablesRestore(rs)).not.toContain('EGRESSD-OTHER');
        expect(renderNft(rs)).not.toContain('other_protocols');
      }
    }
  });

  it('is removed with the other chains, and by an --apply with "pass"', async () => {
    expect(ALL_IPTABLES_CHAINS.has('EGRESSD-OTHER')).toBe(true);
    const saved =
      '*filter\n:FORWARD ACCEPT [0:0]\n:EGRESSD-FORWARD - [0:0]\n:EGRESSD-OTHER - [0:0]\n-A FORWARD -j EGRESSD-FORWARD\n-A EGRESSD-FORWARD -i veth0 -j EGRESSD-OTHER\nCOMMIT\n';
    const { calls, run } = recorder((cmd, args) => ({ code: 0, stdout: cmd === 'iptables-save' && args[1] === 'filter' ? saved : '' }));
    const r = await iptablesCommand(['--apply', '--interface', 'veth0', '--family', '4', '--dns-port', 'off', '--other-protocols', 'pass'], run);
    expect(r.code).toBe(0);
    const restores = calls.filter((c) => c.cmd === 'iptables-restore').map((c) => c.input ?? '');
    expect(restores[0]).not.toContain('EGRESSD-OTHER');
    expect(restores[1]).toContain('-X EGRESSD-OTHER');
  });
});
