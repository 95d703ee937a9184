// The commands as an operator runs them: the real entry point (src/main.ts) in a child process,
// judged by its stdout JSON, its stderr and its exit code. Nothing here opens a socket.

import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STATE_SCHEMA_VERSION, STATE_SCHEMAS_READ } from '../../../src/control/state-schema.ts';
import { AGAIN_WAIT_MS, MAX_INPUT_FILE_BYTES } from '../../../src/util/read-bounded.ts';
import { runProcess, type Run } from '../../helpers/run-process.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const MAIN = join(ROOT, 'src/main.ts');
const HELLOS = join(ROOT, 'test/fixtures/hellos');

/** Runs `egressd ...args`, feeding `stdin` when given. */
function egressd(args: readonly string[], stdin?: Uint8Array | string): Promise<Run> {
  return runProcess(NODE, [MAIN, ...args], stdin === undefined ? {} : { stdin });
}

interface Fixture {
  readonly file: string;
  readonly sni: string;
  readonly alpn: readonly string[];
}
const FIXTURES = JSON.parse(readFileSync(join(HELLOS, 'manifest.json'), 'utf8')) as Fixture[];
/**
 * The recorded clients that send encrypted_client_hello: Chromium sends a GREASE ECH extension
 * in every hello (draft-ietf-tls-esni §6.2), which counts as ECH (src/peek/tls-client-hello.ts).
 */
const SENDS_ECH = new Set(['chromium.bin']);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-cli-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string | Uint8Array): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

describe('egressd inspect', () => {
  it('has recorded fixtures to replay', () => {
    expect(FIXTURES.length).toBeGreaterThan(0);
  });

  it.each(FIXTURES.map((f) => [f.file, f] as const))('reports the name, ALPN and ECH flag of the recorded %s hello', async (_, f) => {
    const r = await egressd(['inspect', join(HELLOS, f.file)]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ protocol: 'tls', name: f.sni, alpn: f.alpn, ech: SENDS_ECH.has(f.file) });
  });

  it('reads the bytes from stdin when the file is "-"', async () => {
    const r = await egressd(['inspect', '-'], readFileSync(join(HELLOS, 'curl.bin')));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ protocol: 'tls', name: 'fixture.test', alpn: ['h2', 'http/1.1'], ech: false });
  });

  it('reads stdin when no file is named', async () => {
    const r = await egressd(['inspect'], readFileSync(join(HELLOS, 'openssl.bin')));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ protocol: 'tls', name: 'fixture.test', alpn: [], ech: false });
  });

  it('reports the normalized Host of an HTTP request head, without its port', async () => {
    const r = await egressd(['inspect', '-'], 'GET /x HTTP/1.1\r\nHost: Example.COM.:8080\r\nAccept: */*\r\n\r\n');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ protocol: 'http', name: 'example.com', alpn: [], ech: false });
  });

  it('exits 1 with an "incomplete" error on a truncated ClientHello', async () => {
    const r = await egressd(['inspect', '-'], readFileSync(join(HELLOS, 'curl.bin')).subarray(0, 100));
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { protocol: string; error: string };
    expect(out.protocol).toBe('tls');
    expect(out.error).toMatch(/^incomplete/);
    expect(out).not.toHaveProperty('name');
  });

  it('exits 1 with an error on bytes that are neither TLS nor HTTP', async () => {
    const r = await egressd(['inspect', '-'], 'SSH-2.0-OpenSSH_9.6\r\n');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({ protocol: 'unknown', error: expect.any(String) });
  });

  it('exits 2 on two files, a usage error', async () => {
    const r = await egressd(['inspect', 'a.bin', 'b.bin']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain("too many arguments for 'inspect'");
    expect(r.stderr).toContain('egressd inspect --help');
  });
});

describe('egressd decide', () => {
  let sandbox0: string;
  let daytona: string;
  let novita: string;
  beforeAll(() => {
    sandbox0 = write('sandbox0.yaml', 'mode: block-all\negress:\n  allowed_domains: ["*.github.com"]\n  allowed_ports: [443]\n');
    daytona = write('daytona.json', JSON.stringify({ networkAllowList: '208.80.154.0/24' }));
    novita = write('novita.json', JSON.stringify({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['api.example.com'] } }));
  });
  const decide = async (policy: string, ...rest: string[]) => {
    const r = await egressd(['decide', '--policy', policy, ...rest]);
    return {
      ...r,
      json:
        r.stdout === ''
          ? null
          : (JSON.parse(r.stdout) as {
              verdict: string;
              reason: string;
              rule: string | null;
              layer: string;
              report_only: { enabled: boolean; levels: string[] };
            }),
    };
  };
  /** The answer's fields besides verdict, reason and rule, for a sandbox layer's decision without report-only. */
  const enforced = { layer: 'sandbox', report_only: { enabled: false, levels: [] } };

  it('allows a name a sandbox0 YAML policy lists, on its port, and exits 0', async () => {
    const r = await decide(sandbox0, '--host', 'API.GitHub.com', '--ip', '140.82.112.5', '--port', '443');
    expect(r.code).toBe(0);
    expect(r.json).toEqual({ verdict: 'allow', reason: 'allow-rule', rule: 'allowed_domains "*.github.com" + allowed_ports "443"', ...enforced });
  });

  it('refuses the same name on another port under sandbox0, and exits 1', async () => {
    const r = await decide(sandbox0, '--host', 'api.github.com', '--ip', '140.82.112.5', '--port', '22');
    expect(r.code).toBe(1);
    expect(r.json).toEqual({ verdict: 'refuse', reason: 'default-block', rule: 'mode "block-all"', ...enforced });
  });

  it('allows an address inside a Daytona allow-listed CIDR, with no name', async () => {
    const r = await decide(daytona, '--ip', '208.80.154.232', '--port', '443');
    expect(r.code).toBe(0);
    expect(r.json).toEqual({ verdict: 'allow', reason: 'allow-rule', rule: 'allowed_cidrs "208.80.154.0/24"', ...enforced });
  });

  it('allows an essential service by name under a Daytona allow list', async () => {
    const r = await decide(daytona, '--host', 'registry.npmjs.org', '--ip', '104.16.1.34', '--port', '443');
    expect(r.code).toBe(0);
    expect(r.json).toEqual({ verdict: 'allow', reason: 'allow-rule', rule: 'allowed_domains "registry.npmjs.org"', ...enforced });
  });

  it('refuses a name outside the catalog and an address outside the list under Daytona', async () => {
    const r = await decide(daytona, '--host', 'evil.example', '--ip', '104.16.1.34', '--port', '443');
    expect(r.code).toBe(1);
    expect(r.json).toEqual({ verdict: 'refuse', reason: 'default-block', rule: 'mode "block-all"', ...enforced });
  });

  it('gives no essential services to a Daytona networkBlockAll policy', async () => {
    const blockAll = write('daytona-block.json', JSON.stringify({ networkBlockAll: true }));
    const r = await decide(blockAll, '--host', 'registry.npmjs.org', '--ip', '104.16.1.34', '--port', '443');
    expect(r.code).toBe(1);
    expect(r.json?.verdict).toBe('refuse');
  });

  it('allows the default DNS server 8.8.8.8 on port 53 under a Novita policy that names a domain, when egressd does not answer DNS itself', async () => {
    const noDns = write('no-dns.yaml', 'listen:\n  dns: []\n');
    const r = await decide(novita, '--ip', '8.8.8.8', '--port', '53', '--config', noDns);
    expect(r.code).toBe(0);
    expect(r.json?.verdict).toBe('allow');
    expect(r.json?.rule).toMatch(/^dns servers: /);
  });

  it('refuses raw DNS to 8.8.8.8 under the built-in config, as its daemon does: it answers port 53 itself', async () => {
    const r = await decide(novita, '--ip', '8.8.8.8', '--port', '53');
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
  });

  it("allows the DNS servers given with --dns-server instead of the config's, on port 53 only", async () => {
    const noDns = write('no-dns.yaml', 'listen:\n  dns: []\n');
    const args = ['--config', noDns, '--dns-server', '1.1.1.1', '--dns-server', '9.9.9.9'];
    expect((await decide(novita, ...args, '--ip', '9.9.9.9', '--port', '53')).code).toBe(0);
    expect((await decide(novita, ...args, '--ip', '1.1.1.1', '--port', '53')).code).toBe(0);
    expect((await decide(novita, ...args, '--ip', '8.8.8.8', '--port', '53')).code).toBe(1);
    expect((await decide(novita, ...args, '--ip', '9.9.9.9', '--port', '443')).code).toBe(1);
  });

  it('allows a Novita allowOut domain and refuses every other destination', async () => {
    expect((await decide(novita, '--host', 'api.example.com', '--ip', '93.184.216.34', '--port', '443')).code).toBe(0);
    const other = await decide(novita, '--host', 'other.example.com', '--ip', '93.184.216.34', '--port', '443');
    expect(other.code).toBe(1);
    expect(other.json?.verdict).toBe('refuse');
  });

  // Novita reads the Host on 80 and the SNI on 443 (Novita "Internet access"), as the data path
  // does (Facts.via): --via asks for a name sent one way; without it, the way the port reads it.
  it('answers for a name sent as --via says: a Novita domain by its SNI on 443 and its Host on 80 only', async () => {
    const at = (port: string, ...via: string[]) => decide(novita, '--host', 'api.example.com', '--ip', '93.184.216.34', '--port', port, ...via);
    expect((await at('443')).code).toBe(0);
    expect((await at('443', '--via', 'tls')).code).toBe(0);
    const hostOn443 = await at('443', '--via', 'http');
    expect(hostOn443.code).toBe(1);
    expect(hostOn443.json).toMatchObject({ verdict: 'refuse', reason: 'default-block' });
    expect((await at('80', '--via', 'http')).code).toBe(0);
    expect((await at('80', '--via', 'tls')).code).toBe(1);
    // A sandbox0 domain reads a name however sent.
    expect((await decide(sandbox0, '--host', 'api.github.com', '--via', 'http', '--ip', '140.82.112.5', '--port', '443')).code).toBe(0);
  });

  it('exits 2 on a --via other than tls or http, naming the flag and the value, with no verdict', async () => {
    for (const bad of ['dns', 'TLS', '']) {
      const r = await decide(novita, '--host', 'api.example.com', '--via', bad, '--ip', '93.184.216.34', '--port', '443');
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toContain(`error: --via: Expected tls (the name is a TLS SNI) or http (an HTTP Host), got "${bad}"`);
    }
  });

  it('refuses a protected address, unless --protected-except takes it out of the protected ranges', async () => {
    const open = write('sandbox0-open.yaml', 'mode: allow-all\n');
    const r = await decide(open, '--ip', '10.1.2.3', '--port', '80');
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ verdict: 'refuse', reason: 'protected-address', rule: 'protected "10.0.0.0/8"' });
    const excepted = await decide(open, '--ip', '10.1.2.3', '--port', '80', '--protected-except', '10.1.0.0/16');
    expect(excepted.code).toBe(0);
    expect(excepted.json).toMatchObject({ verdict: 'allow', reason: 'default-allow' });
  });

  it("judges an address inside the config's declared NAT64 prefix by the IPv4 address it carries, --protected-except added", async () => {
    const open = write('sandbox0-open.yaml', 'mode: allow-all\n');
    const nsp = write('nsp.yaml', 'protected:\n  nat64Prefixes: ["64:ff9b:1::/48"]\n');
    const args = ['--port', '80', '--config', nsp, '--protected-except', '64:ff9b:1::/48'];
    const metadata = await decide(open, '--ip', '64:ff9b:1:a9fe:a9:fe00::', ...args);
    expect(metadata.json).toMatchObject({ verdict: 'refuse', rule: 'protected "169.254.0.0/16" (169.254.169.254, inside 64:ff9b:1:a9fe:a9:fe00::)' });
    expect((await decide(open, '--ip', '64:ff9b:1:808:8:800::', ...args)).json).toMatchObject({ verdict: 'allow', reason: 'default-allow' });
  });

  describe("with the daemon's config: overlays and report-only, as the daemon judges", () => {
    const overlays = () =>
      write(
        'overlays.yaml',
        [
          'overlays:',
          '  alwaysDeny:',
          '    - { name: exfil, domains: [paste.example] }',
          '  alwaysAllow:',
          '    - { name: platform-api, domains: [api.platform.test], ports: [443] }',
          '',
        ].join('\n'),
      );

    it('lets an always-allow entry beat a block-all policy, and names it', async () => {
      const r = await decide(sandbox0, '--host', 'api.platform.test', '--ip', '140.82.112.5', '--port', '443', '--config', overlays());
      expect(r.code).toBe(0);
      expect(r.json).toMatchObject({ verdict: 'allow', layer: 'always-allow', rule: expect.stringMatching(/^always-allow "platform-api": /) });
    });

    it('refuses what an always-deny entry names even where the policy allows it, and under report-only', async () => {
      const open = write('open.yaml', 'mode: allow-all\n');
      for (const extra of [[], ['--report-only']]) {
        const r = await decide(open, '--host', 'paste.example', '--ip', '140.82.112.5', '--port', '443', '--config', overlays(), ...extra);
        expect(r.code).toBe(1);
        expect(r.json).toMatchObject({ verdict: 'refuse', reason: 'deny-rule', layer: 'always-deny' });
      }
    });

    it("says would-refuse and exits 4 under report-only, the sandbox's own (--report-only) or the config's, naming the level", async () => {
      const own = await decide(sandbox0, '--host', 'evil.example', '--ip', '140.82.112.5', '--port', '443', '--report-only');
      expect(own.code).toBe(4);
      expect(own.json).toEqual({
        verdict: 'would-refuse',
        reason: 'default-block',
        rule: 'mode "block-all"',
        layer: 'sandbox',
        report_only: { enabled: true, levels: ['sandbox'] },
      });
      const global = await decide(
        sandbox0,
        '--host',
        'evil.example',
        '--ip',
        '140.82.112.5',
        '--port',
        '443',
        '--config',
        write('ro.yaml', 'reportOnly: true\n'),
      );
      expect(global.code).toBe(4);
      expect(global.json).toMatchObject({ verdict: 'would-refuse', report_only: { enabled: true, levels: ['global'] } });
      // What the policy allows stays an allow; a protected address is refused in every mode.
      expect((await decide(sandbox0, '--host', 'api.github.com', '--ip', '140.82.112.5', '--port', '443', '--report-only')).code).toBe(0);
      const protectedAddress = await decide(sandbox0, '--ip', '10.1.2.3', '--port', '443', '--report-only');
      expect(protectedAddress.code).toBe(1);
      expect(protectedAddress.json).toMatchObject({ verdict: 'refuse', reason: 'protected-address', layer: 'protected' });
    });

    // The convention (src/cli/program.ts EXIT): decide's 1 is a refusal and nothing else, so a
    // config it cannot judge with is 2 (no verdict), readable or not; validate's answer is 1.
    it('exits 2 on an invalid config, naming the file and each field, as on an unreadable one', async () => {
      const bad = write('bad-config.yaml', 'reportOnly: maybe\nbogus: 1\n');
      const r = await decide(sandbox0, '--ip', '140.82.112.5', '--port', '443', '--config', bad);
      expect(r.code).toBe(2);
      expect((await egressd(['validate', bad])).code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain(`Invalid config "${bad}"`);
      expect(r.stderr).toMatch(/^bogus: /m);
      expect(r.stderr).toMatch(/^reportOnly: /m);
      const absent = await decide(sandbox0, '--ip', '140.82.112.5', '--port', '443', '--config', join(dir, 'absent-config.yaml'));
      expect(absent.code).toBe(2);
      expect(absent.stderr).toContain('ENOENT (no such file or directory)');
    });

    it('exits 2 on a config that is not YAML (validate says 1: its answer), with the YAML error, its line and column (not an error code)', async () => {
      const broken = write('broken-config.yaml', 'listen: [unclosed\n');
      const r = await decide(sandbox0, '--ip', '140.82.112.5', '--port', '443', '--config', broken);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect((await egressd(['validate', broken])).code).toBe(1);
      expect(r.stderr).toContain(`${broken}:2:1: Cannot read configuration "${broken}": Flow sequence`);
      expect(r.stderr).not.toContain('EGRESSD_ERR_');
    });
  });

  // A file named .json is JSON alone (RFC 8259): read as YAML, a trailing comma or a comment
  // passed, and `"networkBlockAll": }` was null.
  it('exits 2 on a policy or config named .json that only YAML reads, at its line and column; the same text named .yaml is judged', async () => {
    const text = '{"mode": "block-all",\n "egress": {"allowed_ports": [443],}}\n';
    const lenient = write('lenient.json', text);
    const r = await decide(lenient, '--ip', '140.82.112.5', '--port', '443');
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toContain(`${lenient}:2:36: Cannot read policy "${lenient}": Not valid JSON: `);
    expect((await decide(write('lenient.yaml', text), '--ip', '140.82.112.5', '--port', '443')).code).toBe(0);
    const config = write('lenient-config.json', '{"reportOnly": false, // off\n}\n');
    const c = await decide(sandbox0, '--ip', '140.82.112.5', '--port', '443', '--config', config);
    expect(c.code).toBe(2);
    expect(c.stderr).toContain(`${config}:1:23: Cannot read configuration`);
    const v = await egressd(['validate', config]);
    expect(v.code).toBe(1);
    expect(v.stderr).toContain('(JSON SYNTAX, line 1, column 23)');
  });

  it('exits 2 on a policy that is not UTF-8 (validate 1 on such a config), at the byte', async () => {
    const latin1 = write(
      'latin1.yaml',
      Buffer.concat([Buffer.from('mode: block-all\negress:\n  allowed_domains: ["b'), Buffer.from([0xfc]), Buffer.from('cher.test"]\n')]),
    );
    const r = await decide(latin1, '--ip', '140.82.112.5', '--port', '443');
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toContain(`${latin1}:3:23: Cannot read policy "${latin1}": Not UTF-8: byte 0xFC`);
    const v = await egressd(['validate', latin1]);
    expect(v.code).toBe(1);
    expect(v.stderr).toContain(`${latin1}:3:23: Cannot read configuration`);
  });

  it('reads the policy from stdin when it is "-"', async () => {
    const r = await egressd(['decide', '--policy', '-', '--ip', '208.80.154.1', '--port', '443'], JSON.stringify({ networkAllowList: '208.80.154.0/24' }));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'allow' });
  });

  it('reads --host as a connection carries it: the A-label of an IDN, never its raw U-label', async () => {
    const policy = JSON.stringify({ mode: 'block-all', egress: { allowed_domains: ['bücher.test'] } });
    const ok = await egressd(['decide', '--policy', '-', '--host', 'xn--bcher-kva.test', '--ip', '208.80.154.1', '--port', '443'], policy);
    expect(ok.code).toBe(0);
    const raw = await egressd(['decide', '--policy', '-', '--host', 'bücher.test', '--ip', '208.80.154.1', '--port', '443'], policy);
    expect(raw.code).toBe(2);
    expect(raw.stderr).toMatch(/^error: --host: .*non-ASCII/);
  });

  it('exits 2 on an invalid policy (never the 1 of a refusal), naming the file, each field and its reason on stderr, and nothing on stdout', async () => {
    const bad = write('bad.json', JSON.stringify({ network: { denyOut: ['github.com'], allowOut: ['10.0.0.0/33'] } }));
    const r = await decide(bad, '--ip', '1.1.1.1', '--port', '443');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`Invalid policy "${bad}"`);
    expect(r.stderr).toMatch(/^network\.allowOut\[0\]: .*"10\.0\.0\.0\/33"/m);
    expect(r.stderr).toMatch(/^network\.denyOut\[0\]: Domain "github\.com" cannot be denied/m);
  });

  it('exits 2 on a policy that mixes two dialects', async () => {
    const mixed = write('mixed.json', JSON.stringify({ mode: 'allow-all', networkBlockAll: true }));
    const r = await decide(mixed, '--ip', '1.1.1.1', '--port', '443');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^networkBlockAll: .*one dialect/m);
  });

  it('exits 2 on a policy file that cannot be read', async () => {
    const r = await decide(join(dir, 'absent.yaml'), '--ip', '1.1.1.1', '--port', '443');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('ENOENT (no such file or directory)');
  });

  it('exits 2 on a policy that is not JSON or YAML, calling it the policy, with the line and column', async () => {
    const broken = write('broken-policy.json', '{"mode":\n');
    const r = await decide(broken, '--ip', '1.1.1.1', '--port', '443');
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(new RegExp(`^${broken.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: Cannot read policy "`));
  });

  it.each([
    ['--ip', ['--ip', '1.1.1', '--port', '443'], /^error: --ip: .*"1\.1\.1"/m],
    ['--ip', ['--ip', 'localhost', '--port', '443'], /^error: --ip: .*"localhost"/m],
    ['--port', ['--ip', '1.1.1.1', '--port', '0'], /^error: --port: .*"0"/m],
    ['--port', ['--ip', '1.1.1.1', '--port', '65536'], /^error: --port: .*"65536"/m],
    ['--port', ['--ip', '1.1.1.1', '--port', 'https'], /^error: --port: .*"https"/m],
    ['--dns-server', ['--ip', '1.1.1.1', '--port', '53', '--dns-server', 'dns.google'], /^error: --dns-server: .*"dns\.google"/m],
    ['--protected-except', ['--ip', '1.1.1.1', '--port', '53', '--protected-except', '10.0.0.0/40'], /^error: --protected-except: /m],
  ] as const)('exits 2 on a bad %s, saying which flag and why', async (_, args, message) => {
    const r = await decide(daytona, ...args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
  });

  it('exits 2 when a required flag is missing', async () => {
    const r = await egressd(['decide', '--policy', daytona, '--ip', '1.1.1.1']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("required option '--port <n>' not specified");
    expect(r.stderr).toContain('egressd decide --help');
  });
});

describe('the environment variables', () => {
  it('every EGRESSD_ variable src/ reads is listed by "egressd --help" and in docs/config.md "Environment"', async () => {
    const { readdirSync } = await import('node:fs');
    const files = readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    const read = new Set<string>();
    for (const f of files) {
      for (const m of readFileSync(join(ROOT, 'src', f), 'utf8').matchAll(/(?:env\[|\.env\()'(EGRESSD_[A-Z_]+)'/g)) read.add(m[1]!);
    }
    expect(read.size).toBeGreaterThan(5);
    const help = (await egressd(['--help'])).stdout;
    const md = readFileSync(join(ROOT, 'docs/config.md'), 'utf8');
    const section = md.slice(md.indexOf('## Environment'), md.indexOf('## Reloading'));
    for (const v of read) {
      expect(help, v).toMatch(new RegExp(`^  ${v} `, 'm'));
      expect(section, v).toContain(`| \`${v}\` |`);
    }
  });
});

describe('egressd validate', () => {
  it('exits 0 on a valid config and says how many sandboxes it holds', async () => {
    const file = write(
      'valid.yaml',
      'listen:\n  http: 127.0.0.1:0\nsandboxes:\n  - id: sb-1\n    sources: [10.200.0.2]\n    network: { networkAllowList: "208.80.154.0/24" }\n',
    );
    const r = await egressd(['validate', file]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${file}: valid (1 sandboxes)\n`);
  });

  it('exits 1 printing all three problems of a config at once, each with its key', async () => {
    const file = write('three.json', JSON.stringify({ upstream: { dial: 'sometimes' }, peek: { timeoutMs: 0 }, block: 'maybe' }));
    const r = await egressd(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}: 3 problems`);
    expect(r.stderr).toMatch(/^upstream\.dial: .*"sometimes"/m);
    expect(r.stderr).toMatch(/^peek\.timeoutMs: .*"0"/m);
    expect(r.stderr).toMatch(/^block: .*"maybe"/m);
  });

  it('exits 2 on a file that cannot be read, as every command that takes a file, naming it and the reason in words', async () => {
    const absent = join(dir, 'absent.yaml');
    const r = await egressd(['validate', absent]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`error: Cannot read "${absent}": ENOENT (no such file or directory)\n(see "egressd validate --help")\n`);
  });

  it('exits 1 on a file that is not YAML, printing the YAML error itself: line, column, what and where', async () => {
    const file = write('broken.yaml', 'admin:\n  listen: 127.0.0.1:9901\nlisten: [unclosed\nblock: drop\n');
    const r = await egressd(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4:1: `));
    expect(r.stderr).toContain('Flow sequence in block collection must be sufficiently indented and end with a ]');
    expect(r.stderr).toContain('(YAML BAD_INDENT, line 4, column 1)');
    expect(r.stderr).toMatch(/^listen: \[unclosed$/m);
    expect(r.stderr).not.toContain('EGRESSD_ERR_CONFIG_READ');
  });

  it('names a duplicate key with its line and column', async () => {
    const r = await egressd(['validate', write('dup.yaml', 'block: drop\nblock: explain\n')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/dup\.yaml:2:1: .*Map keys must be unique \(YAML DUPLICATE_KEY, line 2, column 1\)/);
  });
});

describe('egressd serve', () => {
  it('exits 1 on an invalid config file with the file, the key and the reason, before logging or listening', async () => {
    const file = write('serve-bad.json', JSON.stringify({ listen: { http: '127.0.0.1:0' }, upstream: { dial: 'sometimes' } }));
    const r = await egressd(['serve', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`"${file}"`);
    expect(r.stderr).toMatch(/^upstream\.dial: .*"sometimes"/m);
    // The logger is created after the config is accepted: not one log line means nothing started.
    expect(r.stdout).toBe('');
  });
});

// A flag the body would not carry was dropped without a word: `org put --tier 1 --network ...`
// stored the tier alone (the API refuses both), and a body file beat every flag beside it.
describe('the API commands refuse flags their body would drop', () => {
  it.each([
    [['org', 'put', 'o1', '--tier', '1', '--network', '{}'], "option '--tier <n>' cannot be used with option '--network <json>'"],
    [['org', 'put', 'o1', '--file', 'body.json', '--report-only'], "option '--file <body.json>' cannot be used with option '--report-only'"],
    [['sandbox', 'put', 's1', '--file', 'body.json', '--sources', '198.18.0.1'], "option '--file <body.json>' cannot be used with option '--sources <list>'"],
    [['sandbox', 'put', 's1', '--file', 'body.json', '--network', '{}'], "option '--file <body.json>' cannot be used with option '--network <json>'"],
    [['sandbox', 'network', 's1', '--file', 'body.json', '--network', '{}'], "option '--file <body.json>' cannot be used with option '--network <json>'"],
  ])('egressd %j exits 2 before any request', async (args, message) => {
    // No API is listening there: a request made would exit 3 (unavailable), not 2.
    const r = await egressd([...args, '--admin', 'http://127.0.0.1:9']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 2, stderr: expect.stringContaining(message) });
  });
});

// One convention for every command (src/cli/program.ts EXIT, docs/api.md "From the command
// line"): a malformed argument is 2 before any request; a body file read and found invalid is a
// refused change, 1.
describe('the exit-code convention, across commands', () => {
  it.each([
    [['check', '--sandbox', 's1', '--ip', '1.1.1', '--port', '443'], /--ip <addr>' argument '1\.1\.1' is invalid\. expected an IPv4 or IPv6 address/],
    [['check', '--sandbox', 's1', '--host', 'bücher.test', '--ip', '1.1.1.1', '--port', '443'], /--host <name>' argument .* is invalid\. .*non-ASCII/],
  ])('egressd %j exits 2, as decide does for the same flag, before any request', async (args, message) => {
    // No API is listening there: a request made would exit 3 (unavailable), or 1 on its 400.
    const r = await egressd([...args, '--admin', 'http://127.0.0.1:9']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 2, stderr: expect.stringMatching(message) });
  });

  it.each([
    ['sandbox', 'put', 's1'],
    ['sandbox', 'network', 's1'],
    ['org', 'put', 'o1'],
  ])(
    'egressd %s %s %s --file exits 1 on a body file that is not JSON, as validate on a config that is not YAML, and 2 on one it cannot read',
    async (...words) => {
      const broken = write('broken-body.json', '{"sources": [\n');
      const r = await egressd([...words, '--file', broken, '--admin', 'http://127.0.0.1:9']);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 1, stdout: '' });
      expect(r.stderr).toContain(`Cannot read body "${broken}": it is not valid JSON`);
      const dup = write('dup-body.json', '{"sources":[],"sources":[]}');
      expect((await egressd([...words, '--file', dup, '--admin', 'http://127.0.0.1:9'])).code).toBe(1);
      const absent = await egressd([...words, '--file', join(dir, 'absent-body.json'), '--admin', 'http://127.0.0.1:9']);
      expect(absent.code).toBe(2);
      expect(absent.stderr).toContain('ENOENT');
    },
  );
});

describe('egressd --version', () => {
  it('prints the package version alone on the first line, then the state schema and Node.js versions, and exits 0; -V and "egressd version" say the same', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await egressd(['--version']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    const node = await runProcess(NODE, ['-p', 'process.version']);
    expect(r.stdout).toBe(
      `egressd ${pkg.version}\nstate schema ${STATE_SCHEMA_VERSION} (reads ${STATE_SCHEMAS_READ.join(', ')})\nnode ${node.stdout.trim()}\n`,
    );
    expect(await egressd(['-V'])).toMatchObject({ code: 0, stdout: r.stdout });
    expect(await egressd(['version'])).toMatchObject({ code: 0, stdout: r.stdout });
  });

  it('is listed by "egressd --help"', async () => {
    const r = await egressd(['--help']);
    expect(r.stdout).toMatch(/^ {2}-V, --version +print the egressd version/m);
    expect(r.stdout).toMatch(/^ {2}version +Print the egressd version/m);
  });
});

describe('egressd without a known command', () => {
  it('prints the usage and exits 2 when no command is given', async () => {
    const r = await egressd([]);
    expect(r.code).toBe(2);
    expect(r.stdout).toContain('Usage: egressd <command>');
  });

  it('exits 2 on an unknown command, naming it, and suggests the near one', async () => {
    const r = await egressd(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown command 'frobnicate'");
    const near = await egressd(['sandboxes']);
    expect(near.code).toBe(2);
    expect(near.stderr).toContain('Did you mean sandbox?');
  });

  it('exits 2 on an unknown option, naming it', async () => {
    const r = await egressd(['validate', '--frob', 'x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown option '--frob'");
  });
});

describe('a usage error', () => {
  // Every command alike: the error, then one line saying where the help is; the help itself
  // only on --help, where it is the answer.
  it.each(
    [
      [['--bogus'], 'egressd'],
      [['frobnicate'], 'egressd'],
      [['sandbox'], 'egressd sandbox'],
      [['org'], 'egressd org'],
      [['sandbox', 'nope'], 'egressd sandbox'],
      [['sandbox', 'get'], 'egressd sandbox get'],
      [['check', '--bogus'], 'egressd check'],
      [['decide', '--ip', '192.0.2.1'], 'egressd decide'],
      [['validate'], 'egressd validate'],
      [['inspect', 'a', 'b'], 'egressd inspect'],
      [['serve', '--bogus'], 'egressd serve'],
      [['iptables', '--bogus'], 'egressd iptables'],
      [['iptables', '--mode'], 'egressd iptables'],
      [['iptables', '--mode', 'bridge'], 'egressd iptables'],
      // Raised by the command's own action, after commander's checks passed.
      [['sandbox', 'put', 'sb-1'], 'egressd sandbox put'],
      [['org', 'put', 'o-1'], 'egressd org put'],
      [['sandbox', 'put', 'sb-1', '--file', '/nonexistent/body.json'], 'egressd sandbox put'],
      [['sandbox', 'network', 'sb-1', '--network', '{'], 'egressd sandbox network'],
      [['sandbox', 'ls', '--token-file', '/nonexistent/token'], 'egressd sandbox ls'],
      [['validate', '/nonexistent/config.yaml'], 'egressd validate'],
      [['inspect', '/nonexistent/hello.bin'], 'egressd inspect'],
      [['decide', '--policy', '/nonexistent/policy.yaml', '--ip', '192.0.2.1', '--port', '443'], 'egressd decide'],
      [['decide', '--policy', '-', '--ip', '192.0.2.300', '--port', '443'], 'egressd decide'],
    ].map(([args, command]) => [(args as string[]).join(' '), args as string[], command as string] as const),
  )('"egressd %s" prints the error and a pointer to its --help, exit 2', async (_line, args, command) => {
    const r = await egressd(args);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines.at(-1)).toBe(`(see "${command} --help")`);
    expect(lines[0]).toMatch(/^error: \S/);
    // What the error says, not the help's list of options and commands.
    expect(r.stderr).not.toMatch(/^Usage:|^Options:|^Commands:/m);
  });
});

describe('"help" as a command', () => {
  it('"egressd sandbox help" prints the help on stdout and exits 0, as --help does', async () => {
    const r = await egressd(['sandbox', 'help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: egressd sandbox /);
  });
});

// Read whole, a mistaken path (a disk image, a log) cost memory out of proportion, and one past
// V8's longest string threw a RangeError naming no file. A sparse file takes no disk and no time.
describe('a file longer than egressd reads whole is refused by its size, naming it, unread', () => {
  const cases = [
    ['validate', (f: string) => ['validate', f], 2, 'Cannot read'],
    ['serve --config', (f: string) => ['serve', '--config', f], 1, 'Cannot read configuration'],
    [
      'decide --config',
      (f: string) => ['decide', '--policy', write('ok-policy-2.yaml', 'mode: block-all\n'), '--config', f, '--ip', '192.0.2.1', '--port', '443'],
      2,
      'Cannot read config',
    ],
    ['decide --policy', (f: string) => ['decide', '--policy', f, '--ip', '192.0.2.1', '--port', '443'], 2, 'Cannot read policy'],
    ['inspect', (f: string) => ['inspect', f], 2, 'Cannot read'],
    ['sandbox put --file', (f: string) => ['sandbox', 'put', 'sb-1', '--file', f], 2, 'Cannot read'],
  ] as const;
  it.each(cases)('%s', async (_what, args, code, words) => {
    const file = write('huge.yaml', '');
    truncateSync(file, MAX_INPUT_FILE_BYTES + 1);
    const r = await egressd(args(file));
    expect(r.code, r.stderr).toBe(code);
    expect(r.stderr).toContain(`${words} "${file}": it is ${MAX_INPUT_FILE_BYTES + 1} bytes; at most ${MAX_INPUT_FILE_BYTES} are read`);
  });

  // commander imports node:process as an ES module, which builds process.stdin and leaves a pipe
  // or socket on descriptor 0 non-blocking: a writer slower than the read gave EAGAIN, refused.
  it('decide --policy - waits for a writer slower than the read (a non-blocking standard input)', async () => {
    const child = spawn(
      NODE,
      [MAIN, 'decide', '--policy', '-', '--host', 'a.example.test', '--ip', '198.18.0.9', '--port', '443', '--protected-except', '198.18.0.0/15'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.write('mode: block-all\n');
    // Long enough for the command to start and read the first part (about a second, more on a
    // loaded machine; should it read later, the test still passes without showing the wait).
    await new Promise((r) => setTimeout(r, 3000));
    child.stdin.end('egress:\n  allowed_domains: [a.example.test]\n');
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(stderr).not.toContain('EAGAIN');
    expect(code, stderr).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ verdict: 'allow' });
  });

  it('decide --policy - stops reading standard input past the bound', async () => {
    const r = await egressd(['decide', '--policy', '-', '--ip', '192.0.2.1', '--port', '443'], Buffer.alloc(MAX_INPUT_FILE_BYTES + 1, 0x20));
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`Cannot read policy "-": it is longer than ${MAX_INPUT_FILE_BYTES} bytes, the most read`);
  });
});

describe('a file that is read but cannot be used says where: file:line:column', () => {
  // Errors found after parsing (an alias with no anchor, an alias bomb) have no position from
  // the yaml package; a JSON body has none from the CLI unless it counts one.
  const config = 'admin:\n  listen: "127.0.0.1:0"\nlog:\n  level: *lvl\n';
  it.each([
    ['validate', (f: string) => ['validate', f], 1],
    [
      'decide --config',
      (f: string) => ['decide', '--policy', write('ok-policy.yaml', 'mode: block-all\n'), '--config', f, '--ip', '192.0.2.1', '--port', '443'],
      2,
    ],
    ['decide --policy', (f: string) => ['decide', '--policy', f, '--ip', '192.0.2.1', '--port', '443'], 2],
    ['serve', (f: string) => ['serve', '--config', f], 1],
  ] as const)('%s: an alias with no anchor on line 4', async (_what, args, code) => {
    const file = write('unresolved.yaml', config);
    const r = await egressd(args(file));
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(new RegExp(`^(?:egressd: )?${file.replace(/[.]/g, '\\.')}:4:10: Cannot read (?:configuration|policy) .*Unresolved alias`));
  });

  it('validate: an alias bomb is placed at its first alias and is a problem in the file (exit 1), not an unreadable file (2)', async () => {
    const lines = ['a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]'];
    for (let i = 1; i < 6; i++)
      lines.push(
        `${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(10)
          .fill(`*${String.fromCharCode(96 + i)}`)
          .join(', ')}]`,
      );
    const file = write('laughs.yaml', `${lines.join('\n')}\n`);
    const r = await egressd(['validate', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(`^${file.replace(/[.]/g, '\\.')}:2:8: Cannot read configuration .*Aliases expand the document past 400000 values \\(an alias bomb\\)`),
    );
  });

  it.each([
    ['not JSON on line 3', '{\n "sources": ["192.0.2.7"],\n "network": {,}\n}\n', ':3:14: ', /it is not valid JSON: Expected property name or '\}'$/m],
    [
      'a key given twice on line 3',
      '{"sources": ["192.0.2.7"],\n "network": {"networkBlockAll": true,\n  "networkBlockAll": false}}\n',
      ':3:3: ',
      /gives the key "network\.networkBlockAll" more than once/,
    ],
    ['a body that ends early', '{\n "sources": [', ':2:14: ', /Unexpected end of JSON input/],
    // V8 gives no position for an unexpected token, and quotes the text around it over lines.
    [
      'an unexpected token on line 2',
      '{"sources": ["192.0.2.7"],\n "network": x,\n "org": "o"}\n',
      ':2:13: ',
      /^[^\n]*not valid JSON: Unexpected token 'x'\n$/,
    ],
    ['an address unquoted', '{"sources": [192.0.2.7]}', ':1:19: ', /^[^\n]*not valid JSON: Expected ',' or ']' after array element\n$/],
    ['a byte order mark before a token on line 1', '\ufeff{"sources": x}', ':1:13: ', /^[^\n]*not valid JSON: Unexpected token 'x'\n$/],
  ])('sandbox put --file: %s', async (_what, text, at, message) => {
    const file = write('body.json', text);
    const r = await egressd(['sandbox', 'put', 'sb-1', '--file', file, '--admin', 'http://127.0.0.1:1']);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 1, stdout: '' });
    expect(r.stderr.startsWith(`error: ${file}${at}Cannot read body`), r.stderr).toBe(true);
    expect(r.stderr).toMatch(message);
  });

  it('sandbox put --file: a body with a byte order mark is read (RFC 8259 §8.1), and sent', async () => {
    const file = write('bom-body.json', '\ufeff{"sources": ["192.0.2.7"]}\n');
    const r = await egressd(['sandbox', 'put', 'sb-1', '--file', file, '--admin', 'http://127.0.0.1:1']);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/^error: sandbox put "sb-1": cannot reach the admin API/);
  });
});

// Each file the CLI is given by path: a FIFO's open waits for a writer, and the command waited for
// ever on one no one writes to. Each waits AGAIN_WAIT_MS at most, then says which file and why.
describe('a file given to the CLI that is a FIFO no one writes to', () => {
  const fifo = (name: string): string => {
    const f = join(dir, name);
    expect(spawnSync('mkfifo', [f]).status).toBe(0);
    return f;
  };
  it.concurrent.each([
    ['validate', (f: string) => ['validate', f]],
    ['decide --policy', (f: string) => ['decide', '--policy', f, '--ip', '192.0.2.1', '--port', '443']],
    [
      'decide --config',
      (f: string) => ['decide', '--policy', write('fifo-ok-policy.yaml', 'mode: block-all\n'), '--config', f, '--ip', '192.0.2.1', '--port', '443'],
    ],
    ['inspect', (f: string) => ['inspect', f]],
    [
      'sandbox put --file',
      (f: string) => ['sandbox', 'put', 'sb-1', '--file', f, '--admin', 'http://127.0.0.1:9', '--token-file', write('fifo-token', 'tok\n')],
    ],
  ])(
    '%s: is refused within the bound, naming the file',
    async (what, args) => {
      const f = fifo(`fifo-${what.replace(/\W+/g, '-')}`);
      const r = await egressd(args(f));
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(f);
      expect(r.stderr).toContain(`it is a FIFO that gave nothing within ${AGAIN_WAIT_MS} ms`);
    },
    30_000,
  );
});

describe('a problem validation finds says where it is written: (line L, column C)', () => {
  // The three commands that read a config file, each with its exit code for an invalid one.
  const readingConfig = [
    ['validate', (f: string) => ['validate', f], 1],
    ['serve', (f: string) => ['serve', '--config', f], 1],
    [
      'decide --config',
      (f: string) => ['decide', '--policy', write('ok-policy.yaml', 'mode: block-all\n'), '--config', f, '--ip', '192.0.2.1', '--port', '443'],
      2,
    ],
  ] as const;
  const config = 'admin:\n  listen: "127.0.0.1:0"\nsandboxes:\n  - id: a\n    sources: ["192.0.2.7"]\n    network:\n      mode: sometimes\n  - id: b\n';
  it.each(readingConfig)('%s: each field of the config at its line and column, a missing one at its entry', async (_what, args, code) => {
    const r = await egressd(args(write('invalid.yaml', config)));
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(/^sandboxes\[0\]\.network\.mode: Unknown mode "sometimes".* \(line 7, column 7\)$/m);
    expect(r.stderr).toMatch(/^sandboxes\[1\]\.sources: Missing required field "sources" \(line 8, column 5\)$/m);
  });

  it("decide --policy: the policy file's field at its line and column", async () => {
    const file = write('policy.yaml', 'mode: block-all\negress:\n  allowed_ports: [443, 70000]\n');
    const r = await egressd(['decide', '--policy', file, '--ip', '192.0.2.1', '--port', '443']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^egress\.allowed_ports\[1\]: .*70000.* \(line 3, column 24\)$/m);
  });

  // The catalog a config asks for is part of it: validate said "valid" for a config serve then
  // refused, and serve named "(catalog)" instead of the file, with no line anywhere.
  it.each(readingConfig)("%s: the catalog's problems are the config's, the catalog file's own at its line and column", async (_what, args, code) => {
    const catalog = write('catalog.yaml', 'categories:\n  pkg:\n    - "*.npmjs.org"\n    - "**bad"\n');
    const file = write('with-catalog.yaml', `admin:\n  listen: "127.0.0.1:0"\ncatalog:\n  file: ${JSON.stringify(catalog)}\n  categories: [pkg, nosuch]\n`);
    const r = await egressd(args(file));
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code, stdout: '' });
    expect(r.stderr).toContain(file);
    expect(r.stderr).not.toContain('(catalog)');
    expect(r.stderr).toMatch(/^catalog\.file: Catalog file ".*catalog\.yaml", line 4, column 7, at categories\.pkg\[1\]: .*"\*\*bad".* \(line 4, column 3\)$/m);
    expect(r.stderr).toMatch(/^catalog\.categories\[1\]: Unknown category "nosuch".* \(line 5, column 21\)$/m);
  });
});

describe('what the API commands send is read strictly: the admin token, --sources', () => {
  // A loopback server in place of the daemon: it records the Authorization field of each call.
  let server: Server;
  let admin: string;
  const presented: (string | undefined)[] = [];
  beforeAll(async () => {
    // Past Node's default 16 KiB of fields, so that the CLI's own cap on a token file is what is tested.
    server = createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
      presented.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"sb-1"}');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    admin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => {
    server.close();
  });
  const get = (extra: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Run> =>
    runProcess(NODE, [MAIN, 'sandbox', 'get', 'sb-1', '--admin', admin, ...extra], { env: { PATH: process.env['PATH'] ?? '', ...env } });

  it.each([
    ['one line', 'tok-1.A_b~+/='],
    ['one line and its line break', 'tok-1\n'],
    ['one line and a CRLF', 'tok-1\r\n'],
    // Windows PowerShell 5.1: `"tok-1" | Out-File -Encoding utf8 token` writes EF BB BF, the token, CRLF.
    ['a byte order mark, one line and a CRLF', '\ufefftok-1\r\n'],
  ])('a token file of %s: the token sent is the line', async (_name, text) => {
    presented.length = 0;
    const r = await get(['--token-file', write('token-ok', text)]);
    expect(r.code, r.stderr).toBe(0);
    expect(presented).toEqual([`Bearer ${text.replace(/^\ufeff/, '').replace(/\r?\n$/, '')}`]);
  });

  // Before: trimmed (the first three), sent with U+FFFD (Latin-1), or sent as the API's 401.
  it.each([
    ['blanks around the token', ' tok-1 \n', 'it holds a blank (U+0020) at offset 0'],
    ['two lines', 'tok-1\ntok-2\n', 'it holds a line break (U+000A) at offset 5'],
    ['a byte order mark after the first', '\ufeff\ufefftok-1\n', 'it holds a byte order mark (U+FEFF) at offset 0'],
    ['nothing in it', '', 'it is empty'],
    ['a line break alone', '\n', 'it is empty'],
    ['a letter outside ASCII', 'tök-1\n', 'it holds U+00F6 at offset 1'],
  ])('a token file with %s is refused naming the file and the reason, and nothing is sent', async (_name, text, reason) => {
    presented.length = 0;
    const file = write('token-bad', text);
    const r = await get(['--token-file', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: --token-file: "${file}" is not an admin token: ${reason}`);
    expect(presented).toEqual([]);
  });

  it('a file that is not UTF-8 is refused at its first such byte, and nothing is sent', async () => {
    presented.length = 0;
    const file = write('token-latin1', Buffer.from([0x74, 0x6f, 0xfc, 0x0a]));
    const r = await get(['--token-file', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: --token-file: "${file}" is not UTF-8: byte 0xFC (offset 2) starts no UTF-8 character there`);
    expect(presented).toEqual([]);
  });

  // A Kubernetes Secret made --from-file keeps the file's last line break, and the variable set
  // from it too: refused, as it was, the CLI could not call the API with the Secret's token.
  it.each([
    ['its line break', 'tok-1\n'],
    ['a CRLF', 'tok-1\r\n'],
  ])('EGRESSD_ADMIN_TOKEN ending with %s sends the token without it, as a token file does', async (_name, value) => {
    presented.length = 0;
    const r = await get([], { EGRESSD_ADMIN_TOKEN: value });
    expect(r.code, r.stderr).toBe(0);
    expect(presented).toEqual(['Bearer tok-1']);
  });

  it('EGRESSD_ADMIN_TOKEN with a line break inside, or a line break alone, is refused, and nothing is sent; empty, no token is sent', async () => {
    presented.length = 0;
    const r = await get([], { EGRESSD_ADMIN_TOKEN: 'tok-1\ntok-2' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('error: EGRESSD_ADMIN_TOKEN is not an admin token: it holds a line break (U+000A) at offset 5');
    const alone = await get([], { EGRESSD_ADMIN_TOKEN: '\n' });
    expect(alone.code).toBe(2);
    expect(alone.stderr).toContain('error: EGRESSD_ADMIN_TOKEN is not an admin token: it is empty');
    expect(presented).toEqual([]);
    expect((await get([], { EGRESSD_ADMIN_TOKEN: '' })).code).toBe(0);
    expect(presented).toEqual([undefined]);
  });

  it('EGRESSD_ADMIN_URL set but empty is unset, as EGRESSD_ADMIN_TOKEN is: the default URL, not "expected a URL"', async () => {
    // The default is tried (whatever answers there, if anything: another daemon on this host may), not refused as a usage error.
    const r = await runProcess(NODE, [MAIN, 'sandbox', 'get', 'sb-1'], { env: { PATH: process.env['PATH'] ?? '', EGRESSD_ADMIN_URL: '' } });
    expect(r.code).not.toBe(2);
    expect(r.stderr).not.toContain('expected a URL');
    const explicit = await runProcess(NODE, [MAIN, 'sandbox', 'get', 'sb-1', '--admin', ''], { env: { PATH: process.env['PATH'] ?? '' } });
    expect(explicit.code).toBe(2);
    expect(explicit.stderr).toContain('expected a URL');
  });

  // Read whole, /dev/zero grew the CLI past 3.7 GB in 10 s, and a 300 MB file of one word was
  // read (1 GB resident) and sent as the token.
  it.each([
    ['/dev/zero', () => '/dev/zero'],
    ['a file one byte past 16 KiB', () => write('token-long', 'a'.repeat(16 * 1024 + 1))],
  ])('a token file of %s is refused by its size, reading no more than 16 KiB, and nothing is sent', async (_name, file) => {
    presented.length = 0;
    const f = file();
    const r = await get(['--token-file', f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: --token-file: "${f}" is not an admin token: it holds more than 16384 bytes`);
    expect(presented).toEqual([]);
  });

  it('a token file of exactly 16 KiB, its line break included, is read and sent', async () => {
    presented.length = 0;
    const token = 'a'.repeat(16 * 1024 - 1);
    const r = await get(['--token-file', write('token-16k', `${token}\n`)]);
    expect(r.code, r.stderr).toBe(0);
    expect(presented).toEqual([`Bearer ${token}`]);
  });

  // A FIFO's open waits for a writer: the CLI waited for ever on one no one writes to (a
  // `mkfifo` left behind, a secrets agent that died). It waits AGAIN_WAIT_MS at most.
  it('a token file that is a FIFO no one writes to is refused within the bound, naming the flag', async () => {
    const fifo = join(dir, 'token-fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const r = await get(['--token-file', fifo]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`error: --token-file: cannot read "${fifo}": it is a FIFO that gave nothing within ${AGAIN_WAIT_MS} ms`);
  }, 30_000);

  it('a token file that is a FIFO its writer opens later is read', async () => {
    presented.length = 0;
    const fifo = join(dir, 'token-fifo-late');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const r = await runProcess(
      '/bin/bash',
      [
        '-c',
        `(sleep 0.5; printf 'tok-fifo\\n' > "$3") & "$0" "$1" sandbox get sb-1 --admin "$2" --token-file "$3"; s=$?; wait; exit $s`,
        NODE,
        MAIN,
        admin,
        fifo,
      ],
      { env: { PATH: process.env['PATH'] ?? '' } },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(presented).toEqual(['Bearer tok-fifo']);
  });

  it('a token file that is a pipe is read to its end', async () => {
    presented.length = 0;
    // `--token-file <(vault read ...)`: the file is a pipe, not a regular file.
    const r = await runProcess('/bin/bash', ['-c', `"$0" "$1" sandbox get sb-1 --admin "$2" --token-file <(printf 'tok-pipe\\n')`, NODE, MAIN, admin], {
      env: { PATH: process.env['PATH'] ?? '' },
    });
    expect(r.code, r.stderr).toBe(0);
    expect(presented).toEqual(['Bearer tok-pipe']);
  });
});
