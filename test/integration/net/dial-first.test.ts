// dialFirst against loopback listeners: RFC 8305 §5 staggered attempts. 127.0.0.0/8 is all
// loopback, so one port can be served on one address and refused on another.

import { describe, expect, it, onTestFinished } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { acceptingServer, blackholePort } from '../../helpers/listen.ts';
import { dialFirst, type DialFirstResult } from '../../../src/net/dial-first.ts';

/** Connects to 127.0.0.0/8 port `port` still in SYN_SENT, machine-wide (/proc/net/tcp, state 02). */
function synSent(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .filter((l) => {
      const f = l.trim().split(/\s+/);
      return f[2]?.endsWith(hex) === true && f[3] === '02';
    }).length;
}

const listening = acceptingServer;

// A server in a child process, so it accepts while this process's event loop is blocked: each
// connection it accepts is closed at once (`end`: a FIN) or reset (`reset`).
const CLOSES_EACH = `
const net = require('node:net');
const [host, how] = process.argv.slice(1);
const s = net.createServer((c) => (how === 'reset' ? c.resetAndDestroy() : c.end()));
s.listen({ host, port: 0 }, () => process.stdout.write(s.address().port + '\\n'));
setTimeout(() => process.exit(0), 60000);`;

async function closingServer(host: string, how: 'end' | 'reset'): Promise<number> {
  const child = spawn(process.execPath, ['-e', CLOSES_EACH, host, how], { stdio: ['ignore', 'pipe', 'inherit'] });
  onTestFinished(() => {
    child.kill('SIGKILL');
  });
  return new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`The closing server exited early (${code})`)));
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
}

/** Resolves with what `s` receives within `ms`, and whether it ended or failed meanwhile. */
function received(s: Socket, ms: number): Promise<{ data: string; ended: boolean }> {
  return new Promise((resolve) => {
    let data = '';
    let ended = false;
    const onData = (d: Buffer): void => void (data += d.toString());
    const onEnd = (): void => void (ended = true);
    s.on('data', onData).on('end', onEnd).on('error', onEnd);
    setTimeout(() => {
      s.off('data', onData).off('end', onEnd).off('error', onEnd);
      resolve({ data, ended });
    }, ms);
  });
}

describe('dialFirst', () => {
  it('moves to the next address at once when one refuses, and says which were tried', async () => {
    const up = await listening('127.0.0.3');
    const r = await dialFirst({ addresses: ['127.0.0.2', '127.0.0.3'], port: up.port, connectTimeoutMs: 2000, signal: new AbortController().signal });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    onTestFinished(() => {
      r.socket.destroy();
    });
    expect(r.address).toBe('127.0.0.3');
    expect(r.attempts).toEqual([
      { address: '127.0.0.2', result: 'refused' },
      { address: '127.0.0.3', result: 'connected' },
    ]);
  });

  it('dials one address only when the first answers', async () => {
    const up = await listening('127.0.0.4');
    await listening('127.0.0.5', up.port);
    const r = await dialFirst({ addresses: ['127.0.0.4', '127.0.0.5'], port: up.port, connectTimeoutMs: 2000, signal: new AbortController().signal });
    expect(r.ok && r.address).toBe('127.0.0.4');
    if (r.ok) r.socket.destroy();
    expect(r.attempts).toEqual([{ address: '127.0.0.4', result: 'connected' }]);
  });

  it('fails with the last cause when every address refuses', async () => {
    const up = await listening('127.0.0.6');
    const r = await dialFirst({
      addresses: ['127.0.0.7', '127.0.0.8', '127.0.0.9'],
      port: up.port,
      connectTimeoutMs: 2000,
      signal: new AbortController().signal,
    });
    expect(r).toMatchObject({ ok: false, cause: 'refused' });
    expect(r.attempts.map((a) => a.result)).toEqual(['refused', 'refused', 'refused']);
  });

  it('settles as aborted when the signal aborts, and with no address at all as other', async () => {
    const c = new AbortController();
    c.abort();
    expect(await dialFirst({ addresses: ['127.0.0.2'], port: 9, connectTimeoutMs: 2000, signal: c.signal })).toMatchObject({ ok: false, cause: 'aborted' });
    expect(await dialFirst({ addresses: [], port: 9, connectTimeoutMs: 2000, signal: new AbortController().signal })).toMatchObject({
      ok: false,
      cause: 'other',
    });
  });

  // Each attempt in flight holds a descriptor, so admission may allow fewer at once than there
  // are addresses; at that cap the oldest gives way once it had its share of the time left (the
  // native loop's rule too: native/splice_loop.h sl_loop_dial).
  it.each([
    [1, 850, ['timeout', 'timeout', 'timeout', 'connected']],
    [2, 575, ['timeout', 'timeout', 'cancelled', 'connected']],
  ])('holds at most %i attempts at once, and still reaches a late address within the timeout', async (parallel, atLeastMs, results) => {
    const port = await blackholePort();
    await acceptingServer('127.0.0.2', port);
    let most = 0;
    const sampler = setInterval(() => (most = Math.max(most, synSent(port))), 5);
    onTestFinished(() => clearInterval(sampler));
    const t0 = performance.now();
    // 1200 ms in all, 50 ms attempt delay: with one at a time, 300 ms for each silent address;
    // with two, the first gives way at 400 ms (1200 / 3), the second at 625 ((1200 - 50) / 2 after it began).
    const r = await dialFirst({
      addresses: ['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.2'],
      port,
      connectTimeoutMs: 1200,
      attemptDelayMs: 50,
      parallel,
      signal: new AbortController().signal,
    });
    const ms = performance.now() - t0;
    clearInterval(sampler);
    if (r.ok) r.socket.destroy();
    expect(r.ok && r.address).toBe('127.0.0.2');
    expect(r.attempts.map((a) => a.result)).toEqual(results);
    expect(most).toBeGreaterThanOrEqual(1);
    expect(most).toBeLessThanOrEqual(parallel);
    expect(ms).toBeGreaterThanOrEqual(atLeastMs);
  });

  // 400 ms shared by four silent addresses is 100 ms each, less than the 250 ms attempt delay:
  // at the cap each still has the delay, so no more addresses are tried than without a cap (and
  // one that answers in 150 ms is reached). The native loop's C test checks the same.
  it.each([[1], [4]])('never starts the next address sooner than the attempt delay, with %i at once', async (parallel) => {
    const port = await blackholePort();
    const r = await dialFirst({
      addresses: ['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1'],
      port,
      connectTimeoutMs: 400,
      parallel,
      signal: new AbortController().signal,
    });
    expect(r).toMatchObject({ ok: false, cause: 'timeout' });
    expect(r.attempts.map((a) => a.result)).toEqual(['timeout', 'timeout']);
  });

  // The native loop's C test has the same case (two_attempts_end_in_one_wakeup): two attempts in
  // flight (an attempt delay of 0), the first connected and the second closed, reset or refused,
  // both before this process polls again (its event loop is blocked meanwhile), so libuv finds
  // both in one epoll_wait. The winner's socket carries bytes both ways and sees no end of the
  // loser's.
  it.each([
    ['closes', 'end'],
    ['resets', 'reset'],
    ['is refused', null],
  ] as const)('splices the first to connect when another attempt %s in the same wake-up', async (_name, how) => {
    const port = how ? await closingServer('127.0.0.11', how) : (await listening('127.0.0.12')).port;
    const up = await listening('127.0.0.10', port);
    const block = (ms: number): void => void Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
    // Started from the check phase, held 5 ms: the stagger timer is due when the next loop
    // iteration runs its timers, before it polls, so the second attempt starts before the first's
    // connection is seen. Then (a timer of the same timeout, set after it) the loop is held while
    // both attempts end.
    const r = await new Promise<DialFirstResult>((resolve) => {
      setImmediate(() => {
        void dialFirst({
          addresses: ['127.0.0.10', how ? '127.0.0.11' : '127.0.0.13'],
          port,
          connectTimeoutMs: 2000,
          attemptDelayMs: 0,
          signal: new AbortController().signal,
        }).then(resolve);
        setTimeout(() => block(200), 0);
        block(5);
      });
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    onTestFinished(() => {
      r.socket.destroy();
    });
    expect(r.address).toBe('127.0.0.10');
    expect(r.attempts).toEqual([
      { address: '127.0.0.10', result: 'connected' },
      { address: how ? '127.0.0.11' : '127.0.0.13', result: 'cancelled' },
    ]);
    await expect.poll(() => up.accepted.length).toBe(1);
    const server = up.accepted[0]!;
    const down = received(r.socket, 300);
    server.write('down');
    expect(await down).toEqual({ data: 'down', ended: false });
    const upward = received(server, 300);
    r.socket.write('up');
    expect(await upward).toEqual({ data: 'up', ended: false });
  });
});
