// An HTTP/1.x request head, read from a client's first bytes without consuming them: the host
// the request is for. Stateless like the ClientHello parser: given everything received so far,
// it walks the bytes in order and answers need-more, head, not-http or malformed, and a verdict
// on a prefix is the verdict on the whole.
//
// Strict on purpose (RFC 9112 §11.2, request smuggling): anything two HTTP parsers could read
// differently is refused, because the upstream server, not this peek, decides which host a
// request is for. So: no bare CR or LF (RFC 9112 §2.2 lets a recipient accept a bare LF; we do
// not), no obsolete line folding (§5.2), no whitespace before a colon (§5.1), one Host (§3.2),
// and a Host that agrees with an absolute-form target (§3.2.2: the server uses the target and
// ignores Host, so they must name one host).
//
// Choices:
// - Userinfo in an absolute-form target (`http://user@host/`) is refused, not stripped: RFC
//   9110 §4.2.4 forbids sending it, and parsers disagree on where it ends (`a\@b`, `a@b@c`).
// - CONNECT is refused: a transparent filter is not a proxy to tunnel through.
// - `PRI * HTTP/2.0` (the HTTP/2 preface, RFC 9113 §3.4) is refused as soon as `PRI ` is seen.
// - HTTP or not is told by the shape of the request line (`requestShape`): up to
//   MAX_LEADING_EMPTY_LINES empty lines, a token, whitespace, a target, whitespace, "HTTP/".
//   Bytes without that shape are not-http (an SSH banner, a Redis command, a server-first
//   protocol's reply) and the caller judges them by address and port, as Squid's
//   `on_unsupported_protocol tunnel` does. Bytes with the shape that break the grammar
//   (a bare LF, obs-fold, two Hosts, a bad version) are malformed and refused.
// - RFC 9110 §9.1: a method is any token, so `MKACTIVITY` or `BREW` is judged by its Host
//   like GET.
// - RFC 9112 §2.2: empty lines (CRLF) before the request line are skipped, at most
//   MAX_LEADING_EMPTY_LINES of them; more is malformed, not a way around the peek.
// - The head must end (CRLF CRLF) within MAX_HEAD_BYTES; bytes after it are not looked at.
// - HTTP/1.0 must name a host too (Host or absolute-form): without one nothing can be checked.

import { latin1 } from './byte-reader.ts';

/** The cap on the request head, its final CRLF CRLF included. */
export const MAX_HEAD_BYTES = 16384;

/**
 * RFC 9112 §2.2 asks a server to skip "at least one" empty line before the request line; Node's
 * llhttp and nginx skip any number. We skip this many and refuse a request with more.
 */
export const MAX_LEADING_EMPTY_LINES = 8;

export const HTTP_MALFORMED_REASONS = [
  /** No end of the head within MAX_HEAD_BYTES. */
  'too-large',
  /** A bare CR or a bare LF. */
  'bad-line-ending',
  /** Not `METHOD SP target SP HTTP/1.x`, an invalid target, or too many empty lines first. */
  'bad-request-line',
  /** CONNECT. */
  'unsupported-method',
  /** The HTTP/2 connection preface (`PRI * HTTP/2.0`). */
  'http2-preface',
  /** An empty or invalid header name, whitespace before the colon, a control byte in a value. */
  'bad-header',
  /** A header line that begins with whitespace (obsolete line folding). */
  'obs-fold',
  /** Neither a Host header with a host nor an absolute-form target. */
  'missing-host',
  /** Two Host headers. */
  'duplicate-host',
  /** The Host header and the absolute-form target name different hosts. */
  'host-mismatch',
  /** A Host or target authority that is not `host[:port]` (userinfo, bad characters or port). */
  'bad-host',
] as const;

export type HttpMalformedReason = (typeof HTTP_MALFORMED_REASONS)[number];

export type HttpPeek =
  | { kind: 'need-more' }
  | {
      kind: 'head';
      method: string;
      target: string;
      /** `HTTP/1.0`, `HTTP/1.1`. */
      version: string;
      /** The host as sent (case kept), port removed; an IPv6 literal keeps its brackets. */
      host: string;
    }
  | { kind: 'not-http' }
  | { kind: 'malformed'; reason: HttpMalformedReason; detail: string };

const NEED_MORE: HttpPeek = Object.freeze({ kind: 'need-more' });
const NOT_HTTP: HttpPeek = Object.freeze({ kind: 'not-http' });

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const COLON = 0x3a;

/** RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;

/** RFC 3986 §3.2.2 reg-name: unreserved / pct-encoded / sub-delims. */
const REG_NAME = /^[A-Za-z0-9\-._~%!$&'()*+,;=]+$/;
/** An IP-literal's inside, loosely (RFC 3986 §3.2.2, RFC 6874 zone ids); the name normalizer parses it. */
const IP_LITERAL = /^\[[A-Za-z0-9:._~%-]+\]$/;
const PORT = /^[0-9]{0,5}$/;
const ABSOLUTE = /^([A-Za-z][A-Za-z0-9+.-]*):/;

const PARTIAL = 0;
const COMPLETE = 1;
const BARE_CR = 2;
const BARE_LF = 3;

type RequestLine = { method: string; target: string; version: string; authority: string | null };

export type RequestShape = 'need-more' | 'not-http' | { readonly skip: number; readonly emptyLines: number };

/**
 * Where requestShape stopped on a stream that only grows (`shapeProgress()` starts one): a caller
 * that asks after every read hands it back, and each byte is looked at once. Without it a client
 * dripping a 16 KiB request line one byte per segment made every read walk the whole line again.
 */
export interface ShapeProgress {
  /** requestShape's answer once decided ('need-more' until then). */
  result: RequestShape;
  phase: number;
  /** The next byte to look at. */
  at: number;
  /** Where the method or the target began. */
  mark: number;
  empty: number;
  /** How many characters of "HTTP/" matched. */
  k: number;
  /** Bytes looked at, all calls together (tests bound it). */
  examined: number;
}

export function shapeProgress(): ShapeProgress {
  return { result: 'need-more', phase: PH_LEAD, at: 0, mark: 0, empty: 0, k: 0, examined: 0 };
}

const PH_LEAD = 0;
const PH_METHOD = 1;
const PH_SP1 = 2;
const PH_TARGET = 3;
const PH_SP2 = 4;
const PH_NAME = 5;
const HTTP_SLASH = 'HTTP/';

/**
 * Whether the bytes have the shape of an HTTP/1.x request line, leniently (the strict grammar is
 * parseHttpHead's): up to MAX_LEADING_EMPTY_LINES empty lines (CRLF or a bare LF), a token
 * (RFC 9110 §9.1: any token is a method), spaces or tabs, a target, spaces or tabs, `HTTP/` in
 * any case. Answers as soon as the bytes decide and never changes its answer as more arrive;
 * `skip` is the length of the leading empty lines. More than MAX_LEADING_EMPTY_LINES empty lines
 * count as HTTP, so that parseHttpHead refuses them rather than the peek passing them by.
 * `progress` (optional): resume where the last call on the same, since grown, bytes stopped.
 */
export function requestShape(b: Uint8Array, progress?: ShapeProgress): RequestShape {
  const p = progress ?? shapeProgress();
  if (p.result !== 'need-more') return p.result;
  const n = Math.min(b.length, MAX_HEAD_BYTES);
  let i = p.at;
  let r: RequestShape = 'need-more';
  // Bounded: every pass moves `i` forward or leaves; one pass per phase change besides.
  scan: for (;;) {
    switch (p.phase) {
      case PH_LEAD:
        if (i >= n) break scan;
        if (b[i] === CR) {
          if (i + 1 >= n) break scan;
          if (b[i + 1] !== LF) {
            r = 'not-http';
            break scan;
          }
          i += 2;
        } else if (b[i] === LF) {
          i += 1;
        } else {
          p.phase = PH_METHOD;
          p.mark = i;
          continue;
        }
        if (++p.empty > MAX_LEADING_EMPTY_LINES) {
          r = { skip: i, emptyLines: p.empty };
          break scan;
        }
        continue;
      case PH_METHOD:
        while (i < n && TCHAR[b[i]!] === 1) i++;
        if (i === n) break scan;
        if (i === p.mark || (b[i] !== SP && b[i] !== HTAB)) {
          r = 'not-http';
          break scan;
        }
        p.phase = PH_SP1;
        continue;
      case PH_SP1:
        while (i < n && (b[i] === SP || b[i] === HTAB)) i++;
        if (i === n) break scan;
        p.phase = PH_TARGET;
        p.mark = i;
        continue;
      case PH_TARGET:
        while (i < n && b[i] !== SP && b[i] !== HTAB && b[i] !== CR && b[i] !== LF) i++;
        if (i === n) break scan;
        // No target, or a line that ends after it (HTTP/0.9, an SSH banner): not an HTTP/1.x request.
        if (i === p.mark || b[i] === CR || b[i] === LF) {
          r = 'not-http';
          break scan;
        }
        p.phase = PH_SP2;
        continue;
      case PH_SP2:
        while (i < n && (b[i] === SP || b[i] === HTAB)) i++;
        if (i === n) break scan;
        p.phase = PH_NAME;
        p.k = 0;
        continue;
      default:
        for (; p.k < HTTP_SLASH.length; p.k++, i++) {
          if (i >= n) break scan;
          // ASCII case folding: an upper-case letter's bit 0x20 is clear.
          if ((b[i]! & ~0x20) !== (HTTP_SLASH.charCodeAt(p.k) & ~0x20) || (p.k === 4 && b[i] !== 0x2f)) {
            r = 'not-http';
            break scan;
          }
        }
        r = { skip: skipOf(b), emptyLines: p.empty };
        break scan;
    }
  }
  p.examined += i - p.at;
  p.at = i;
  p.result = r;
  return r;
}

/** The length of the leading empty lines (CRLF or LF) of bytes requestShape found HTTP. */
function skipOf(b: Uint8Array): number {
  let i = 0;
  while (b[i] === CR || b[i] === LF) i++;
  return i;
}

export function parseHttpHead(input: Uint8Array): HttpPeek {
  if (input.length === 0) return NEED_MORE;
  const shape = requestShape(input);
  if (shape === 'not-http') return NOT_HTTP;
  if (shape === 'need-more') return needMore(input);
  if (shape.emptyLines > MAX_LEADING_EMPTY_LINES) {
    return malformed('bad-request-line', `More than ${MAX_LEADING_EMPTY_LINES} empty lines before the request line`);
  }
  // RFC 9112 §2.2 skips empty lines; a bare LF among them is as bad as anywhere else.
  for (let k = 0; k < shape.skip; k++) {
    if (input[k] === LF && (k === 0 || input[k - 1] !== CR)) return badEnding(BARE_LF, k);
  }
  const bytes = shape.skip === 0 ? input : input.subarray(shape.skip);
  const n = Math.min(bytes.length, MAX_HEAD_BYTES - shape.skip);

  let end = lineEnd(bytes, 0, n);
  let kind = lineKind(bytes, end, n);
  const line = requestLine(bytes, end, kind === COMPLETE);
  if (line !== null && 'kind' in line) return line;
  if (kind !== COMPLETE) return kind === PARTIAL ? needMore(input) : badEnding(kind, end);
  // `line` is non-null here: requestLine answers null only for a partial line.
  const request = line!;

  let hostRaw: string | null = null;
  let pos = end + 2;
  let first = true;
  // Bounded: every pass moves `pos` past a CRLF, or leaves.
  for (;;) {
    end = lineEnd(bytes, pos, n);
    kind = lineKind(bytes, end, n);
    if (end === pos && kind === COMPLETE) break;
    const h = headerLine(bytes, pos, end, kind === COMPLETE, hostRaw, first);
    if (h !== null && typeof h !== 'string') return h;
    if (kind !== COMPLETE) return kind === PARTIAL ? needMore(input) : badEnding(kind, end);
    if (h !== null) hostRaw = h;
    pos = end + 2;
    first = false;
  }
  return judgeHost(request, hostRaw);
}

/** Index of the first CR or LF in [from, n), or n. */
function lineEnd(b: Uint8Array, from: number, n: number): number {
  let i = from;
  while (i < n && b[i] !== CR && b[i] !== LF) i++;
  return i;
}

function lineKind(b: Uint8Array, end: number, n: number): number {
  if (end >= n) return PARTIAL;
  if (b[end] === LF) return BARE_LF;
  if (end + 1 >= n) return PARTIAL;
  return b[end + 1] === LF ? COMPLETE : BARE_CR;
}

function needMore(bytes: Uint8Array): HttpPeek {
  if (bytes.length >= MAX_HEAD_BYTES) {
    return malformed('too-large', `The request head has no end (CRLF CRLF) within the first ${MAX_HEAD_BYTES} bytes`);
  }
  return NEED_MORE;
}

function badEnding(kind: number, at: number): HttpPeek {
  return kind === BARE_CR
    ? malformed('bad-line-ending', `A bare CR (not followed by LF) at byte ${at}`)
    : malformed('bad-line-ending', `A bare LF (not preceded by CR) at byte ${at}`);
}

/**
 * RFC 9112 §3: method SP request-target SP HTTP-version. On a partial line (`complete` false)
 * it answers null when nothing is wrong so far: only what the bytes already show is judged.
 */
function requestLine(b: Uint8Array, stop: number, complete: boolean): RequestLine | HttpPeek | null {
  let i = 0;
  while (i < stop && TCHAR[b[i]!] === 1) i++;
  if (i === stop) return complete ? malformed('bad-request-line', `The request line ${quote(latin1(b, 0, stop))} has no target`) : null;
  if (b[i] !== SP) return malformed('bad-request-line', `Invalid character ${describe(b[i]!)} in the method ${quote(latin1(b, 0, i))}`);
  const method = latin1(b, 0, i);
  if (method === 'CONNECT') return malformed('unsupported-method', 'Method "CONNECT" is refused: a transparent filter is not a proxy to tunnel through');
  if (method === 'PRI') return malformed('http2-preface', 'Method "PRI" opens the HTTP/2 connection preface (RFC 9113 §3.4), which is not HTTP/1.x');

  const targetStart = ++i;
  // RFC 9112 §3.2: the target is URI syntax: visible ASCII, no whitespace.
  while (i < stop && b[i]! > SP && b[i]! < 0x7f) i++;
  if (i === stop) {
    return complete ? malformed('bad-request-line', `The request line ends after the target ${quote(latin1(b, targetStart, stop))} with no version`) : null;
  }
  if (b[i] !== SP) {
    return malformed('bad-request-line', `Invalid character ${describe(b[i]!)} in the request target ${quote(latin1(b, targetStart, i))}`);
  }
  if (i === targetStart) return malformed('bad-request-line', `Two spaces follow the method ${quote(method)}: the target is empty`);
  const target = latin1(b, targetStart, i);
  const form = targetForm(method, target);
  if (typeof form !== 'string' && form !== null) return form;

  const versionStart = ++i;
  const expect = 'HTTP/1.';
  // Bounded by the 8 characters of "HTTP/1.x".
  for (let k = 0; k <= expect.length; k++, i++) {
    if (i >= stop) return complete ? malformed('bad-request-line', `The version ${quote(latin1(b, versionStart, stop))} is not HTTP/1.x`) : null;
    const ok = k < expect.length ? b[i] === expect.charCodeAt(k) : b[i]! >= 0x30 && b[i]! <= 0x39;
    if (!ok) return malformed('bad-request-line', `The version ${quote(latin1(b, versionStart, i + 1))} is not HTTP/1.x`);
  }
  if (i < stop) return malformed('bad-request-line', `The request line continues after ${quote(latin1(b, versionStart, i))}`);
  if (!complete) return null;
  return { method, target, version: latin1(b, versionStart, i), authority: form };
}

/**
 * RFC 9112 §3.2: origin-form (`/path`), absolute-form (`http://host/path`; its authority is
 * returned), or asterisk-form for OPTIONS. Authority-form belongs to CONNECT, refused above.
 */
function targetForm(method: string, target: string): string | HttpPeek | null {
  if (target.charCodeAt(0) === 0x2f) return null;
  if (target === '*') {
    return method === 'OPTIONS' ? null : malformed('bad-request-line', `The target "*" is only for OPTIONS, not ${quote(method)}`);
  }
  const scheme = ABSOLUTE.exec(target)?.[1]?.toLowerCase();
  if ((scheme === 'http' || scheme === 'https') && target.startsWith('//', scheme.length + 1)) {
    const from = scheme.length + 3;
    let to = from;
    // The authority ends at the first "/", "?" or "#" (RFC 3986 §3.2). Bounded by the target.
    while (to < target.length && !'/?#'.includes(target[to]!)) to++;
    const authority = target.slice(from, to);
    if (authority.includes('@')) {
      return malformed('bad-host', `The request target ${quote(target)} carries userinfo ("user@"), which RFC 9110 §4.2.4 forbids`);
    }
    const host = hostOf(authority);
    if (host === null) return malformed('bad-host', `The request target's authority ${quote(authority)} is not host[:port]`);
    return host;
  }
  return malformed('bad-request-line', `The request target ${quote(target)} is neither a path, an http(s) URL, nor "*"`);
}

/**
 * RFC 9112 §5: field-name ":" OWS field-value OWS. Answers the Host value (OWS trimmed) for a
 * complete Host line, a verdict, or null. `first` marks the line right after the request line.
 */
function headerLine(b: Uint8Array, start: number, stop: number, complete: boolean, hostSoFar: string | null, first: boolean): string | HttpPeek | null {
  if (start === stop) return null;
  const c0 = b[start]!;
  if (c0 === SP || c0 === HTAB) {
    return first
      ? malformed('obs-fold', 'Whitespace between the request line and the first header (RFC 9112 §2.2)')
      : malformed('obs-fold', 'A header line begins with whitespace: obsolete line folding (RFC 9112 §5.2)');
  }
  let i = start;
  while (i < stop && TCHAR[b[i]!] === 1) i++;
  if (i === stop) return complete ? malformed('bad-header', `The header line ${quote(latin1(b, start, stop))} has no colon`) : null;
  const c = b[i]!;
  if (c !== COLON) {
    if (c === SP || c === HTAB) {
      return malformed('bad-header', `Whitespace between the header name ${quote(latin1(b, start, i))} and its colon (RFC 9112 §5.1)`);
    }
    return malformed('bad-header', `Invalid character ${describe(c)} in the header name ${quote(latin1(b, start, i))}`);
  }
  if (i === start) return malformed('bad-header', 'A header line has an empty name');
  const isHost = i - start === 4 && latin1(b, start, i).toLowerCase() === 'host';
  if (isHost && hostSoFar !== null) return malformed('duplicate-host', `A second Host header follows Host ${quote(hostSoFar)}`);
  // RFC 9110 §5.5: field-vchar / SP / HTAB, obs-text tolerated; CTLs (NUL above all) are not.
  for (let j = i + 1; j < stop; j++) {
    const v = b[j]!;
    if ((v < SP && v !== HTAB) || v === 0x7f) {
      return malformed('bad-header', `The ${quote(latin1(b, start, i))} header holds the control character ${describe(v)}`);
    }
  }
  if (!complete || !isHost) return null;
  let from = i + 1;
  let to = stop;
  while (from < to && (b[from] === SP || b[from] === HTAB)) from++;
  while (to > from && (b[to - 1] === SP || b[to - 1] === HTAB)) to--;
  return latin1(b, from, to);
}

/** The name a complete head is for: RFC 9112 §3.2 and §3.2.2. */
function judgeHost(request: RequestLine, hostRaw: string | null): HttpPeek {
  let fromHeader: string | null = null;
  if (hostRaw !== null && hostRaw.length > 0) {
    if (hostRaw.includes('@')) return malformed('bad-host', `The Host header ${quote(hostRaw)} carries userinfo ("user@")`);
    fromHeader = hostOf(hostRaw);
    if (fromHeader === null) return malformed('bad-host', `The Host header ${quote(hostRaw)} is not host[:port]`);
  }
  const authority = request.authority;
  if (authority !== null) {
    if (hostRaw !== null && (fromHeader === null || fromHeader.toLowerCase() !== authority.toLowerCase())) {
      return malformed('host-mismatch', `The Host header ${quote(hostRaw)} names another host than the target's ${quote(authority)}`);
    }
    return head(request, authority);
  }
  if (fromHeader === null) {
    const why = hostRaw === null ? 'has no Host header' : 'has an empty Host header';
    return malformed('missing-host', `The ${request.version} request ${why} and no absolute-form target, so it names no host`);
  }
  return head(request, fromHeader);
}

/** `host[:port]` → host (IPv6 brackets kept), or null when it is not that shape. */
function hostOf(authority: string): string | null {
  let host: string;
  let rest: string;
  if (authority.charCodeAt(0) === 0x5b) {
    const close = authority.indexOf(']');
    if (close < 0) return null;
    host = authority.slice(0, close + 1);
    rest = authority.slice(close + 1);
    if (!IP_LITERAL.test(host)) return null;
  } else {
    const colon = authority.indexOf(':');
    host = colon < 0 ? authority : authority.slice(0, colon);
    rest = colon < 0 ? '' : authority.slice(colon);
    if (!REG_NAME.test(host)) return null;
  }
  if (rest.length > 0) {
    // RFC 3986 §3.2.3: port = *DIGIT, so "host:" is allowed; a port past 65535 is not a port.
    const port = rest.slice(1);
    if (rest.charCodeAt(0) !== COLON || !PORT.test(port) || Number(port) > 65535) return null;
  }
  return host;
}

function head(r: RequestLine, host: string): HttpPeek {
  return { kind: 'head', method: r.method, target: r.target, version: r.version, host };
}

function malformed(reason: HttpMalformedReason, detail: string): HttpPeek {
  return { kind: 'malformed', reason, detail };
}

function describe(c: number): string {
  return c > SP && c < 0x7f ? JSON.stringify(String.fromCharCode(c)) : `0x${c.toString(16).padStart(2, '0')}`;
}

/** A peer's value in a message: JSON-quoted (control bytes escaped) and cut to a sane length. */
function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}
