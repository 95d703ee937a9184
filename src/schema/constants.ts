// The values the schema is built from and the daemon also needs at run time, kept apart from the
// TypeBox definitions (src/schema/define/) so that the daemon never loads TypeBox: it reads the
// schemas generated from them (src/schema/schemas.ts).

/**
 * The one pattern of a sandbox or organization id: letters, digits, `.`, `_` and `-`, starting
 * with a letter or digit, at most 128. Admin API paths are matched with it too (src/admin/api.ts).
 */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
export const ID = new RegExp(ID_PATTERN);

/** Entries per page of an API list when `limit` is absent, and the most a client may ask for. */
export const PAGE_LIMIT = Object.freeze({ default: 100, max: 1000 });

/** The bound of every connection limit: 1 to ten million. */
export const LIMIT_MAX = 10_000_000;

const DEFAULTS = {
  listen: {
    http: ['0.0.0.0:15080', '[::]:15080'],
    tls: ['0.0.0.0:15443', '[::]:15443'],
    tcp: ['0.0.0.0:15001', '[::]:15001'],
    dns: ['0.0.0.0:15053', '[::]:15053'],
  },
  admin: { listen: '127.0.0.1:9901', maxBodyBytes: 1_048_576 },
  dns: {
    servers: [],
    timeoutMs: 2000,
    sandboxServers: ['8.8.8.8'],
    refusal: 'nxdomain',
    zones: [],
    stripEch: true,
    limits: { perSecond: 500, burst: 1000, inflightPerSandbox: 64, inflightTotal: 1024, tcpPerSandbox: 16, tcpTotal: 1024 },
    memory: { graceMs: 60_000, perSandbox: 4096 },
    cacheEntries: 10_000,
    cacheBytes: 32 * 1_048_576,
  },
  upstream: { dial: 'resolved', connectTimeoutMs: 5000, idleTimeoutMs: 3_600_000 },
  peek: { timeoutMs: 10_000, firstByteTimeoutMs: 1000 },
  block: 'explain',
  refusal: { lingerMs: 30_000, lingerMaxBytes: 67_108_864, lingerMaxConnections: 4096 },
  protected: { extra: [], except: [], reachableHostAddresses: [], nat64Prefixes: [] },
  defaultNetwork: { mode: 'block-all' },
  reportOnly: false,
  overlays: { alwaysAllow: [], alwaysDeny: [] },
  sandboxes: [],
  catalog: { categories: 'all', extra: [], file: null },
  state: { path: null },
  onPolicyChange: 'close',
  shutdown: { drainMs: 30_000 },
  metrics: { sandboxLabel: false, otlp: { endpoint: null, intervalMs: 60_000 } },
  log: { level: 'info', destination: null },
  // Why these numbers: docs/config.md, "limits".
  limits: {
    sandbox: { connections: 1024, undecided: 256, perSecond: 200, burst: 400 },
    global: { connections: null, reserveDescriptors: 64, sandboxShare: 0.5 },
    memory: { maxBytes: null, shedAt: 0.8, intervalMs: 250 },
    unknownSourcePrefix: { ipv4: 32, ipv6: 64 },
  },
} as const;

/** The built-in default configuration (the schema's defaults), typed for the schema's definitions. */
export const DEFAULTS_TYPED = DEFAULTS;

/** The built-in default configuration, as a document, so `npm start` needs no file; the schema's defaults. */
export const DEFAULT_DOCUMENT: Readonly<Record<string, unknown>> = Object.freeze(DEFAULTS);
