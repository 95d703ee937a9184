// The admin listener: health and readiness now; the control-plane API and metrics mount here.

import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Endpoint } from '../net/listener.ts';
import { systemError } from '../util/system-error.ts';

// Not `import … from 'node:http'`: an ES import of a built-in reads every export, and node:http's
// WebSocket/CloseEvent/MessageEvent getters then load Node's bundled undici, http2, zlib, web
// streams and workers — about 90 modules and 15 MB of idle RSS egressd never uses.
const { createServer } = process.getBuiltinModule('node:http');

/**
 * Ready, possibly shedding new connections (`overloaded` says why) and with host settings that
 * lose connections in a rolling restart (`warnings`), or not ready with the reason.
 */
export type Readiness = { ready: true; overloaded?: string; warnings?: string[] } | { ready: false; reason: string };

export interface Route {
  readonly method: string;
  /** Matched against the path; capture groups become `params`. */
  readonly path: RegExp;
  readonly handler: (req: IncomingMessage, res: ServerResponse, params: string[]) => void | Promise<void>;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

/**
 * The path with its percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2: `%61` and
 * `a` are the same URI), so that routes and ids match however a client encodes them. Every other
 * escape (`%2F`, a non-ASCII byte) stays encoded and outside the id pattern.
 */
function unreservedDecoded(path: string): string {
  if (!path.includes('%')) return path;
  return path.replace(/%([0-9A-Fa-f]{2})/g, (escape, hex: string) => {
    const c = String.fromCharCode(parseInt(hex, 16));
    return /^[A-Za-z0-9._~-]$/.test(c) ? c : escape;
  });
}

export class AdminServer {
  readonly endpoint: Endpoint;
  #server: Server;
  #routes: Route[] = [];

  constructor(endpoint: Endpoint, readiness: () => Readiness) {
    this.endpoint = endpoint;
    this.route({ method: 'GET', path: /^\/healthz$/, handler: (_q, res) => sendJson(res, 200, { status: 'alive' }) });
    this.route({
      method: 'GET',
      path: /^\/readyz$/,
      handler: (_q, res) => {
        const r = readiness();
        // Overloaded is still 200: egressd is alive and serving, it sheds new connections by
        // design; a probe that restarted it would cut every connection it carries.
        const warnings = r.ready && r.warnings !== undefined && r.warnings.length > 0 ? { warnings: r.warnings } : {};
        const body = !r.ready
          ? { status: 'not-ready', reason: r.reason }
          : r.overloaded !== undefined
            ? { status: 'ready', overloaded: true, reason: r.overloaded, ...warnings }
            : { status: 'ready', ...warnings };
        sendJson(res, r.ready ? 200 : 503, body);
      },
    });
    this.#server = createServer((req, res) => void this.#dispatch(req, res));
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
  }

  route(r: Route): void {
    this.#routes.push(r);
  }

  async #dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = unreservedDecoded((req.url ?? '/').split('?')[0]!);
    const allowed = new Set<string>();
    for (const r of this.#routes) {
      const m = r.path.exec(path);
      if (!m) continue;
      allowed.add(r.method);
      if (r.method === 'GET') allowed.add('HEAD');
      if (r.method !== req.method && !(r.method === 'GET' && req.method === 'HEAD')) continue;
      try {
        await r.handler(req, res, m.slice(1));
      } catch (err) {
        if (!res.headersSent) sendJson(res, 500, { error: { code: 'internal', message: (err as Error).message, field: null } });
        else res.destroy();
      }
      return;
    }
    // RFC 9110 §15.5.6: a 405 names the methods the resource does support, in Allow.
    if (allowed.size > 0) {
      const allow = [...allowed].sort().join(', ');
      sendJson(
        res,
        405,
        { error: { code: 'method_not_allowed', message: `Method ${req.method} is not allowed on ${path}; allowed: ${allow}`, field: null } },
        { allow },
      );
    } else sendJson(res, 404, { error: { code: 'not_found', message: `No route for ${path}`, field: null } });
  }

  get port(): number | null {
    const a = this.#server.address();
    return a && typeof a === 'object' ? a.port : null;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (err: Error): void => reject(new Error(`Cannot listen on admin ${this.endpoint.text}: ${systemError(err)}`, { cause: err }));
      this.#server.once('error', fail);
      // SO_REUSEPORT, as the listeners: a new process can come up beside one that drains.
      this.#server.listen({ host: this.endpoint.host, port: this.endpoint.port, reusePort: true }, () => {
        this.#server.off('error', fail);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
