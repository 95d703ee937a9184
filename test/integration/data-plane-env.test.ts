// The data plane as an operator chooses it: the native loops by default (set-up and splice),
// the set-up on Node's sockets with EGRESSD_DATA_PLANE=native, the JavaScript path with js,
// and a clear refusal to start on a bad value. The start line says which plane runs and why, so
// a silent fallback is never mistaken for the native one.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { watchDaemon } from '../helpers/daemon-process.ts';
import { action } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const MAIN = join(ROOT, 'src/main.ts');

function config(): string {
  const dir = mkdtempSync(join(tmpdir(), 'egressd-plane-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'egressd.json');
  writeFileSync(
    file,
    JSON.stringify({
      listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0', dns: '127.0.0.1:0' },
      admin: { listen: '127.0.0.1:0' },
    }),
  );
  return file;
}

async function planeLine(env: Record<string, string>): Promise<Record<string, unknown>> {
  const child = spawn(NODE, [MAIN, 'serve', '--config', config()], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const d = await watchDaemon(child);
  onTestFinished(async () => {
    await d.stop('SIGKILL');
  });
  return d.waitFor((l) => action(l) === 'data-plane', 5000);
}

describe.skipIf(process.platform !== 'linux')('the data plane chosen at start-up', () => {
  it('runs the native loops by default, setting connections up in them too, as many as EGRESSD_DATA_PLANE_THREADS says', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE_THREADS: '3' })).toMatchObject({ plane: 'native', setup: 'native', threads: 3 });
  });

  it('sets connections up on Node sockets with EGRESSD_DATA_PLANE=native, splicing in the loops', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE: 'native' })).toMatchObject({ plane: 'native', setup: 'node' });
  });

  it('keeps the data phase in JavaScript with EGRESSD_DATA_PLANE=js, and says why', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE: 'js' })).toMatchObject({ plane: 'js', reason: 'disabled by configuration' });
  });

  it.each([
    ['EGRESSD_DATA_PLANE', 'kernel'],
    ['EGRESSD_DATA_PLANE_THREADS', '0'],
    ['EGRESSD_DATA_PLANE_THREADS', 'two'],
  ])('refuses to start when %s is "%s", naming the variable', (name, value) => {
    const r = spawnSync(NODE, [MAIN, 'serve', '--config', config()], { env: { ...process.env, [name]: value }, encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(name);
    expect(r.stderr).toContain(`"${value}"`);
  });
});
