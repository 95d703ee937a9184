// Novita matches domains on HTTP port 80 and TLS port 443 only (Novita "Internet access": "Any
// other port falls back to CIDR-based matching"). A connection that carries no name, to an
// address the sandbox resolved an allowed name to through egressd's DNS listener, is judged with
// that name (the DNS memory), and Novita sees no name in it: refused on 443 as on 22 — the name
// must not open what the platform's policy refuses. Novita reads the Host on 80 and the SNI on
// 443, so an HTTP request on 443 is refused too, and a TLS hello naming it is allowed. Through
// the whole daemon on loopback, with dig as the resolver.

import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { DnsTestServer } from '../../helpers/dns-server.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { action, field } from '../../helpers/log-line.ts';

const A = '127.0.0.31';
/** Where github.test resolves: a loopback address of this file's own, a server on its port 443. */
const GITHUB = '127.0.0.224';

// Port 443 is privileged: without root this file is skipped, saying why.
const asRoot = process.getuid?.() === 0;
if (!asRoot) console.warn('novita-name-ports: skipped, it binds port 443 on a loopback address of its own (run as root)');

describe.skipIf(!haveDig || !asRoot)('a Novita domain remembered from DNS, on ports 443 and 22, and the name read on 443', () => {
  const dns = dnsDaemonPerBlock(
    async () => {
      const upstream = await DnsTestServer.start();
      upstream.set('github.test', { kind: 'answer', a: [GITHUB], ttl: 60 });
      return upstream;
    },
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [{ id: 'sb-n', sources: [A], network: { network: { allowOut: ['github.test'], denyOut: ['0.0.0.0/0'] } } }],
    }),
  );

  /** What a client to GITHUB:`to` receives before the connection closes: silent (no name of its own), or sending `first`. */
  const greet = (to: number, first?: string): Promise<string> =>
    new Promise((resolve) => {
      dns.egressd.route(A, GITHUB, to);
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      let got = '';
      if (first !== undefined) s.write(first);
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(got));
    });

  it('refuses the nameless connection on 443 and 22 alike, and an HTTP Host on 443; allows a TLS SNI on 443', async () => {
    expect(await digFrom(dns.port, A, 'github.test', 'A', '+short')).toBe(`${GITHUB}\n`);
    const server = createServer((c) => {
      c.on('error', () => {});
      c.end('hello');
    });
    server.listen(443, GITHUB);
    await once(server, 'listening');
    try {
      expect(await greet(443)).toBe('');
      const nameless = await dns.egressd.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.port') === 443);
      expect(nameless).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-n', dns_names: ['github.test'] }, event: { reason: 'default-block' } });

      const http = await greet(443, 'GET / HTTP/1.1\r\nHost: github.test\r\n\r\n');
      expect(http).not.toContain('hello');
      const byHost = await dns.egressd.waitForLog(
        (l) => action(l) === 'connection' && field(l, 'destination.port') === 443 && field(l, 'network.protocol') === 'http',
      );
      expect(byHost).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-n' }, event: { reason: 'default-block' } });

      // A TLS hello naming it is Novita's own case: allowed, spliced to the server (which answers in plain text).
      dns.egressd.route(A, GITHUB, 443);
      const raw = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      raw.on('error', () => {});
      const t = tlsConnect({ socket: raw, servername: 'github.test', rejectUnauthorized: false });
      t.on('error', () => {});
      const bySni = await dns.egressd.waitForLog(
        (l) => action(l) === 'connection' && field(l, 'destination.port') === 443 && field(l, 'network.protocol') === 'tls',
      );
      t.destroy();
      raw.destroy();
      expect(bySni).toMatchObject({ egressd: { verdict: 'allow', sandbox: 'sb-n' } });
      expect(field(bySni, 'rule.name')).toBe('allowed_domains "github.test"');

      expect(await greet(22)).toBe('');
      const refused = await dns.egressd.waitForLog((l) => action(l) === 'connection' && field(l, 'destination.port') === 22);
      expect(refused).toMatchObject({ egressd: { verdict: 'refuse', sandbox: 'sb-n', dns_names: ['github.test'] }, event: { reason: 'default-block' } });
    } finally {
      server.close();
    }
  });
});
