// What bin/egressd prints when whatever answers at --admin is not egressd's API, or is hostile:
// a proxy's HTML page, an error document whose strings carry terminal escape sequences, bidi
// overrides or line breaks, a body that is not UTF-8, strings far longer than a line. Each piece
// of the answer reaches the operator's terminal escaped, on one bounded line, and --json stays a
// JSON document any parser reads back to the same strings.

import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runProcess, type Run } from '../helpers/run-process.ts';

const BIN = join(resolve(import.meta.dirname, '../..'), 'bin/egressd');

/** Characters a terminal acts on: C0 and C1 controls, DEL, bidi and zero-width format characters. */
const ACTS_ON_TERMINAL = /[\p{Cc}\p{Cf}]/u;

/** The strings a hostile error document carries: CSI, OSC (window title) with BEL, CR, raw C1 CSI, RLO. */
const HOSTILE = 'clear\u001b[2J title\u001b]0;pwned\u0007 back\rOVERWRITE c1\u009b31m rlo\u202eevil\nnext line';

const ANSWERS: Record<string, { status: number; type?: string; body: string | Buffer; location?: string }> = {
  '/doc': {
    status: 400,
    type: 'application/json',
    body: JSON.stringify({ error: { code: 'invalid_policy\u001b[31m', message: HOSTILE, field: 'network.\u001b[1mmode\u202e' } }),
  },
  '/html': { status: 502, type: 'text/html', body: '<html>\r\n<body>\u001b[31mBad gateway\rOK</body>\n</html>' },
  '/binary': { status: 400, body: Buffer.from([0xff, 0xfe, 0x1b, 0x5b, 0x33, 0x31, 0x6d, 0x80, 0x9b, 0x41]) },
  '/long': {
    status: 400,
    type: 'application/json',
    body: JSON.stringify({ error: { code: 'c'.repeat(5000), message: 'm'.repeat(100_000), field: 'f'.repeat(5000) } }),
  },
  '/empty': { status: 503, body: '' },
  // Not egressd's API at all: a proxy sending to its login page, a captive portal's page, JSON without a verdict.
  '/redirect': { status: 302, type: 'text/html', body: '<a href="/login">login</a>', location: 'http://portal.example.test/login' },
  '/portal': { status: 200, type: 'text/html', body: '<html><body>Sign in to continue</body></html>' },
  '/no-verdict': { status: 200, type: 'application/json', body: '{"sandboxes":[],"next_cursor":null,"id":"sb-1"}' },
  // JSON egressd's API never sends: read leniently, a check exited 0 (allowed) on the first, and
  // the second was printed with U+FFFD in place of its byte.
  '/twice': {
    status: 200,
    type: 'application/json',
    body: '{"verdict":"refuse","reason":"denied","sandboxes":[],"next_cursor":null,"id":"sb-1","verdict":"allow"}',
  },
  '/latin1': {
    status: 200,
    type: 'application/json',
    body: Buffer.concat([Buffer.from('{"verdict":"allow","sandboxes":[],"next_cursor":null,"id":"b'), Buffer.from([0xfc]), Buffer.from('"}')]),
  },
};

describe('an answer the CLI cannot trust', () => {
  const servers: Server[] = [];
  const base: Record<string, string> = {};
  beforeAll(async () => {
    // One server a kind of answer, answering every request with it.
    for (const [name, answer] of Object.entries(ANSWERS)) {
      const server = createServer((req, res) => {
        req
          .resume()
          .on('end', () =>
            res
              .writeHead(answer.status, { ...(answer.type ? { 'content-type': answer.type } : {}), ...(answer.location ? { location: answer.location } : {}) })
              .end(answer.body),
          );
      });
      servers.push(server);
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      base[name] = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    }
  });
  afterAll(() => {
    for (const s of servers) s.close();
  });

  const egressd = (args: readonly string[], admin: string): Promise<Run> =>
    runProcess(BIN, [...args, '--admin', admin], { env: { PATH: process.env['PATH'] ?? '', EGRESSD_ADMIN_TOKEN: 'test-token' }, timeoutMs: 30_000 });

  const COMMANDS = [
    ['sandbox', 'get', 'sb-1'],
    ['sandbox', 'ls'],
    ['org', 'put', 'o-1', '--tier', '2'],
    ['check', '--sandbox', 'sb-1', '--ip', '192.0.2.1', '--port', '443'],
  ];

  it.each(Object.keys(ANSWERS).filter((p) => p !== '/no-verdict' && p !== '/twice' && p !== '/latin1'))(
    '%s: one line on stderr, nothing a terminal acts on but its newline, at most a few hundred characters',
    async (path) => {
      for (const args of COMMANDS) {
        const r = await egressd(args, base[path]!);
        expect(r.stdout, args.join(' ')).toBe('');
        expect(r.stderr, args.join(' ')).toMatch(/^error: [^\n]+\n$/);
        expect(ACTS_ON_TERMINAL.test(r.stderr.slice(0, -1)), `${args.join(' ')}: ${JSON.stringify(r.stderr)}`).toBe(false);
        expect(r.stderr.length, args.join(' ')).toBeLessThan(1200);
      }
    },
    120_000,
  );

  it.each(['/redirect', '/portal'])(
    '%s is not done: every command exits 3 (the API unusable), nothing on stdout',
    async (path) => {
      for (const args of [...COMMANDS, ['sandbox', 'rm', 'sb-1'], ['sandbox', 'put', 'sb-1', '--sources', '192.0.2.7']]) {
        const r = await egressd(args, base[path]!);
        expect({ code: r.code, stdout: r.stdout }, `${args.join(' ')}: ${r.stderr}`).toEqual({ code: 3, stdout: '' });
        expect(r.stderr, args.join(' ')).toMatch(
          path === '/redirect' ? / answered 302 \(to http:\/\/portal\.example\.test\/login\), / : / answered 200 with something that is not JSON: /,
        );
      }
    },
    120_000,
  );

  it('a check answered with JSON that holds no verdict exits 3, not the 1 of a refusal', async () => {
    const r = await egressd(COMMANDS[3]!, base['/no-verdict']!);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 3, stdout: '' });
    expect(r.stderr).toMatch(/answered 200 with no verdict: /);
    expect((await egressd(COMMANDS[1]!, base['/no-verdict']!)).code, 'sandbox ls: its list is there').toBe(0);
  });

  it.each([
    ['/twice', / answered 200 with JSON that gives the key "verdict" more than once, which egressd's API never sends$/],
    ['/latin1', / answered 200 with an answer that is not UTF-8 \(byte 0xFC at offset 60\), which egressd's API never sends$/],
  ])(
    '%s is no answer of the API: every command exits 3, nothing on stdout',
    async (path, said) => {
      for (const args of COMMANDS) {
        const r = await egressd(args, base[path]!);
        expect({ code: r.code, stdout: r.stdout }, `${args.join(' ')}: ${r.stderr}`).toEqual({ code: 3, stdout: '' });
        expect(r.stderr.trimEnd(), args.join(' ')).toMatch(said);
      }
    },
    120_000,
  );

  it("shows the hostile strings' characters as escapes the reader can see", async () => {
    const r = await egressd(['sandbox', 'get', 'sb-1'], base['/doc']!);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `error: sandbox get "sb-1": the admin API at ${base['/doc']} answered 400 invalid_policy\\x1B[31m (field "network.\\x1B[1mmode\\u202E"): ` +
        'clear\\x1B[2J title\\x1B]0;pwned\\x07 back OVERWRITE c1\\x9B31m rlo\\u202Eevil next line\n',
    );
  });

  it('--json: the error document on one line, every string as the API sent it once parsed, nothing a terminal acts on', async () => {
    for (const args of COMMANDS) {
      const r = await egressd([...args, '--json'], base['/doc']!);
      expect(r.code, args.join(' ')).toBe(args[0] === 'check' ? 2 : 1);
      expect(r.stderr, args.join(' ')).toMatch(/^[^\n]+\n$/);
      expect(ACTS_ON_TERMINAL.test(r.stderr.slice(0, -1)), `${args.join(' ')}: ${JSON.stringify(r.stderr)}`).toBe(false);
      expect(JSON.parse(r.stderr)).toEqual(JSON.parse(ANSWERS['/doc']!.body as string));
    }
  }, 120_000);
});
