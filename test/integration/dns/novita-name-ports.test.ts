// Novita matches domains on HTTP port 80 and TLS port 443 only (Novita "Internet access": "Any
// other port falls back to CIDR-based matching"). A connection that carries no name, to an
// address the sandbox resolved an allowed name to through egressd's DNS listener, is judged with
// that name (the DNS memory): allowed on 443, refused on 22 — the name must not open a port the
// platform's policy refuses. Through the whole daemon on loopback, with dig as the resolver.

import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.31';
/** Where github.test resolves: a loopback address of this file's own, a server on its port 443. */
const GITHUB = '127.0.0.224';

// Port 443 is privileged: without root this file is skipped, saying why.
const asRoot = process.getuid?.() === 0;
if (!asRoot) console.warn('novita-name-ports: skipped, it binds port 443 on a loopback address of its own (run as root)');

describe.skipIf(!haveDig || !asRoot)('a Novita domain remembered from DNS, on ports 443 and 22', () => {
  let upstream: DnsTestServer;
  let d: LoopbackDaemon;
  let port: number;

  beforeAll(async () => {
    upstream = await DnsTestServer.start();
    upstream.set('github.test', { kind: 'answer', a: [GITHUB], ttl: 60 });
    d = await startLoopbackDaemon(
      loopbackConfig({
        dns: { servers: [upstream.server], timeoutMs: 1000 },
        sandboxes: [{ id: 'sb-n', sources: [A], network: { network: { allowOut: ['github.test'], denyOut: ['0.0.0.0/0'] } } }],
      }),
    );
    port = d.daemon.dnsListeners[0]!.port!;
  });
  afterAll(async () => {
    await d?.stop();
    await upstream?.close();
  });

  /** What a silent client (no name of its own) to GITHUB:`to` receives before the connection closes. */
  const greet = (to: number): Promise<string> =>
    new Promise((resolve) => {
      d.route(A, GITHUB, to);
      const s = connect({ host: '127.0.0.1', port: d.port('tcp'), localAddress: A });
      let got = '';
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(got));
    });

  it('allows the nameless connection on 443 by the remembered name, and refuses it on 22', async () => {
    expect(await digFrom(port, A, 'github.test', 'A', '+short')).toBe(`${GITHUB}\n`);
    const server = createServer((c) => {
      c.on('error', () => {});
      c.end('hello');
    });
    server.listen(443, GITHUB);
    await once(server, 'listening');
    try {
      expect(await greet(443)).toBe('hello');
      const ok = await d.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.port') === 443);
      expect(ok).toMatchObject({ egressd: { verdict: 'allow', sandbox: 'sb-n', dns_names: ['github.test'] } });
      expect(field(ok, 'rule.name')).toBe('dns "github.test": allowed_domains "github.test"');

      expect(await greet(22)).toBe('');
      const refused = await d.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.port') === 22);
      expect(refused).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-n', dns_names: ['github.test'] }, event: { reason: 'default-block' } });
    } finally {
      server.close();
    }
  });
});
