// `egressd sandbox|org|check`: the control-plane API from the command line, through undici.
// The commands and their flags are declared in src/cli/program.ts; this file makes the call.
//   egressd sandbox put ID (--file BODY.json | --sources A,B [--org ORG] [--network JSON])
//   egressd sandbox get ID | rm ID | ls
//   egressd sandbox network ID [--file BODY.json | --network JSON]   (GET, or PUT when a body is given)
//   egressd sandbox effective ID
//   egressd org put ID (--tier N | --network JSON | --file BODY.json) | get ID | rm ID
//   egressd check --sandbox ID [--host NAME] --ip ADDR --port N
// The admin URL comes from --admin or EGRESSD_ADMIN_URL (default http://127.0.0.1:9901), the
// token from EGRESSD_ADMIN_TOKEN or --token-file.

import { request } from 'undici';

export interface CliResult {
  readonly code: 0 | 1 | 2 | 3 | 4;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ApiCall {
  readonly method: 'GET' | 'PUT' | 'DELETE' | 'POST';
  readonly path: string;
  readonly body?: unknown;
}

/**
 * One call to the admin API. Exit codes (src/cli/program.ts EXIT): 0 the API answered 2xx
 * (`check`: and allowed); 1 it refused the request (4xx but 401; `check`: refused); 4 `check`:
 * would be refused, let through by report-only mode; 2 the admin URL is not one; 3 it could not
 * be used: unreachable, timed out, 5xx, or 401 (no or wrong token). The answer's JSON goes to
 * stdout on success, to stderr otherwise.
 */
export async function callApi(call: ApiCall, o: { admin: string; token: string | undefined; kind?: 'plain' | 'check' | 'list' }): Promise<CliResult> {
  // A malformed --admin / EGRESSD_ADMIN_URL is the caller's argument, not an unreachable API.
  if (!URL.canParse(o.admin) || !/^https?:$/.test(new URL(o.admin).protocol)) {
    return { code: 2, stdout: '', stderr: `--admin (or EGRESSD_ADMIN_URL): expected a URL such as http://127.0.0.1:9901, got "${o.admin}"\n` };
  }
  if (o.kind === 'list') return listAll(call.path, o);
  let status: number;
  let text: string;
  try {
    const res = await request(new URL(call.path, o.admin), {
      method: call.method,
      headers: {
        ...(o.token ? { authorization: `Bearer ${o.token}` } : {}),
        ...(call.body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(call.body !== undefined ? { body: JSON.stringify(call.body) } : {}),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    status = res.statusCode;
    text = await res.body.text();
  } catch (err) {
    return { code: 3, stdout: '', stderr: `Cannot reach the admin API at ${o.admin}: ${(err as Error).message}\n` };
  }
  const out = text === '' ? '' : text.endsWith('\n') ? text : `${text}\n`;
  if (status === 401) {
    const why = o.token
      ? "the token was refused: it must be the daemon's admin.token or EGRESSD_ADMIN_TOKEN, and the daemon has the API disabled when it has neither"
      : 'no token was sent: set EGRESSD_ADMIN_TOKEN or pass --token-file FILE';
    return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} answered 401: ${out || '\n'}${why}\n` };
  }
  if (status >= 500) return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} answered ${status}: ${out || '\n'}` };
  // check's 1 is a refusal: a request the API refuses (an unknown sandbox: 404) gave no verdict.
  if (status >= 400) return { code: o.kind === 'check' ? 2 : 1, stdout: '', stderr: out };
  if (o.kind === 'check') {
    let verdict: unknown;
    try {
      verdict = (JSON.parse(text) as { verdict?: unknown }).verdict;
    } catch {
      return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} answered something that is not JSON: ${out}` };
    }
    // would-refuse: allowed now only because report-only mode is on; its own code, so a script
    // can tell "allowed" from "allowed until the policy is enforced".
    return { code: verdict === 'allow' ? 0 : verdict === 'would-refuse' ? 4 : 1, stdout: out, stderr: '' };
  }
  return { code: 0, stdout: out, stderr: '' };
}

/**
 * `ls`: every page of a list (`GET path?limit=1000&cursor=...`, docs/api.md "Lists"), printed as
 * one answer `{ <list>: [...] }`. Exit codes as callApi's; a page that fails ends the walk with
 * its own answer.
 */
async function listAll(path: string, o: { admin: string; token: string | undefined }): Promise<CliResult> {
  const key = path.slice(path.lastIndexOf('/') + 1);
  const all: unknown[] = [];
  const seen = new Set<string>();
  let cursor: string | null = null;
  do {
    const page = `${path}?limit=1000${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;
    const r = await callApi({ method: 'GET', path: page }, { ...o, kind: 'plain' });
    if (r.code !== 0) return r;
    let body: { next_cursor?: unknown } & Record<string, unknown>;
    try {
      body = JSON.parse(r.stdout) as typeof body;
    } catch {
      return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} answered something that is not JSON: ${r.stdout}` };
    }
    const items = body[key];
    if (!Array.isArray(items)) return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} answered no "${key}" list: ${r.stdout}` };
    all.push(...(items as unknown[]));
    cursor = typeof body.next_cursor === 'string' ? body.next_cursor : null;
    // A server that hands back a cursor twice would loop forever: stop and say so.
    if (cursor !== null && seen.has(cursor)) return { code: 3, stdout: '', stderr: `The admin API at ${o.admin} repeated the cursor ${cursor}\n` };
    if (cursor !== null) seen.add(cursor);
  } while (cursor !== null);
  return { code: 0, stdout: `${JSON.stringify({ [key]: all })}\n`, stderr: '' };
}
