// Reading egressd's JSON log lines by their ECS field names (docs/logs.md): `field(l,
// 'source.ip')` walks the nested objects; the ecs-logging keys written dotted at the top level
// (`log.level`, `ecs.version`) are read as they are.

import { CONNECTION_FIELDS } from '../../src/observability/connection-log.ts';

/** One parsed log line. */
export interface LogLine {
  readonly [key: string]: unknown;
}

/** The value of the dotted field `name` in `l`, or undefined. */
export function field(l: LogLine, name: string): unknown {
  if (name in l) return l[name];
  let at: unknown = l;
  for (const part of name.split('.')) {
    if (typeof at !== 'object' || at === null) return undefined;
    at = (at as Record<string, unknown>)[part];
  }
  return at;
}

/**
 * The ECS field sets that are objects (ECS 8.x): an index that maps ECS rejects a whole line in
 * which one of them is a string or a number (Elasticsearch: "object mapping for [source] tried to
 * parse field [source] as object, but found a concrete value").
 */
const ECS_OBJECTS = new Set([
  'agent',
  'as',
  'client',
  'cloud',
  'code_signature',
  'container',
  'data_stream',
  'destination',
  'device',
  'dll',
  'dns',
  'ecs',
  'elf',
  'email',
  'error',
  'event',
  'faas',
  'file',
  'geo',
  'group',
  'hash',
  'host',
  'http',
  'interface',
  'log',
  'network',
  'observer',
  'orchestrator',
  'organization',
  'os',
  'package',
  'pe',
  'process',
  'registry',
  'related',
  'risk',
  'rule',
  'server',
  'service',
  'source',
  'span',
  'threat',
  'tls',
  'trace',
  'transaction',
  'url',
  'user',
  'user_agent',
  'vlan',
  'vulnerability',
  'x509',
]);

/** The top-level keys of `l` that an ECS mapping would reject: an ECS field set given as anything but an object. */
export function ecsConflicts(l: LogLine): string[] {
  return Object.keys(l).filter((k) => ECS_OBJECTS.has(k) && (typeof l[k] !== 'object' || l[k] === null || Array.isArray(l[k])));
}

/** What the line records: `event.action` (`started`, `connection`, `dns-query`, …). */
export const action = (l: LogLine): unknown => field(l, 'event.action');

/** Whether `l` is a connection line, optionally also matching `pred`. */
export const isConnection = (l: LogLine): boolean => action(l) === 'connection';

/** A connection line's destination as `address:port` (IPv6 in brackets), or null when it had none. */
export function destinationOf(l: LogLine): string | null {
  const ip = field(l, 'destination.ip');
  if (typeof ip !== 'string') return null;
  return `${ip.includes(':') ? `[${ip}]` : ip}:${String(field(l, 'destination.port'))}`;
}

/**
 * A connection line as `{ 'dotted.name': value }` over every field CONNECTION_FIELDS declares,
 * absent ones as undefined: `expect(connectionFields(l)).toMatchObject({ 'egressd.upstream.ip':
 * undefined })` then says "nothing was dialed".
 */
export function connectionFields(l: LogLine): Record<string, unknown> {
  return Object.fromEntries(CONNECTION_FIELDS.map((f) => [f.name, field(l, f.name)]));
}
