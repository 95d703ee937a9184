// A real egressd process (node src/main.ts serve) with its admin API on a loopback port and its
// state in a fresh folder, for the tests that hold the API to its contract over real HTTP.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { loopbackDocument, writeConfig } from './config-file.ts';
import { watchDaemon, type DaemonProcess } from './daemon-process.ts';
import { action } from './log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
export const API_TOKEN = 'api-test-token';

export interface ApiDaemon {
  readonly d: DaemonProcess;
  /** `http://127.0.0.1:port` of the admin listener. */
  readonly admin: string;
  /** Stops the process (SIGTERM, then SIGKILL) and removes its folder. */
  stop(): Promise<void>;
}

/**
 * Starts egressd with `doc` over a loopback-only config; `state: true` keeps its state in SQLite
 * in a folder of its own (under /dev/shm where there is one: fsync there is free, and what is
 * tested is the API, not the disk). `main` runs another entry point, e.g. the compiled dist/main.js.
 */
export async function startApiDaemon(doc: Record<string, unknown> = {}, opts: { state?: boolean; main?: string } = {}): Promise<ApiDaemon> {
  const dir = mkdtempSync(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'egressd-api-'));
  const config = writeConfig(
    dir,
    loopbackDocument({ shutdown: { drainMs: 0 }, ...(opts.state === true ? { state: { path: join(dir, 'state.db') } } : {}), ...doc }, { token: API_TOKEN }),
  );
  const d = await watchDaemon(spawn(NODE, [opts.main ?? join(ROOT, 'src/main.ts'), 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] }));
  return {
    d,
    admin: `http://127.0.0.1:${d.lines.find((l) => action(l) === 'started')!['adminPort']}`,
    stop: async () => {
      await d.stop('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
