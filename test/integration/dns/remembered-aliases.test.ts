// A name the DNS listener answered through an alias chain (CNAME, DNAME) is remembered with the
// chain: a deny rule added afterwards (API change, reload) that names a host behind the name holds
// against a connection to the remembered address, nameless or presenting the name, as it would
// against the live answer (the listener refuses such a chain, alias-chain.test.ts; the data path
// refuses it when it resolves the name, alias-dial.test.ts). Before, the memory kept the final
// name only, and the connection was judged, and allowed, by it.
// The upstream is a real UDP DNS server on loopback serving the chains as recorded
// (test/helpers/recorded-dns.ts); dig asks the daemon's listener; the connections are real TCP
// clients through the data path to a greeting server.

import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import type { Answer } from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { adminCall } from '../../helpers/admin-api.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';
import { startRecordedDns } from '../../helpers/recorded-dns.ts';
import { field } from '../../helpers/log-line.ts';

/** The sandbox's source, and the addresses its names lead to (each a greeting server). */
const A = '127.0.0.2';
const EDGE = '127.0.0.1';
const MIRROR = '127.0.0.6';
const ODD = '127.0.0.7';
const HELD = '127.0.0.8';

/** Answer sections by question name, whatever the type asked; NXDOMAIN for any other name. */
const ZONE: Record<string, Answer[]> = {
  'app.allowed.test': [
    { name: 'app.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.cdn.test' },
    { name: 'edge.cdn.test', type: 'A', ttl: 60, data: EDGE },
  ],
  'www.dn.allowed.test': [
    { name: 'dn.allowed.test', type: 'DNAME', ttl: 60, data: 'mirror.test' },
    { name: 'www.dn.allowed.test', type: 'CNAME', ttl: 60, data: 'www.mirror.test' },
    { name: 'www.mirror.test', type: 'A', ttl: 60, data: MIRROR },
  ],
  'held.allowed.test': [
    { name: 'held.allowed.test', type: 'CNAME', ttl: 60, data: 'edge.held-cdn.test' },
    { name: 'edge.held-cdn.test', type: 'A', ttl: 60, data: HELD },
  ],
  // An alias that is no host name (a byte no host name has, RFC 2181 §11 allows it in a label).
  'odd.allowed.test': [
    { name: 'odd.allowed.test', type: 'CNAME', ttl: 60, data: 'e!ge.odd-cdn.test' },
    { name: 'e!ge.odd-cdn.test', type: 'A', ttl: 60, data: ODD },
  ],
};

/** A server that greets each connection and ends it (a server-first protocol: SSH, SMTP). */
async function greeter(host: string): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => {
    s.on('error', () => {});
    s.end('hello\n');
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  return { server, port: (server.address() as AddressInfo).port };
}

describe.skipIf(!haveDig)('a deny rule added after a name was remembered through an alias chain', () => {
  let edge: Awaited<ReturnType<typeof greeter>>;
  let mirror: Awaited<ReturnType<typeof greeter>>;
  let odd: Awaited<ReturnType<typeof greeter>>;
  let held: { server: Server; port: number };
  const dns = dnsDaemonPerBlock(
    () => startRecordedDns(ZONE),
    (upstream) => ({ dns: { servers: [upstream.server], timeoutMs: 1000 }, upstream: { dial: 'resolved', connectTimeoutMs: 1000 } }),
  );
  const api = (method: string, path: string, body?: unknown) => adminCall(dns.egressd.adminUrl, method, path, body);
  // allow-all, where a sandbox's own deny rules decide (docs/dialects.md: one side per mode); a
  // nameless connection to an address it was given is judged by the names that gave it.
  const allowed = { mode: 'allow-all' };

  beforeAll(async () => {
    edge = await greeter(EDGE);
    mirror = await greeter(MIRROR);
    odd = await greeter(ODD);
    // Greets and holds the connection open: a spliced connection a policy change must judge.
    const holder = createServer((s) => {
      s.on('error', () => {});
      s.write('hello\n');
    });
    await new Promise<void>((r) => holder.listen(0, HELD, r));
    held = { server: holder, port: (holder.address() as AddressInfo).port };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a', { sources: [A], network: allowed })).status).toBe(201);
  });
  afterAll(async () => {
    edge?.server.close();
    mirror?.server.close();
    odd?.server.close();
    held?.server.close();
  });

  const dig = (name: string): Promise<string> => digFrom(dns.port, A, name, 'A');
  /** What a connection from the sandbox to the route set before got back, sending `bytes` first (nothing: nameless). */
  const exchange = (bytes = ''): Promise<string> =>
    new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      let got = '';
      const t = setTimeout(() => s.destroy(), 3000);
      s.on('connect', () => {
        if (bytes) s.write(bytes);
      });
      s.on('data', (b) => (got += b.toString()));
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(t);
        resolve(got);
      });
    });
  const lastConnection = (): Promise<Record<string, unknown>> => dns.egressd.nextConnectionLine(A);

  it('refuses the nameless connection, and the one presenting the name, to an address a CNAME chain gave', async () => {
    expect(await dig('app.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, EDGE, edge.port);
    // Allowed by the remembered name while no rule names the alias.
    expect(await exchange()).toBe('hello\n');

    const deny = { ...allowed, egress: { denied_domains: ['*.cdn.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', deny)).status).toBe(200);
    // The listener now refuses the chain outright; the memory still holds the earlier answer.
    expect(await dig('app.allowed.test')).toMatch(/status: NXDOMAIN/);

    const nameless = lastConnection();
    expect(await exchange()).toBe('');
    const line = await nameless;
    expect(field(line, 'egressd.verdict')).toBe('refuse');
    expect(field(line, 'egressd.dns_names')).toEqual(['app.allowed.test']);
    expect(field(line, 'rule.name')).toBe('dns "app.allowed.test": alias "edge.cdn.test": denied_domains "*.cdn.test"');

    const named = lastConnection();
    expect(await exchange('GET / HTTP/1.1\r\nHost: app.allowed.test\r\n\r\n')).not.toContain('hello');
    const namedLine = await named;
    expect(field(namedLine, 'egressd.verdict')).toBe('refuse');
    expect(field(namedLine, 'rule.name')).toBe('alias "edge.cdn.test": denied_domains "*.cdn.test"');
  });

  it("refuses the nameless connection when the rule names a DNAME's target", async () => {
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', allowed)).status).toBe(200);
    expect(await dig('www.dn.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, MIRROR, mirror.port);
    expect(await exchange()).toBe('hello\n');

    const deny = { ...allowed, egress: { denied_domains: ['mirror.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', deny)).status).toBe(200);
    const nameless = lastConnection();
    expect(await exchange()).toBe('');
    expect(field(await nameless, 'rule.name')).toBe('dns "www.dn.allowed.test": alias "mirror.test": denied_domains "mirror.test"');
  });

  it('judges an alias that is no host name as a child of the host name above it', async () => {
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', allowed)).status).toBe(200);
    expect(await dig('odd.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, ODD, odd.port);
    expect(await exchange()).toBe('hello\n');

    const deny = { ...allowed, egress: { denied_domains: ['*.odd-cdn.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', deny)).status).toBe(200);
    expect(await dig('odd.allowed.test')).toMatch(/status: NXDOMAIN/);
    const nameless = lastConnection();
    expect(await exchange()).toBe('');
    expect(field(await nameless, 'rule.name')).toBe('dns "odd.allowed.test": alias "*.odd-cdn.test": denied_domains "*.odd-cdn.test"');
  });

  it('in report-only mode lets both connections through, and reports the alias that would refuse them', async () => {
    const reporting = { sources: [A], reportOnly: true, network: { ...allowed, egress: { denied_domains: ['*.cdn.test'] } } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a', reporting)).status).toBeLessThan(300);
    expect(await dig('app.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, EDGE, edge.port);

    const nameless = lastConnection();
    expect(await exchange()).toBe('hello\n');
    const line = await nameless;
    expect(field(line, 'egressd.verdict')).toBe('would-refuse');
    expect(field(line, 'rule.name')).toBe('dns "app.allowed.test": alias "edge.cdn.test": denied_domains "*.cdn.test"');

    const named = lastConnection();
    expect(await exchange('GET / HTTP/1.1\r\nHost: app.allowed.test\r\n\r\n')).toContain('hello');
    const namedLine = await named;
    expect(field(namedLine, 'egressd.verdict')).toBe('would-refuse');
    expect(field(namedLine, 'rule.name')).toBe('alias "edge.cdn.test": denied_domains "*.cdn.test"');
  });

  it('closes a held connection, nameless or presenting the name, when a deny rule comes for an alias of its chain', async () => {
    expect((await api('PUT', '/api/v1/sandboxes/sb-a', { sources: [A], network: allowed })).status).toBeLessThan(300);
    expect(await dig('held.allowed.test')).toMatch(/status: NOERROR/);
    dns.egressd.route(A, HELD, held.port);
    /** A connection that got its greeting and is held open, and when it closes. */
    const open = async (bytes: string): Promise<{ closed: Promise<void> }> => {
      const s = connect({ host: '127.0.0.1', port: dns.egressd.port('tcp'), localAddress: A });
      s.on('error', () => {});
      const closed = new Promise<void>((r) => s.on('close', () => r()));
      s.on('connect', () => {
        if (bytes) s.write(bytes);
      });
      await new Promise<void>((r, j) => {
        s.once('data', () => r());
        void closed.then(() => j(new Error('closed before its greeting')));
      });
      // An async function's promise would take on `closed` itself: handed back inside an object.
      return { closed };
    };
    const nameless = (await open('')).closed;
    const named = (await open('GET / HTTP/1.1\r\nHost: held.allowed.test\r\n\r\n')).closed;
    const deny = { ...allowed, egress: { denied_domains: ['*.held-cdn.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-a/network', deny)).status).toBe(200);
    const within = (p: Promise<void>) => Promise.race([p.then(() => 'closed'), new Promise((r) => setTimeout(() => r('open'), 3000))]);
    expect(await within(nameless)).toBe('closed');
    expect(await within(named)).toBe('closed');
  });
});
