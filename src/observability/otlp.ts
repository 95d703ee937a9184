// OpenTelemetry export (OTLP/HTTP, JSON) of egressd's metrics, with the official OpenTelemetry
// JavaScript SDK. Optional and off by default (`metrics.otlp.endpoint`); the daemon imports this
// module only when it is on, so the SDK costs no memory otherwise.
//
// The metrics are the ones METRICS declares, read from the same prom-client registry that
// serves /metrics: a MetricProducer turns each into OTLP data at export time. Nothing is counted
// twice and the connection path does not change. Names, help, labels and bucket bounds are the
// Prometheus ones, with cumulative temporality, as Prometheus counts them.

import { ValueType, type Attributes, type HrTime } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AggregationTemporality,
  DataPointType,
  MeterProvider,
  PeriodicExportingMetricReader,
  type CollectionResult,
  type MetricData,
  type MetricProducer,
  type PushMetricExporter,
} from '@opentelemetry/sdk-metrics';
import type { Logger } from './logger.ts';
import { EGRESSD_VERSION, METRICS, type Metrics, type MetricSpec } from './metrics.ts';

export interface OtlpSettings {
  /** The OTLP/HTTP metrics endpoint, e.g. `http://collector:4318/v1/metrics`. */
  readonly endpoint: string;
  /** Milliseconds between exports. */
  readonly intervalMs: number;
}

/** A running export: `shutdown` sends what is counted one last time, then stops. */
export interface OtlpExport {
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

interface PromValue {
  readonly labels: Readonly<Record<string, string | number>>;
  readonly value: number;
  readonly metricName?: string;
}

const hrTime = (ms: number): HrTime => [Math.floor(ms / 1000), Math.round((ms % 1000) * 1e6)];
const UNITS: readonly (readonly [RegExp, string])[] = [
  [/_seconds$/, 's'],
  [/_bytes(?:_total)?$/, 'By'],
  [/_ratio$/, '1'],
];
const unitOf = (name: string): string => UNITS.find(([re]) => re.test(name))?.[1] ?? '';
const attributesOf = (labels: PromValue['labels']): Attributes => Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, String(v)]));

/** The OTLP form of one METRICS row's prom-client values, or null when it has none yet. */
export function toMetricData(spec: MetricSpec, values: readonly PromValue[], start: HrTime, end: HrTime): MetricData | null {
  if (values.length === 0) return null;
  const descriptor = { name: spec.name, description: spec.help, unit: unitOf(spec.name), valueType: ValueType.DOUBLE };
  const point = <T>(attributes: Attributes, value: T) => ({ startTime: start, endTime: end, attributes, value });
  switch (spec.type) {
    case 'counter':
      return {
        descriptor,
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.SUM,
        isMonotonic: true,
        dataPoints: values.map((v) => point(attributesOf(v.labels), v.value)),
      };
    case 'gauge':
      return {
        descriptor,
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.GAUGE,
        dataPoints: values.map((v) => point(attributesOf(v.labels), v.value)),
      };
    case 'histogram': {
      // prom-client gives cumulative `le` buckets, `_sum` and `_count` per label set; OTLP wants
      // each bucket's own count, the +Inf overflow last (opentelemetry-proto HistogramDataPoint).
      const bounds = spec.buckets ?? [];
      const series = new Map<string, { attributes: Attributes; cumulative: number[]; sum: number; count: number }>();
      for (const v of values) {
        const { le, ...rest } = v.labels;
        const attributes = attributesOf(rest);
        const key = JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : 1)));
        let s = series.get(key);
        if (!s) series.set(key, (s = { attributes, cumulative: new Array<number>(bounds.length + 1).fill(0), sum: 0, count: 0 }));
        if (v.metricName?.endsWith('_bucket')) {
          const i = le === '+Inf' ? bounds.length : bounds.indexOf(Number(le));
          if (i >= 0) s.cumulative[i] = v.value;
        } else if (v.metricName?.endsWith('_sum')) s.sum = v.value;
        else if (v.metricName?.endsWith('_count')) s.count = v.value;
      }
      return {
        descriptor,
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.HISTOGRAM,
        dataPoints: [...series.values()].map((s) =>
          point(s.attributes, {
            buckets: { boundaries: [...bounds], counts: s.cumulative.map((c, i) => c - (i === 0 ? 0 : s.cumulative[i - 1]!)) },
            sum: s.sum,
            count: s.count,
          }),
        ),
      };
    }
  }
}

/** Reads egressd's registry at each export and hands the SDK its metrics in OTLP form. */
function producerOf(metrics: Metrics, startMs: number): MetricProducer {
  const specs = new Map<string, MetricSpec>(Object.values(METRICS).map((s) => [s.name, s]));
  return {
    async collect(): Promise<CollectionResult> {
      metrics.flush();
      const json = await metrics.registry.getMetricsAsJSON();
      const end = hrTime(Date.now());
      const start = hrTime(startMs);
      const data: MetricData[] = [];
      for (const m of json) {
        const spec = specs.get(m.name);
        const d = spec ? toMetricData(spec, m.values as PromValue[], start, end) : null;
        if (d) data.push(d);
      }
      return {
        resourceMetrics: { resource: resourceFromAttributes({}), scopeMetrics: [{ scope: { name: 'egressd', version: EGRESSD_VERSION }, metrics: data }] },
        errors: [],
      };
    },
  };
}

/**
 * The OTLP exporter, saying in the log when exports start failing and when they work again (the
 * SDK itself only tells its diagnostics channel, which egressd does not install): one line per
 * change, not one per export.
 */
function reporting(exporter: PushMetricExporter, endpoint: string, log: Logger): PushMetricExporter {
  let failing = false;
  return {
    export(data, done) {
      exporter.export(data, (result) => {
        const failed = result.code !== 0; // ExportResultCode.SUCCESS
        if (failed !== failing) {
          failing = failed;
          if (failed)
            log.warn(
              { event: { action: 'otlp-export-failing' }, endpoint, err: result.error },
              'OTLP export failing; the counts are kept and sent once it works',
            );
          else log.info({ event: { action: 'otlp-export-recovered' }, endpoint }, 'OTLP export working again');
        }
        done(result);
      });
    },
    forceFlush: () => exporter.forceFlush(),
    shutdown: () => exporter.shutdown(),
  };
}

/**
 * The most the last export, on shutdown, may take before egressd stops without it. The listeners
 * are closed by then: the sandboxes' connections are refused and a replacement process waits
 * until this one is gone, so a collector that does not answer must not hold that up for the
 * exporter's request timeout (10 s).
 */
export const OTLP_SHUTDOWN_MS = 3000;

/** Starts pushing egressd's metrics to `settings.endpoint` every `settings.intervalMs`. */
export function startOtlpExport(metrics: Metrics, settings: OtlpSettings, log: Logger): OtlpExport {
  const exporter = new OTLPMetricExporter({ url: settings.endpoint, temporalityPreference: AggregationTemporality.CUMULATIVE });
  const reader = new PeriodicExportingMetricReader({
    exporter: reporting(exporter, settings.endpoint, log),
    exportIntervalMillis: settings.intervalMs,
    exportTimeoutMillis: Math.min(settings.intervalMs, 30_000),
    metricProducers: [producerOf(metrics, Date.now())],
  });
  const provider = new MeterProvider({
    resource: resourceFromAttributes({ 'service.name': 'egressd', 'service.version': EGRESSD_VERSION }),
    readers: [reader],
  });
  return {
    forceFlush: () => provider.forceFlush(),
    shutdown: () => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${OTLP_SHUTDOWN_MS} ms`)), OTLP_SHUTDOWN_MS);
      });
      return Promise.race([provider.shutdown(), late]).finally(() => clearTimeout(timer));
    },
  };
}
