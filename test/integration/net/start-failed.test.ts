// A start that fails on one listener (its port held by another socket without SO_REUSEPORT)
// closes every other listener it opened, on both set-up paths, so the failed process exits.
// Found (breakall): DnsListener.close, called while its TCP side was still binding (listen binds
// in a later turn), closed only its UDP sockets; the TCP server bound afterwards and kept the
// failed process alive with a port open (test/integration/process.test.ts under
// EGRESSD_DATA_PLANE=js: the child never exits).

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { listenOn } from '../../helpers/listen.ts';
import { loopbackConfig, startLoopbackDaemon } from '../../helpers/loopback-daemon.ts';

/** The TCP ports this process listens on. */
function listening(): Set<string> {
  const out = execFileSync('ss', ['-Hltnp'], { encoding: 'utf8' });
  return new Set(
    out
      .split('\n')
      .filter((l) => l.includes(`pid=${process.pid},`))
      .map((l) => l.trim().split(/\s+/)[3]!),
  );
}

describe.each([{ setup: 'node' as const }, { setup: 'native' as const }])('a start that fails on one listener, set up on $setup', ({ setup }) => {
  it('leaves none of its other listeners open', async () => {
    const holder = createServer();
    const held = await listenOn(holder, '127.0.0.1');
    onTestFinished(() => void holder.close());
    const before = listening();
    const start = startLoopbackDaemon(
      loopbackConfig({ listen: { http: `127.0.0.1:${held}`, tls: ['127.0.0.1:0', '127.0.0.2:0'], tcp: ['127.0.0.1:0', '127.0.0.2:0'], dns: '127.0.0.1:0' } }),
      { setup },
    );
    await expect(start).rejects.toThrow(/Cannot listen on http/);
    // Past any listen that was still under way when the start failed.
    await new Promise((r) => setTimeout(r, 300));
    expect([...listening()].filter((p) => !before.has(p))).toEqual([]);
  });
});
