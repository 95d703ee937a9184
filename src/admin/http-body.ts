// Request plumbing for the admin API: bearer-token auth compared in constant time, JSON bodies
// read with a size cap, and the one error shape every route answers with.

import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from '../errors.ts';
import { readJsonText } from '../util/json-read.ts';
import { utf8Text } from '../util/utf8-text.ts';
import { lineColumn } from '../util/text-position.ts';
import { quote } from '../util/fields.ts';
import { sendJson } from './server.ts';

export function sendError(res: ServerResponse, e: ApiError): void {
  if (e.status === 401) res.setHeader('www-authenticate', 'Bearer realm="egressd"');
  sendJson(res, e.status, { error: { code: e.apiCode, message: e.message, field: e.field } }, e.headers);
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Checks `Authorization: Bearer <token>` against the token and, during a rotation, the previous
 * one; says which the call presented. Both sides are hashed first so the comparison takes the
 * same time whatever the length or content of the presented token, and both tokens are always
 * compared, so the time does not say which one matched either.
 */
export function checkBearer(req: IncomingMessage, token: string | null, previous: string | null = null): 'token' | 'previous' {
  if (token === null) throw new ApiError(401, 'unauthorized', 'The admin API is disabled: no admin.token is configured');
  // node:http keeps the first of two Authorization fields and drops the second; a proxy in front
  // may read the other one. A singleton field given twice (RFC 9110 §5.3) has no one meaning.
  if ((req.headersDistinct['authorization']?.length ?? 0) > 1) {
    throw new ApiError(401, 'unauthorized', 'The request gives the Authorization field more than once; give one bearer token');
  }
  const h = req.headers.authorization ?? '';
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  const presented = digest(m ? m[1]! : '');
  const isToken = timingSafeEqual(presented, digest(token));
  // A null previous token is compared too (with a digest no presented token has), for the same time.
  const isPrevious = timingSafeEqual(presented, previous === null ? NO_TOKEN : digest(previous)) && previous !== null;
  if (!m || !(isToken || isPrevious)) throw new ApiError(401, 'unauthorized', 'Missing or wrong bearer token');
  return isToken ? 'token' : 'previous';
}

/** 32 bytes no SHA-256 of a presented token is known to equal: the comparison with an unset previous token. */
const NO_TOKEN = Buffer.alloc(32);

/** Reads a JSON body of at most `limit` bytes, each object's keys unique; anything else is a 400/413/415 ApiError. */
export async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  // node:http keeps the first of two Content-Type fields; both are judged. The media type ends
  // at ";" or the end (RFC 9110 §8.3.1): application/json-seq is another type.
  for (const type of req.headersDistinct['content-type'] ?? []) {
    if (!/^application\/json[ \t]*(?:;|$)/i.test(type)) throw new ApiError(415, 'unsupported_media_type', `Expected application/json, got ${quote(type)}`);
  }
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    throw new ApiError(413, 'body_too_large', `The body is ${declared} bytes; the limit is ${limit}`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      req.resume();
      throw new ApiError(413, 'body_too_large', `The body exceeds the limit of ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  // RFC 8259 §8.1: JSON exchanged is UTF-8; decoded leniently, another byte became U+FFFD.
  const decoded = utf8Text(Buffer.concat(chunks));
  if (!decoded.ok) {
    const { line, column } = decoded.position;
    throw new ApiError(
      400,
      'invalid_json',
      `The body is not UTF-8 at line ${line}, column ${column}: byte ${decoded.byte} (offset ${decoded.offset}) starts no UTF-8 character there`,
    );
  }
  const text = decoded.text;
  if (text.trim() === '') throw new ApiError(400, 'invalid_json', 'The body is empty; a JSON object was expected');
  const r = readJsonText(text);
  if (r.ok) return r.value;
  if (r.kind === 'duplicate') {
    throw new ApiError(400, 'invalid_json', `The body gives the key ${JSON.stringify(r.detail)} more than once; give each key once (RFC 8259 §4)`, r.detail);
  }
  // Where, as an editor counts: V8 gives a position for some errors only, as an offset, and
  // quotes the text around an unexpected token instead, over several lines when it has them.
  const { line, column } = lineColumn(text, r.offset);
  throw new ApiError(400, 'invalid_json', `The body is not valid JSON at line ${line}, column ${column}: ${r.detail}`);
}
