// prom-client's default metrics, with the event loop's delay sampled only while egressd serves.
// prom-client's own nodejs_eventloop_lag_* gauges read a perf_hooks histogram whose timer fires
// for the life of the process (every 10 ms by default; 50 here since 11d1982): an idle egressd
// woke 20-100 times a second to measure a loop nothing waited on, on every one of a fleet's
// hosts. Here the same gauges (names, help, aggregators) read a histogram sampled every
// LAG_RESOLUTION_MS, but only from a connection's accept (Metrics' batch, at most once per
// 100 ms) until LAG_IDLE_MS after the last one: the figures while serving are what the always-on
// histogram gave, and an idle egressd sleeps. A scrape interval in which nothing was sampled
// reports 0: nothing waited on the loop.

import { createRequire } from 'node:module';
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import type { Gauge, Registry } from 'prom-client';

const promRequire = createRequire(import.meta.url);
const GaugeClass = promRequire('prom-client/lib/gauge') as typeof Gauge;
/** prom-client's default metric modules by name (lib/defaultMetrics.js), each `(registry, config) => void`. */
const DEFAULT_METRICS = (promRequire('prom-client/lib/defaultMetrics') as { metricsList: string[] }).metricsList;

/**
 * How often the loop's delay is sampled while serving, ms (prom-client's eventLoopMonitoringPrecision;
 * its default is 10): each sample is a timer that wakes the loop, so a slow trickle of
 * connections, which keeps sampling on, pays for 20 a second, not 100. A delay figure includes
 * it (an unburdened loop shows about 50 ms), and a stall of 50 ms or more is always seen.
 */
export const LAG_RESOLUTION_MS = 50;
/** How long after the last connection the loop's delay is still sampled. */
export const LAG_IDLE_MS = 10_000;

/**
 * The event loop's delay, sampled only while egressd is busy; read and reset by a scrape. Each
 * sample is the time between two ticks of a LAG_RESOLUTION_MS interval timer, as Node's
 * monitorEventLoopDelay records it (so an unburdened loop shows about LAG_RESOLUTION_MS). That histogram
 * cannot be paused: re-enabled, it records the whole pause as one delay, and a reset would lose
 * the samples no scrape has read yet. Hence a timer of our own that starts each busy spell afresh.
 */
export class LoopDelay {
  readonly #samples: RecordableHistogram = createHistogram();
  readonly #resolutionMs: number;
  readonly #idleMs: number;
  #lastBusy = 0;
  #lastTick = 0;
  #timer: NodeJS.Timeout | null = null;

  /** `resolutionMs` and `idleMs` (LAG_RESOLUTION_MS and LAG_IDLE_MS by default) are for tests. */
  constructor(o: { resolutionMs?: number; idleMs?: number } = {}) {
    this.#resolutionMs = o.resolutionMs ?? LAG_RESOLUTION_MS;
    this.#idleMs = o.idleMs ?? LAG_IDLE_MS;
  }

  /** Whether the sampling timer runs now. */
  get sampling(): boolean {
    return this.#timer !== null;
  }

  /** Egressd is serving: sample the loop's delay from now until LAG_IDLE_MS after the last call. Cheap to call often. */
  busy(): void {
    this.#lastBusy = performance.now();
    if (this.#timer !== null) return;
    this.#lastTick = this.#lastBusy;
    this.#timer = setInterval(this.#tick, this.#resolutionMs).unref();
  }

  readonly #tick = (): void => {
    const now = performance.now();
    this.#samples.record(Math.max(1, Math.round((now - this.#lastTick) * 1e6)));
    this.#lastTick = now;
    if (now - this.#lastBusy >= this.#idleMs) {
      clearInterval(this.#timer!);
      this.#timer = null;
    }
  };

  /** The delays sampled since the last read, in nanoseconds (null when there were none), then forgets them. */
  read(): { min: number; max: number; mean: number; stddev: number; p50: number; p90: number; p99: number } | null {
    const h = this.#samples;
    const r =
      h.count === 0 ? null : { min: h.min, max: h.max, mean: h.mean, stddev: h.stddev, p50: h.percentile(50), p90: h.percentile(90), p99: h.percentile(99) };
    h.reset();
    return r;
  }
}

/**
 * Registers prom-client's default process_* and nodejs_* metrics on `registry`, with the
 * nodejs_eventloop_lag_* gauges read from `delay` instead of prom-client's always-running
 * histogram. nodejs_eventloop_lag_seconds is prom-client's own measure: how long a setImmediate
 * queued at one scrape waited, reported at the next.
 */
export function registerDefaultMetrics(registry: Registry, delay: LoopDelay): void {
  for (const name of DEFAULT_METRICS) {
    if (name === 'eventLoopLag') continue;
    (promRequire(`prom-client/lib/metrics/${name}`) as (r: Registry, c: object) => void)(registry, { eventLoopMonitoringPrecision: LAG_RESOLUTION_MS });
  }
  const gauge = (name: string, help: string, aggregator: 'average' | 'min' | 'max', collect?: () => void): Gauge =>
    new GaugeClass({ name, help, registers: [registry], aggregator, ...(collect ? { collect } : {}) });
  // Registered first: a scrape reads the families in order, and its collect fills the others.
  const lag: Gauge = gauge('nodejs_eventloop_lag_seconds', 'Lag of event loop in seconds.', 'average', () => {
    const start = process.hrtime.bigint();
    setImmediate(() => lag.set(Number(process.hrtime.bigint() - start) / 1e9));
    const r = delay.read();
    min.set(r ? r.min / 1e9 : 0);
    max.set(r ? r.max / 1e9 : 0);
    mean.set(r ? r.mean / 1e9 : 0);
    stddev.set(r ? r.stddev / 1e9 : 0);
    p50.set(r ? r.p50 / 1e9 : 0);
    p90.set(r ? r.p90 / 1e9 : 0);
    p99.set(r ? r.p99 / 1e9 : 0);
  });
  const min = gauge('nodejs_eventloop_lag_min_seconds', 'The minimum recorded event loop delay.', 'min');
  const max = gauge('nodejs_eventloop_lag_max_seconds', 'The maximum recorded event loop delay.', 'max');
  const mean = gauge('nodejs_eventloop_lag_mean_seconds', 'The mean of the recorded event loop delays.', 'average');
  const stddev = gauge('nodejs_eventloop_lag_stddev_seconds', 'The standard deviation of the recorded event loop delays.', 'average');
  const p50 = gauge('nodejs_eventloop_lag_p50_seconds', 'The 50th percentile of the recorded event loop delays.', 'average');
  const p90 = gauge('nodejs_eventloop_lag_p90_seconds', 'The 90th percentile of the recorded event loop delays.', 'average');
  const p99 = gauge('nodejs_eventloop_lag_p99_seconds', 'The 99th percentile of the recorded event loop delays.', 'average');
}
