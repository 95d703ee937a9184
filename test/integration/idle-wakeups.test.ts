// An idle egressd sleeps (issue 12, a fleet of hundreds of hosts): no timer wakes its main thread
// many times a second while no connection comes. What may still wake it, each rarely: the host
// addresses' refresh (2 s; a new address must be protected), the memory guard at rest (2 s), the
// admission sweep (10 s). Counted as the main thread's voluntary context switches (each wake-up
// from epoll_wait is one), not by time. Before: prom-client's event-loop-delay timer (100/s, then
// 20/s), the memory guard (4/s) and the shed log's timer (1/s).

import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { API_TOKEN, startApiDaemon, type ApiDaemon } from '../helpers/api-daemon.ts';

/** Voluntary context switches of one thread of `pid` (the main thread when `tid` is the pid). */
function switches(pid: number, tid: number): number {
  return Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1]);
}
const allSwitches = (pid: number): number => readdirSync(`/proc/${pid}/task`).reduce((n, t) => n + (switches(pid, Number(t)) || 0), 0);

describe.runIf(process.platform === 'linux')('an idle egressd', () => {
  let a: ApiDaemon | undefined;
  afterEach(async () => {
    await a?.stop();
    a = undefined;
  });

  it('wakes its main thread at most a few times a second, and still reports the event loop lag at a scrape', async () => {
    a = await startApiDaemon();
    const pid = a.d.child.pid!;
    // Start-up's own work (the memory hand-back, the first samples) is over.
    await sleep(2500);
    const seconds = 4;
    const main0 = switches(pid, pid);
    const all0 = allSwitches(pid);
    await sleep(seconds * 1000);
    const main = switches(pid, pid) - main0;
    const all = allSwitches(pid) - all0;
    expect(main / seconds, `main-thread wake-ups: ${main} in ${seconds} s`).toBeLessThanOrEqual(4);
    expect(all / seconds, `every thread's wake-ups: ${all} in ${seconds} s`).toBeLessThanOrEqual(8);

    const metrics = await (await fetch(`${a.admin}/metrics`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).text();
    for (const s of ['', '_min', '_max', '_mean', '_stddev', '_p50', '_p90', '_p99'])
      expect(metrics).toMatch(new RegExp(`^nodejs_eventloop_lag${s}_seconds \\S+$`, 'm'));
  }, 30_000);

  // With a state, its writer thread follows other processes' commits by a watch on the WAL,
  // not by polling: one look a second in case a watch event is lost (docs/config.md).
  it('with a state, still sleeps: every thread together at most a few times a second', async () => {
    a = await startApiDaemon({}, { state: true });
    const pid = a.d.child.pid!;
    await sleep(2500);
    const seconds = 4;
    const all0 = allSwitches(pid);
    await sleep(seconds * 1000);
    const all = allSwitches(pid) - all0;
    expect(all / seconds, `every thread's wake-ups: ${all} in ${seconds} s`).toBeLessThanOrEqual(8);
  }, 30_000);
});
