// OTLP export through a real egressd process: metrics.otlp names a receiver this test starts (a
// plain HTTP server that decodes the OTLP/HTTP JSON the OpenTelemetry exporter posts), and the
// connection counters arrive with the values the connections made. Off by default: a daemon
// without the key posts nothing, and nothing in src/ loads the SDK but a dynamic import.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { watchDaemon, type DaemonProcess } from '../../helpers/daemon-process.ts';
import { action, field } from '../../helpers/log-line.ts';
import { OTLP_SHUTDOWN_MS } from '../../../src/observability/otlp.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const NODE = join(ROOT, 'node_modules/.bin/node');

/** One OTLP data point as the JSON encoding writes it (opentelemetry-proto, proto3 JSON mapping). */
interface JsonPoint {
  readonly attributes?: readonly { readonly key: string; readonly value: { readonly stringValue?: string } }[];
  readonly asDouble?: number;
  readonly asInt?: string | number;
  readonly count?: string | number;
  readonly sum?: number;
  readonly bucketCounts?: readonly (string | number)[];
  readonly explicitBounds?: readonly number[];
}
interface JsonMetric {
  readonly name: string;
  readonly description?: string;
  readonly unit?: string;
  readonly sum?: { readonly dataPoints: readonly JsonPoint[]; readonly isMonotonic?: boolean; readonly aggregationTemporality?: number };
  readonly gauge?: { readonly dataPoints: readonly JsonPoint[] };
  readonly histogram?: { readonly dataPoints: readonly JsonPoint[]; readonly aggregationTemporality?: number };
}
interface JsonExport {
  readonly resourceMetrics: readonly {
    readonly resource?: { readonly attributes?: JsonPoint['attributes'] };
    readonly scopeMetrics: readonly { readonly scope?: { readonly name?: string }; readonly metrics: readonly JsonMetric[] }[];
  }[];
}

const attrs = (p: JsonPoint): Record<string, string> => Object.fromEntries((p.attributes ?? []).map((a) => [a.key, a.value.stringValue ?? '']));
const metricsOf = (e: JsonExport): JsonMetric[] => e.resourceMetrics.flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics));

/** A receiver speaking OTLP/HTTP: every POST /v1/metrics body decoded and kept, answered 200. */
async function receiver(): Promise<{ server: Server; url: string; exports: JsonExport[]; contentTypes: string[] }> {
  const exports: JsonExport[] = [];
  const contentTypes: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/metrics') {
        contentTypes.push(String(req.headers['content-type']));
        exports.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as JsonExport);
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/v1/metrics`, exports, contentTypes };
}

describe('OTLP export of the metrics', () => {
  let dir: string;
  let d: DaemonProcess | undefined;
  let server: Server | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-otlp-'));
  });
  afterEach(async () => {
    await d?.stop('SIGKILL');
    server?.close();
    d = server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (metrics: Record<string, unknown>): Promise<DaemonProcess> => {
    const file = join(dir, 'egressd.json');
    writeFileSync(
      file,
      JSON.stringify({
        listen: { http: '127.0.0.1:0', tls: '127.0.0.1:0', tcp: '127.0.0.1:0' },
        admin: { listen: '127.0.0.1:0', token: 'otlp-test' },
        metrics,
      }),
    );
    return watchDaemon(spawn(NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] }));
  };
  const tcpPort = (p: DaemonProcess): number =>
    (p.lines.find((l) => action(l) === 'started')!['listeners'] as { kind: string; port: number }[]).find((l) => l.kind === 'tcp')!.port;
  /** A connection straight to the listener: not redirected, refused and counted. */
  const direct = async (port: number): Promise<void> => {
    const c = connect({ host: '127.0.0.1', port });
    c.on('error', () => {}); // refused with a reset
    c.resume();
    await new Promise((done) => c.once('close', done));
  };

  it('pushes the connection counters with the values the connections made, and the rest of METRICS', async () => {
    const r = await receiver();
    server = r.server;
    d = await start({ otlp: { endpoint: r.url, intervalMs: 200 } });
    expect(d.lines.find((l) => action(l) === 'started')!['otlp']).toBe(r.url);
    const port = tcpPort(d);
    for (let i = 0; i < 3; i++) await direct(port);
    await d.waitFor((l) => action(l) === 'connection' && field(l, 'event.reason') === 'not-redirected' && d!.connections().length === 3);

    // Exports are cumulative: wait for one that has counted all three.
    const refused = (e: JsonExport): number =>
      (metricsOf(e).find((m) => m.name === 'egressd_connections_total')?.sum?.dataPoints ?? [])
        .filter((p) => attrs(p)['reason'] === 'not-redirected' && attrs(p)['listener'] === 'tcp' && attrs(p)['verdict'] === 'refuse')
        .reduce((a, p) => a + Number(p.asDouble ?? p.asInt ?? 0), 0);
    for (let i = 0; i < 100 && !r.exports.some((e) => refused(e) === 3); i++) await new Promise((res) => setTimeout(res, 100));
    const last = r.exports.findLast((e) => refused(e) === 3);
    expect(last, `exports seen: ${r.exports.length}`).toBeDefined();
    expect(r.contentTypes[0]).toMatch(/^application\/json/);

    const byName = new Map(metricsOf(last!).map((m) => [m.name, m]));
    const counter = byName.get('egressd_connections_total')!;
    expect(counter.sum).toMatchObject({ isMonotonic: true, aggregationTemporality: 2 });
    expect(counter.description).toMatch(/^Connections handled/);
    const duration = byName.get('egressd_connection_duration_seconds')!;
    expect(duration.unit).toBe('s');
    const point = duration.histogram!.dataPoints.find((p) => attrs(p)['listener'] === 'tcp' && attrs(p)['verdict'] === 'refuse')!;
    expect(Number(point.count)).toBe(3);
    expect(point.explicitBounds?.length).toBe((point.bucketCounts ?? []).length - 1);
    expect((point.bucketCounts ?? []).reduce((a: number, c) => a + Number(c), 0)).toBe(3);
    const build = byName.get('egressd_build_info')!.gauge!.dataPoints[0]!;
    expect(attrs(build)).toMatchObject({ version: expect.stringMatching(/^\d+\.\d+\.\d+/), node_version: process.version });
    const resource = Object.fromEntries((last!.resourceMetrics[0]!.resource?.attributes ?? []).map((a) => [a.key, a.value.stringValue]));
    expect(resource['service.name']).toBe('egressd');
    // Only egressd's own table goes out: no process_* or nodejs_* defaults.
    expect([...byName.keys()].every((n) => n.startsWith('egressd_'))).toBe(true);
  });

  // SIGTERM closes the listeners first: until the process is gone, the sandboxes' connections are
  // refused and its replacement waits (a DaemonSet's rolling update, systemd's restart). A
  // collector that takes the final export and never answers must not hold that up for the
  // export timeout (up to 30 s), nor past a grace period.
  it('stops on SIGTERM without waiting out a collector that never answers the final export', async () => {
    const held: IncomingMessage[] = [];
    server = createServer((req) => held.push(req)); // reads nothing, answers nothing
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/v1/metrics`;
    d = await start({ otlp: { endpoint: url, intervalMs: 60_000 } });
    // The helper sends SIGKILL 8 s after SIGTERM: before the exporter's own request timeout (10 s)
    // would end the export, well after OTLP_SHUTDOWN_MS.
    const code = await d.stop('SIGTERM', 8_000);
    // Stopped by itself (exit 0), after giving up on the export at its own bound, and said so.
    expect(code).toBe(0);
    expect(held.length).toBeGreaterThan(0);
    const failed = d.lines.find((l) => action(l) === 'otlp-failed');
    expect((failed?.['err'] as { message?: string } | undefined)?.message).toBe(`no answer within ${OTLP_SHUTDOWN_MS} ms`);
    expect(d.lines.some((l) => action(l) === 'stopped')).toBe(true);
  }, 40_000);

  it('is off by default: no export, no endpoint in the start line', async () => {
    const r = await receiver();
    server = r.server;
    d = await start({});
    await direct(tcpPort(d));
    await new Promise((res) => setTimeout(res, 500));
    expect(r.exports).toEqual([]);
    expect(d.lines.find((l) => action(l) === 'started')!['otlp']).toBeNull();
  });

  it('loads the OpenTelemetry SDK only through a dynamic import of observability/otlp.ts', () => {
    const files = (dir: string): string[] =>
      readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : n.endsWith('.ts') ? [join(dir, n)] : []));
    const src = files(join(ROOT, 'src'));
    const sdk = src.filter((f) => /from '@opentelemetry\//.test(readFileSync(f, 'utf8')));
    expect(sdk.map((f) => f.slice(ROOT.length + 1))).toEqual(['src/observability/otlp.ts']);
    for (const f of src) expect(readFileSync(f, 'utf8'), f).not.toMatch(/^import (?!type )[^;]*otlp\.ts'/m);
  });
});
