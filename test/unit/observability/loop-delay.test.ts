// The event loop's delay (nodejs_eventloop_lag_*) is sampled only while egressd serves: from a
// busy() (a connection's batch) until the idle time after the last one, so an idle daemon is
// not woken to measure it. Each busy spell starts afresh: the idle gap before it is not a delay.

import { describe, expect, it } from 'vitest';
import { LoopDelay } from '../../../src/observability/loop-delay.ts';
import { Metrics } from '../../../src/observability/metrics.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = 1e6;

describe('LoopDelay', () => {
  it('samples nothing until busy, then every tick until the idle time after the last busy', async () => {
    const d = new LoopDelay({ resolutionMs: 10, idleMs: 150 });
    await sleep(60);
    expect(d.sampling).toBe(false);
    expect(d.read()).toBeNull();
    d.busy();
    expect(d.sampling).toBe(true);
    await sleep(80);
    d.busy();
    await sleep(80);
    expect(d.sampling, 'busy again within the idle time').toBe(true);
    const r = d.read()!;
    expect(r).not.toBeNull();
    expect(r.min).toBeGreaterThanOrEqual(9 * ms);
    const deadline = Date.now() + 3000;
    while (d.sampling && Date.now() < deadline) await sleep(20);
    expect(d.sampling).toBe(false);
  });

  it('sees a stall while busy, and not the idle gap before a spell', async () => {
    const d = new LoopDelay({ resolutionMs: 10, idleMs: 60 });
    d.busy();
    await sleep(30);
    const until = performance.now() + 120;
    while (performance.now() < until);
    await sleep(30);
    expect(d.read()!.max).toBeGreaterThanOrEqual(120 * ms);
    while (d.sampling) await sleep(20);
    d.read();
    await sleep(300);
    d.busy();
    await sleep(60);
    // Counted, the pause would be one sample of 300 ms or more (the sleep, after the last tick);
    // anything under it is the loop's own delay, which a loaded machine makes longer.
    expect(d.read()!.max, 'the 300 ms without sampling is no delay').toBeLessThan(300 * ms);
  });
});

describe("the registry's nodejs_eventloop_lag_* gauges", () => {
  it('are all exported, read 0 with nothing sampled, and the delay once connections come', async () => {
    const m = new Metrics();
    const names = ['', '_min', '_max', '_mean', '_stddev', '_p50', '_p90', '_p99'].map((s) => `nodejs_eventloop_lag${s}_seconds`);
    const value = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await m.registry.metrics())?.[1]);
    for (const n of names) expect(Number.isFinite(await value(n)), n).toBe(true);
    expect(m.loopDelay.sampling).toBe(false);
    expect(await value('nodejs_eventloop_lag_p50_seconds')).toBe(0);
    m.accepted('tcp');
    expect(m.loopDelay.sampling).toBe(true);
    await sleep(250);
    expect(await value('nodejs_eventloop_lag_p50_seconds')).toBeGreaterThanOrEqual(0.045);
    m.flush();
  });
});
