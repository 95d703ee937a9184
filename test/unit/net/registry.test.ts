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

  it('lists the live connections oldest first, whatever is removed from where, each once', () => {
    const r = new ConnectionRegistry();
    const c = Array.from({ length: 6 }, () => r.add(live()));
    r.add(c[2]!); // listed already: nothing changes
    r.remove(c[0]!); // the head
    r.remove(c[3]!); // the middle
    r.remove(c[5]!); // the tail
    r.remove(c[5]!); // not listed: nothing changes
    expect([...r]).toEqual([c[1], c[2], c[4]]);
    expect(r.size).toBe(3);
    const d = r.add(live());
    expect([...r]).toEqual([c[1], c[2], c[4], d]);
    // Closing while walking (a policy change, shutdown) walks every connection once.
    expect(r.closeAll('shutdown')).toBe(4);
    for (const x of [c[1], c[2], c[4], d]) r.remove(x!);
    expect([...r, r.size]).toEqual([0]);
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
