// A policy change that lands while the DNS listener waits for the upstream's answer: once the
// API has answered the change, the listener answers and remembers by the policy now in force for
// the asking source, never by the one it read when the question came (docs/api.md: a change
// reaches every part of the data path before the API answers). The upstream is a real UDP DNS
// server on loopback that holds its answer until the test lets it go; dig asks the listener.

import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import * as packet from 'dns-packet';
import { describe, expect, it } from 'vitest';
import { dnsDaemonPerBlock } from '../../helpers/dns-daemon.ts';
import { adminCall } from '../../helpers/admin-api.ts';
import { digFrom, haveDig } from '../../helpers/dig.ts';

/** An upstream that answers every A question with 198.18.2.1, each only once `release(name)` is called. */
async function heldUpstream(): Promise<{
  server: string;
  asked: (name: string) => Promise<void>;
  release: (name: string) => void;
  close: () => Promise<void>;
}> {
  const sock: UdpSocket = createSocket('udp4');
  const held = new Map<string, (() => void)[]>();
  const waiting = new Map<string, () => void>();
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    const q = packet.decode(msg);
    const question = q.questions?.[0];
    if (!question) return;
    const name = question.name.toLowerCase();
    const reply = packet.encode({
      type: 'response',
      id: q.id,
      flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
      questions: [question],
      answers: question.type === 'A' ? [{ name: question.name, type: 'A', ttl: 60, data: '198.18.2.1' }] : [],
    });
    held.set(name, [...(held.get(name) ?? []), () => sock.send(reply, rinfo.port, rinfo.address)]);
    waiting.get(name)?.();
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  return {
    server: `127.0.0.1:${sock.address().port}`,
    asked: (name) => (held.has(name) ? Promise.resolve() : new Promise<void>((r) => waiting.set(name, r))),
    release: (name) => {
      for (const send of held.get(name) ?? []) send();
      held.delete(name);
    },
    close: () => new Promise<void>((resolve) => sock.close(() => resolve())),
  };
}

describe.skipIf(!haveDig)('a policy change while the DNS listener waits for the upstream', () => {
  const dns = dnsDaemonPerBlock(heldUpstream, (upstream) => ({ dns: { servers: [upstream.server], timeoutMs: 5000 } }));
  const api = (method: string, path: string, body?: unknown) => adminCall(dns.egressd.adminUrl, method, path, body);
  const remembered = async (id: string): Promise<unknown[]> => (await api('GET', `/api/v1/sandboxes/${id}/effective`)).body.dns_remembered;

  it('a change that no longer allows the name: the held answer is refused, and nothing is remembered', async () => {
    const allows = { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-n', { sources: ['127.0.0.51'], network: allows })).status).toBe(201);
    const answer = digFrom(dns.port, '127.0.0.51', 'slow.allowed.test', 'A');
    await dns.upstream.asked('slow.allowed.test');
    expect((await api('PUT', '/api/v1/sandboxes/sb-n/network', { mode: 'block-all', egress: { allowed_domains: ['other.test'] } })).status).toBe(200);
    dns.upstream.release('slow.allowed.test');
    const out = await answer;
    expect(out).toMatch(/status: NXDOMAIN/);
    expect(out).not.toMatch(/198\.18\.2\.1/);
    expect(await remembered('sb-n')).toEqual([]);
  });

  it('a source handed to another sandbox meanwhile: the answer is judged by the new owner, and the deleted one remembers nothing', async () => {
    const allows = { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-old', { sources: ['127.0.0.52'], network: allows })).status).toBe(201);
    const answer = digFrom(dns.port, '127.0.0.52', 'moved.allowed.test', 'A');
    await dns.upstream.asked('moved.allowed.test');
    expect((await api('DELETE', '/api/v1/sandboxes/sb-old')).status).toBe(204);
    expect((await api('PUT', '/api/v1/sandboxes/sb-new', { sources: ['127.0.0.52'], network: { mode: 'block-all' } })).status).toBe(201);
    dns.upstream.release('moved.allowed.test');
    expect(await answer).toMatch(/status: NXDOMAIN/);
    // A sandbox made again under the old id starts with nothing the deleted one was given.
    expect((await api('PUT', '/api/v1/sandboxes/sb-old', { sources: ['127.0.0.53'], network: allows })).status).toBe(201);
    expect(await remembered('sb-old')).toEqual([]);
    expect(await remembered('sb-new')).toEqual([]);
  });

  it('a change that still allows the name: the held answer is given and remembered', async () => {
    const allows = { mode: 'block-all', egress: { allowed_domains: ['*.allowed.test'] } };
    expect((await api('PUT', '/api/v1/sandboxes/sb-k', { sources: ['127.0.0.54'], network: allows })).status).toBe(201);
    const answer = digFrom(dns.port, '127.0.0.54', 'kept.allowed.test', 'A', '+short');
    await dns.upstream.asked('kept.allowed.test');
    expect((await api('PUT', '/api/v1/sandboxes/sb-k/network', { ...allows, egress: { ...allows.egress, allowed_ports: [443] } })).status).toBe(200);
    dns.upstream.release('kept.allowed.test');
    expect(await answer).toBe('198.18.2.1\n');
    expect(JSON.stringify(await remembered('sb-k'))).toContain('kept.allowed.test');
  });
});
