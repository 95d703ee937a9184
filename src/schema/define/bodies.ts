// The one schema of a sandbox and an organization, as a client sends them: the admin API's
// bodies, the config file's `sandboxes` entries and the persisted state are all checked against
// these (src/schema/check.ts, reading their generated copy: src/schema/schemas.ts), and the
// OpenAPI description (src/schema/define/openapi.ts) and the config file's JSON Schema
// (docs/schema/config.schema.json) are generated from them. The daemon never loads TypeBox. The schema gives
// shapes; what a body means (a dialect's rules, Daytona's tiers, Novita's ingress warnings,
// whether a source is free) stays in src/policy/dialects/ and src/control/control-plane.ts.

import Type, { type Static } from 'typebox';
import { ID_PATTERN, LIMIT_MAX } from '../constants.ts';

const ID_REASON = 'Expected letters, digits, ".", "_" or "-", starting with a letter or digit (at most 128)';

export const SandboxId = Type.String({
  pattern: ID_PATTERN,
  patternErrorMessage: ID_REASON,
  errorMessage: 'Expected a sandbox id',
  description: 'A sandbox id.',
});
export const OrgId = Type.String({
  pattern: ID_PATTERN,
  patternErrorMessage: `Expected an organization id: ${ID_REASON.replace(/^Expected /, '')}`,
  errorMessage: 'Expected an organization id',
  description: 'An organization id.',
});

const limit = (description: string) => Type.Optional(Type.Integer({ minimum: 1, maximum: LIMIT_MAX, description }));

/** The `limits` object of a sandbox, an organization, and the config's `limits.sandbox` defaults. */
export const LimitsBody = Type.Object(
  {
    connections: limit('Connections open at once (accepted and not yet closed).'),
    undecided: limit('Connections still being peeked (no verdict yet).'),
    perSecond: limit('New connections per second (token bucket refill).'),
    burst: limit('New connections at once after a quiet spell (token bucket size).'),
  },
  { additionalProperties: false, description: 'Connection limits; a key left out comes from the organization, then from the config (docs/config.md, limits).' },
);

const nullableList = (items: ReturnType<typeof Type.String> | ReturnType<typeof Type.Union>, description: string) =>
  Type.Optional(Type.Union([Type.Array(items), Type.Null()], { description }));
const port = Type.Union([Type.Integer({ minimum: 1, maximum: 65535 }), Type.String({ pattern: '^[0-9]{1,5}(-[0-9]{1,5})?$' })]);

/** sandbox0 "Network Policy": `mode` and `egress`. */
export const Sandbox0Network = Type.Object(
  {
    mode: Type.Union([Type.Literal('allow-all'), Type.Literal('block-all')]),
    egress: Type.Optional(
      Type.Union([
        Type.Object(
          {
            allowed_domains: nullableList(Type.String(), 'Names allowed (block-all): `name`, `*.name`, or `*`.'),
            denied_domains: nullableList(Type.String(), 'Names denied (allow-all).'),
            allowed_cidrs: nullableList(Type.String(), 'CIDRs allowed (block-all).'),
            denied_cidrs: nullableList(Type.String(), 'CIDRs denied (allow-all).'),
            allowed_ports: nullableList(port, 'Ports or ranges ("8000-8999") allowed (block-all).'),
            denied_ports: nullableList(port, 'Ports or ranges denied (allow-all).'),
          },
          { additionalProperties: false },
        ),
        Type.Null(),
      ]),
    ),
  },
  { additionalProperties: false, title: 'sandbox0', description: 'sandbox0 "Network Policy".' },
);

/** Daytona's create-sandbox network keys. */
export const DaytonaNetwork = Type.Object(
  {
    networkBlockAll: Type.Optional(Type.Union([Type.Boolean(), Type.Null()], { description: 'Block everything; takes precedence over the lists.' })),
    networkAllowList: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'Comma-separated CIDRs, at most 10.' })),
    domainAllowList: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'Comma-separated names (`*.` for subdomains), at most 10.' })),
  },
  { additionalProperties: false, title: 'Daytona', description: 'Daytona "Network Limits (Firewall)".' },
);

/** Novita/E2B `Sandbox.create` network keys. */
export const NovitaNetwork = Type.Object(
  {
    allowInternetAccess: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
    network: Type.Optional(
      Type.Object(
        {
          allowOut: Type.Optional(Type.Union([Type.Array(Type.String()), Type.Null()], { description: 'Addresses, CIDRs or names allowed.' })),
          denyOut: Type.Optional(
            Type.Union([Type.Array(Type.String()), Type.Null()], { description: 'Addresses, CIDRs or names denied; "0.0.0.0/0" is everything.' }),
          ),
          maskRequestHost: Type.Optional(Type.String({ description: 'Inbound setting: kept and returned, not enforced.' })),
          allowPublicTraffic: Type.Optional(Type.Boolean({ description: 'Inbound setting: kept and returned, not enforced.' })),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false, title: 'Novita/E2B', description: 'Novita "Internet access".' },
);

/**
 * A policy in any of the three dialects (docs/dialects.md). Its shape is given here for editors
 * and clients; egressd checks it with the dialect's own parser, whose reasons know the dialects.
 */
export const NetworkBody = Type.Union([Sandbox0Network, DaytonaNetwork, NovitaNetwork], {
  'x-checked-by': 'dialect',
  description: 'A policy in one dialect: sandbox0, Daytona or Novita/E2B (docs/dialects.md). Absent: {"mode":"block-all"}.',
});

const sandboxFields = {
  sources: Type.Array(Type.String({ errorMessage: 'Expected an IPv4 or IPv6 address' }), {
    errorMessage: 'Expected a list of IPv4 or IPv6 addresses',
    description: "The sandbox's source addresses (IPv4 or IPv6; a link-local one with its interface, fe80::b1%eth1); each belongs to one sandbox.",
  }),
  org: Type.Optional(Type.Union([OrgId, Type.Null()], { errorMessage: 'Expected an organization id' })),
  network: Type.Optional(NetworkBody),
  limits: Type.Optional(LimitsBody),
  reportOnly: Type.Optional(
    Type.Boolean({ description: 'Report-only mode for this sandbox: what its policy would refuse is let through and reported as would-refuse.' }),
  ),
};

/** `PUT /api/v1/sandboxes/{id}`: a sandbox (its id is in the path). */
export const SandboxBody = Type.Object(sandboxFields, { additionalProperties: false, title: 'SandboxBody' });
export type SandboxBody = Static<typeof SandboxBody>;

/** One entry of the config file's `sandboxes`: a sandbox body with its id. */
export const SandboxEntry = Type.Object({ id: SandboxId, ...sandboxFields }, { additionalProperties: false, title: 'SandboxEntry' });

/** `PUT /api/v1/orgs/{id}`: an organization; exactly one of `tier` and `network` (checked by the control plane). */
export const OrgBody = Type.Object(
  {
    tier: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 4,
        errorMessage: 'Expected a tier from 1 to 4',
        description: "Daytona's tiers: 1 and 2 block-all plus the essential services, 3 and 4 allow-all.",
      }),
    ),
    network: Type.Optional(NetworkBody),
    limits: Type.Optional(Type.Union([LimitsBody, Type.Null()])),
    reportOnly: Type.Optional(Type.Boolean({ description: 'Report-only mode for every sandbox of the organization.' })),
  },
  { additionalProperties: false, title: 'OrgBody', description: 'Exactly one of tier and network, and optionally limits.' },
);
export type OrgBody = Static<typeof OrgBody>;

/** `POST /api/v1/check`: the connection to judge (the sandbox must exist; `host` is normalized as a connection's). */
export const CheckRequest = Type.Object(
  {
    sandbox: SandboxId,
    host: Type.Optional(Type.Union([Type.String(), Type.Null()], { errorMessage: 'Expected a host name', description: 'The SNI or Host the client sends.' })),
    ip: Type.String({ errorMessage: 'Expected an IP address', description: 'The destination address.' }),
    port: Type.Integer({ minimum: 1, maximum: 65535, errorMessage: 'Expected a port from 1 to 65535' }),
    via: Type.Optional(
      Type.Union([Type.Literal('tls'), Type.Literal('http')], {
        errorMessage: 'Expected tls (the name is a TLS SNI) or http (an HTTP Host)',
        description:
          "How the client sends host: tls, its TLS SNI; http, its HTTP Host. A rule that reads a name only one way on a port (Novita: the Host on 80, the SNI on 443) matches it only when sent that way. Absent: as the port's rule reads it. Nothing without host.",
      }),
    ),
  },
  { additionalProperties: false, title: 'CheckRequest' },
);
