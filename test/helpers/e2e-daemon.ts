// What every namespace e2e suite does to run egressd: the repository's paths, the config written
// to the suite's temporary folder, and `egressd serve` started in one of the rig's namespaces.

import { join, resolve } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { watchDaemon, type DaemonProcess } from './daemon-process.ts';
import { action } from './log-line.ts';
import type { Rig, RigNamespace } from './netns-rig.ts';

export const ROOT = resolve(import.meta.dirname, '../..');
/** The Node binary the repository pins (node_modules/.bin/node). */
export const NODE = join(ROOT, 'node_modules/.bin/node');
export const MAIN = join(ROOT, 'src/main.ts');
/** The test CA (certs/README.md): every rig server's certificate chains to it. */
export const CA = join(ROOT, 'certs/ca.pem');
/** test/helpers/sandbox-client.ts: the scripted TLS/HTTP/TCP client the suites run in the sandbox. */
export const SANDBOX_CLIENT = join(ROOT, 'test/helpers/sandbox-client.ts');
/** The listener ports most suites redirect to (`rig.redirect`). */
export const E2E_PORTS = { http: 15080, tls: 15443, tcp: 15001 } as const;

export { writeConfig } from './config-file.ts';

/**
 * The three data paths a suite runs through (`describe.each`): the environment that picks each
 * (EGRESSD_DATA_PLANE) and what its start line (`data-plane`) then says.
 */
export const DATA_PATHS = [
  { name: 'the native set-up', env: {}, plane: { plane: 'native', setup: 'native' } },
  { name: 'the Node set-up with the native splice', env: { EGRESSD_DATA_PLANE: 'native' }, plane: { plane: 'native', setup: 'node' } },
  { name: 'the JavaScript path', env: { EGRESSD_DATA_PLANE: 'js' }, plane: { plane: 'js' } },
] as const;

/**
 * Starts `egressd serve --config <file>` in namespace `ns`, with `env` added to its environment
 * (e.g. EGRESSD_DATA_PLANE to pick a data path); resolves once it logs `started`.
 */
export function serveIn(rig: Rig, ns: RigNamespace, configFile: string, env?: Record<string, string>): Promise<DaemonProcess> {
  return watchDaemon(rig.spawnIn(ns, NODE, [MAIN, 'serve', '--config', configFile], env ? { env } : undefined));
}

/**
 * Within a `describe` block (one data path of a suite): egressd served in the router namespace
 * on `configFile()` with `env` before the block's tests, its start line (`data-plane`) checked
 * to say `plane`, and stopped with SIGTERM after them. `rig` and `configFile` are read when the
 * block starts, once the suite's own beforeAll has made them. Returns the running daemon.
 */
export function servedPerBlock(
  rig: () => Rig,
  configFile: () => string,
  env: Readonly<Record<string, string>>,
  plane: Readonly<Record<string, unknown>>,
): () => DaemonProcess {
  let daemon: DaemonProcess | undefined;
  beforeAll(async () => {
    daemon = await serveIn(rig(), 'router', configFile(), { ...env });
    expect(await daemon.waitFor((l) => action(l) === 'data-plane', 5000)).toMatchObject(plane);
  });
  afterAll(async () => {
    await daemon?.stop('SIGTERM');
  });
  return () => {
    if (!daemon) throw new Error('egressd is served only while the block runs');
    return daemon;
  };
}
