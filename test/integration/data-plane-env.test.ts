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

/** This process's environment without the data-plane variables (a run of the suite may set them), plus `env`. */
function withEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const e = { ...process.env };
  delete e['EGRESSD_DATA_PLANE'];
  delete e['EGRESSD_DATA_PLANE_THREADS'];
  delete e['EGRESSD_DATA_PLANE_HOST'];
  return { ...e, ...env };
}

async function planeLine(env: Record<string, string>): Promise<Record<string, unknown>> {
  const child = spawn(NODE, [MAIN, 'serve', '--config', config()], { stdio: ['ignore', 'pipe', 'pipe'], env: withEnv(env) });
  const d = await watchDaemon(child);
  onTestFinished(async () => {
    await d.stop('SIGKILL');
  });
  return d.waitFor((l) => action(l) === 'data-plane', 5000);
}

describe.skipIf(process.platform !== 'linux')('the data plane chosen at start-up', () => {
  it('runs the native loops by default, setting connections up in them too, as many as EGRESSD_DATA_PLANE_THREADS says', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE_THREADS: '3' })).toMatchObject({
      plane: 'native',
      setup: 'native',
      threads: 3,
      loopHost: 'event-loop',
      idleTimeMetrics: 'off',
    });
  });

  // Set but empty is unset, as most daemons take it (a manifest's `value: ""`, a compose file's
  // `${EGRESSD_DATA_PLANE:-}`): EGRESSD_DATA_PLANE="" stopped egressd from starting.
  it('takes each variable set but empty as unset: the default plane', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE: '', EGRESSD_DATA_PLANE_THREADS: '', EGRESSD_DATA_PLANE_HOST: '' })).toMatchObject({
      plane: 'native',
      setup: 'native',
      loopHost: 'event-loop',
    });
  });

  it('gives every loop a thread of its own with EGRESSD_DATA_PLANE_HOST=threads', async () => {
    expect(await planeLine({ EGRESSD_DATA_PLANE_HOST: 'threads' })).toMatchObject({
      plane: 'native',
      setup: 'native',
      loopHost: 'threads',
      idleTimeMetrics: 'on',
    });
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
    // Number() read these as 4, 4, 4 and 10 threads.
    ['EGRESSD_DATA_PLANE_THREADS', ' 4'],
    ['EGRESSD_DATA_PLANE_THREADS', '0x4'],
    ['EGRESSD_DATA_PLANE_THREADS', '4.0'],
    ['EGRESSD_DATA_PLANE_THREADS', '1e1'],
    ['EGRESSD_DATA_PLANE_HOST', 'main'],
  ])('refuses to start when %s is "%s", naming the variable', (name, value) => {
    const r = spawnSync(NODE, [MAIN, 'serve', '--config', config()], { env: withEnv({ [name]: value }), encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(name);
    expect(r.stderr).toContain(`"${value}"`);
  });
});

// The integration suites start their daemons in-process (test/helpers/loopback-daemon.ts): the
// variable must choose the data path there as it does for `egressd serve`, the data phase
// included, or `EGRESSD_DATA_PLANE=js npx vitest run ...` would test the native splice again.
describe.skipIf(process.platform !== 'linux')('the data plane of an in-process daemon', () => {
  // The idle time Node's event loop reported over the helper's 200 ms of sleep, by itself (below).
  let idleMs = -1;
  const carried = (env: Record<string, string>): Record<string, unknown> => {
    const r = spawnSync(NODE, [join(ROOT, 'test/helpers/in-process-plane-main.ts')], { env: withEnv(env), encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    idleMs = out['idleMs'] as number;
    delete out['idleMs'];
    return out;
  };

  it('carries a connection on the JavaScript path, set-up and data phase, with EGRESSD_DATA_PLANE=js', () => {
    expect(carried({ EGRESSD_DATA_PLANE: 'js' })).toEqual({
      setup: 'node',
      plane: { ok: false, reason: 'disabled by configuration' },
      handoffs: 0,
      echoed: 'ping',
    });
  });

  it('splices in the loops after a set-up on Node sockets with EGRESSD_DATA_PLANE=native, in as many loops as EGRESSD_DATA_PLANE_THREADS says', () => {
    expect(carried({ EGRESSD_DATA_PLANE: 'native', EGRESSD_DATA_PLANE_THREADS: '3' })).toEqual({
      setup: 'node',
      plane: { ok: true, threads: 3, hosted: true, idleTimeMetrics: false },
      handoffs: 1,
      echoed: 'ping',
    });
  });

  // One loop: the connection is set up (or handed over) and spliced on the loop the host runs —
  // Node's event loop by default, a thread of its own with EGRESSD_DATA_PLANE_HOST=threads.
  // A loop on Node's event loop turns libuv's idle-time metrics off (a zero-timeout epoll_pwait
  // before every wait, native/data_plane.c): the flag read back, and Node's own reading of idle
  // time, which stops, so the bit cleared is that flag. Threads leave them on.
  it.each([
    ['native', 'event-loop', true],
    ['native', 'threads', false],
    ['native-setup', 'event-loop', true],
    ['native-setup', 'threads', false],
  ])('carries a connection with EGRESSD_DATA_PLANE=%s on one loop hosted by %s', (mode, host, hosted) => {
    expect(carried({ EGRESSD_DATA_PLANE: mode, EGRESSD_DATA_PLANE_THREADS: '1', EGRESSD_DATA_PLANE_HOST: host })).toEqual({
      setup: mode === 'native' ? 'node' : 'native',
      plane: { ok: true, threads: 1, hosted, idleTimeMetrics: !hosted },
      handoffs: mode === 'native' ? 1 : 0,
      echoed: 'ping',
    });
    if (hosted) expect(idleMs).toBe(0);
    else expect(idleMs).toBeGreaterThan(100);
  });

  it('sets up and splices in the loops by default', () => {
    expect(carried({})).toMatchObject({ setup: 'native', plane: { ok: true, hosted: true }, echoed: 'ping' });
  });
});
