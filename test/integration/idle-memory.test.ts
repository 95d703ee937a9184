// Idle memory (issue 12): egressd as npm ci ships it (dist/) holds at most 60 MiB of RSS once
// started, and the start-up release (src/limits/overload.ts releaseStartupMemory: the
// memory-reducing collection, malloc_trim, the node executable's start-up pages unmapped)
// leaves a daemon that still answers: the admin API and /metrics, which run code paths first
// touched after the release.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const MiB = 1024 * 1024;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1]) * 1024;
}

describe.runIf(process.platform === 'linux')('idle memory', () => {
  let a: ApiDaemon | undefined;
  afterEach(async () => {
    await a?.stop();
    a = undefined;
  });

  it('holds at most 60 MiB of RSS once started, and still serves the API and /metrics', async () => {
    // dist/ is current: test/global-setup.ts rebuilt it if src/ changed since npm ci.
    a = await startApiDaemon(
      {
        sandboxes: [
          { id: 'sbx-1', sources: ['198.18.0.2'], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'], allowed_ports: [443] } } },
        ],
      },
      { main: join(ROOT, 'dist/main.js') },
    );
    await new Promise((r) => setTimeout(r, 1500));
    const rss = rssBytes(a.d.child.pid!);
    expect(rss, `idle RSS ${(rss / MiB).toFixed(1)} MiB`).toBeLessThanOrEqual(60 * MiB);

    const auth = { authorization: `Bearer ${API_TOKEN}` };
    const health = await fetch(`${a.admin}/healthz`);
    expect(health.status).toBe(200);
    const put = await fetch(`${a.admin}/api/v1/sandboxes/sbx-2`, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ sources: ['198.18.0.3'] }),
    });
    expect(put.status, await put.clone().text()).toBe(201);
    const metrics = await (await fetch(`${a.admin}/metrics`, { headers: auth })).text();
    expect(metrics).toMatch(/^egressd_sandboxes 2$/m);
    expect(metrics).toMatch(/^process_resident_memory_bytes \d+/m);
  }, 240_000);
});
