// One request to egressd's admin API from a loopback test: the bearer token and a JSON body, the
// reply's status, headers and parsed JSON (null for an empty body).

import { request } from 'undici';
import type { IncomingHttpHeaders } from 'node:http';

export interface AdminReply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: any;
}

/** The headers of an authorized JSON request. */
export function bearer(token = 'test-token'): Record<string, string> {
  return { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
}

/** `method path` against the admin listener at `baseUrl` (`http://127.0.0.1:port`). */
export async function adminCall(
  baseUrl: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = bearer(),
): Promise<AdminReply> {
  const res = await request(`${baseUrl}${path}`, { method: method as 'GET', headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body: text ? JSON.parse(text) : null };
}
