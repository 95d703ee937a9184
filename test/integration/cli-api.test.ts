// The command line against a real admin API on loopback: every command's --help, and the exit
// codes that tell the outcomes apart (0 allowed/done, 1 refused, 2 usage, 3 API unusable), and
// README's "First steps" commands run as written.

import { runProcess, type Run } from '../helpers/run-process.ts';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const BIN = join(ROOT, 'bin/egressd');

/** bin/egressd with a clean environment (PATH and `env`), as an operator's shell would run it. */
function egressd(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return runProcess(BIN, args, { env: { PATH: process.env['PATH'] ?? '', ...env }, timeoutMs: 30_000 });
}

const COMMANDS = [
  ['serve'],
  ['validate'],
  ['inspect'],
  ['decide'],
  ['iptables'],
  ['check'],
  ['sandbox'],
  ['sandbox', 'put'],
  ['sandbox', 'get'],
  ['sandbox', 'rm'],
  ['sandbox', 'ls'],
  ['sandbox', 'network'],
  ['sandbox', 'effective'],
  ['org'],
  ['org', 'put'],
  ['org', 'get'],
  ['org', 'rm'],
  ['org', 'ls'],
] as const;

describe('egressd --help', () => {
  it.each(COMMANDS.map((c) => [c.join(' '), c] as const))('"egressd %s --help" prints its own usage and exits 0', async (_, words) => {
    const r = await egressd([...words, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: egressd ${words.join(' ')} `));
    expect(r.stderr).toBe('');
  });

  it('the API commands take the same --admin and --token-file flags', async () => {
    for (const words of [['check'], ['sandbox', 'put']]) {
      const r = await egressd([...words, '--help']);
      expect(r.stdout, words.join(' ')).toContain('--admin <url>');
      expect(r.stdout, words.join(' ')).toContain('--token-file <file>');
    }
  }, 120_000);
});

describe('egressd check exit codes against a running daemon', () => {
  let d: LoopbackDaemon;
  let failing: Server;
  let failingUrl = '';
  let env: Record<string, string>;
  beforeAll(async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        sandboxes: [{ id: 'sb-cli', sources: ['127.0.0.31'], network: { mode: 'block-all', egress: { allowed_domains: ['ok.example.test'] } } }],
      }),
    );
    env = { EGRESSD_ADMIN_URL: d.adminUrl, EGRESSD_ADMIN_TOKEN: 'test-token' };
    // An API that fails: every request answered 500.
    failing = createServer((_q, res) => res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":{"code":"internal"}}'));
    failing.listen(0, '127.0.0.1');
    await once(failing, 'listening');
    failingUrl = `http://127.0.0.1:${(failing.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await d.stop();
    failing.close();
  });

  const check = (host: string, extra: string[] = [], e = env) =>
    egressd(['check', '--sandbox', 'sb-cli', '--host', host, '--ip', '104.16.24.34', '--port', '443', ...extra], e);

  it('exits 0 on an allowed connection, printing the verdict', async () => {
    const r = await check('ok.example.test');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'allow' });
  });

  it('exits 1 on a refused connection', async () => {
    const r = await check('other.example.test');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'refuse' });
  });

  // A Novita domain reads the Host on 80 and the SNI on 443: --via asks for the name sent one way.
  it('asks for a name sent as --via says, and exits 2 on a --via other than tls or http before calling the API', async () => {
    const put = await egressd(
      ['sandbox', 'put', 'sb-via', '--sources', '127.0.0.36', '--network', '{"network":{"denyOut":["0.0.0.0/0"],"allowOut":["ok.example.test"]}}'],
      env,
    );
    expect(put.code, put.stderr).toBe(0);
    const at = (...extra: string[]) =>
      egressd(['check', '--sandbox', 'sb-via', '--host', 'ok.example.test', '--ip', '104.16.24.34', '--port', '443', ...extra], env);
    const bySni = await at('--via', 'tls');
    expect(bySni.code).toBe(0);
    expect(JSON.parse(bySni.stdout)).toMatchObject({ verdict: 'allow', via: 'tls' });
    const byHost = await at('--via', 'http');
    expect(byHost.code).toBe(1);
    expect(JSON.parse(byHost.stdout)).toMatchObject({ verdict: 'refuse', reason: 'default-block', via: 'http' });
    const bad = await at('--via', 'quic');
    expect({ code: bad.code, stdout: bad.stdout }).toEqual({ code: 2, stdout: '' });
    expect(bad.stderr).toContain('Expected tls (the name is a TLS SNI) or http (an HTTP Host), got "quic"');
  });

  it('exits 4 on a connection the policy refuses and report-only lets through (sandbox put --report-only)', async () => {
    const put = await egressd(
      [
        'sandbox',
        'put',
        'sb-ro',
        '--sources',
        '127.0.0.34',
        '--network',
        '{"mode":"block-all","egress":{"allowed_domains":["ok.example.test"]}}',
        '--report-only',
      ],
      env,
    );
    expect(put.code, put.stderr).toBe(0);
    expect(JSON.parse(put.stdout)).toMatchObject({ id: 'sb-ro', reportOnly: true });
    const r = await egressd(['check', '--sandbox', 'sb-ro', '--host', 'other.example.test', '--ip', '104.16.24.34', '--port', '443'], env);
    expect(r.code).toBe(4);
    expect(JSON.parse(r.stdout)).toMatchObject({ verdict: 'would-refuse', rule: 'mode "block-all"', report_only: { enabled: true, levels: ['sandbox'] } });
    expect((await egressd(['check', '--sandbox', 'sb-ro', '--host', 'ok.example.test', '--ip', '104.16.24.34', '--port', '443'], env)).code).toBe(0);
    const org = await egressd(['org', 'put', 'ro-org', '--tier', '1', '--report-only'], env);
    expect(JSON.parse(org.stdout)).toMatchObject({ id: 'ro-org', reportOnly: true });
  }, 120_000);

  it('exits 2 on a usage error, before calling the API', async () => {
    expect((await egressd(['check', '--sandbox', 'sb-cli', '--ip', '104.16.24.34'], env)).code).toBe(2);
    expect((await check('ok.example.test', ['--port', 'https'])).code).toBe(2);
    expect((await egressd(['check', '--sandbox', 'sb-cli', '--ip', '104.16.24.34', '--port', '443', '--bogus'], env)).code).toBe(2);
    // A key given twice would reach the API collapsed to its last value, which the API cannot see.
    const dup = await egressd(['sandbox', 'put', 'sb-dup', '--sources', '127.0.0.35', '--network', '{"networkBlockAll":true,"networkBlockAll":false}'], env);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toContain('--network gives the key "networkBlockAll" more than once');
    expect((await egressd(['sandbox', 'get', 'sb-dup'], env)).code).toBe(1);
  });

  it('exits 3 when the API is unreachable, failing or refuses the token', async () => {
    const down = await check('ok.example.test', [], { ...env, EGRESSD_ADMIN_URL: 'http://127.0.0.1:1' });
    expect(down.code).toBe(3);
    expect(down.stderr).toMatch(/^error: check --sandbox "sb-cli": cannot reach the admin API at http:\/\/127\.0\.0\.1:1: .*\n$/);
    const broken = await check('ok.example.test', ['--admin', failingUrl]);
    expect(broken.code).toBe(3);
    expect(broken.stderr).toBe(`error: check --sandbox "sb-cli": the admin API at ${failingUrl} answered 500 internal\n`);
    const unauthorized = await check('ok.example.test', [], { ...env, EGRESSD_ADMIN_TOKEN: 'wrong' });
    expect(unauthorized.code).toBe(3);
    expect(unauthorized.stderr).toMatch(
      /^error: check --sandbox "sb-cli": the admin API at \S+ answered 401 unauthorized: Missing or wrong bearer token; the token was refused: [^\n]*\n$/,
    );
    const { EGRESSD_ADMIN_TOKEN: _, ...noToken } = env;
    const tokenless = await check('ok.example.test', [], noToken);
    expect(tokenless.code).toBe(3);
    expect(tokenless.stderr).toContain('no token was sent: set EGRESSD_ADMIN_TOKEN or pass --token-file FILE');
  }, 120_000);

  it('exits 2 on an admin URL that is not one, naming the flag and the value, before calling anything', async () => {
    for (const url of ['127.0.0.1:9901', 'ftp://127.0.0.1:9901']) {
      const r = await check('ok.example.test', [], { ...env, EGRESSD_ADMIN_URL: url });
      expect(r.code, url).toBe(2);
      expect(r.stderr).toBe(`--admin (or EGRESSD_ADMIN_URL): expected a URL such as http://127.0.0.1:9901, got "${url}"\n`);
    }
  });

  it("exits 1 when the API refuses a change (an invalid body), and 2 when it refuses a check (an unknown sandbox): check's 1 is a refusal", async () => {
    const nope = await egressd(['check', '--sandbox', 'nope', '--ip', '104.16.24.34', '--port', '443'], env);
    expect({ code: nope.code, stdout: nope.stdout }).toEqual({ code: 2, stdout: '' });
    expect(nope.stderr).toBe(`error: check --sandbox "nope": the admin API at ${d.adminUrl} answered 404 not_found: Sandbox "nope" does not exist\n`);
    const bad = await egressd(['sandbox', 'put', 'sb-x', '--sources', '127.0.0.32', '--network', '{"mode":"sometimes"}'], env);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(
      new RegExp(
        `^error: sandbox put "sb-x": the admin API at ${d.adminUrl} answered 400 invalid_policy \\(field "network\\.mode"\\): network\\.mode: [^\\n]+\\n$`,
      ),
    );
  });

  it('prints every refusal the API answers as one line on stderr naming the command, the status, the code and the field, with the documented exit code', async () => {
    const cases: [string[], number, RegExp][] = [
      [['sandbox', 'get', 'sb-none'], 1, /^error: sandbox get "sb-none": the admin API at \S+ answered 404 not_found: Sandbox "sb-none" does not exist\n$/],
      [['sandbox', 'rm', 'sb-none'], 1, /^error: sandbox rm "sb-none": the admin API at \S+ answered 404 not_found: /],
      [['sandbox', 'effective', 'sb-none'], 1, /^error: sandbox effective "sb-none": the admin API at \S+ answered 404 not_found: /],
      [['sandbox', 'network', 'sb-none'], 1, /^error: sandbox network "sb-none": the admin API at \S+ answered 404 not_found: /],
      [
        ['sandbox', 'network', 'sb-cli', '--network', '{"networkBlockAll":true}'],
        1,
        /^error: sandbox network "sb-cli": the admin API at \S+ answered 409 conflict: /,
      ],
      [
        ['sandbox', 'put', 'sb-z', '--sources', '127.0.0.31'],
        1,
        /^error: sandbox put "sb-z": the admin API at \S+ answered 409 conflict \(field "sources\[0\]"\): Source "127\.0\.0\.31" belongs to sandbox "sb-cli"\n$/,
      ],
      [
        ['sandbox', 'put', 'sb-z', '--sources', 'nowhere'],
        1,
        /^error: sandbox put "sb-z": the admin API at \S+ answered 400 invalid_request \(field "sources\[0\]"\): sources\[0\]: /,
      ],
      [['org', 'get', 'org-none'], 1, /^error: org get "org-none": the admin API at \S+ answered 404 not_found: Organization "org-none" does not exist\n$/],
      [['org', 'rm', 'org-none'], 1, /^error: org rm "org-none": the admin API at \S+ answered 404 not_found: /],
      [
        ['org', 'put', 'org-y', '--network', '{"mode":"sometimes"}'],
        1,
        /^error: org put "org-y": the admin API at \S+ answered 400 invalid_policy \(field "network\.mode"\): /,
      ],
    ];
    for (const [args, code, line] of cases) {
      const r = await egressd(args, env);
      expect({ code: r.code, stdout: r.stdout }, args.join(' ')).toEqual({ code, stdout: '' });
      expect(r.stderr, args.join(' ')).toMatch(line);
      expect(r.stderr.split('\n'), args.join(' ')).toHaveLength(2);
    }
  }, 120_000);

  it('--json prints the error document the API gave, as it came, with the same exit code', async () => {
    const r = await egressd(['sandbox', 'get', 'sb-none', '--json'], env);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stderr)).toEqual({ error: { code: 'not_found', message: 'Sandbox "sb-none" does not exist', field: null } });
    const c = await egressd(['check', '--sandbox', 'nope', '--ip', '104.16.24.34', '--port', '443', '--json'], env);
    expect(c.code).toBe(2);
    expect(JSON.parse(c.stderr).error).toMatchObject({ code: 'not_found' });
  });

  it('answers an id no sandbox or organization can have with the reason, not "No route for ..."', async () => {
    const cases = [
      [['sandbox', 'get', 'bad id'], 'Sandbox id "bad id" is not a valid id: '],
      [['sandbox', 'put', 'x!', '--sources', '127.0.0.34'], 'Sandbox id "x!" is not a valid id: '],
      [['sandbox', 'effective', '_x'], 'Sandbox id "_x" is not a valid id: '],
      [['org', 'get', 'Ac!'], 'Organization id "Ac!" is not a valid id: '],
    ] as const;
    for (const [args, message] of cases) {
      const r = await egressd([...args, '--json'], env);
      expect(r.code, args.join(' ')).toBe(1);
      const e = (JSON.parse(r.stderr) as { error: { code: string; message: string } }).error;
      expect(e.code).toBe('not_found');
      expect(e.message).toContain(message);
      expect(e.message).toContain('starting with a letter or digit');
    }
  }, 120_000);

  it('runs the sandbox and org commands end to end', async () => {
    expect((await egressd(['org', 'put', 'acme', '--tier', '3'], env)).code).toBe(0);
    const put = await egressd(['sandbox', 'put', 'sb-y', '--sources', '127.0.0.33', '--org', 'acme', '--network', '{"domainAllowList":"pypi.test"}'], env);
    expect(put.code).toBe(0);
    expect(JSON.parse(put.stdout)).toMatchObject({ id: 'sb-y', org: 'acme' });
    expect(JSON.parse((await egressd(['sandbox', 'get', 'sb-y'], env)).stdout).network.egress.allowed_domains).toEqual(['pypi.test']);
    expect((await egressd(['sandbox', 'rm', 'sb-y'], env)).code).toBe(0);
    expect((await egressd(['sandbox', 'get', 'sb-y'], env)).code).toBe(1);
    expect((await egressd(['org', 'put', 'acme', '--tier', '9'], env)).code).toBe(2);
  }, 120_000);
});

/** A command line's words, as a POSIX shell splits them: single quotes only, which is all README uses. */
function shellWords(line: string): string[] {
  const words = [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
  expect(line, 'only single quotes').not.toMatch(/["\\$`](?=(?:[^']*'[^']*')*[^']*$)/);
  return words;
}

describe('README.md "First steps", run as written', () => {
  const md = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const at = md.indexOf('## First steps');
  const block = /```sh\n([\s\S]*?)```/.exec(md.slice(at))![1]!;
  // Each `./bin/egressd` line, its expected exit code from its comment ("exit 1: ..."), 0 when none.
  const steps = block
    .split('\n')
    .filter((l) => l.startsWith('./bin/egressd '))
    .map((l) => {
      const [command = '', comment = ''] = l.split(/\s+#\s+/, 2);
      return { command, args: shellWords(command).slice(1), exit: Number(/^exit (\d)/.exec(comment)?.[1] ?? 0) };
    });
  let d: LoopbackDaemon;
  let env: Record<string, string>;
  beforeAll(async () => {
    d = await startLoopbackDaemon(loopbackConfig({}));
    env = { EGRESSD_ADMIN_URL: d.adminUrl, EGRESSD_ADMIN_TOKEN: 'test-token' };
  });
  afterAll(async () => {
    await d.stop();
  });

  it('has a sandbox put in each dialect, a check that allows and one that refuses', () => {
    expect(at).toBeGreaterThan(0);
    expect(steps.filter((s) => s.args[0] === 'sandbox' && s.args[1] === 'put')).toHaveLength(3);
    expect(steps.filter((s) => s.args[0] === 'check').map((s) => s.exit)).toEqual([0, 1]);
  });

  it('every command exits as its comment says, in order, against a running daemon', async () => {
    for (const step of steps) {
      const r = await egressd(step.args, env);
      expect(r.code, `${step.command}\n${r.stderr}`).toBe(step.exit);
      expect(() => JSON.parse(r.stdout), step.command).not.toThrow();
    }
  }, 120_000);
});
