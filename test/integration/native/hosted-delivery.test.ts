// The hosted loop's reports come from a libuv callback, not from a thread-safe function: a
// handler that throws is the process's uncaught exception (as from any I/O callback), the loop
// goes on delivering, and neither the loop's poll handle nor its timer keeps the process alive
// once the last connection's outcome came (test/helpers/hosted-delivery-main.ts).

import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../../..');

it.skipIf(process.platform !== 'linux')(
  "delivers the hosted loop's outcomes on the event loop, a throwing handler reaching uncaughtException, and lets the process end",
  () => {
    const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'test/helpers/hosted-delivery-main.ts')], { encoding: 'utf8', timeout: 30_000 });
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    const out = JSON.parse(r.stdout) as { hosted: boolean };
    if (!out.hosted) {
      console.warn("hosted delivery not tested: native/build/data_plane.node was built without libuv's header");
      return;
    }
    expect(out).toEqual({
      hosted: true,
      caught: ['the handler failed for connection 1'],
      // 4 bytes each way, both FINs passed on: SL_END_CLOSED.
      outcomes: [
        { id: 1, up: 4, down: 4, end: 0 },
        { id: 2, up: 4, down: 4, end: 0 },
      ],
      active: 0,
    });
  },
);
