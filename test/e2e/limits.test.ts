// Issue 11, parts 1 and 2, on the real iptables path: one sandbox floods egressd with idle,
// silent and dripping connections while another downloads and makes short requests. Bounded:
// a few thousand connections held for seconds. The timings the issue states (throughput
// ≥ 0.8x, /healthz within 100 ms, recovery within 1 s) are measured by bench/flood.ts;
// these tests pin the behaviour: limits held, the excess refused with its reason, the other
// sandbox served, the admin listener answering, egressd alive.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createRig, rigUnavailableReason, type Rig } from '../helpers/netns-rig.ts';
import { floodScenario, memoryCgroupDir, metricSum } from '../helpers/flood-scenario.ts';
import { action, field } from '../helpers/log-line.ts';

const skip = rigUnavailableReason();
/** The memory test's headroom above egressd's idle usage (docs/config.md, limits.memory). */
const HEADROOM = 32 * 1_048_576;
if (skip) console.warn(`e2e limits skipped: ${skip}`);

describe.skipIf(skip !== null)('limits under a flood, through iptables REDIRECT', () => {
  let rig: Rig;
  beforeEach(async () => {
    rig = await createRig();
  }, 60_000);
  afterEach(async () => {
    await rig?.teardown();
  }, 60_000);

  it('holds sandbox 1 to its limits and refuses its excess with sandbox-limit, while sandbox 2 is served in full and /healthz answers', async () => {
    const r = await floodScenario(rig, {
      flood: { count: 3000, holdMs: 12_000 },
      limits1: { connections: 300, undecided: 100, perSecond: 100_000, burst: 100_000 },
      download: 20 * 1_048_576,
      requests: 20,
      // The 300 admitted stay until the flood lets go (silent and dripping ones are not judged
      // after the default 1 s): otherwise each one judged frees a place that a later arrival of
      // a slow-opening flood takes, and fewer than 2,700 are refused (2,695 on a loaded machine).
      config: { peek: { timeoutMs: 30_000, firstByteTimeoutMs: 20_000 } },
    });
    expect(r.died).toBeNull();
    const f = r.flood!;
    expect(f['error']).toBeUndefined();
    expect(f['attempted']).toBe(3000);
    // Never more than the sandbox's limits open at once; the rest refused at once.
    expect(f['stillOpen']).toBeLessThanOrEqual(300);
    expect(f['closedByPeer']).toBeGreaterThanOrEqual(3000 - 300 - f['connectFailed']);
    expect(r.sandbox1!['connections'].open).toBeLessThanOrEqual(300);
    expect(r.sandbox1!['connections'].undecided).toBeLessThanOrEqual(100);
    expect(r.sandbox1!['connections'].limits).toEqual({ connections: 300, undecided: 100, perSecond: 100_000, burst: 100_000 });
    expect(metricSum(r.metrics, 'egressd_connections_total', { reason: 'sandbox-limit' })).toBeGreaterThanOrEqual(3000 - 300 - f['connectFailed']);
    expect(r.lines.some((l) => action(l) === 'connections-shed' && l['sandbox'] === 'flood-1' && l['reason'] === 'sandbox-limit')).toBe(true);
    // Sandbox 2: every request and the whole download.
    expect(r.workload['download'], JSON.stringify(r.workload)).toMatchObject({ ok: true, bytes: 20 * 1_048_576 });
    expect(r.workload['short']).toMatchObject({ total: 20, ok: 20 });
    // The admin listener answered every probe.
    expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
    expect(r.probe['probes']).toBeGreaterThan(10);
    // Once the flood closes, sandbox 1 is admitted again.
    expect(f['recoveryMs']).not.toBeNull();
  }, 120_000);

  it('under RLIMIT_NOFILE 256, keeps the admin listener answering and the other sandbox served, refusing past the descriptor budget with global-limit', async () => {
    const r = await floodScenario(rig, { flood: { count: 600, holdMs: 8000 }, nofile: 256, download: 4 * 1_048_576, requests: 10 });
    expect(r.died).toBeNull();
    const limits = r.limitsApi!;
    expect(limits['nofileSoft']).toBe(256);
    expect(limits['globalConnections']).toBeGreaterThan(10);
    expect(limits['globalConnections']).toBeLessThan(128);
    // Sandbox 1 never holds more than its share of the budget; the rest is refused at once.
    expect(r.flood!['stillOpen']).toBeLessThanOrEqual(limits['sandboxShare']);
    expect(metricSum(r.metrics, 'egressd_connections_total', { reason: 'global-limit' })).toBeGreaterThan(0);
    // Refused by admission, never by accept(2) failing for want of descriptors.
    expect(metricSum(r.metrics, 'egressd_accept_errors_total')).toBe(0);
    expect(r.workload['download'], JSON.stringify(r.workload)).toMatchObject({ ok: true });
    expect(r.workload['short']).toMatchObject({ total: 10, ok: 10 });
    expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
    expect(r.flood!['recoveryMs']).not.toBeNull();
  }, 120_000);

  // Refused connections linger after their answer (refuse.ts) and hold a descriptor each while
  // they do. Sandbox 1 opens TLS connections to a refused name and never reads or closes them:
  // its lingering refusals must stay within its share of the descriptor budget (the rest closed
  // right after the alert), so sandbox 2 is still admitted and served.
  it('under RLIMIT_NOFILE 256, bounds the refusals one sandbox keeps lingering, so the other sandbox is served', async () => {
    const r = await floodScenario(rig, {
      flood: { count: 10_000, holdMs: 8000, kinds: 'mute', sni: 'refused.test' },
      nofile: 256,
      download: 4 * 1_048_576,
      requests: 10,
    });
    expect(r.died).toBeNull();
    const limits = r.limitsApi!;
    expect(limits['nofileSoft']).toBe(256);
    expect(metricSum(r.metrics, 'egressd_connections_total', { reason: 'default-block' })).toBeGreaterThan(limits['globalConnections']);
    expect(r.workload['download'], JSON.stringify(r.workload)).toMatchObject({ ok: true, bytes: 4 * 1_048_576 });
    expect(r.workload['short'], JSON.stringify(r.workload)).toMatchObject({ total: 10, ok: 10 });
    expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
    // Sandbox 1 lingers on half its share of the budget's descriptors at most (a lingering
    // refusal holds one, a connection two); the lingers past it were given up.
    expect(metricSum(r.metrics, 'egressd_admitted_connections', { state: 'lingering' })).toBeLessThanOrEqual(limits['sandboxShare']);
    expect(metricSum(r.metrics, 'egressd_refusal_lingers_given_up_total', { scope: 'sandbox' })).toBeGreaterThan(0);
    // Nor did the flood's accepts take the descriptors (native loops: their accept slots; 1,151
    // EMFILE before them).
    expect(metricSum(r.metrics, 'egressd_accept_errors_total')).toBe(0);
  }, 120_000);

  // Sandbox 1 opens thousands of connections as fast as it can, silent ones and whole hellos,
  // while sandbox 2 downloads and makes short requests from the start. Each native loop may hold
  // only its accept slots of connections admission has not answered (docs/config.md): without
  // them the loops took every free descriptor during the burst (EMFILE), and whoever connected
  // then, sandbox 2 included, was reset as global-limit. Both data paths: no accept(2) fails,
  // and sandbox 2 is refused nothing.
  it("under RLIMIT_NOFILE 256, one sandbox's accept flood takes no descriptor the other needs: no accept fails, the other's connections are all spliced", async () => {
    const r = await floodScenario(rig, {
      flood: { count: 4000, holdMs: 6000, kinds: 'silent,hello' },
      nofile: 256,
      download: 4 * 1_048_576,
      requests: 40,
      workloadAfterMs: 0,
      config: { metrics: { sandboxLabel: true } },
    });
    expect(r.died).toBeNull();
    const limits = r.limitsApi!;
    expect(limits['nofileSoft']).toBe(256);
    const refused = (sandbox: string, reason: string): number => metricSum(r.metrics, 'egressd_connections_total', { reason, sandbox });
    const figures = JSON.stringify({
      emfile: metricSum(r.metrics, 'egressd_accept_errors_total'),
      pauses: metricSum(r.metrics, 'egressd_accept_pauses_total', { reason: 'cap' }),
      flood: r.flood,
      workload: r.workload,
    });
    // The flood was refused at admission, by its own limits and share.
    expect(refused('flood-1', 'sandbox-limit') + refused('flood-1', 'global-limit'), figures).toBeGreaterThan(0);
    // accept(2) never failed, so no connection was reset for want of descriptors.
    expect(metricSum(r.metrics, 'egressd_accept_errors_total'), figures).toBe(0);
    expect(
      r.lines.filter((l) => action(l) === 'accept-failed'),
      figures,
    ).toEqual([]);
    // Sandbox 2: nothing refused, every request and the whole download spliced.
    for (const reason of ['global-limit', 'sandbox-limit', 'overload']) expect(refused('calm-2', reason), `${reason}; ${figures}`).toBe(0);
    expect(r.workload['download'], figures).toMatchObject({ ok: true, bytes: 4 * 1_048_576 });
    expect(r.workload['short'], figures).toMatchObject({ total: 40, ok: 40 });
    expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
    expect(r.flood!['recoveryMs'], figures).not.toBeNull();
    // The loops that accept held the flood in the kernel's queue rather than take more.
    if ((process.env['EGRESSD_DATA_PLANE'] ?? 'native-setup') === 'native-setup')
      expect(metricSum(r.metrics, 'egressd_accept_pauses_total', { reason: 'cap' }), figures).toBeGreaterThan(0);
    console.log(`flood under RLIMIT_NOFILE 256: ${figures}`);
  }, 120_000);

  // A name with many addresses that never answer: each dial staggers attempts (RFC 8305), and
  // each attempt in flight is a descriptor of its own. Before admission counted them, sandbox
  // 1's share of connections dialing 16 silent addresses each took every descriptor egressd had
  // (about 40 connections × 17), and whatever came next failed for want of one, sandbox 2's
  // connections included. Now the attempts past a connection's first come out of the same budget
  // and share, and a dial granted none tries its addresses one at a time.
  it("under RLIMIT_NOFILE 256, one sandbox's dials to a name of 16 silent addresses take no descriptor the other needs", async () => {
    const silent = Array.from({ length: 16 }, (_, i) => `198.18.1.${96 + i}`);
    await rig.servers(silent);
    // Served, then made silent: their SYNs are dropped, so every attempt waits.
    const drop = await rig.execIn('internet', 'iptables', ['-I', 'INPUT', '-p', 'tcp', '-d', '198.18.1.96/28', '-j', 'DROP']);
    expect(drop.code, drop.stderr).toBe(0);
    const r = await floodScenario(rig, {
      flood: { count: 400, holdMs: 8000, kinds: 'hello', sni: 'silent.test' },
      names1: { 'silent.test': silent },
      nofile: 256,
      download: 4 * 1_048_576,
      requests: 40,
      workloadAfterMs: 2000,
      config: { metrics: { sandboxLabel: true } },
    });
    expect(r.died).toBeNull();
    const refused = (sandbox: string, reason: string): number => metricSum(r.metrics, 'egressd_connections_total', { reason, sandbox });
    const floodLines = r.lines.filter(
      (l) => action(l) === 'connection' && field(l, 'egressd.sandbox') === 'flood-1' && Array.isArray(field(l, 'egressd.upstream.tried')),
    );
    const tried = floodLines.flatMap((l) => field(l, 'egressd.upstream.tried') as string[]);
    const figures = JSON.stringify({
      emfile: metricSum(r.metrics, 'egressd_accept_errors_total'),
      floodDials: floodLines.length,
      attempts: tried.length,
      other: tried.filter((t) => t.endsWith(' other')).length,
      flood: r.flood,
      workload: r.workload,
    });
    // The admin API answered (it did not, out of descriptors, before the attempts were counted).
    expect(r.limitsApi?.['nofileSoft'], figures).toBe(256);
    // The flood dialed, several addresses a dial, and no attempt failed for want of a descriptor.
    expect(floodLines.length, figures).toBeGreaterThan(0);
    expect(tried.length, figures).toBeGreaterThan(floodLines.length);
    expect(
      tried.filter((t) => !/ (timeout|cancelled)$/.test(t)),
      figures,
    ).toEqual([]);
    expect(metricSum(r.metrics, 'egressd_accept_errors_total'), figures).toBe(0);
    // The budget bit: some dials were granted fewer attempts than addresses.
    expect(metricSum(r.metrics, 'egressd_dial_attempts_withheld_total'), figures).toBeGreaterThan(0);
    // Sandbox 2: nothing refused, every request and the whole download spliced.
    for (const reason of ['global-limit', 'sandbox-limit', 'overload']) expect(refused('calm-2', reason), `${reason}; ${figures}`).toBe(0);
    expect(r.workload['download'], figures).toMatchObject({ ok: true, bytes: 4 * 1_048_576 });
    expect(r.workload['short'], figures).toMatchObject({ total: 40, ok: 40 });
    expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
    console.log(`silent addresses under RLIMIT_NOFILE 256: ${figures}`);
  }, 120_000);

  // The memory cgroup's limit is egressd's usage serving at rest (after one quiet round of sandbox 2's
  // traffic; about 45-50 MiB here) plus HEADROOM:
  // less than the flood would hold (12,000 connections, some 5,300 of them held open). Sandbox 1
  // is unlimited, so only the memory guard at its defaults (shedAt 0.8) stands between the flood
  // and the OOM killer. The limit is set after start, as an in-place resize does, so V8 never
  // sees it and sizes its young generation for the machine: the guard's shrink must hand that
  // back, or shedding outlives the flood (src/limits/overload.ts). Measured over 3 runs: peak
  // 0.83–0.85 of the limit, 1,552–3,972 connections shed, no critical reset, no OOM kill.
  it.skipIf(memoryCgroupDir() === null)(
    `in a memory cgroup ${HEADROOM / 1_048_576} MiB above its serving baseline, at the default shedAt, sheds with overload and is never OOM-killed`,
    async () => {
      const r = await floodScenario(rig, {
        flood: { count: 12_000, holdMs: 10_000 },
        limits1: { connections: 100_000, undecided: 100_000, perSecond: 1_000_000, burst: 1_000_000 },
        memoryHeadroom: HEADROOM,
        download: 1_048_576,
        requests: 5,
      });
      const peak = `peak ${r.peakMemory} of ${r.memoryLimit}`;
      expect(r.died, `egressd died; ${peak}`).toBeNull();
      // The kernel never had to act: the cgroup's OOM killer stayed idle, whatever it would have killed.
      expect(r.oomKills, peak).toBe(0);
      expect(metricSum(r.metrics, 'egressd_connections_total', { reason: 'overload' })).toBeGreaterThan(0);
      expect(r.lines.some((l) => action(l) === 'overload-start')).toBe(true);
      // As shedding starts, the heap is shrunk and the memory handed back shows in the cgroup.
      const shrunk = r.lines.filter((l) => action(l) === 'memory-shrunk');
      expect(shrunk.length, peak).toBeGreaterThan(0);
      expect(Math.min(...shrunk.map((l) => Number(l['pressureAfter']) - Number(l['pressureBefore'])))).toBeLessThan(0);
      expect(r.probe['failed'], JSON.stringify(r.probe)).toBe(0);
      // Once the flood closes, the memory it held is handed back and new connections are
      // admitted again: shedding does not outlive the flood.
      // On failure, the guard's own account: whether shedding outlived the flood, and at what pressure.
      const guard = r.lines
        .filter((l) => ['overload-start', 'overload-end', 'memory-shrunk'].includes(String(action(l))))
        .map((l) => ({ at: l['@timestamp'], action: action(l), pressure: l['pressure'] ?? `${l['pressureBefore']}→${l['pressureAfter']}`, ms: l['ms'] }));
      expect(r.flood!['recoveryMs'], `${JSON.stringify(r.flood)}; ${peak}; ${JSON.stringify(guard)}`).not.toBeNull();
      console.log(
        `memory flood: ${JSON.stringify({ recoveryMs: r.flood!['recoveryMs'], shed: metricSum(r.metrics, 'egressd_connections_total', { reason: 'overload' }), shrinks: shrunk.length })}; ${peak}`,
      );
    },
    120_000,
  );
});
