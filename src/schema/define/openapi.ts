// The admin API's OpenAPI 3.1 description, generated from the same schema that checks request
// bodies (./bodies.ts) and written by `node scripts/gen-schema.ts` to src/schema/generated/
// openapi.json (served at GET /api/v1/openapi.json) and docs/openapi.json. The response
// schemas describe what src/admin/api.ts answers; test/integration/openapi.test.ts holds real
// answers of a running daemon to them.

import Type from 'typebox';
import { API_ERRORS } from '../../errors.ts';
import { ID_PATTERN, PAGE_LIMIT } from '../constants.ts';
import { CheckRequest, LimitsBody, OrgBody, SandboxBody } from './bodies.ts';

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const nullable = <T extends object>(s: T) => Type.Union([s as never, Type.Null()]);
const closed = { additionalProperties: false } as const;

const Warning = Type.Object({ field: Type.String(), message: Type.String() }, closed);
const portList = Type.Array(Type.Union([Type.Integer({ minimum: 1, maximum: 65535 }), Type.String()]));

/** A policy as answered: sandbox0's shape, normalized (src/policy/render.ts). */
const NetworkView = Type.Object(
  {
    mode: Type.Union([Type.Literal('allow-all'), Type.Literal('block-all')]),
    egress: Type.Object(
      {
        allowed_domains: Type.Array(Type.String()),
        denied_domains: Type.Array(Type.String()),
        allowed_cidrs: Type.Array(Type.String()),
        denied_cidrs: Type.Array(Type.String()),
        allowed_ports: portList,
        denied_ports: portList,
        allowed_domain_ports: Type.Optional(
          Type.Array(
            Type.Object(
              {
                port: Type.Union([Type.Integer({ minimum: 1, maximum: 65535 }), Type.String()], { description: 'A port (443) or a range ("8000-8999").' }),
                via: Type.Union([Type.Literal('tls'), Type.Literal('http'), Type.Literal('any')], {
                  description:
                    'How a name is read there: tls, the TLS SNI; http, the HTTP Host; any, either, or one remembered from DNS for a client that sent none.',
                }),
              },
              closed,
            ),
            {
              description:
                'The ports on which allowed_domains match, each with how it reads the name (Novita: 80 by the Host, 443 by the SNI); absent: every port, however read. Elsewhere only the CIDRs allow.',
            },
          ),
        ),
      },
      closed,
    ),
    essential_services: Type.Boolean({ description: "Whether Daytona's essential-services catalog joins the allow side." }),
    ingress: Type.Optional(Type.Record(Type.String(), Type.Union([Type.String(), Type.Boolean()]), { description: 'Inbound settings kept, not enforced.' })),
    warnings: Type.Optional(Type.Array(Warning)),
  },
  { ...closed, title: 'NetworkView', description: 'A policy as it applies, in sandbox0 form, whatever dialect it was written in.' },
);

const sandboxFields = {
  id: Type.String({ pattern: ID_PATTERN }),
  sources: Type.Array(Type.String(), { description: 'Canonical source addresses.' }),
  org: nullable(Type.String({ pattern: ID_PATTERN })),
  origin: Type.Union([Type.Literal('api'), Type.Literal('config')], { description: 'config: from the config file, read-only through the API.' }),
  network: Type.Object(
    { ...NetworkView.properties, warnings: Type.Optional(Type.Never()) },
    { ...closed, description: 'The policy as it applies (NetworkView without warnings: they are beside it).' },
  ),
  limits: Type.Optional(LimitsBody),
  reportOnly: Type.Boolean(),
  warnings: Type.Optional(Type.Array(Warning, { description: 'Accepted settings egressd does not enforce; field paths start at the body.' })),
};

/** A sandbox as listed and as a PUT answers it. */
const Sandbox = Type.Object(sandboxFields, { ...closed, title: 'Sandbox' });

/** A sandbox as GET answers it: with what it holds now and the limits in force. */
const SandboxWithConnections = Type.Object(
  {
    ...sandboxFields,
    connections: Type.Optional(
      Type.Object(
        {
          open: Type.Integer({ minimum: 0 }),
          undecided: Type.Integer({ minimum: 0 }),
          limits: Type.Object({ connections: Type.Integer(), undecided: Type.Integer(), perSecond: Type.Integer(), burst: Type.Integer() }, closed),
        },
        { description: 'Connections open and undecided now, and the limits in force, each key resolved.' },
      ),
    ),
  },
  { ...closed, title: 'SandboxWithConnections' },
);

/** An organization as answered: the body as sent, with its id. */
const Org = Type.Object(
  {
    id: Type.String({ pattern: ID_PATTERN }),
    tier: nullable(Type.Integer({ minimum: 1, maximum: 4 })),
    network: Type.Unknown({ description: 'The policy as sent (any dialect), or null.' }),
    limits: Type.Optional(LimitsBody),
    reportOnly: Type.Optional(Type.Boolean()),
  },
  { ...closed, title: 'Org', required: ['id', 'tier', 'network'] },
);

const cursor = nullable(Type.String({ description: 'The cursor of the next page; null on the last page.' }));
const SandboxList = Type.Object({ sandboxes: Type.Array(ref('Sandbox') as never), next_cursor: cursor }, { ...closed, title: 'SandboxList' });
const OrgList = Type.Object({ orgs: Type.Array(ref('Org') as never), next_cursor: cursor }, { ...closed, title: 'OrgList' });

const ApiErrorBody = Type.Object(
  {
    error: Type.Object(
      {
        code: Type.Union(
          Object.keys(API_ERRORS).map((c) => Type.Literal(c)),
          { description: 'Stable; what clients branch on (docs/api.md, Errors).' },
        ),
        message: Type.String({ description: 'For people; quotes the offending value.' }),
        field: nullable(Type.String({ description: 'The first offending field, query parameter or header.' })),
      },
      closed,
    ),
  },
  { ...closed, title: 'Error' },
);

const CheckResult = Type.Object(
  {
    sandbox: Type.String(),
    host: nullable(Type.String()),
    ip: Type.String(),
    port: Type.Integer(),
    via: nullable(
      Type.Union([Type.Literal('tls'), Type.Literal('http')], {
        description: "How host was taken as sent, as asked; null when not asked (as the port's rule reads it) or without a name.",
      }),
    ),
    verdict: Type.String({ description: 'allow, refuse, or would-refuse (report-only).' }),
    reason: Type.String(),
    rule: nullable(Type.String()),
    layer: Type.Union([Type.Literal('always-deny'), Type.Literal('always-allow'), Type.Literal('org'), Type.Literal('sandbox'), Type.Literal('protected')], {
      description: 'The layer whose rule decided (src/policy/verdict.ts `rulesetOf`): `protected` for a protected address, whichever layer stopped it.',
    }),
    report_only: ref('ReportOnly') as never,
  },
  { title: 'CheckResult', description: 'The verdict, its reason and rule, and the layer that decided.' },
);

const ReportOnly = Type.Object(
  {
    enabled: Type.Boolean(),
    levels: Type.Array(Type.Union([Type.Literal('global'), Type.Literal('org'), Type.Literal('sandbox')]), {
      description: 'The levels that turned it on: the config, the organization, the sandbox.',
    }),
  },
  { ...closed, title: 'ReportOnly', description: 'Report-only mode (docs/api.md, "Report-only").' },
);

const OverlayEntryView = Type.Object(
  { name: Type.String(), domains: Type.Array(Type.String()), cidrs: Type.Array(Type.String()), ports: portList, hits: Type.Integer({ minimum: 0 }) },
  { ...closed, title: 'OverlayEntryView', description: 'One always-deny or always-allow entry, with the connections it decided since it was loaded.' },
);

const RuleHits = Type.Array(
  Type.Object(
    {
      id: Type.String({ description: 'The list and index in the policy as written: allowed_domains[0], essential_services[12], mode.' }),
      rule: Type.String({ description: 'The rule as a verdict names it.' }),
      hits: Type.Integer({ minimum: 0 }),
    },
    closed,
  ),
);

const Effective = Type.Object(
  {
    sandbox: Type.String(),
    rule: Type.String(),
    network: ref('NetworkView') as never,
    report_only: ref('ReportOnly') as never,
    order: Type.String({ description: 'How the layers combine.' }),
    overlays: Type.Object({ always_deny: Type.Array(OverlayEntryView), always_allow: Type.Array(OverlayEntryView) }, closed),
    dns_servers_allowed: Type.Array(Type.String(), {
      description: 'The `dns.sandboxServers` a connection on port 53 is allowed to, as POST /api/v1/check decides it (every layer counted).',
    }),
    essential_services: Type.Array(Type.String(), {
      description: "The essential-services catalog's patterns a name can reach: the organization AND the sandbox both reach it.",
    }),
    rule_hits: nullable(
      Type.Object(
        { sandbox: RuleHits, organization: nullable(RuleHits) },
        { ...closed, description: 'Connections each rule decided since its policy was last set (docs/api.md, "Effective policy").' },
      ),
    ),
  },
  { title: 'Effective', description: 'Every layer that decides a sandbox\'s connections (docs/api.md, "Effective policy").' },
);

const json = (schema: object, description: string, headers?: Record<string, unknown>) => ({
  description,
  ...(headers ? { headers } : {}),
  content: { 'application/json': { schema } },
});
const error = (description: string) => json(ref('Error'), description);
const ETAG = { ETag: { description: "The entry's entity tag (RFC 9110 §8.8.3), for If-Match.", schema: { type: 'string' } } };
const auth = [{ bearer: [] }];
const idParam = (what: string) => ({
  name: 'id',
  in: 'path',
  required: true,
  description: `The ${what}'s id.`,
  schema: { type: 'string', pattern: ID_PATTERN },
});
const ifMatch = {
  name: 'If-Match',
  in: 'header',
  required: false,
  description: '"*" or entity tags: the change is made only when the entry exists and its ETag is one of them (412 otherwise).',
  schema: { type: 'string' },
};
const ifNoneMatch = {
  name: 'If-None-Match',
  in: 'header',
  required: false,
  description: '"*": create only (412 when the entry exists).',
  schema: { type: 'string' },
};
const pageParams = [
  {
    name: 'limit',
    in: 'query',
    required: false,
    description: `Entries per page (default ${PAGE_LIMIT.default}).`,
    schema: { type: 'integer', minimum: 1, maximum: PAGE_LIMIT.max, default: PAGE_LIMIT.default },
  },
  { name: 'cursor', in: 'query', required: false, description: "The previous page's next_cursor.", schema: { type: 'string' } },
];
const common = { '400': error('Invalid request or body (`field` names it).'), '401': error('No or wrong bearer token.') };
/** Every route that reads a body answers these before looking at it (admin/http-body.ts). */
const bodyErrors = { '413': error('The body is too large.'), '415': error('Not application/json.') };

/** The OpenAPI 3.1 document. */
export function openApiDocument(version: string): Record<string, unknown> {
  const doc = {
    openapi: '3.1.0',
    info: {
      title: 'egressd admin API',
      version,
      description: 'The control-plane API of egressd, the egress filter for code-execution sandboxes (docs/api.md). Every /api/* call needs the bearer token.',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    servers: [{ url: 'http://127.0.0.1:9901', description: 'The default admin.listen' }],
    security: auth,
    paths: {
      '/api/v1/sandboxes': {
        get: {
          operationId: 'listSandboxes',
          summary: 'One page of the sandboxes, by id',
          parameters: pageParams,
          responses: { '200': json(ref('SandboxList'), 'A page.'), ...common },
        },
      },
      '/api/v1/sandboxes/{id}': {
        parameters: [idParam('sandbox')],
        get: {
          operationId: 'getSandbox',
          summary: 'A sandbox, what it holds now, and its ETag',
          responses: { '200': json(ref('SandboxWithConnections'), 'The sandbox.', ETAG), '401': common['401'], '404': error('No such sandbox.') },
        },
        put: {
          operationId: 'putSandbox',
          summary: 'Create or replace a sandbox',
          parameters: [ifMatch, ifNoneMatch],
          requestBody: { required: true, content: { 'application/json': { schema: ref('SandboxBody') } } },
          responses: {
            '200': json(ref('Sandbox'), 'Replaced.', ETAG),
            '201': json(ref('Sandbox'), 'Created.', ETAG),
            ...common,
            '404': error('The organization named does not exist.'),
            '409': error('A source belongs to another sandbox, or the sandbox comes from the config file.'),
            '412': error('A precondition did not hold; the current ETag is in the header.'),
            ...bodyErrors,
            '503': error('The change could not be made durable; nothing changed.'),
          },
        },
        delete: {
          operationId: 'deleteSandbox',
          summary: 'Delete a sandbox',
          parameters: [ifMatch],
          responses: {
            '204': { description: 'Deleted.' },
            ...common,
            '404': error('No such sandbox.'),
            '409': error('The sandbox comes from the config file.'),
            '412': error('If-Match did not hold.'),
            '503': error('The change could not be made durable; nothing changed.'),
          },
        },
      },
      '/api/v1/sandboxes/{id}/network': {
        parameters: [idParam('sandbox')],
        get: {
          operationId: 'getSandboxNetwork',
          summary: "A sandbox's policy in sandbox0 form",
          responses: { '200': json(ref('NetworkView'), 'The policy.', ETAG), '401': common['401'], '404': error('No such sandbox.') },
        },
        put: {
          operationId: 'putSandboxNetwork',
          summary: "Replace a sandbox's policy (any dialect)",
          parameters: [ifMatch],
          requestBody: { required: true, content: { 'application/json': { schema: ref('NetworkBody') } } },
          responses: {
            '200': json(ref('NetworkView'), 'The new policy.', ETAG),
            ...common,
            '404': error('No such sandbox.'),
            '409': error('The sandbox comes from the config file.'),
            '412': error('If-Match did not hold.'),
            ...bodyErrors,
            '503': error('The change could not be made durable; nothing changed.'),
          },
        },
      },
      '/api/v1/sandboxes/{id}/effective': {
        parameters: [idParam('sandbox')],
        get: {
          operationId: 'getSandboxEffective',
          summary: "Every layer that decides a sandbox's connections",
          responses: { '200': json(ref('Effective'), 'The layers.'), '401': common['401'], '404': error('No such sandbox.') },
        },
      },
      '/api/v1/orgs': {
        get: {
          operationId: 'listOrgs',
          summary: 'One page of the organizations, by id',
          parameters: pageParams,
          responses: { '200': json(ref('OrgList'), 'A page.'), ...common },
        },
      },
      '/api/v1/orgs/{id}': {
        parameters: [idParam('organization')],
        get: {
          operationId: 'getOrg',
          summary: 'An organization and its ETag',
          responses: { '200': json(ref('Org'), 'The organization.', ETAG), '401': common['401'], '404': error('No such organization.') },
        },
        put: {
          operationId: 'putOrg',
          summary: 'Create or replace an organization',
          parameters: [ifMatch, ifNoneMatch],
          requestBody: { required: true, content: { 'application/json': { schema: ref('OrgBody') } } },
          responses: {
            '200': json(ref('Org'), 'Replaced.', ETAG),
            '201': json(ref('Org'), 'Created.', ETAG),
            ...common,
            '404': error('The id in the path is not a valid id (the message says why).'),
            '412': error('A precondition did not hold.'),
            ...bodyErrors,
            '503': error('The change could not be made durable; nothing changed.'),
          },
        },
        delete: {
          operationId: 'deleteOrg',
          summary: 'Delete an organization that no sandbox names',
          parameters: [ifMatch],
          responses: {
            '204': { description: 'Deleted.' },
            ...common,
            '404': error('No such organization.'),
            '409': error('A sandbox still names it.'),
            '412': error('If-Match did not hold.'),
            '503': error('The change could not be made durable; nothing changed.'),
          },
        },
      },
      '/api/v1/check': {
        post: {
          operationId: 'check',
          summary: "The verdict a sandbox's policy gives one connection",
          requestBody: { required: true, content: { 'application/json': { schema: ref('CheckRequest') } } },
          responses: { '200': json(ref('CheckResult'), 'The verdict.'), ...common, '404': error('No such sandbox.'), ...bodyErrors },
        },
      },
      '/api/v1/limits': {
        get: {
          operationId: 'getLimits',
          summary: 'The limits in force, the counts now, and the sandboxes holding the most connections',
          responses: { '200': json({ type: 'object' }, 'The limits and counts (docs/api.md).'), '401': common['401'] },
        },
      },
      '/api/v1/dns/remembered': {
        get: {
          operationId: 'getDnsRemembered',
          summary: 'What the DNS listener remembers',
          parameters: [{ name: 'top', in: 'query', required: false, schema: { type: 'integer', minimum: 1, maximum: 9999, default: 10 } }],
          responses: {
            '200': json(
              { type: 'object', properties: { total: { type: 'integer', minimum: 0 }, top: { type: 'array' } }, required: ['total', 'top'] },
              'The total and the sandboxes remembering the most.',
            ),
            ...common,
          },
        },
      },
      '/api/v1/openapi.json': {
        get: {
          operationId: 'getOpenApi',
          summary: 'This document',
          responses: { '200': json({ type: 'object' }, 'The OpenAPI 3.1 description.'), '401': common['401'] },
        },
      },
    },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'admin.token or EGRESSD_ADMIN_TOKEN.' } },
      schemas: {
        SandboxBody,
        OrgBody,
        NetworkBody: SandboxBody.properties.network,
        LimitsBody,
        NetworkView,
        Sandbox,
        SandboxWithConnections,
        SandboxList,
        Org,
        OrgList,
        CheckRequest,
        CheckResult,
        Effective,
        ReportOnly,
        Error: ApiErrorBody,
      },
    },
  };
  return JSON.parse(JSON.stringify(doc)) as Record<string, unknown>;
}
