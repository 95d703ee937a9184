// The control-plane API on the admin listener. Every /api/* call needs the bearer token; bodies
// are JSON with a size cap; errors are { error: { code, message, field } } with 400, 401, 404,
// 409, 412, 413 or 503 (the state could not be written); a refused change changes nothing.
// Lists are paged (limit, cursor); a sandbox or organization carries an ETag, and its writes
// take If-Match / If-None-Match (docs/api.md).

import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import { quote } from '../util/fields.ts';
import type { ChangeError, ChangeResult, ControlPlane, SandboxRecord } from '../control/control-plane.ts';
import { parseNetwork } from '../control/control-plane.ts';
import type { DialectResult } from '../policy/model.ts';
import { normalizeWireName } from '../match/names.ts';
import { formatPorts, renderNetwork, type NetworkView } from '../policy/render.ts';
import type { OverlayEntry } from '../policy/overlay.ts';
import { nameReach, reportsOnly, rulesetOf, verdict, type PolicyChain } from '../policy/verdict.ts';
import { checkBearer, readJson, sendError } from './http-body.ts';
import { ApiError, StateRejectedError, StateWriteError } from '../errors.ts';
import { sendJson, type AdminServer } from './server.ts';
import type { ResolvedNames } from '../dns/memory.ts';
import { ID_PATTERN } from '../schema/constants.ts';
import { check } from '../schema/check.ts';
import { CheckRequest } from '../schema/schemas.ts';
import { CappedIssues } from '../util/issues.ts';
import { pageOf, pageQuery } from './pagination.ts';
import { socketAddress } from '../net/socket-address.ts';
import { preconditionsOf } from './preconditions.ts';

export interface ApiOptions {
  readonly token: () => string | null;
  /** The token a rotation replaces, accepted beside `token` (admin.previousToken); null: none. */
  readonly previousToken?: () => string | null;
  /** Told of each call that presented the previous token, with its source address: who has not switched yet. */
  readonly onPreviousToken?: (source: string) => void;
  readonly maxBodyBytes: number;
  /** Called for every change the API refuses (invalid, conflicting or unknown), for the counters. */
  readonly onRefused?: (e: ChangeError) => void;
  /** What the DNS listener remembers per sandbox (names and the addresses they gave). */
  readonly dnsMemory?: Pick<ResolvedNames, 'view' | 'top' | 'total'>;
  /** A sandbox's open and undecided connections now, and the limits that apply to it. */
  readonly connections?: (id: string) => unknown;
  /** The global limits, counts and the sandboxes holding the most connections (GET /api/v1/limits). */
  readonly top?: () => unknown;
}

// Paths are matched with the one id pattern (src/schema/constants.ts): any other id matches no route.
const ID = `(${ID_PATTERN.slice(1, -1)})`;
/** ID_PATTERN in words, as the schema words it. */
const ID_RULE = 'letters, digits, ".", "_" or "-", starting with a letter or digit, at most 128';

/**
 * Whether a body's field is part of the policy: what decides a verdict (`network` and below, an
 * organization's `tier`, `reportOnly`). The rest of a body (its shape, `sources`, `org`,
 * `limits`, an unknown key) is the request around the policy.
 */
function inPolicy(field: string): boolean {
  return /^(?:network|tier|reportOnly)(?:$|[.[])/.test(field);
}

/**
 * A refused change as the API answers it. An invalid body is `invalid_policy` when every problem
 * is in the policy (a platform can hand that answer to whoever wrote the policy), and
 * `invalid_request` when any is in the request around it (the caller's own bug); the problems
 * outside the policy come first, so `field` names one of them.
 */
function fromChange(e: ChangeError): ApiError {
  if (e.kind === 'invalid') {
    const outside = e.issues.filter((i) => !inPolicy(i.field));
    const issues = [...outside, ...e.issues.filter((i) => inPolicy(i.field))];
    const message = issues.map((i) => (i.field ? `${i.field}: ${i.reason}` : i.reason)).join('; ');
    return new ApiError(400, outside.length > 0 ? 'invalid_request' : 'invalid_policy', message, issues[0]?.field || null);
  }
  if (e.kind === 'conflict') return new ApiError(409, 'conflict', e.message, e.field);
  if (e.kind === 'precondition') {
    const field = e.message.startsWith('If-None-Match') ? 'If-None-Match' : 'If-Match';
    return new ApiError(412, 'precondition_failed', e.message, field, e.etag !== null ? { etag: e.etag } : {});
  }
  return new ApiError(404, 'not_found', e.message);
}

/** How the layers of the effective view combine (policy/verdict.ts `verdict`). */
const ORDER =
  'Protected addresses are refused first; then an always-deny entry refuses; then an always-allow entry allows; then the organization AND the sandbox decide. ' +
  'Report-only lets through what the organization or the sandbox would refuse, never a protected address or an always-deny entry.';

const entryView = (e: OverlayEntry) => ({ name: e.name, domains: e.side.domains, cidrs: e.side.cidrs, ports: formatPorts(e.side.ports) });

/**
 * The sandboxes' DNS servers (`dns.sandboxServers`) the chain allows on port 53: each asked of
 * verdict() as `POST /api/v1/check` and the data path ask it, so the organization's layer, the
 * overlays and the protected addresses count as they do there (a Daytona tier 1 or 2
 * organization refuses what its Novita sandbox's domain rule lets through). Report-only's
 * `would-refuse` is not an allow: the view reports it as `report_only`.
 */
function dnsServersAllowed(chain: PolicyChain, servers: readonly string[]): string[] {
  return servers.filter((ip) => verdict(chain, { name: null, ip, port: 53 }).verdict === 'allow');
}

/**
 * The essential-services catalog's patterns the chain reaches by name (verdict.ts `nameReach`,
 * what the DNS listener asks): a pattern is listed only when one port passes the overlays, the
 * organization AND the sandbox, whichever of them joined the catalog. A `*.name` pattern is
 * asked as itself, which matches the wildcard rules above it and no single name below it: "any
 * name below" that no narrower rule names.
 */
function essentialServicesReached(chain: PolicyChain, catalog: readonly string[]): string[] {
  return catalog.filter((pattern) => {
    const r = nameReach(chain, pattern);
    return r.reach && r.wouldRefuse !== true;
  });
}

export function mountApi(admin: AdminServer, cp: ControlPlane, opts: ApiOptions): void {
  const guarded =
    (fn: (req: IncomingMessage, res: ServerResponse, params: string[]) => Promise<void> | void) =>
    async (req: IncomingMessage, res: ServerResponse, params: string[]): Promise<void> => {
      try {
        if (checkBearer(req, opts.token(), opts.previousToken?.() ?? null) === 'previous') {
          opts.onPreviousToken?.(socketAddress(req.socket, 'remote')?.address ?? '');
        }
        await fn(req, res, params);
      } catch (err) {
        if (err instanceof ApiError) return sendError(res, err);
        // The change was not made durable, so it was not made at all: a retry may succeed once
        // the operator frees space or makes the folder writable again.
        if (err instanceof StateWriteError) return sendError(res, new ApiError(503, 'state_write_failed', err.message));
        if (err instanceof StateRejectedError) return sendError(res, new ApiError(503, 'state_rejected', err.message));
        throw err;
      }
    };
  // A read answers with what any egressd on the same state acknowledged before it (another
  // process's change is otherwise followed within milliseconds, not before this answer).
  const read =
    (fn: (req: IncomingMessage, res: ServerResponse, params: string[]) => Promise<void> | void) =>
    async (req: IncomingMessage, res: ServerResponse, params: string[]): Promise<void> => {
      await cp.refresh();
      await fn(req, res, params);
    };
  const unwrap = <T>(r: ChangeResult<T>): T => {
    if (r.ok) return r.value;
    opts.onRefused?.(r.error);
    throw fromChange(r.error);
  };
  const body = (req: IncomingMessage): Promise<unknown> => readJson(req, opts.maxBodyBytes);
  const actor = (req: IncomingMessage): string => `api ${socketAddress(req.socket, 'remote')?.address ?? '?'}`;
  const networkOf = (r: SandboxRecord): DialectResult => {
    const n = parseNetwork(r.network, 'network');
    if (!n.ok) throw new ApiError(400, 'invalid_policy', 'Stored network no longer validates');
    return n.value;
  };
  // Warnings name their field as errors do on every route: from `network`, the body's key.
  const prefixed = (ws: NonNullable<NetworkView['warnings']>) => ws.map((w) => ({ field: `network.${w.field}`, message: w.message }));
  const networkView = (r: SandboxRecord): NetworkView => {
    const v = renderNetwork(networkOf(r));
    return v.warnings ? { ...v, warnings: prefixed(v.warnings) } : v;
  };
  const view = (r: SandboxRecord) => {
    const { warnings, ...network } = renderNetwork(networkOf(r));
    return {
      id: r.id,
      sources: r.sources,
      org: r.org,
      origin: r.origin,
      network,
      ...(r.limits ? { limits: r.limits } : {}),
      reportOnly: r.reportOnly === true,
      ...(warnings ? { warnings: prefixed(warnings) } : {}),
    };
  };
  const get = (id: string): SandboxRecord => {
    const r = cp.sandbox(id);
    if (!r) throw new ApiError(404, 'not_found', `Sandbox ${quote(id)} does not exist`);
    return r;
  };

  // Every list is paged (`limit`, `cursor`: src/admin/pagination.ts), ordered by id.
  admin.route({
    method: 'GET',
    path: /^\/api\/v1\/orgs$/,
    handler: guarded(
      read((req, res) => {
        const p = pageOf(cp.orgs(), 'orgs', pageQuery(req.url, 'orgs'));
        sendJson(res, 200, { orgs: p.items, next_cursor: p.next });
      }),
    ),
  });
  admin.route({
    method: 'GET',
    path: /^\/api\/v1\/sandboxes$/,
    handler: guarded(
      read((req, res) => {
        const p = pageOf(cp.sandboxes(), 'sandboxes', pageQuery(req.url, 'sandboxes'));
        sendJson(res, 200, { sandboxes: p.items.map(view), next_cursor: p.next });
      }),
    ),
  });
  // Entity tags (RFC 9110 §8.8.3) of a sandbox or organization, on every answer that shows one.
  const etag = (kind: 'sandbox' | 'org', id: string): Record<string, string> => {
    const t = cp.etagOf(kind, id);
    return t === undefined ? {} : { etag: t };
  };
  admin.route({
    method: 'PUT',
    path: new RegExp(`^/api/v1/sandboxes/${ID}$`),
    handler: guarded(async (req, res, [id]) => {
      const r = unwrap(await cp.putSandbox(id!, await body(req), actor(req), preconditionsOf(req)));
      sendJson(res, r.created ? 201 : 200, view(r.record), { etag: r.etag });
    }),
  });
  admin.route({
    method: 'GET',
    path: new RegExp(`^/api/v1/sandboxes/${ID}$`),
    handler: guarded(
      read((_q, res, [id]) => {
        const r = get(id!);
        sendJson(res, 200, { ...view(r), ...(opts.connections ? { connections: opts.connections(r.id) } : {}) }, etag('sandbox', r.id));
      }),
    ),
  });
  // The OpenAPI 3.1 description, generated from the one schema (scripts/gen-schema.ts): read from
  // disk on the first request, so an idle daemon holds neither it nor the schema library.
  let openapi: Buffer | undefined;
  admin.route({
    method: 'GET',
    path: /^\/api\/v1\/openapi\.json$/,
    handler: guarded(async (_q, res) => {
      openapi ??= await readFile(new URL('../schema/generated/openapi.json', import.meta.url));
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': openapi.length, 'cache-control': 'no-store' }).end(openapi);
    }),
  });
  admin.route({ method: 'GET', path: /^\/api\/v1\/limits$/, handler: guarded((_q, res) => sendJson(res, 200, opts.top?.() ?? {})) });
  admin.route({
    method: 'DELETE',
    path: new RegExp(`^/api/v1/sandboxes/${ID}$`),
    handler: guarded(async (req, res, [id]) => {
      unwrap(await cp.deleteSandbox(id!, actor(req), preconditionsOf(req)));
      res.writeHead(204).end();
    }),
  });
  admin.route({
    method: 'GET',
    path: new RegExp(`^/api/v1/sandboxes/${ID}/network$`),
    handler: guarded(read((_q, res, [id]) => sendJson(res, 200, networkView(get(id!)), etag('sandbox', id!)))),
  });
  admin.route({
    method: 'PUT',
    path: new RegExp(`^/api/v1/sandboxes/${ID}/network$`),
    handler: guarded(async (req, res, [id]) => {
      const r = unwrap(await cp.putNetwork(id!, await body(req), actor(req), preconditionsOf(req)));
      sendJson(res, 200, networkView(r.record), { etag: r.etag });
    }),
  });
  admin.route({
    method: 'GET',
    path: new RegExp(`^/api/v1/sandboxes/${ID}/effective$`),
    handler: guarded(
      read((_q, res, [id]) => {
        const r = get(id!);
        const org = r.org === null ? null : cp.orgRecord(r.org);
        const orgNet = org?.network != null ? parseNetwork(org.network, 'network') : null;
        const settings = cp.store.settings;
        const chain = cp.store.policyOf(r.id);
        const levels = chain?.reportOnly ?? [];
        const ov = cp.store.overlays.compiled;
        sendJson(res, 200, {
          sandbox: r.id,
          // Report-only: on when any level turned it on (the config's `reportOnly`, the
          // organization's, the sandbox's); what the policy would refuse is then let through and
          // reported as `would-refuse`. Protected addresses stay refused.
          report_only: { enabled: levels.length > 0, levels },
          rule: 'A connection is allowed when its organization allows it AND the sandbox allows it.',
          order: ORDER,
          overlays: {
            always_deny: cp.store.overlays.model.alwaysDeny.map((e, i) => ({ ...entryView(e), hits: ov?.alwaysDeny[i]?.counter.hits ?? 0 })),
            always_allow: cp.store.overlays.model.alwaysAllow.map((e, i) => ({ ...entryView(e), hits: ov?.alwaysAllow[i]?.counter.hits ?? 0 })),
          },
          // How many connections each rule decided since its policy was last set (kept in
          // memory): a rule at 0 is dead; the rule behind a refusal is in the log line too.
          rule_hits:
            chain === undefined
              ? null
              : {
                  sandbox: [
                    ...(chain.layer.dns?.counts.list().map((h) => ({ ...h, id: `dns_servers.${h.id}`, rule: `dns servers: ${h.rule}` })) ?? []),
                    ...chain.layer.main.counts.list(),
                  ],
                  organization: chain.org?.layer?.main.counts.list() ?? null,
                },
          organization:
            org == null
              ? null
              : {
                  id: org.id,
                  tier: org.tier,
                  network: orgNet?.ok
                    ? renderNetwork(orgNet.value)
                    : org.tier !== null && org.tier <= 2
                      ? { mode: 'block-all', essential_services: true }
                      : { mode: 'allow-all' },
                },
          network: renderNetwork(networkOf(r)),
          // What the data path decides, not what the sandbox's own policy asks for: both through the chain.
          dns_servers_allowed: chain === undefined ? [] : dnsServersAllowed(chain, settings.dnsServers),
          // The names this sandbox resolved through egressd and the addresses they gave: a
          // connection that carries no name to one of these addresses is judged with the names.
          dns_remembered: opts.dnsMemory?.view(r.id) ?? [],
          essential_services: chain === undefined ? [] : essentialServicesReached(chain, settings.catalog),
          protected: {
            extra: settings.protected.extra,
            except: settings.protected.except,
            note: "Protected addresses (loopback, private, link-local, metadata, ...) are refused unless an allowed CIDR of the sandbox's policy, wholly inside them, unlocks them (no policy opens protected.extra or the host itself); its organization's policy then judges them by its allowed CIDRs and ports, its deny rules and its mode, never by an allowed domain.",
          },
        });
      }),
    ),
  });
  admin.route({
    method: 'GET',
    path: /^\/api\/v1\/dns\/remembered$/,
    handler: guarded((req, res) => {
      const raw = new URL(req.url ?? '/', 'http://x').searchParams.get('top') ?? '10';
      if (!/^\d{1,4}$/.test(raw) || Number(raw) < 1)
        throw new ApiError(400, 'invalid_request', `Query "top" must be an integer from 1 to 9999, got ${quote(raw)}`, 'top');
      sendJson(res, 200, { total: opts.dnsMemory?.total ?? 0, top: opts.dnsMemory?.top(Number(raw)) ?? [] });
    }),
  });
  for (const method of ['PUT', 'GET', 'DELETE'] as const) {
    admin.route({
      method,
      path: new RegExp(`^/api/v1/orgs/${ID}$`),
      handler: guarded(async (req, res, [id]) => {
        if (method === 'PUT') {
          const r = unwrap(await cp.putOrg(id!, await body(req), actor(req), preconditionsOf(req)));
          return sendJson(res, r.created ? 201 : 200, r.record, { etag: r.etag });
        }
        if (method === 'DELETE') {
          unwrap(await cp.deleteOrg(id!, actor(req), preconditionsOf(req)));
          res.writeHead(204).end();
          return;
        }
        await cp.refresh();
        const r = cp.orgRecord(id!);
        if (!r) throw new ApiError(404, 'not_found', `Organization ${quote(id)} does not exist`);
        sendJson(res, 200, r, etag('org', r.id));
      }),
    });
  }
  admin.route({
    method: 'POST',
    path: /^\/api\/v1\/check$/,
    handler: guarded(async (req, res) => {
      const b = await body(req);
      // The shape from the one schema (src/schema/define/bodies.ts CheckRequest), every problem at once.
      const issues = new CappedIssues();
      if (!check(CheckRequest, b, '', issues)) {
        const all = issues.result();
        throw new ApiError(400, 'invalid_request', all.map((i) => (i.field ? `${i.field}: ${i.reason}` : i.reason)).join('; '), all[0]?.field || null);
      }
      const { sandbox, host, ip, port, via } = b as { sandbox: string; host?: string | null; ip: string; port: number; via?: 'tls' | 'http' };
      await cp.refresh();
      const policy = cp.store.policyOf(sandbox);
      if (!policy) throw new ApiError(404, 'not_found', `Sandbox ${quote(sandbox)} does not exist`);
      if (isIP(ip) === 0) throw new ApiError(400, 'invalid_request', `Expected an IP address, got ${quote(ip)}`, 'ip');
      let name: string | null = null;
      if (host !== undefined && host !== null) {
        // As the data path reads an SNI or Host (net/connection.ts): a client sends an IDN as its
        // A-label, and a raw U-label it is refused for must not be answered "allow" here.
        const n = normalizeWireName(host);
        if (!n.ok) throw new ApiError(400, 'invalid_request', n.reason, 'host');
        if ('name' in n) name = n.name;
      }
      // `via` as the data path sets it (net/connection.ts): only beside a name; absent, a rule that
      // reads a name one way on this port takes the name as read that way.
      const d = verdict(policy, { name, ip, port, ...(name !== null && via !== undefined ? { via } : {}) });
      sendJson(res, 200, {
        sandbox,
        host: name,
        ip,
        port,
        via: name !== null ? (via ?? null) : null,
        verdict: d.verdict,
        reason: d.reason,
        rule: d.rule,
        layer: rulesetOf(d),
        report_only: { enabled: reportsOnly(policy), levels: policy.reportOnly ?? [] },
      });
    }),
  });

  // An id outside the pattern matches none of the routes above. Still 404 (no sandbox or
  // organization can have it), but saying why: "No route for ..." reads as a wrong path.
  const badId = (kind: 'Sandbox' | 'Organization') =>
    guarded((_q, _res, [raw]) => {
      let id = raw!;
      try {
        id = decodeURIComponent(id);
      } catch {
        // Kept as sent: a malformed escape is quoted as it came.
      }
      throw new ApiError(404, 'not_found', `${kind} id ${quote(id)} is not a valid id: ${ID_RULE}`);
    });
  for (const [method, suffix] of [
    ['GET', ''],
    ['PUT', ''],
    ['DELETE', ''],
    ['GET', '/network'],
    ['PUT', '/network'],
    ['GET', '/effective'],
  ] as const) {
    admin.route({ method, path: new RegExp(`^/api/v1/sandboxes/([^/]+)${suffix}$`), handler: badId('Sandbox') });
  }
  for (const method of ['GET', 'PUT', 'DELETE'] as const) admin.route({ method, path: /^\/api\/v1\/orgs\/([^/]+)$/, handler: badId('Organization') });
}
