// The connection log line through a running daemon (loopback, original destination by table):
// real sockets, the daemon's own logger layout, read back as JSON by the ECS names that
// CONNECTION_FIELDS declares (docs/logs.md). An IPv6 source is an address and a port, never one
// ambiguous "ip:port" string.

import { once } from 'node:events';
import { connect, createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CONNECTION_FIELDS, ECS_VERSION } from '../../../src/observability/connection-log.ts';
import { buildHello } from '../../helpers/hello-builder.ts';
import { action, field, type LogLine } from '../../helpers/log-line.ts';
import { loopbackConfig, startLoopbackDaemon, type LoopbackDaemon } from '../../helpers/loopback-daemon.ts';

const BASE = ['@timestamp', 'log.level', 'message', 'ecs.version', 'process.pid'];

/** The line's dotted field names: nested objects walked, arrays and the dotted top-level keys kept whole. */
function fieldNames(l: LogLine, prefix = ''): string[] {
  return Object.entries(l).flatMap(([k, v]) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) ? fieldNames(v as LogLine, `${prefix}${k}.`) : [`${prefix}${k}`],
  );
}

describe('the connection log line, read from a running daemon', () => {
  let d: LoopbackDaemon | undefined;
  let upstream: Server | undefined;
  afterEach(async () => {
    await d?.stop();
    upstream?.close();
    d = upstream = undefined;
  });

  it('logs an IPv6 source as source.ip and source.port, with the ECS base fields and only declared fields', async () => {
    upstream = createServer((s) => s.pipe(s));
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    d = await startLoopbackDaemon(
      loopbackConfig({
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '[::1]:0' },
        sandboxes: [{ id: 'sb-v6', sources: ['::1'], network: { mode: 'allow-all' } }],
      }),
    );
    const upPort = (upstream.address() as { port: number }).port;
    d.route('::1', '127.0.0.1', upPort);
    const c = connect({ host: '::1', port: d.port('tcp'), localAddress: '::1' });
    await once(c, 'connect');
    const clientPort = c.localPort!;
    c.write('ping');
    await once(c, 'data');
    c.end();
    await once(c, 'close');

    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({
      'log.level': 'info',
      message: 'connection',
      'ecs.version': ECS_VERSION,
      process: { pid: process.pid },
      event: { action: 'connection', kind: 'event', category: ['network'], type: ['connection', 'allowed'], outcome: 'success', reason: 'default-allow' },
      source: { ip: '::1', port: clientPort, bytes: 4 },
      destination: { ip: '127.0.0.1', port: upPort, bytes: 4 },
      network: { transport: 'tcp', type: 'ipv6' },
      egressd: { verdict: 'allow', listener: 'tcp', sandbox: 'sb-v6', upstream: { ip: '127.0.0.1' } },
    });
    expect(new Date(String(line['@timestamp'])).toISOString()).toBe(line['@timestamp']);
    // ECS durations are nanoseconds: a whole number, and this one took at least a round trip.
    const duration = field(line, 'event.duration') as number;
    expect(Number.isInteger(duration) && duration > 0).toBe(true);
    expect(JSON.stringify(line)).not.toMatch(/::1:\d/);
    const declared = new Set([...BASE, ...CONNECTION_FIELDS.map((f) => f.name)]);
    expect(fieldNames(line).filter((n) => !declared.has(n))).toEqual([]);
  });

  it('puts a refused TLS name in tls.client.server_name and destination.domain, the rule in rule.name', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { except: ['127.0.0.0/8', '198.18.0.0/15'], reachableHostAddresses: ['127.0.0.0/8'] },
        sandboxes: [{ id: 'sb-t', sources: ['127.0.0.61'], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }],
      }),
    );
    d.route('127.0.0.61', '198.18.1.2', 443);
    const c = connect({ host: '127.0.0.1', port: d.port('tls'), localAddress: '127.0.0.61' });
    c.on('error', () => {});
    c.resume();
    c.write(buildHello({ sni: ['Denied.TEST'], alpn: ['h2'] }));
    await once(c, 'close');
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({
      event: { type: ['connection', 'denied'], outcome: 'failure', reason: 'default-block' },
      source: { ip: '127.0.0.61' },
      destination: { ip: '198.18.1.2', port: 443, domain: 'denied.test' },
      network: { type: 'ipv4', protocol: 'tls' },
      tls: { client: { server_name: 'denied.test' } },
      egressd: { verdict: 'refuse', ended_by: 'policy', listener: 'tls', sandbox: 'sb-t', alpn: ['h2'] },
    });
    expect(typeof field(line, 'rule.name')).toBe('string');
    expect([field(line, 'url.domain'), field(line, 'egressd.upstream.ip')]).toEqual([undefined, undefined]);
  });

  it.each([
    ['a TLS server_name', 'tls', buildHello({ sni: ['169.254.169.254'] }), '169.254.169.254'],
    ['an HTTP Host', 'http', Buffer.from('GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n'), '[::1]'],
  ] as const)('keeps %s that spells an address in egressd.raw_name: the client did send one, judged by address alone', async (_what, listener, flight, raw) => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { except: ['127.0.0.0/8', '198.18.0.0/15'], reachableHostAddresses: ['127.0.0.0/8'] },
        sandboxes: [{ id: 'sb-a', sources: ['127.0.0.62'], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }],
      }),
    );
    d.route('127.0.0.62', '198.18.1.2', 443);
    const c = connect({ host: '127.0.0.1', port: d.port(listener), localAddress: '127.0.0.62' });
    c.on('error', () => {});
    c.resume();
    c.end(flight);
    await once(c, 'close');
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({ event: { reason: 'default-block' }, egressd: { verdict: 'refuse', raw_name: raw } });
    expect(field(line, 'destination.domain')).toBeUndefined();
  });

  // The name is the sandbox's to choose, up to the peek's 16 KiB: control bytes, each written as
  // a six-character JSON escape, made a 96 KB line of a 16 KB hello, 128 of them to a batch.
  it.each([
    ['a TLS server_name', 'tls', (raw: string) => buildHello({ sni: [raw] })],
    // The request head takes no control byte: letters, past the longest name normalization reads.
    ['an HTTP Host', 'http', (raw: string) => Buffer.from(`GET / HTTP/1.1\r\nHost: ${raw.replaceAll('\x01', 'a')}\r\n\r\n`, 'latin1')],
  ] as const)('cuts %s that failed normalization to its first 256 characters in egressd.raw_name', async (_what, listener, flight) => {
    d = await startLoopbackDaemon(
      loopbackConfig({ sandboxes: [{ id: 'sb-a', sources: ['127.0.0.63'], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }] }),
    );
    d.route('127.0.0.63', '198.18.1.2', 443);
    const raw = '\x01'.repeat(15_000);
    const c = connect({ host: '127.0.0.1', port: d.port(listener), localAddress: '127.0.0.63' });
    c.on('error', () => {});
    c.resume();
    c.end(flight(raw));
    await once(c, 'close');
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({ event: { reason: 'invalid-name' }, egressd: { verdict: 'refuse' } });
    const logged = field(line, 'egressd.raw_name') as string;
    expect(logged.length).toBe(257);
    expect(logged.endsWith('…')).toBe(true);
    expect(JSON.stringify(line).length).toBeLessThan(4096);
  });

  // The ALPN list is the sandbox's to choose too, up to the peek's 16 KiB: 62 protocol names of
  // 255 control bytes each made one 16 KB hello a 95 KB line, whatever the name and the verdict.
  it('keeps the first 16 ALPN protocols, each cut to 32 characters, and marks what it left out', async () => {
    d = await startLoopbackDaemon(
      loopbackConfig({
        protected: { except: ['127.0.0.0/8', '198.18.0.0/15'], reachableHostAddresses: ['127.0.0.0/8'] },
        sandboxes: [{ id: 'sb-a', sources: ['127.0.0.64'], network: { mode: 'block-all', egress: { allowed_domains: ['allowed.test'] } } }],
      }),
    );
    d.route('127.0.0.64', '198.18.1.2', 443);
    const alpn = [...Array.from({ length: 61 }, () => '\x01'.repeat(255)), 'h2'];
    const c = connect({ host: '127.0.0.1', port: d.port('tls'), localAddress: '127.0.0.64' });
    c.on('error', () => {});
    c.resume();
    c.end(buildHello({ sni: ['denied.test'], alpn }));
    await once(c, 'close');
    const line = await d.waitForLog((l) => action(l) === 'connection');
    expect(line).toMatchObject({ event: { reason: 'default-block' }, egressd: { verdict: 'refuse' } });
    const logged = field(line, 'egressd.alpn') as string[];
    expect(logged).toHaveLength(17);
    expect(logged.slice(0, 16)).toEqual(Array.from({ length: 16 }, () => `${'\x01'.repeat(32)}…`));
    expect(logged[16]).toBe('…');
    expect(JSON.stringify(line).length).toBeLessThan(4096);
  });
});
