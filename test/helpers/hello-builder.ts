// Builds TLS ClientHellos from parameters for the peek tests: the names, ALPN, extensions,
// GREASE and padding a hello carries, how its handshake message is cut into records, and
// deliberate corruptions (any declared length can be overridden). The encodings follow
// RFC 8446 §4.1.2 and §5.1, RFC 6066 §3 (server_name) and RFC 7301 §3.1 (ALPN).
//
// Deliberately simple and separate from src/peek: a builder that shared the parser's code
// would share its bugs.

export interface Extension {
  readonly type: number;
  readonly data: Uint8Array;
}

export interface HelloSpec {
  /** host_names in one server_name list; null leaves the extension out. Default ['example.test']. */
  readonly sni?: readonly (string | Uint8Array)[] | null;
  /** Raw server_name entries (any name type); when set, replaces `sni`. */
  readonly serverNames?: readonly { readonly type: number; readonly name: string | Uint8Array }[];
  /** How many server_name extensions to send, each with the same list. Default 1. */
  readonly sniExtensions?: number;
  /** ALPN protocol names; null leaves the extension out. Default ['h2', 'http/1.1']. */
  readonly alpn?: readonly string[] | null;
  /** Adds encrypted_client_hello (0xfe0d) with a plausible outer payload. */
  readonly ech?: boolean;
  /** supported_versions; null leaves it out (a TLS 1.2 hello). Default [0x0304, 0x0303]. */
  readonly versions?: readonly number[] | null;
  /** Default 0x0303, as TLS 1.3 clients send it (RFC 8446 §4.1.2). */
  readonly legacyVersion?: number;
  /** Session id length. Default 32 (middlebox compatibility mode, RFC 8446 §D.4). */
  readonly sessionIdLength?: number;
  readonly cipherSuites?: readonly number[];
  readonly compression?: readonly number[];
  /** RFC 8701 GREASE: a cipher suite, a group, a version and two extensions (first and last). */
  readonly grease?: boolean;
  /** A padding extension (RFC 7685) of this many zero bytes, placed last. */
  readonly padding?: number;
  /** key_share with one entry of this many bytes (1216 ≈ X25519MLKEM768 + X25519). Default 32. */
  readonly keyShare?: number;
  /** More extensions, added after the standard ones (before padding and trailing GREASE). */
  readonly extra?: readonly Extension[];
  /** Extension order: as built, reversed, or shuffled by a seed. */
  readonly order?: 'as-built' | 'reversed' | { readonly seed: number };
  /** No extensions block at all (RFC 5246 §7.4.1.2 allows it). */
  readonly omitExtensions?: boolean;
  /** Bytes of garbage after the extensions, inside the handshake message. */
  readonly trailing?: number;
  /** Declared lengths that lie: each replaces the true length field it names. */
  readonly lengths?: {
    readonly sessionId?: number;
    readonly cipherSuites?: number;
    readonly compression?: number;
    readonly extensions?: number;
    readonly serverNameList?: number;
    readonly hostName?: number;
    readonly alpnList?: number;
  };
}

export interface Framing {
  /** Number of records (near-equal pieces) or the exact size of each. Default 1. */
  readonly records?: number | readonly number[];
  /** Record versions, cycled over the records. Default [0x0301]. */
  readonly versions?: readonly number[];
  /** Content type of every record. Default 22 (handshake). */
  readonly contentType?: number;
}

export const GREASE = [0x0a0a, 0x1a1a, 0x2a2a, 0x3a3a, 0x4a4a, 0x5a5a, 0x6a6a, 0x7a7a, 0x8a8a, 0x9a9a, 0xaaaa, 0xbaba, 0xcaca, 0xdada, 0xeaea, 0xfafa] as const;

const enc = new TextEncoder();
const bytesOf = (s: string | Uint8Array): Uint8Array => (typeof s === 'string' ? enc.encode(s) : s);

export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
export const u8 = (v: number): Uint8Array => Uint8Array.of(v & 0xff);
export const u16 = (v: number): Uint8Array => Uint8Array.of((v >> 8) & 0xff, v & 0xff);
export const u24 = (v: number): Uint8Array => Uint8Array.of((v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff);
export const vec8 = (body: Uint8Array, declared = body.length): Uint8Array => concat(u8(declared), body);
export const vec16 = (body: Uint8Array, declared = body.length): Uint8Array => concat(u16(declared), body);
export const ext = (type: number, data: Uint8Array = new Uint8Array(0)): Extension => ({ type, data });
export const encodeExtension = (e: Extension): Uint8Array => concat(u16(e.type), vec16(e.data));

/** Deterministic filler bytes (never zero, so a lost byte shows). */
function filler(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = ((x >>> 16) & 0xfe) | 1;
  }
  return out;
}

export function serverNameExtension(spec: HelloSpec): Uint8Array {
  const entries = spec.serverNames ?? (spec.sni ?? []).map((name) => ({ type: 0, name }));
  const list = concat(
    ...entries.map((e, i) => {
      const name = bytesOf(e.name);
      return concat(u8(e.type), vec16(name, i === 0 && spec.lengths?.hostName !== undefined ? spec.lengths.hostName : name.length));
    }),
  );
  return vec16(list, spec.lengths?.serverNameList ?? list.length);
}

export function alpnExtension(names: readonly string[], declared?: number): Uint8Array {
  const list = concat(...names.map((n) => vec8(enc.encode(n))));
  return vec16(list, declared ?? list.length);
}

/** The ClientHello body (RFC 8446 §4.1.2), without the 4-byte handshake header. */
export function helloBody(spec: HelloSpec = {}): Uint8Array {
  const grease = spec.grease === true;
  const sessionId = filler(spec.sessionIdLength ?? 32, 7);
  const suites = [...(grease ? [GREASE[2]] : []), ...(spec.cipherSuites ?? [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030])];
  const compression = spec.compression ?? [0];
  const L = spec.lengths ?? {};

  const fixed = concat(
    u16(spec.legacyVersion ?? 0x0303),
    filler(32, 3),
    vec8(sessionId, L.sessionId ?? sessionId.length),
    vec16(concat(...suites.map(u16)), L.cipherSuites ?? suites.length * 2),
    vec8(Uint8Array.from(compression), L.compression ?? compression.length),
  );
  if (spec.omitExtensions === true) return concat(fixed, new Uint8Array(spec.trailing ?? 0).fill(0xee));

  const sni = spec.sni === undefined && spec.serverNames === undefined ? { ...spec, sni: ['example.test'] } : spec;
  const exts: Extension[] = [];
  if (sni.serverNames !== undefined || sni.sni !== null) {
    const data = serverNameExtension(sni);
    for (let i = 0; i < (spec.sniExtensions ?? 1); i++) exts.push(ext(0x0000, data));
  }
  exts.push(ext(0x0017), ext(0xff01, u8(0)));
  const groups = [...(grease ? [GREASE[5]] : []), 0x001d, 0x0017, 0x0018];
  exts.push(ext(0x000a, vec16(concat(...groups.map(u16)))));
  exts.push(ext(0x000b, vec8(u8(0))));
  exts.push(ext(0x0023));
  const alpn = spec.alpn === undefined ? ['h2', 'http/1.1'] : spec.alpn;
  if (alpn !== null) exts.push(ext(0x0010, alpnExtension(alpn, L.alpnList)));
  exts.push(ext(0x0005, Uint8Array.of(1, 0, 0, 0, 0)));
  exts.push(ext(0x000d, vec16(concat(...[0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601].map(u16)))));
  const share = filler(spec.keyShare ?? 32, 11);
  exts.push(ext(0x0033, vec16(concat(u16(0x001d), vec16(share)))));
  exts.push(ext(0x002d, vec8(u8(1))));
  const versions = spec.versions === undefined ? [0x0304, 0x0303] : spec.versions;
  if (versions !== null) {
    const all = [...(grease ? [GREASE[9]] : []), ...versions];
    exts.push(ext(0x002b, vec8(concat(...all.map(u16)))));
  }
  if (spec.ech === true) exts.push(ext(0xfe0d, concat(u8(0), u16(0x0001), u16(0x0001), u8(0x42), vec16(filler(32, 5)), vec16(filler(144, 9)))));
  exts.push(...(spec.extra ?? []));

  let ordered = exts;
  if (spec.order === 'reversed') ordered = [...exts].reverse();
  else if (typeof spec.order === 'object') ordered = shuffle(exts, spec.order.seed);
  if (grease) ordered = [ext(GREASE[0]), ...ordered, ext(GREASE[14], u8(0))];
  if (spec.padding !== undefined) ordered.push(ext(0x0015, new Uint8Array(spec.padding)));

  const block = concat(...ordered.map(encodeExtension));
  return concat(fixed, vec16(block, L.extensions ?? block.length), new Uint8Array(spec.trailing ?? 0).fill(0xee));
}

function shuffle<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let x = seed >>> 0 || 1;
  for (let i = out.length - 1; i > 0; i--) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const j = x % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** A handshake message: type, 24-bit length (or a lie), body (RFC 8446 §4). */
export function handshake(body: Uint8Array, type = 1, declaredLength = body.length): Uint8Array {
  return concat(u8(type), u24(declaredLength), body);
}

/** One TLS record (RFC 8446 §5.1). */
export function record(contentType: number, version: number, payload: Uint8Array, declaredLength = payload.length): Uint8Array {
  return concat(u8(contentType), u16(version), u16(declaredLength), payload);
}

/** Cuts a message into records: `records` pieces of near-equal size, or the sizes given. */
export function frame(message: Uint8Array, framing: Framing = {}): Uint8Array {
  const r = framing.records ?? 1;
  const sizes: number[] = [];
  if (typeof r === 'number') {
    const base = Math.floor(message.length / r);
    for (let i = 0; i < r; i++) sizes.push(i < r - 1 ? base : message.length - base * (r - 1));
  } else {
    sizes.push(...r);
  }
  const versions = framing.versions ?? [0x0301];
  const out: Uint8Array[] = [];
  let o = 0;
  sizes.forEach((size, i) => {
    out.push(record(framing.contentType ?? 22, versions[i % versions.length]!, message.subarray(o, o + size)));
    o += size;
  });
  return concat(...out);
}

/** A whole ClientHello on the wire: body, handshake header, records. */
export function buildHello(spec: HelloSpec = {}, framing: Framing = {}): Uint8Array {
  return frame(handshake(helloBody(spec)), framing);
}

/** An SSLv2-format ClientHello (RFC 5246 Appendix E.2). */
export function sslv2Hello(opts: { version?: number; specs?: number; sessionId?: number; challenge?: number; declared?: number } = {}): Uint8Array {
  const specs = filler(opts.specs ?? 21, 13);
  const sessionId = filler(opts.sessionId ?? 0, 17);
  const challenge = filler(opts.challenge ?? 16, 19);
  const body = concat(u8(1), u16(opts.version ?? 0x0301), u16(specs.length), u16(sessionId.length), u16(challenge.length), specs, sessionId, challenge);
  return concat(u16(0x8000 | (opts.declared ?? body.length)), body);
}

/**
 * The first handshake message of a recorded stream, reassembled from its records; records of
 * other types before it are skipped. Trusts the lengths: for well-formed recordings only.
 */
export function handshakeOf(stream: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let have = 0;
  let need = Infinity;
  for (let p = 0; p + 5 <= stream.length && have < need;) {
    const len = (stream[p + 3]! << 8) | stream[p + 4]!;
    if (stream[p] === 22) {
      parts.push(stream.subarray(p + 5, p + 5 + len));
      have += len;
      if (need === Infinity && have >= 4) {
        const m = concat(...parts);
        need = 4 + ((m[1]! << 16) | (m[2]! << 8) | m[3]!);
      }
    }
    p += 5 + len;
  }
  return concat(...parts).subarray(0, need);
}
