// A query with CD set (RFC 4035 §3.2.2: "do not validate") gets from a validating resolver what
// failed validation, which it answers SERVFAIL to everyone else. The listener passes it to the
// sandbox that asked, but it must not become the address egressd dials for another sandbox's
// connection to that name: the data path's own lookups never set CD. The upstream is a real UDP
// DNS server on loopback that answers as a validating resolver does for a bogus zone.

import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';

const A = '127.0.0.2';
const B = '127.0.0.3';
/** Where the bogus record points: a server of its own, to see whether anything is dialed there. */
const BOGUS = '127.0.0.9';
const FLAG_CD = 0x0010;

describe.skipIf(!haveDig)('an answer asked with checking disabled', () => {
  let bogus: Server;
  let bogusConnections = 0;

  const dns = dnsDaemonPerBlock(
    // A validating resolver and a bogus zone: SERVFAIL, unless CD is set; then bank.test's A
    // record as it failed validation, CD echoed.
    () =>
      startRecordedDns(({ name, type, flags }) =>
        (flags & FLAG_CD) === 0
          ? { rcode: 'SERVFAIL' }
          : { flags: FLAG_CD, answers: name === 'bank.test' && type === 'A' ? [{ name: 'bank.test', type: 'A', ttl: 300, data: BOGUS }] : [] },
      ),
    (upstream) => ({
      dns: { servers: [upstream.server], timeoutMs: 1000 },
      sandboxes: [
        { id: 'sb-a', sources: [A], network: { mode: 'block-all', egress: { allowed_domains: ['bank.test'] } } },
        { id: 'sb-b', sources: [B], network: { mode: 'block-all', egress: { allowed_domains: ['bank.test'] } } },
      ],
    }),
  );
  beforeAll(async () => {
    bogus = createServer((s) => {
      bogusConnections++;
      s.on('error', () => {});
      s.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbogus');
    });
    await new Promise<void>((r) => bogus.listen(0, BOGUS, r));
  });
  afterAll(async () => {
    bogus?.close();
  });

  it("is the asker's alone: another sandbox's connection to the name is not dialed to it", async () => {
    expect(await digFrom(dns.port, A, '+cd', 'bank.test', 'A', '+short')).toBe(`${BOGUS}\n`);
    expect(await digFrom(dns.port, B, 'bank.test', 'A')).toMatch(/status: SERVFAIL/);
    // B's connection names bank.test; its original destination is the bogus server's port on
    // another address, so only a dial to the cached bogus address could reach the bogus server.
    dns.egressd.route(B, '127.0.0.1', (bogus.address() as AddressInfo).port);
    const got = await new Promise<string>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('http'), localAddress: B });
      let out = '';
      s.on('data', (b) => (out += b.toString()));
      s.on('error', () => {});
      s.on('close', () => resolve(out));
      s.write('GET / HTTP/1.1\r\nHost: bank.test\r\nConnection: close\r\n\r\n');
    });
    expect(got).not.toMatch(/bogus/);
    expect(bogusConnections).toBe(0);
  });
});
