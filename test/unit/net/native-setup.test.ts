// How the native set-up hands accepted connections to the pipeline: in the report's own call
// while nothing waits (the verdict and the dial command leave with the report that brought the
// first flight), and past ACCEPT_CHUNK in one batch of reports, a chunk per turn of the event loop
// (a flood must leave /healthz its turns). The addon is a recording stand-in: no loop runs here.

import { setImmediate as turn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import type { DataPlaneAddon } from '../../../src/net/native-splice.ts';
import { NativeSetup, type NativeClient } from '../../../src/net/native-setup.ts';

const EV_ACCEPTED = 1;

function plane(): { setup: NativeSetup; handled: number[]; tag: number; accept: (id: number) => void } {
  const addon = { listen: () => 4430, abort: () => {}, setPolicyVersion: () => {} } as unknown as DataPlaneAddon;
  const setup = new NativeSetup(addon, 1);
  const handled: number[] = [];
  const { tag } = setup.listen(
    'tls',
    { host: '127.0.0.1', port: 0, text: '127.0.0.1:0' },
    {
      onAccept: (c: NativeClient) => handled.push(c.id),
      onShed: () => {},
    },
  );
  const accept = (id: number): void => setup.event(EV_ACCEPTED, id, 0, tag, 0, 0, 0, '198.18.0.2', 40000 + id, '198.18.1.2', 443, null);
  return { setup, handled, tag, accept };
}

describe('NativeSetup hands accepted connections over', () => {
  it('in the report’s own call when nothing waits', () => {
    const p = plane();
    p.accept(1);
    expect(p.handled).toEqual([1]);
  });

  it('64 of one batch at once, the rest a chunk per turn, in order; the next batch at once again', async () => {
    const p = plane();
    for (let id = 1; id <= 150; id++) p.accept(id);
    expect(p.handled).toEqual(Array.from({ length: 64 }, (_, i) => i + 1));
    // A report arriving while others wait goes behind them.
    await Promise.resolve();
    p.accept(151);
    expect(p.handled.length).toBe(64);
    await turn();
    expect(p.handled.length).toBe(128);
    await turn();
    expect(p.handled).toEqual(Array.from({ length: 151 }, (_, i) => i + 1));
    await turn();
    p.accept(152);
    expect(p.handled.at(-1)).toBe(152);
  });
});
