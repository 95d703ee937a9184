// The one log line per connection, in Elastic Common Schema (ECS) field names. Every field is
// declared once, in CONNECTION_FIELDS: its name, type, meaning and how it is read from the
// connection's outcome record. The line is built from that table (ecs-line.ts), docs/logs.md's
// field list is generated from it (npm run docs:tables), and the tests read lines by the same names.
//
// Shape: nested objects (`"source":{"ip":…,"port":…}`), which ECS accepts as equal to dotted
// keys. pino merges objects, jq and JavaScript readers walk them (`.source.ip`), fields that
// share a prefix are written once, and a reader never meets the same field both ways. The
// ecs-logging spec's own top-level keys (`@timestamp`, `log.level`, `message`, `ecs.version`)
// are written dotted, as that spec asks, by the logger (observability/logger.ts) for every line.
// Names the client sent (SNI, Host) are values of their own fields, never part of `message`.

import type { ConnectionOutcome } from '../net/outcome.ts';
import { pino } from 'pino';
import { ecsIp, lineBuilder, networkTypeOf, outcomeOf, zoneOf, type LogField } from './ecs-line.ts';
import { lineBatchOf, timestampAt, type Logger } from './logger.ts';
import { rulesetOf } from '../policy/verdict.ts';

/** The ECS version whose field definitions the lines follow (`ecs.version` on every line). */
export const ECS_VERSION = '8.11.0';

const NS_PER_MS = 1_000_000;
const ns = (ms: number | undefined): number | undefined => (ms === undefined ? undefined : Math.round(ms * NS_PER_MS));
// A would-refuse connection (report-only mode) was carried: allowed, as far as the network saw.
const EVENT_TYPE = {
  allow: ['connection', 'allowed'],
  'would-refuse': ['connection', 'allowed'],
  refuse: ['connection', 'denied'],
  error: ['connection', 'error'],
} as const;
const CATEGORY = ['network'] as const;

/** The most of a raw name a line keeps: a name has at most 253 characters (RFC 1035 §2.3.4). */
const RAW_NAME_LOGGED = 256;

/**
 * A raw name as the line keeps it. The client chooses it, up to the peek's 16 KiB, and a control
 * byte is written as a six-character JSON escape: whole, one 16 KB hello made a 96 KB line.
 */
function rawNameLogged(raw: string | undefined): string | undefined {
  return raw !== undefined && raw.length > RAW_NAME_LOGGED ? `${raw.slice(0, RAW_NAME_LOGGED)}…` : raw;
}

/** The most ALPN protocols a line keeps, and of each its first characters: real lists hold a few short ids (`h2`, `http/1.1`). */
const ALPN_LOGGED = 16;
const ALPN_NAME_LOGGED = 32;

/**
 * The ALPN list as the line keeps it. The client chooses it, up to the peek's 16 KiB, as it does
 * the name: whole, 61 protocols of 255 control bytes made one 16 KB hello a 94 KB line. A name
 * cut ends in `…`, and a list cut ends with a `…` entry; latin1 never decodes to `…` (U+2026),
 * so neither can be a protocol the client sent.
 */
function alpnLogged(alpn: readonly string[] | undefined): readonly string[] | undefined {
  if (alpn === undefined || (alpn.length <= ALPN_LOGGED && alpn.every((p) => p.length <= ALPN_NAME_LOGGED))) return alpn;
  const kept = alpn.slice(0, ALPN_LOGGED).map((p) => (p.length > ALPN_NAME_LOGGED ? `${p.slice(0, ALPN_NAME_LOGGED)}…` : p));
  return alpn.length > ALPN_LOGGED ? [...kept, '…'] : kept;
}

export const CONNECTION_FIELDS: readonly LogField<Readonly<ConnectionOutcome>>[] = [
  { name: 'event.action', type: 'keyword', description: 'Always `connection` (every egressd line has an `event.action`).', value: () => 'connection' },
  { name: 'event.kind', type: 'keyword', description: 'Always `event`.', value: () => 'event' },
  { name: 'event.category', type: 'keyword[]', description: 'Always `["network"]`.', value: () => CATEGORY },
  {
    name: 'event.type',
    type: 'keyword[]',
    description:
      '`["connection", "allowed"]` (also when report-only mode let a refusal through), `["connection", "denied"]` (refused) or `["connection", "error"]`.',
    value: (o) => EVENT_TYPE[o.verdict],
  },
  {
    name: 'event.outcome',
    type: 'keyword',
    description: '`success` when the connection was carried (allowed, or `would-refuse`), `failure` when it was refused or failed.',
    value: (o) => outcomeOf(o.verdict),
  },
  {
    name: 'event.reason',
    type: 'keyword',
    description: 'Why it ended so: the values of the `reason` label in docs/metrics.md (`allow-rule`, `default-block`, `not-redirected`, …).',
    value: (o) => o.reason,
  },
  {
    name: 'event.duration',
    type: 'long',
    description:
      'Accept to close, in nanoseconds (ECS unit), on the monotonic clock: a step of the wall clock (NTP) moves no duration of the line, only `@timestamp`.',
    value: (o) => ns(o.durationMs),
  },
  {
    name: 'source.ip',
    type: 'ip',
    description:
      "The sandbox's address (IPv4 or IPv6, never with a port, nor with a zone: a link-local one's interface is `observer.ingress.interface.name`); absent for a client that reset before its address could be read, or whose link-local interface was deleted before then on the Node set-up and the JavaScript path (Node cannot read such an address, net/socket-address.ts).",
    value: (o) => (o.source === '' ? null : ecsIp(o.source)),
  },
  { name: 'source.port', type: 'long', description: "The sandbox's port.", value: (o) => o.sourcePort },
  { name: 'source.bytes', type: 'long', description: 'Bytes carried from the sandbox to the upstream.', value: (o) => o.bytesUp },
  {
    name: 'destination.ip',
    type: 'ip',
    description: 'Where the sandbox was going (SO_ORIGINAL_DST), without a zone as `source.ip`; absent when the connection was not redirected.',
    value: (o) => ecsIp(o.destination),
  },
  { name: 'destination.port', type: 'long', description: 'Its port.', value: (o) => o.destinationPort },
  {
    name: 'observer.ingress.interface.name',
    type: 'keyword',
    description:
      "The interface a link-local source or destination is on: its address's zone (RFC 4007 §11), `eth1` of `fe80::b1%eth1` as Node writes it, which tells the same `fe80::b1` on two links apart (an ip field cannot carry it); a link-local destination is dialed on it. The interface's index (`7`) when it was deleted before the native set-up read the address. Absent for any other address.",
    value: (o) => zoneOf(o.source) ?? zoneOf(o.destination),
  },
  {
    name: 'destination.domain',
    type: 'keyword',
    description:
      'The name the client asked for (SNI or Host, normalized), whatever the protocol; absent when it sent none, or an IP address (see `egressd.raw_name`).',
    value: (o) => o.name,
  },
  { name: 'destination.bytes', type: 'long', description: 'Bytes carried from the upstream to the sandbox.', value: (o) => o.bytesDown },
  { name: 'network.transport', type: 'keyword', description: 'Always `tcp`.', value: () => 'tcp' },
  {
    name: 'network.type',
    type: 'keyword',
    description: "`ipv4` or `ipv6`, the sandbox address's family.",
    value: (o) => networkTypeOf(o.source),
  },
  {
    name: 'network.protocol',
    type: 'keyword',
    description: 'What the peek found: `tls`, `http`, `unknown` (bytes of neither) or `none` (no byte before the verdict).',
    value: (o) => o.protocol,
  },
  {
    name: 'tls.client.server_name',
    type: 'keyword',
    description: 'The SNI of the ClientHello, normalized (lower case, no trailing dot, punycode).',
    value: (o) => (o.protocol === 'tls' ? o.name : undefined),
  },
  {
    name: 'url.domain',
    type: 'keyword',
    description: "The HTTP request's Host, normalized as above.",
    value: (o) => (o.protocol === 'http' ? o.name : undefined),
  },
  {
    name: 'rule.name',
    type: 'keyword',
    description:
      'The policy rule that decided, as written in the policy (`allowed_domains "*.example.com"`); `alias "name": <rule>` when the name\'s CNAME chain ran through a name that rule denies.',
    value: (o) => o.rule,
  },
  {
    name: 'rule.ruleset',
    type: 'keyword',
    description:
      'The layer whose rule decided (policy/verdict.ts): `always-deny` or `always-allow` (the operator overlays), `org`, `sandbox` (the default policy too), or `protected` (a protected address); absent when no verdict was made.',
    value: (o) => (o.decided === undefined ? undefined : rulesetOf(o.decided)),
  },
  {
    name: 'egressd.verdict',
    type: 'keyword',
    description:
      '`allow`, `refuse`, `would-refuse` (report-only mode let a refusal through; `rule.name` is the refusing rule) or `error`, as in `egressd_connections_total`.',
    value: (o) => o.verdict,
  },
  {
    name: 'egressd.ended_by',
    type: 'keyword',
    description: 'Which side ended it: `client`, `policy`, `upstream` or `egressd` (docs/metrics.md).',
    value: (o) => o.endedBy,
  },
  { name: 'egressd.listener', type: 'keyword', description: 'The listener that accepted it: `http`, `tls` or `tcp`.', value: (o) => o.listener },
  { name: 'egressd.sandbox', type: 'keyword', description: 'The sandbox the source belongs to; absent when it belongs to none.', value: (o) => o.sandbox },
  {
    name: 'egressd.raw_name',
    type: 'keyword',
    description:
      'The name as sent (SNI or Host), only when it failed normalization (then it was not matched) or spells an IP address (then address rules alone judged it); cut to its first 256 characters and `…` when longer (a name has at most 253).',
    value: (o) => rawNameLogged(o.rawName),
  },
  {
    name: 'egressd.alpn',
    type: 'keyword[]',
    description:
      'The ALPN protocols the ClientHello offered, in its order: the first 16, each cut to its first 32 characters and `…` when longer, then an entry `…` when it offered more.',
    value: (o) => alpnLogged(o.alpn),
  },
  { name: 'egressd.ech', type: 'boolean', description: 'Whether the ClientHello carried Encrypted Client Hello.', value: (o) => o.ech },
  {
    name: 'egressd.dns_names',
    type: 'keyword[]',
    description: 'The names this sandbox resolved through egressd to the destination, when a connection without a name was judged by them.',
    value: (o) => o.dnsNames,
  },
  { name: 'egressd.matched_by', type: 'keyword', description: '`dns` when the verdict came from those names.', value: (o) => o.matchedBy },
  {
    name: 'egressd.upstream.ip',
    type: 'ip',
    description: 'The upstream address that answered, when one did, without a zone as `destination.ip`.',
    value: (o) => ecsIp(o.dialed),
  },
  {
    name: 'egressd.upstream.tried',
    type: 'keyword[]',
    description: 'Every address tried, in order, with its result (`198.18.1.2 refused`), when more than one was (RFC 8305 §5).',
    value: (o) => o.tried,
  },
  {
    name: 'egressd.upstream.failure',
    type: 'keyword',
    description:
      "Why the upstream could not be reached: `refused`, `timeout`, `unreachable`, `reset`, `aborted` (a shutdown, a policy change, a change of the host's own addresses, or the client's going (its reset; a TLS client's FIN) cancelled the dial), `other`.",
    value: (o) => o.dialFailure,
  },
  {
    name: 'egressd.upstream.connect_duration',
    type: 'long',
    description: 'Time to connect to the upstream, in nanoseconds, on the monotonic clock.',
    value: (o) => ns(o.connectMs),
  },
  {
    name: 'egressd.peek_duration',
    type: 'long',
    description: 'Accept until the ClientHello or request head was read, in nanoseconds, on the monotonic clock.',
    value: (o) => ns(o.peekMs),
  },
  {
    name: 'egressd.end',
    type: 'keyword',
    description:
      'How a spliced connection ended: `closed`, `client-reset`, `upstream-reset`, `idle-timeout`, `aborted` or `error` (a reset after the side\'s own FIN is `closed`: "How a splice ends" below); `client-reset` too for a client that reset while its name was resolved or its upstream dialed, and `client-fin` for a TLS client that sent its FIN then, after its ClientHello ("A client that goes before its upstream is reached" below); for another one not spliced, what ended it, in words.',
    value: (o) => o.end,
  },
];

/** The connection's fields as nested objects (`{ source: { ip, port }, … }`), absent ones left out. */
export const connectionLine: (o: Readonly<ConnectionOutcome>) => Record<string, unknown> = lineBuilder(CONNECTION_FIELDS);

/** Where connection lines go: `connectionLogger`'s answer, written to by `logConnection`. */
export interface ConnectionLog {
  write(o: Readonly<ConnectionOutcome>): void;
}

/**
 * The writer of connection lines into `log`'s destination, without redaction: a connection line
 * holds only the fields above, none of which can carry a secret, and redaction's walk over its
 * nested objects would be most of the line's cost (bench/log.ts). The line is written as text
 * (JSON.stringify of connectionLine) with the logger's own level key, time and bindings, exactly as pino would
 * write `log.info(connectionLine(o), 'connection')`, into the batch of connection lines of a
 * logger made by createLogger (logger.ts), else to the destination at once. Make it once; every
 * other line keeps `log`.
 */
export function connectionLogger(log: Logger): ConnectionLog {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] as { write(s: string): unknown; [k: symbol]: unknown } | undefined;
  // A destination that wants each line's metadata (pino.multistream) gets lines through pino.
  if (stream === undefined || stream[Symbol.for('pino.metadata')] === true) {
    const child = log.child({}, { redact: [] });
    return { write: (o) => child[levelOf(o)](connectionLine(o), 'connection') };
  }
  const batch = lineBatchOf(log);
  const own = log as unknown as Record<symbol, unknown>;
  const time = own[pino.symbols.timeSym] as () => string;
  const bindings = own[pino.symbols.chindingsSym] as string;
  const render = (o: Readonly<ConnectionOutcome>, at: string): string => {
    // JSON.stringify of the built object is the fastest way to the text (V8's serializer).
    const json = JSON.stringify(connectionLine(o));
    return `{"log.level":"${levelOf(o)}"${at}${bindings}${json === '{}' ? '' : `,${json.slice(1, -1)}`},"message":"connection"}\n`;
  };
  // In a batch the line is rendered when the batch is written, stamped with the connection's end
  // on the wall clock (its start plus its monotonic duration is off by any step of it meanwhile).
  const later = (o: Readonly<ConnectionOutcome>): string => render(o, timestampAt(o.endedAt ?? Math.round(o.startedAt + o.durationMs)));
  return {
    write: (o) => {
      if (!log.isLevelEnabled(levelOf(o))) return;
      if (batch === null) stream.write(render(o, time()));
      else batch.add(o, later);
    },
  };
}

const levelOf = (o: Readonly<ConnectionOutcome>): 'warn' | 'info' => (o.verdict === 'error' ? 'warn' : 'info');

/** Writes the connection's one line: `info`, or `warn` when it ended in an error. */
export function logConnection(log: ConnectionLog, o: Readonly<ConnectionOutcome>): void {
  log.write(o);
}
