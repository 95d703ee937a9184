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
import { readJsonText } from '../util/json-read.ts';
import { terminalJson, terminalLine } from '../util/terminal-text.ts';
import { type Utf8Text, utf8Text } from '../util/utf8-text.ts';

export interface CliResult {
  readonly code: 0 | 1 | 2 | 3 | 4;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ApiCall {
  readonly method: 'GET' | 'PUT' | 'DELETE' | 'POST';
  readonly path: string;
  readonly body?: unknown;
  /** What the call asks, in the command's words (`sandbox put "sb-1"`): what a refusal names. */
  readonly what: string;
}

export interface CallOptions {
  readonly admin: string;
  readonly token: string | undefined;
  readonly kind?: 'plain' | 'check' | 'list';
  /** `--json`: an API error is printed as the API's error document (re-serialized, terminalJson), not as a sentence. */
  readonly json?: boolean;
}

/** The API's error document (docs/api.md "Errors"): `{ error: { code, message, field } }`. */
interface ErrorDocument {
  readonly code: string;
  readonly message: string;
  readonly field: string | null;
}

function errorDocument(text: string): ErrorDocument | null {
  // Read as the API's bodies are read: a document that gives a key twice is no document of egressd's.
  const r = readJsonText(text);
  if (!r.ok) return null;
  const doc = r.value;
  const e = (doc as { error?: unknown } | null)?.error as Partial<Record<keyof ErrorDocument, unknown>> | undefined;
  if (typeof e !== 'object' || e === null || typeof e.code !== 'string') return null;
  return { code: e.code, message: typeof e.message === 'string' ? e.message : '', field: typeof e.field === 'string' ? e.field : null };
}

/**
 * The line printed for an answer the API refused (4xx, 5xx): what was asked, the status and
 * the API's code, the field it names, and its message; `hint` says what to do about it (401).
 * `--json` prints the error document itself, for scripts that branch on its code.
 */
function refusal(call: ApiCall, o: CallOptions, status: number, text: string, hint?: string): string {
  const doc = errorDocument(text);
  // Re-serialized, not as it came: a raw C1 control or bidi override is valid inside a JSON string.
  if (o.json === true && doc !== null) return `${terminalJson(JSON.parse(text))}\n`;
  // Every piece the answer supplied goes through terminalLine: whatever answers at --admin (a
  // proxy's page, a hostile server) must not reach the operator's terminal as escape sequences.
  const answer = doc === null ? `${status}${text.trim() === '' ? '' : `: ${terminalLine(text, 200)}`}` : `${status} ${terminalLine(doc.code, 100)}`;
  const field = doc?.field ? ` (field "${terminalLine(doc.field, 200)}")` : '';
  const message = doc === null || doc.message === '' ? '' : `: ${terminalLine(doc.message)}`;
  return `error: ${call.what}: the admin API at ${o.admin} answered ${answer}${field}${message}${hint ? `; ${hint}` : ''}\n`;
}

/**
 * One call to the admin API. Exit codes (src/cli/program.ts EXIT): 0 the API answered 2xx
 * (`check`: and allowed); 1 it refused the request (4xx but 401; `check`: refused); 4 `check`:
 * would be refused, let through by report-only mode; 2 the admin URL is not one; 3 it could not
 * be used: unreachable, timed out, 5xx, or 401 (no or wrong token), or not the API (a 3xx, a 2xx
 * that is not JSON, a check without a verdict). The answer's JSON goes to
 * stdout on success; a refusal is one line on stderr (`refusal`), or with `json` the API's error
 * document, re-serialized on one line.
 */
export async function callApi(call: ApiCall, o: CallOptions): Promise<CliResult> {
  // A malformed --admin / EGRESSD_ADMIN_URL is the caller's argument, not an unreachable API.
  if (!URL.canParse(o.admin) || !/^https?:$/.test(new URL(o.admin).protocol)) {
    return { code: 2, stdout: '', stderr: `--admin (or EGRESSD_ADMIN_URL): expected a URL such as http://127.0.0.1:9901, got "${o.admin}"\n` };
  }
  if (o.kind === 'list') return listAll(call, o);
  let status: number;
  let text: string;
  let decoded: Utf8Text;
  let location: string | null;
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
    // Strictly for what is read from it (utf8Text); leniently (U+FFFD) only to show it in an error.
    const bytes = Buffer.from(await res.body.arrayBuffer());
    decoded = utf8Text(bytes);
    text = decoded.ok ? decoded.text : bytes.toString('utf8');
    location = typeof res.headers['location'] === 'string' ? res.headers['location'] : null;
  } catch (err) {
    return { code: 3, stdout: '', stderr: `error: ${call.what}: cannot reach the admin API at ${o.admin}: ${terminalLine((err as Error).message)}\n` };
  }
  const out = text === '' ? '' : text.endsWith('\n') ? text : `${text}\n`;
  if (status === 401) {
    const why = o.token
      ? "the token was refused: it must be the daemon's admin.token or EGRESSD_ADMIN_TOKEN, and the daemon has the API disabled when it has neither"
      : 'no token was sent: set EGRESSD_ADMIN_TOKEN or pass --token-file FILE';
    return { code: 3, stdout: '', stderr: refusal(call, o, status, text, why) };
  }
  if (status >= 500) return { code: 3, stdout: '', stderr: refusal(call, o, status, text) };
  // check's 1 is a refusal: a request the API refuses (an unknown sandbox: 404) gave no verdict.
  if (status >= 400) return { code: o.kind === 'check' ? 2 : 1, stdout: '', stderr: refusal(call, o, status, text) };
  // What is not the API's own answer is not "done": the API never redirects and answers a 2xx
  // with JSON or nothing (204), so a 3xx (a proxy sending to its login page) or a page that is
  // not JSON came from something else at --admin, and the change was not made.
  const unusable = (what: string): CliResult => ({ code: 3, stdout: '', stderr: `error: ${call.what}: the admin API at ${o.admin} answered ${what}\n` });
  if (status < 200 || status >= 300) {
    const to = location === null ? '' : ` (to ${terminalLine(location, 200)})`;
    return unusable(`${status}${to}, which egressd's API never answers: something else answers at that address`);
  }
  let answer: unknown = null;
  if (text !== '') {
    // The API answers UTF-8 JSON with each key once: read leniently, `{"verdict":"refuse",
    // "verdict":"allow"}` was an allow (JSON.parse keeps the last; other readers, the first).
    if (!decoded.ok)
      return unusable(`${status} with an answer that is not UTF-8 (byte ${decoded.byte} at offset ${decoded.offset}), which egressd's API never sends`);
    const r = readJsonText(text);
    if (!r.ok && r.kind === 'duplicate')
      return unusable(`${status} with JSON that gives the key "${terminalLine(r.detail, 200)}" more than once, which egressd's API never sends`);
    if (!r.ok) return unusable(`${status} with something that is not JSON: ${terminalLine(text, 200)}`);
    answer = r.value;
  }
  if (o.kind === 'check') {
    const verdict = (answer as { verdict?: unknown } | null)?.verdict;
    // Only a verdict the API gives is read as one: a JSON answer without it is not a refusal (1).
    if (verdict !== 'allow' && verdict !== 'refuse' && verdict !== 'would-refuse') return unusable(`${status} with no verdict: ${terminalLine(text, 200)}`);
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
async function listAll(call: ApiCall, o: CallOptions): Promise<CliResult> {
  const path = call.path;
  const key = path.slice(path.lastIndexOf('/') + 1);
  const all: unknown[] = [];
  const seen = new Set<string>();
  let cursor: string | null = null;
  do {
    const page = `${path}?limit=1000${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;
    const r = await callApi({ method: 'GET', path: page, what: call.what }, { ...o, kind: 'plain' });
    if (r.code !== 0) return r;
    let body: { next_cursor?: unknown } & Record<string, unknown>;
    try {
      body = JSON.parse(r.stdout) as typeof body;
    } catch {
      return {
        code: 3,
        stdout: '',
        stderr: `error: ${call.what}: the admin API at ${o.admin} answered a page that is not JSON: ${terminalLine(r.stdout, 200)}\n`,
      };
    }
    const items = body[key];
    if (!Array.isArray(items))
      return {
        code: 3,
        stdout: '',
        stderr: `error: ${call.what}: the admin API at ${o.admin} answered a page with no "${key}" list: ${terminalLine(r.stdout, 200)}\n`,
      };
    all.push(...(items as unknown[]));
    cursor = typeof body.next_cursor === 'string' ? body.next_cursor : null;
    // A server that hands back a cursor twice would loop forever: stop and say so.
    if (cursor !== null && seen.has(cursor))
      return { code: 3, stdout: '', stderr: `error: ${call.what}: the admin API at ${o.admin} repeated the cursor "${terminalLine(cursor, 200)}"\n` };
    if (cursor !== null) seen.add(cursor);
  } while (cursor !== null);
  return { code: 0, stdout: `${JSON.stringify({ [key]: all })}\n`, stderr: '' };
}
