// `egressd decide --config` gives the verdict the daemon gives: the same config file, the same
// policy, and each connection asked both ways, the daemon through POST /api/v1/check and the CLI
// offline. The cases cover what the CLI used to miss: the operator's overlays, report-only mode
// (the config's and the sandbox's own), and raw DNS to the sandbox DNS servers, which a daemon
// answering port 53 itself refuses.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';
import { loopbackDocument, writeConfig } from '../helpers/config-file.ts';
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
const CASES: [string | null, string, number][] = [
  ['api.example.com', '140.82.112.5', 443],
  // Novita matches domains on 80 and 443 only: both ways refuse the allowed name on 22.
  ['api.example.com', '140.82.112.5', 22],
  ['other.example.com', '140.82.112.5', 443],
  ['api.platform.test', '140.82.112.5', 443],
  ['api.platform.test', '140.82.112.5', 22],
  ['paste.example', '140.82.112.5', 443],
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

  it.each(CASES)('host %s, %s port %i', async (host, ip, port) => {
    const daemon = await adminCall(a.admin, 'POST', '/api/v1/check', { sandbox: 'sbx-1', ip, port, ...(host !== null ? { host } : {}) }, bearer(API_TOKEN));
    expect(daemon.status).toBe(200);
    const args = ['decide', '--policy', policyFile, '--config', configFile, '--ip', ip, '--port', String(port), ...(host !== null ? ['--host', host] : [])];
    const cli = await runProcess(NODE, [MAIN, ...args, ...(sandboxReportOnly ? ['--report-only'] : [])]);
    expect(cli.stderr).toBe('');
    const { verdict, reason, rule, layer, report_only } = daemon.body as Record<string, unknown>;
    expect(JSON.parse(cli.stdout)).toEqual({ verdict, reason, rule, layer, report_only });
    expect(cli.code).toBe(verdict === 'allow' ? 0 : verdict === 'would-refuse' ? 4 : 1);
  });
});
