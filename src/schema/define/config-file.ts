// The config file's schema (YAML or JSON): every key, its shape, its bounds and its default.
// src/config/schema.ts checks a document against it (through its generated copy,
// src/schema/schemas.ts) and then checks what a shape cannot say (an address parses, a CIDR is
// canonical, an id is not repeated, a policy keeps its dialect's rules).
// docs/schema/config.schema.json is generated from it for editors (`node scripts/gen-schema.ts`;
// test/unit/schema/generated.test.ts keeps every copy current).

import Type from 'typebox';
import { LimitsBody, NetworkBody, SandboxEntry } from './bodies.ts';
import { DEFAULTS_TYPED } from '../constants.ts';

const D = DEFAULTS_TYPED;
const obj = <P extends Parameters<typeof Type.Object>[0]>(properties: P, description: string, def?: unknown) =>
  Type.Optional(Type.Object(properties, { additionalProperties: false, description, ...(def !== undefined ? { default: def } : {}) }));
const int = (minimum: number, maximum: number, def: number | null, description: string) =>
  Type.Optional(Type.Integer({ minimum, maximum, description, ...(def !== null ? { default: def } : {}) }));
const ratio = (minimum: number, maximum: number, def: number, description: string) =>
  Type.Optional(Type.Number({ minimum, maximum, default: def, description }));
const strings = (description: string, def?: readonly string[]) =>
  Type.Optional(Type.Array(Type.String({ minLength: 1 }), { description, ...(def !== undefined ? { default: def } : {}) }));
const oneOf = <T extends string>(values: readonly T[], def: T, description: string) =>
  Type.Optional(
    Type.Union(
      values.map((v) => Type.Literal(v)),
      { default: def, description },
    ),
  );
const optString = (description: string) => Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()], { description }));

/** `"address:port"` (IPv6 in brackets) or a list of them; the address is checked by src/config/schema.ts. */
/** `required`: a list may not be empty (a listener kind egressd cannot run without). */
const endpoints = (description: string, def: readonly string[] | string, required = false) =>
  Type.Optional(
    Type.Union(
      [
        Type.String({ minLength: 1 }),
        Type.Array(Type.String({ minLength: 1 }), required ? { minItems: 1, errorMessage: 'Expected at least one "address:port"' } : {}),
      ],
      {
        errorMessage: 'Expected "address:port" or a list of them',
        description,
        default: def,
      },
    ),
  );

/** One always-allow or always-deny entry: a name and the policies' grammar (src/policy/overlay.ts checks it). */
const OverlayEntry = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$', description: 'Unique within its list; a metric label value.' }),
    domains: Type.Optional(Type.Array(Type.String(), { description: 'Name patterns, as in allowed_domains.' })),
    cidrs: Type.Optional(Type.Array(Type.String(), { description: 'CIDRs.' })),
    ports: Type.Optional(
      Type.Array(Type.Union([Type.Integer({ minimum: 1, maximum: 65535 }), Type.String()]), { description: 'Ports or ranges ("8000-8999").' }),
    ),
  },
  { required: ['name'], additionalProperties: false },
);

export const ConfigFile = Type.Object(
  {
    listen: obj(
      {
        http: endpoints('Where plain HTTP redirected from port 80 arrives.', D.listen.http, true),
        tls: endpoints('Where TLS redirected from port 443 arrives.', D.listen.tls, true),
        tcp: endpoints('Where every other redirected TCP port arrives.', D.listen.tcp, true),
        dns: endpoints('The DNS listener (UDP and TCP); an empty list turns it off.', D.listen.dns),
      },
      'The listeners iptables redirects to.',
    ),
    admin: obj(
      {
        listen: endpoints('One "address:port" for health, metrics and the API.', D.admin.listen),
        token: optString('The API bearer token (or EGRESSD_ADMIN_TOKEN); none: the API answers 401.'),
        previousToken: optString('A second token the API accepts beside token while a rotation is rolled out (or EGRESSD_ADMIN_PREVIOUS_TOKEN).'),
        maxBodyBytes: int(1024, 64 * 1_048_576, D.admin.maxBodyBytes, 'The largest request body the API reads.'),
      },
      'The admin listener.',
    ),
    dns: obj(
      {
        servers: strings('Resolvers egressd asks ("address" or "address:port"); empty: the system\'s.', D.dns.servers),
        timeoutMs: int(1, 60_000, D.dns.timeoutMs, 'How long one resolution may take.'),
        sandboxServers: strings("The sandboxes' own DNS servers, allowed on 53 when a Novita policy names a domain.", D.dns.sandboxServers),
        refusal: oneOf(['nxdomain', 'refused'], D.dns.refusal, 'The answer to a query for a name the sandbox may not reach.'),
        zones: strings('Name patterns forwarded for every sandbox; they grant no connection.', D.dns.zones),
        stripEch: Type.Optional(Type.Boolean({ default: D.dns.stripEch, description: 'Remove the ech SvcParam from HTTPS and SVCB answers.' })),
        limits: obj(
          {
            perSecond: int(1, 1_000_000, D.dns.limits.perSecond, 'Queries per second per sandbox.'),
            burst: int(1, 10_000_000, D.dns.limits.burst, 'Queries a sandbox may send at once above the rate.'),
            inflightPerSandbox: int(1, 100_000, D.dns.limits.inflightPerSandbox, 'Upstream queries one sandbox may have waiting.'),
            inflightTotal: int(1, 1_000_000, D.dns.limits.inflightTotal, 'Upstream queries all sandboxes may have waiting.'),
            tcpPerSandbox: int(1, 100_000, D.dns.limits.tcpPerSandbox, 'TCP connections one sandbox may hold to the DNS listener.'),
            tcpTotal: int(
              1,
              1_000_000,
              D.dns.limits.tcpTotal,
              'TCP connections all sandboxes together may hold to the DNS listeners (at most a quarter of the descriptor budget besides).',
            ),
          },
          "The DNS listener's limits.",
        ),
        memory: obj(
          {
            graceMs: int(0, 86_400_000, D.dns.memory.graceMs, 'How long past its TTL a name given to a sandbox is remembered.'),
            perSandbox: int(1, 10_000_000, D.dns.memory.perSandbox, 'Addresses remembered per sandbox.'),
          },
          'What the DNS listener remembers per sandbox.',
        ),
        cacheEntries: int(
          1,
          10_000_000,
          D.dns.cacheEntries,
          "Answers each of egressd's DNS caches holds (the listener's answers; the addresses of dialed names), all sandboxes together; when full, the sandbox holding the most loses its oldest.",
        ),
        cacheBytes: int(
          1_048_576,
          68_719_476_736,
          D.dns.cacheBytes,
          "Bytes each of egressd's DNS caches may hold (estimated per answer when stored), all sandboxes together; when full, the sandbox holding the most bytes loses its oldest.",
        ),
      },
      'Resolution, and the DNS listener.',
    ),
    upstream: obj(
      {
        dial: oneOf(['resolved', 'verify', 'original'], D.upstream.dial, 'Which address a connection with a name is dialed to.'),
        connectTimeoutMs: int(1, 600_000, D.upstream.connectTimeoutMs, 'How long a dial may take, all addresses together.'),
        idleTimeoutMs: int(1, 7 * 86_400_000, D.upstream.idleTimeoutMs, 'A spliced connection idle this long is closed.'),
      },
      'Dialing the upstream.',
    ),
    peek: obj(
      {
        timeoutMs: int(1, 600_000, D.peek.timeoutMs, 'How long reading the name may take.'),
        firstByteTimeoutMs: int(1, 600_000, D.peek.firstByteTimeoutMs, 'How long to wait for a first byte (at most peek.timeoutMs).'),
      },
      'Reading the SNI or Host.',
    ),
    block: oneOf(['explain', 'drop'], D.block, 'How a refusal is answered: a TLS alert or 403, or a reset.'),
    refusal: obj(
      {
        lingerMs: int(0, 600_000, D.refusal.lingerMs, 'How long a refused client still sending is read.'),
        lingerMaxBytes: int(0, 1_073_741_824, D.refusal.lingerMaxBytes, 'How much of it is read.'),
        lingerMaxConnections: int(0, 1_000_000, D.refusal.lingerMaxConnections, 'Refusals lingering at once past which one lingers 2 s.'),
      },
      'What happens after a refusal.',
    ),
    protected: obj(
      {
        extra: strings('More CIDRs to protect: refused whatever a policy allows; only `except` lifts them.', D.protected.extra),
        except: strings(
          "CIDRs taken out of the protected ranges (built-in and `extra`): not protected at all, with no policy needed to unlock them. The host's own addresses stay refused.",
          D.protected.except,
        ),
        reachableHostAddresses: strings(
          "The host's own addresses (or CIDRs) no longer refused as the host's, a documented risk: egressd's own listeners on them stay refused, and the other protected ranges and the policy still judge them.",
          D.protected.reachableHostAddresses,
        ),
        nat64Prefixes: strings(
          "The host's NAT64 prefixes besides 64:ff9b::/96 (RFC 6052 §2.2: IPv6, length 32, 40, 48, 56, 64 or 96, bits 64-71 zero): an address inside one is also judged by the IPv4 address it carries. Protects nothing by itself.",
          D.protected.nat64Prefixes,
        ),
      },
      "Addresses refused before a policy's rules: the host's own, `extra`, and the built-in ranges (which an allowed CIDR inside one unlocks).",
    ),
    defaultNetwork: Type.Optional({ ...NetworkBody, description: 'The policy of a source that belongs to no sandbox.', default: D.defaultNetwork }),
    reportOnly: Type.Optional(
      Type.Boolean({
        default: D.reportOnly,
        description: 'Report-only mode for every sandbox and the default policy: what a policy would refuse is let through and reported as would-refuse.',
      }),
    ),
    overlays: Type.Optional(
      Type.Union(
        [
          Type.Object(
            { alwaysAllow: Type.Optional(Type.Array(OverlayEntry)), alwaysDeny: Type.Optional(Type.Array(OverlayEntry)) },
            { additionalProperties: false },
          ),
          Type.Null(),
        ],
        {
          'x-checked-by': 'overlay',
          default: D.overlays,
          description: "The operator's always-allow and always-deny entries, applied to every sandbox around its own policy (docs/config.md, Overlays).",
        },
      ),
    ),
    sandboxes: Type.Optional(Type.Array(SandboxEntry, { description: 'Sandboxes of the config file (the API cannot change them).', default: D.sandboxes })),
    catalog: obj(
      {
        categories: Type.Optional(
          Type.Union([Type.Literal('all'), Type.Array(Type.String({ minLength: 1 }))], {
            default: D.catalog.categories,
            errorMessage: 'Expected "all" or a list of strings',
            description: 'The essential-services categories in use.',
          }),
        ),
        extra: strings('More essential-services name patterns.', D.catalog.extra),
        file: optString('A catalog file replacing the built-in one.'),
      },
      'The essential-services catalog (docs/catalog.md).',
    ),
    state: obj({ path: optString("Where the API's sandboxes and organizations are kept (SQLite); none: in memory only.") }, 'The state.'),
    onPolicyChange: oneOf(['close', 'keep'], D.onPolicyChange, 'What a policy change does to open connections it now refuses.'),
    shutdown: obj({ drainMs: int(0, 86_400_000, D.shutdown.drainMs, 'How long open connections may finish on SIGTERM.') }, 'Stopping.'),
    metrics: obj(
      {
        sandboxLabel: Type.Optional(Type.Boolean({ default: D.metrics.sandboxLabel, description: 'Label connection metrics with the sandbox.' })),
        otlp: obj(
          {
            endpoint: Type.Optional(
              Type.Union([Type.String({ pattern: '^https?://[^\\s]+$', patternErrorMessage: 'Expected an http:// or https:// URL' }), Type.Null()], {
                default: D.metrics.otlp.endpoint,
                errorMessage: 'Expected an http:// or https:// URL, or null',
                description: 'The OTLP/HTTP metrics endpoint (http://collector:4318/v1/metrics); null: no export (the default).',
              }),
            ),
            intervalMs: int(100, 3_600_000, D.metrics.otlp.intervalMs, 'Milliseconds between exports.'),
          },
          'OpenTelemetry export of the metrics (OTLP/HTTP, JSON); off unless an endpoint is set.',
        ),
      },
      'Metrics.',
    ),
    log: obj(
      {
        level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], D.log.level, 'The log level.'),
        destination: optString('A file to log to; none: standard output.'),
      },
      'Logs.',
    ),
    limits: obj(
      {
        sandbox: Type.Optional({ ...LimitsBody, description: 'The default per-sandbox limits.', default: D.limits.sandbox }),
        global: obj(
          {
            connections: Type.Optional(
              Type.Union([Type.Integer({ minimum: 1, maximum: 10_000_000 }), Type.Null()], {
                description: 'A cap on connections in total; null: none.',
                default: null,
              }),
            ),
            reserveDescriptors: int(16, 1_000_000, D.limits.global.reserveDescriptors, 'Descriptors kept back from proxied connections.'),
            sandboxShare: ratio(0.01, 1, D.limits.global.sandboxShare, 'The share of the connection budget one sandbox may hold.'),
          },
          'Limits over all sandboxes.',
        ),
        memory: obj(
          {
            maxBytes: Type.Optional(
              Type.Union([Type.Integer({ minimum: 16 * 1_048_576, maximum: Number.MAX_SAFE_INTEGER }), Type.Null()], {
                description: "A cap on RSS in bytes; null: the cgroup's and V8's only.",
                default: null,
              }),
            ),
            shedAt: ratio(0.1, 1, D.limits.memory.shedAt, 'Memory pressure at which new connections are shed.'),
            intervalMs: int(10, 60_000, D.limits.memory.intervalMs, 'How often memory is read.'),
          },
          'The memory overload guard.',
        ),
        unknownSourcePrefix: obj(
          {
            ipv4: int(0, 32, D.limits.unknownSourcePrefix.ipv4, 'The prefix length an IPv4 source of no sandbox is counted by.'),
            ipv6: int(0, 128, D.limits.unknownSourcePrefix.ipv6, 'The prefix length an IPv6 source of no sandbox is counted by.'),
          },
          'Sources of no sandbox are counted by the network block holding them, so that rotating through the addresses of one block gains no allowance.',
        ),
      },
      'Connection limits (docs/config.md, limits).',
    ),
  },
  { additionalProperties: false, title: 'egressd configuration', description: 'The egressd config file (docs/config.md).' },
);

/** The JSON Schema editors use for config files (draft 2020-12), as committed in docs/schema/config.schema.json. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    ...(JSON.parse(JSON.stringify(ConfigFile)) as Record<string, unknown>),
  };
}
