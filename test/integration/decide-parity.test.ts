// `egressd decide --config` gives the verdict the daemon gives: the same config file, the same
// policy, and each connection asked both ways, the daemon through POST /api/v1/check and the CLI
// offline. The cases cover what the CLI used to miss: the operator's overlays, report-only mode
// (the config's and the sandbox's own), raw DNS to the sandbox DNS servers, which a daemon
// answering port 53 itself refuses, and how the name is sent (`via`: a Novita domain matches the
// Host on 80 and the SNI on 443 only). Then the check against the data path itself: real TLS and
// HTTP clients through the daemon's listener, each answered as the check answers their facts.

import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../helpers/loopback-daemon.ts';
import { action, field } from '../helpers/log-line.ts';
import { runProcess } from '../helpers/run-process.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const MAIN = join(ROOT, 'src/main.ts');

const OPERATOR = {
  overlays: {
    alwaysDeny: [{ name: 'exfil', domains: ['paste.example'] }],
    alwaysAllow: [{ name: 'platform-api', domains: ['api.platform.test'], ports: [443] }],
  },
};
const POLICY = { network: { denyOut: ['0.0.0.0/0'], allowOut: ['api.example.com'] } };
const CASES: [string | null, string, number, ('tls' | 'http')?][] = [
  ['api.example.com', '140.82.112.5', 443],
  // Novita matches domains on 80 and 443 only: both ways refuse the allowed name on 22.
  ['api.example.com', '140.82.112.5', 22],
  // ... and reads the SNI on 443 and the Host on 80: a name sent the other way is refused.
  ['api.example.com', '140.82.112.5', 443, 'tls'],
  ['api.example.com', '140.82.112.5', 443, 'http'],
  ['api.example.com', '140.82.112.5', 80, 'http'],
  ['api.example.com', '140.82.112.5', 80, 'tls'],
  ['other.example.com', '140.82.112.5', 443],
  ['api.platform.test', '140.82.112.5', 443],
  ['api.platform.test', '140.82.112.5', 443, 'http'],
  ['api.platform.test', '140.82.112.5', 22],
  ['paste.example', '140.82.112.5', 443],
  ['paste.example', '140.82.112.5', 443, 'http'],
  [null, '8.8.8.8', 53],
  [null, '10.1.2.3', 443],
];

describe.each([
  { name: 'enforced', config: {}, sandboxReportOnly: false },
  { name: "the sandbox's own report-only", config: {}, sandboxReportOnly: true },
  { name: "the config's report-only", config: { reportOnly: true }, sandboxReportOnly: false },
])('decide and the daemon agree: $name', ({ config, sandboxReportOnly }) => {
  let a: ApiDaemon;
  let dir: string;
  let configFile: string;
  let policyFile: string;
  beforeAll(async () => {
    a = await startApiDaemon({ ...OPERATOR, ...config });
    dir = mkdtempSync(join(tmpdir(), 'egressd-parity-'));
    configFile = writeConfig(dir, loopbackDocument({ ...OPERATOR, ...config }));
    policyFile = join(dir, 'policy.json');
    writeFileSync(policyFile, JSON.stringify(POLICY));
    const put = await adminCall(
      a.admin,
      'PUT',
      '/api/v1/sandboxes/sbx-1',
      { sources: ['198.18.0.2'], network: POLICY, ...(sandboxReportOnly ? { reportOnly: true } : {}) },
      bearer(API_TOKEN),
    );
    expect(put.status, JSON.stringify(put.body)).toBe(201);
  }, 60_000);
  afterAll(async () => {
    await a?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it.each(CASES)('host %s, %s port %i, via %s', async (host, ip, port, via) => {
    const viaField = via !== undefined ? { via } : {};
    const daemon = await adminCall(
      a.admin,
      'POST',
      '/api/v1/check',
      { sandbox: 'sbx-1', ip, port, ...(host !== null ? { host } : {}), ...viaField },
      bearer(API_TOKEN),
    );
    expect(daemon.status).toBe(200);
    expect(daemon.body).toMatchObject({ host, via: via ?? null });
    const args = [
      'decide',
      '--policy',
      policyFile,
      '--config',
      configFile,
      '--ip',
      ip,
      '--port',
      String(port),
      ...(host !== null ? ['--host', host] : []),
      ...(via !== undefined ? ['--via', via] : []),
    ];
    const cli = await runProcess(NODE, [MAIN, ...args, ...(sandboxReportOnly ? ['--report-only'] : [])]);
    expect(cli.stderr).toBe('');
    const { verdict, reason, rule, layer, report_only } = daemon.body as Record<string, unknown>;
    expect(JSON.parse(cli.stdout)).toEqual({ verdict, reason, rule, layer, report_only });
    expect(cli.code).toBe(verdict === 'allow' ? 0 : verdict === 'would-refuse' ? 4 : 1);
  });
});

// The data path and the check, on the same daemon: each connection's log line carries the
// verdict, reason and rule that POST /api/v1/check answers for its facts (the name, the address,
// the port, and how the name came). Upstream servers listen on 80 and 443 of a loopback address
// of this file's own, which needs root: without it this part is skipped, saying why.
const UPSTREAM = '127.0.0.233';
const SOURCE = '127.0.0.34';
const asRoot = process.getuid?.() === 0;
if (!asRoot) console.warn('decide-parity: the data-path part skipped, it binds ports 80 and 443 on a loopback address of its own (run as root)');

describe.skipIf(!asRoot)('the data path and the check agree, however the name is sent', () => {
  let d: LoopbackDaemon;
  const servers: Server[] = [];
  beforeAll(async () => {
    for (const port of [80, 443]) {
      const server = createServer((c) => {
        c.on('error', () => {});
        c.end();
      });
      server.listen(port, UPSTREAM);
      await once(server, 'listening');
      servers.push(server);
    }
    d = await startLoopbackDaemon(
      loopbackConfig({
        // The address the client was going to, as the check is asked for it: no lookup.
        upstream: { dial: 'original' },
        sandboxes: [{ id: 'sb-v', sources: [SOURCE], network: { network: { denyOut: ['0.0.0.0/0'], allowOut: ['api.parity.test'] } } }],
      }),
    );
  });
  afterAll(async () => {
    await d?.stop();
    for (const s of servers) s.close();
  });

  /** One connection to UPSTREAM:port sending `name` as `via` says (or nothing), and its log line. */
  const connection = async (name: string | null, port: number, via: 'tls' | 'http') => {
    d.route(SOURCE, UPSTREAM, port);
    const seen = d.logs.length;
    const raw = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: SOURCE });
    raw.on('error', () => {});
    let tls: ReturnType<typeof tlsConnect> | null = null;
    if (name !== null && via === 'tls') {
      tls = tlsConnect({ socket: raw, servername: name, rejectUnauthorized: false });
      tls.on('error', () => {});
    } else if (name !== null) raw.write(`GET / HTTP/1.1\r\nHost: ${name}\r\nConnection: close\r\n\r\n`);
    try {
      return await d.waitForLog((l) => d.logs.indexOf(l) >= seen && action(l) === 'connection' && field(l, 'source.ip') === SOURCE);
    } finally {
      tls?.destroy();
      raw.destroy();
    }
  };

  it.each([
    ['api.parity.test', 443, 'tls'],
    ['api.parity.test', 443, 'http'],
    ['api.parity.test', 80, 'http'],
    ['api.parity.test', 80, 'tls'],
    ['other.parity.test', 443, 'tls'],
    [null, 443, 'tls'],
  ] as const)('host %s on port %i sent by %s', async (host, port, via) => {
    const line = await connection(host, port, via);
    const check = await adminCall(d.adminUrl, 'POST', '/api/v1/check', { sandbox: 'sb-v', ip: UPSTREAM, port, ...(host !== null ? { host, via } : {}) });
    expect(check.status).toBe(200);
    const { verdict, reason, rule } = check.body as Record<string, unknown>;
    expect({ verdict: field(line, 'egressd.verdict'), reason: field(line, 'event.reason'), rule: field(line, 'rule.name') ?? null }).toEqual({
      verdict,
      reason,
      rule,
    });
  });
});
