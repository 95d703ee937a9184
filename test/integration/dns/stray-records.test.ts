// An answer section may carry records of owners that are not on the asked name's chain (an
// upstream that adds them, a forwarder that does not scrub them). They are no addresses of the
// name: the DNS listener must neither remember them for the sandbox (a nameless connection to one
// would be judged by the name asked) nor share them into the address cache the data path dials
// from (a connection presenting the name would be dialed to them as "one of the name's
// addresses"). The data path's own lookups already read only the chain (net/dns-client.ts).
// The upstream is a real UDP DNS server on loopback serving the sections as recorded; dig asks
// the daemon's listener.

import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import type { Answer } from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { field, isConnection } from '../../helpers/log-line.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
/** Where the names really are: nothing listens there. */
const REAL = '127.0.0.5';
/** The stray records' address: the echo server below. */
const STRAY = '127.0.0.1';

const section = (name: string): Answer[] => [
  { name, type: 'A', ttl: 60, data: REAL },
  { name: 'decoy.other.test', type: 'A', ttl: 60, data: STRAY },
];
const ZONE: Record<string, Answer[]> = {
  'remember.allowed.test': section('remember.allowed.test'),
  'share.allowed.test': section('share.allowed.test'),
  // The same stray record after a CNAME hop: the chain is alias → target, not decoy.
  'alias.allowed.test': [
    { name: 'alias.allowed.test', type: 'CNAME', ttl: 60, data: 'target.cdn.test' },
    { name: 'decoy.other.test', type: 'A', ttl: 60, data: STRAY },
    { name: 'target.cdn.test', type: 'A', ttl: 60, data: REAL },
  ],
};

describe.skipIf(!haveDig)('records of another owner in an answer section', () => {
  let echo: Server;
  let echoPort: number;
  let echoed = 0;

  const dns = dnsDaemonPerBlock(
    // The sections for A; any other type of any name is NODATA.
    () =>
      startRecordedDns(({ name, type }) => {
        if (type !== 'A') return {};
        const answers = ZONE[name];
        return answers ? { answers } : { rcode: 'NXDOMAIN' };
      }),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      upstream: { dial: 'resolved', connectTimeoutMs: 1000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } } },
      ],
    }),
  );
  beforeAll(async () => {
    echo = createServer((s) => {
      echoed++;
      s.on('error', () => {});
      s.pipe(s);
    });
    echo.listen(0, STRAY);
    await once(echo, 'listening');
    echoPort = (echo.address() as AddressInfo).port;
  });
  afterAll(async () => {
    echo?.close();
  });

  const dig = (from: string, name: string): Promise<string> => digFrom(dns.port, from, name, 'A');
  /**
   * What came back within 1.5 s on a connection from `from` sending `bytes` and waiting (a FIN
   * before the verdict would end it as the client's), to the route set before.
   */
  const send = (from: string, bytes: string): Promise<string> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: from });
      let got = '';
      const t = setTimeout(() => s.destroy(), 1500);
      s.on('connect', () => s.write(bytes));
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(t);
        resolve(got);
      });
    });

  it('does not remember them for the sandbox: a nameless connection to one is judged by address alone', async () => {
    for (const name of ['remember.allowed.test', 'alias.allowed.test']) expect(await dig(A, name), name).toMatch(/status: NOERROR/);
    const res = await fetch(`${dns.egressd.adminUrl}/api/v1/sandboxes/sb-a/effective`, { headers: { authorization: 'Bearer test-token' } });
    const remembered = JSON.stringify(((await res.json()) as { dns_remembered: unknown[] }).dns_remembered);
    expect(remembered).toContain(REAL);
    expect(remembered).not.toContain(`"${STRAY}"`);

    dns.egressd.route(A, STRAY, echoPort);
    const before = echoed;
    expect(await send(A, 'ping')).toBe('');
    expect(echoed).toBe(before);
    const line = await dns.egressd.waitForLog((l) => isConnection(l) && field(l, 'source.ip') === A);
    expect(field(line, 'egressd.verdict')).toBe('refuse');
    expect(field(line, 'egressd.dns_names')).toBeUndefined();
  });

  it("does not share them into the data path's address cache: a connection presenting the name is not dialed to one", async () => {
    // Sandbox B asks; sandbox A, which never asked, connects with the name to the stray address.
    expect(await dig(B, 'share.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, STRAY, echoPort);
    const before = echoed;
    const got = await send(A, 'GET / HTTP/1.1\r\nHost: share.allowed.test\r\n\r\n');
    expect(got).not.toContain('GET /');
    expect(echoed).toBe(before);
    const line = await dns.egressd.waitForLog((l) => isConnection(l) && field(l, 'destination.domain') === 'share.allowed.test');
    // The name's one address was dialed instead, where nothing listens.
    expect(field(line, 'event.reason')).toBe('upstream-failed');
  });
});
