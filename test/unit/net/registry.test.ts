// A live connection's close: the step in progress is stopped through its hook (the native loop's
// abort) and through the AbortSignal (Node's sockets), once, whichever was set up first.

import { describe, expect, it } from 'vitest';
import type { ConnectionOutcome } from '../../../src/net/outcome.ts';
import { ConnectionRegistry, LiveConnection } from '../../../src/net/registry.ts';

const live = (): LiveConnection => new LiveConnection({ source: '198.18.0.2' } as ConnectionOutcome);

describe('LiveConnection', () => {
  it('runs the close hook once, clears it, and aborts a signal already handed out', () => {
    const c = live();
    let hooked = 0;
    c.onClose = () => hooked++;
    const signal = c.signal;
    c.close();
    c.close();
    expect([hooked, c.closed, signal.aborted, c.onClose]).toEqual([1, true, true, null]);
  });

  it('hands out an aborted signal after the close', () => {
    const c = live();
    c.close();
    expect(c.signal.aborted).toBe(true);
  });

  it('is closed by the registry with the first reason kept', () => {
    const r = new ConnectionRegistry();
    const a = r.add(live());
    const b = r.add(live());
    let hooked = 0;
    b.onClose = () => hooked++;
    r.close(a, 'policy-changed');
    expect(r.closeAll('shutdown')).toBe(2);
    expect([a.closeReason, b.closeReason, hooked, a.closed, b.closed]).toEqual(['policy-changed', 'shutdown', 1, true, true]);
  });

  it('tells when the last connection is removed, at once when none is open', async () => {
    const r = new ConnectionRegistry();
    await r.whenEmpty();
    const a = r.add(live());
    const b = r.add(live());
    let done = false;
    const waiting = r.whenEmpty().then(() => (done = true));
    r.remove(a);
    await Promise.resolve();
    expect(done).toBe(false);
    r.remove(b);
    await waiting;
    expect(done).toBe(true);
  });
});
