// dialFirst against loopback listeners: RFC 8305 §5 staggered attempts. 127.0.0.0/8 is all
// loopback, so one port can be served on one address and refused on another.

import { describe, expect, it, onTestFinished } from 'vitest';
import { acceptingServer } from '../../helpers/listen.ts';
import { dialFirst } from '../../../src/net/dial-first.ts';

const listening = acceptingServer;

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
});
