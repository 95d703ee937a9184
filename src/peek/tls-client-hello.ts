// The TLS ClientHello, read from a client's first bytes without consuming them: the name it
// asks for (server_name), the protocols it offers (ALPN), whether it carries Encrypted Client
// Hello, and the versions it offers.
//
// The caller hands over everything received so far, every time; the parser keeps no state and
// answers need-more, hello, not-tls or malformed. It walks the stream in order and never
// decides from a byte it has not seen, so a verdict on a prefix is the verdict on the whole
// (the fuzz suite pins this), and a declared length that cannot fit under the cap is refused
// when it is read, not after 16 KiB of waiting.
//
// Choices, each refusing what a server could read two ways:
// - The first byte decides whether this is TLS. A client opens with a handshake record
//   (RFC 8446 §5.1; RFC 5246 §7.4) or an SSLv2-format hello (RFC 5246 Appendix E.2). A stream
//   that opens with anything else — an alert (0x15), application data (0x17), a
//   ChangeCipherSpec (0x14, which RFC 8446 §D.4 only ever sends after the first hello) — is
//   not-tls: there is no ClientHello in it to read, and the caller decides without a name,
//   exactly as for a hello that names nothing, so nothing is gained by sending it.
// - Once the hello has begun, a record of another type before it is complete is malformed
//   (RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other record types).
// - The hello is returned as soon as its last byte is here; bytes after it (a CCS, early
//   data, anything) are not looked at, so they cannot change the answer.
// - The first handshake message must be a ClientHello; its bytes must end exactly where its
//   extensions end (RFC 8446 §4.1.2).
// - Names and ALPN protocols are decoded one byte per character (latin1): lossless, and the
//   caller's normalizer refuses what is not a host name. A conforming client sends ASCII only
//   (RFC 6066 §3).

import { ByteReader, latin1, SHORT } from './byte-reader.ts';

/**
 * The cap on the bytes a ClientHello may take on the wire, record headers included. Every
 * hello seen in the wild, post-quantum key shares included (1.4–1.9 KB), fits many times over.
 */
export const MAX_HELLO_BYTES = 16384;

export const TLS_MALFORMED_REASONS = [
  /** The hello cannot end within MAX_HELLO_BYTES, by a declared length or by the bytes. */
  'too-large',
  /** Record framing: not TLS 1.x, a zero-length handshake record. */
  'bad-record',
  /** A record of another content type arrived before the hello was complete. */
  'unexpected-record',
  /** The first handshake message is not a ClientHello. */
  'not-client-hello',
  /** The hello's own fields: versions, session id, cipher suites, compression, extension block. */
  'bad-handshake',
  /** Inside an extension, or an extension's length overruns the block. */
  'bad-extension',
  /** One extension type twice (RFC 8446 §4.2); server_name has its own reason. */
  'duplicate-extension',
  /** Two server_name extensions, or two host_names in its list (RFC 6066 §3). */
  'duplicate-sni',
  /** A server_name extension that names nothing: an empty list or an empty host_name. */
  'empty-sni',
  /** Bytes after the extensions inside the hello's declared length. */
  'trailing-bytes',
] as const;

export type TlsMalformedReason = (typeof TLS_MALFORMED_REASONS)[number];

export type TlsPeek =
  /**
   * `atLeast`, when known, is the stream length below which the answer cannot change but for
   * an early refusal: the earliest byte at which the declared hello can be complete. A caller
   * fed one byte per read uses it to avoid re-parsing the whole buffer on every byte.
   */
  | { kind: 'need-more'; atLeast?: number }
  | {
      kind: 'hello';
      /** The host_name as sent (not lowercased, no trailing dot removed); null when none. */
      sni: string | null;
      /** ALPN protocol names in the client's order, as sent. */
      alpn: string[];
      /** Whether encrypted_client_hello (0xfe0d) is present; GREASE ECH counts too. */
      ech: boolean;
      /** supported_versions without GREASE values, else [legacy_version]. */
      versions: number[];
      /** Whether the hello came in the SSLv2 format (which cannot carry extensions). */
      sslv2: boolean;
    }
  | { kind: 'not-tls' }
  | { kind: 'malformed'; reason: TlsMalformedReason; detail: string };

const NEED_MORE: TlsPeek = Object.freeze({ kind: 'need-more' });
const NOT_TLS: TlsPeek = Object.freeze({ kind: 'not-tls' });

const CONTENT_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 1;
const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
/** RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14. */
const MAX_FRAGMENT = 16384;

const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;
const EXT_SUPPORTED_VERSIONS = 0x002b;
const EXT_PRE_SHARED_KEY = 0x0029;
const EXT_ECH = 0xfe0d;
const NAME_TYPE_HOST = 0;

/**
 * Parsing what has arrived lets a bad hello be refused early, but the caller re-parses from
 * the start on every read. While the hello is incomplete only this many extensions are read
 * (real hellos carry 10–25), so a client dripping a hello of thousands of tiny extensions one
 * byte at a time costs a bounded amount per read; the rest is judged once the hello is whole.
 */
const MAX_EXTENSIONS_WHILE_INCOMPLETE = 64;

export function parseClientHello(bytes: Uint8Array): TlsPeek {
  const n = bytes.length;
  if (n === 0) return NEED_MORE;
  const b0 = bytes[0]!;
  if (b0 === CONTENT_HANDSHAKE) {
    if (n < 2) return NEED_MORE;
    // RFC 5246 Appendix E.1: a client may send any {03,XX} as the record version; never pin
    // the minor (0x0301 and 0x0303 are both common).
    if (bytes[1] !== 3) return NOT_TLS;
    return parseRecords(bytes);
  }
  if ((b0 & 0x80) !== 0) return parseSslv2(bytes);
  return NOT_TLS;
}

/**
 * Reassembles the first handshake message from as many records as it spans (RFC 8446 §5.1:
 * a handshake message may be split across records) and parses what has arrived of it.
 */
function parseRecords(bytes: Uint8Array): TlsPeek {
  const n = bytes.length;
  // The body's fragments, as [start, end) pairs in `bytes`; the 4-byte handshake header is
  // collected apart because it too may be split across records.
  const frags: number[] = [];
  let header = 0;
  let headerBytes = 0;
  /** Declared length of the ClientHello body, once the handshake header is complete. */
  let bodyLength = -1;
  let assembled = 0;
  /** A record-layer verdict at the point reassembly stopped; the body parsed so far goes first. */
  let stop: TlsPeek | null = null;
  /** The earliest stream length at which the hello can be whole (-1 until the header is read). */
  let completeAt = -1;

  let pos = 0;
  // Bounded: every pass moves `pos` past a record of at least one byte or leaves the loop,
  // and past the handshake header no record may start beyond MAX_HELLO_BYTES.
  for (;;) {
    if (pos >= n) break;
    const type = bytes[pos]!;
    if (type !== CONTENT_HANDSHAKE) {
      stop = malformed('unexpected-record', `A record of content type ${type} arrived before the ClientHello was complete`);
      break;
    }
    if (pos + 1 >= n) break;
    if (bytes[pos + 1] !== 3) {
      stop = malformed('bad-record', `A continuation record has version major ${bytes[pos + 1]}, not 3 (TLS 1.x)`);
      break;
    }
    if (pos + RECORD_HEADER > n) break;
    const length = (bytes[pos + 3]! << 8) | bytes[pos + 4]!;
    // RFC 8446 §5.1: zero-length fragments of Handshake type MUST NOT be sent.
    if (length === 0) {
      stop = malformed('bad-record', `A handshake record at byte ${pos} has length 0`);
      break;
    }
    if (length > MAX_FRAGMENT) {
      stop = malformed('too-large', `A handshake record declares ${length} bytes, more than the ${MAX_FRAGMENT} a record may carry`);
      break;
    }
    const end = pos + RECORD_HEADER + length;
    const arrived = Math.min(end, n);
    let at = pos + RECORD_HEADER;

    if (bodyLength < 0) {
      while (headerBytes < HANDSHAKE_HEADER && at < arrived) {
        header = header * 256 + bytes[at]!;
        headerBytes++;
        at++;
      }
      if (headerBytes === HANDSHAKE_HEADER) {
        const msgType = Math.floor(header / 0x1000000);
        if (msgType !== HANDSHAKE_CLIENT_HELLO) {
          stop = malformed('not-client-hello', `The first handshake message has type ${msgType}, not ClientHello (1)`);
          break;
        }
        bodyLength = header % 0x1000000;
      }
    }

    if (bodyLength >= 0) {
      const need = bodyLength - assembled;
      const inRecord = end - at;
      // The earliest the hello can end: in this record, or after at least one more header.
      const earliestEnd = need <= inRecord ? at + need : end + RECORD_HEADER + (need - inRecord);
      completeAt = earliestEnd;
      if (earliestEnd > MAX_HELLO_BYTES) {
        stop = malformed('too-large', `The ClientHello declares ${bodyLength} bytes and cannot end within the first ${MAX_HELLO_BYTES} bytes of the stream`);
        break;
      }
      const use = Math.min(need, arrived - at);
      if (use > 0) {
        frags.push(at, at + use);
        assembled += use;
      }
      if (assembled === bodyLength) break;
    }
    if (arrived < end) break;
    pos = end;
  }

  if (bodyLength < 0) return stop ?? NEED_MORE;
  let body: Uint8Array;
  if (frags.length === 2) {
    body = bytes.subarray(frags[0]!, frags[1]!);
  } else {
    body = new Uint8Array(assembled);
    let o = 0;
    for (let i = 0; i < frags.length; i += 2) {
      const from = frags[i]!;
      const to = frags[i + 1]!;
      // Tiny fragments by hand: a view per record would allocate on every call.
      if (to - from > 64) {
        body.set(bytes.subarray(from, to), o);
        o += to - from;
      } else {
        for (let j = from; j < to; j++) body[o++] = bytes[j]!;
      }
    }
  }
  const result = parseHelloBody(new ByteReader(body, 0, bodyLength, assembled));
  // Every byte of a complete body is here, so need-more means reassembly stopped short.
  if (result.kind !== 'need-more') return result;
  return stop ?? (completeAt > n ? { kind: 'need-more', atLeast: completeAt } : NEED_MORE);
}

/**
 * The extension types one parse has seen (RFC 8446 §4.2: no type twice): `seenAt[type]` holds
 * the generation of the parse that saw it last. Parsing is synchronous, so one table serves every
 * parse without a Set allocated and grown per hello (issue 12: a connection's allocations), and
 * without clearing: a new parse is a new generation, and the table is zeroed when they wrap.
 */
const seenAt = new Uint16Array(0x10000);
let seenGeneration = 0;

function nextSeenGeneration(): number {
  if (++seenGeneration > 0xffff) {
    seenAt.fill(0);
    seenGeneration = 1;
  }
  return seenGeneration;
}

/** RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, where the extensions may be absent). */
function parseHelloBody(r: ByteReader): TlsPeek {
  const legacyVersion = r.u16();
  if (legacyVersion < 0) return cut(legacyVersion, 'bad-handshake', 'The ClientHello ends before its legacy_version');
  if (legacyVersion >> 8 !== 3) return malformed('bad-handshake', `The legacy_version ${hex(legacyVersion)} is not TLS 1.x`);
  const random = r.skip(32);
  if (random < 0) return cut(random, 'bad-handshake', 'The ClientHello ends inside its random');

  const sessionIdLength = r.u8();
  if (sessionIdLength < 0) return cut(sessionIdLength, 'bad-handshake', 'The ClientHello ends before its session id');
  if (sessionIdLength > 32) return malformed('bad-handshake', `Session id length ${sessionIdLength} exceeds 32`);
  const sessionId = r.skip(sessionIdLength);
  if (sessionId < 0) return cut(sessionId, 'bad-handshake', `Session id length ${sessionIdLength} overruns the ClientHello`);

  const suitesLength = r.u16();
  if (suitesLength < 0) return cut(suitesLength, 'bad-handshake', 'The ClientHello ends before its cipher suites');
  if (suitesLength < 2 || suitesLength % 2 !== 0) {
    return malformed('bad-handshake', `Cipher suites length ${suitesLength} is not a positive even number`);
  }
  const suites = r.skip(suitesLength);
  if (suites < 0) return cut(suites, 'bad-handshake', `Cipher suites length ${suitesLength} overruns the ClientHello`);

  const compressionLength = r.u8();
  if (compressionLength < 0) return cut(compressionLength, 'bad-handshake', 'The ClientHello ends before its compression methods');
  if (compressionLength < 1) return malformed('bad-handshake', 'Compression methods length 0: at least "null" (0) must be offered');
  const compression = r.skip(compressionLength);
  if (compression < 0) {
    return cut(compression, 'bad-handshake', `Compression methods length ${compressionLength} overruns the ClientHello`);
  }

  // RFC 5246 §7.4.1.2: a hello may end after the compression methods, with no extensions.
  if (r.remaining === 0) {
    return r.complete ? hello(null, [], false, [legacyVersion], false) : NEED_MORE;
  }
  const left = r.remaining;
  const extensionsLength = r.u16();
  if (extensionsLength < 0) {
    return cut(extensionsLength, 'bad-handshake', `Only ${left} byte follows the compression methods: too few for an extensions length`);
  }
  const block = r.window(extensionsLength);
  if (block === null) {
    return malformed('bad-handshake', `Extensions length ${extensionsLength} overruns the ClientHello (${left - 2} bytes left)`);
  }
  if (r.remaining > 0) return malformed('trailing-bytes', `The ClientHello has ${r.remaining} bytes after its extensions`);

  let sni: string | null = null;
  let alpn: string[] = [];
  let ech = false;
  let versions: number[] | null = null;
  let sawPsk = false;
  const gen = nextSeenGeneration();
  let count = 0;

  // Bounded: every pass reads a 4-byte extension header or leaves.
  while (block.remaining > 0) {
    if (!r.complete && count === MAX_EXTENSIONS_WHILE_INCOMPLETE) return NEED_MORE;
    count++;
    const type = block.u16();
    if (type < 0) return cut(type, 'bad-extension', 'The extensions block ends inside an extension type');
    const length = block.u16();
    if (length < 0) return cut(length, 'bad-extension', `The extensions block ends inside the length of extension ${hex(type)}`);
    if (length > block.remaining) {
      return malformed('bad-extension', `Extension ${hex(type)} length ${length} overruns the extensions block`);
    }
    // RFC 8446 §4.2.11: pre_shared_key MUST be the last extension in the ClientHello.
    if (sawPsk) return malformed('bad-extension', `Extension ${hex(type)} follows pre_shared_key, which must be last`);
    // RFC 8446 §4.2: there MUST NOT be more than one extension of the same type.
    if (seenAt[type] === gen) {
      if (type === EXT_SERVER_NAME) {
        return malformed('duplicate-sni', `A second server_name extension follows the one naming ${quote(sni ?? '')}`);
      }
      return malformed('duplicate-extension', `Extension ${hex(type)} appears twice`);
    }
    seenAt[type] = gen;

    if (type === EXT_SERVER_NAME) {
      const s = parseServerName(block.window(length)!);
      if (typeof s !== 'string') return s;
      sni = s;
    } else if (type === EXT_ALPN) {
      const a = parseAlpn(block.window(length)!);
      if (!Array.isArray(a)) return a;
      alpn = a;
    } else if (type === EXT_SUPPORTED_VERSIONS) {
      const v = parseSupportedVersions(block.window(length)!);
      if (!Array.isArray(v)) return v;
      versions = v;
    } else {
      // Presence only for ECH: the outer name of a real ECH hello is the provider's public
      // name, and a GREASE ECH hello carries the real name — the caller judges the SNI.
      if (type === EXT_ECH) ech = true;
      else if (type === EXT_PRE_SHARED_KEY) sawPsk = true;
      if (block.skip(length) === SHORT) return NEED_MORE;
    }
  }
  if (!r.complete) return NEED_MORE;
  return hello(sni, alpn, ech, versions ?? [legacyVersion], false);
}

/** RFC 6066 §3: ServerNameList, exactly one host_name, not empty. */
function parseServerName(d: ByteReader): string | TlsPeek {
  const listLength = d.u16();
  if (listLength < 0) return cut(listLength, 'bad-extension', 'The server_name extension is too short for its list length');
  if (listLength === 0) return malformed('empty-sni', 'The server_name list is empty');
  const list = d.window(listLength);
  if (list === null) return malformed('bad-extension', `Server name list length ${listLength} overruns its extension`);
  if (d.remaining > 0) return malformed('bad-extension', `The server_name extension has ${d.remaining} bytes after its list`);
  let name: string | null = null;
  // Bounded: every pass reads at least the 3-byte entry header of a non-empty name or leaves.
  while (list.remaining > 0) {
    const nameType = list.u8();
    if (nameType < 0) return cut(nameType, 'bad-extension', 'The server_name list ends inside a name type');
    // RFC 6066 §3: the list MUST NOT hold more than one name of one type, and host_name is
    // the only type defined; an unknown type cannot even be skipped safely.
    if (nameType !== NAME_TYPE_HOST) return malformed('bad-extension', `Server name type ${nameType} is not host_name (0)`);
    if (name !== null) return malformed('duplicate-sni', `The server_name list names a second host after ${quote(name)}`);
    const nameLength = list.u16();
    if (nameLength < 0) return cut(nameLength, 'bad-extension', 'The server_name list ends inside a host_name length');
    if (nameLength === 0) return malformed('empty-sni', 'The server_name host_name is empty');
    const raw = list.take(nameLength);
    if (typeof raw === 'number') return cut(raw, 'bad-extension', `Host name length ${nameLength} overruns the server_name list`);
    name = latin1(raw);
  }
  // listLength > 0 and every pass sets `name` or returns, so a name was read.
  return name ?? malformed('empty-sni', 'The server_name list is empty');
}

/** RFC 7301 §3.1: ProtocolNameList of non-empty names. */
function parseAlpn(d: ByteReader): string[] | TlsPeek {
  const listLength = d.u16();
  if (listLength < 0) return cut(listLength, 'bad-extension', 'The ALPN extension is too short for its list length');
  if (listLength === 0) return malformed('bad-extension', 'The ALPN protocol list is empty');
  const list = d.window(listLength);
  if (list === null) return malformed('bad-extension', `ALPN list length ${listLength} overruns its extension`);
  if (d.remaining > 0) return malformed('bad-extension', `The ALPN extension has ${d.remaining} bytes after its list`);
  const names: string[] = [];
  // Bounded: every pass consumes at least two bytes of the list or leaves.
  while (list.remaining > 0) {
    const length = list.u8();
    if (length < 0) return cut(length, 'bad-extension', 'The ALPN list ends inside a name length');
    if (length === 0) return malformed('bad-extension', `ALPN protocol name ${names.length + 1} is empty`);
    const raw = list.take(length);
    if (typeof raw === 'number') return cut(raw, 'bad-extension', `ALPN protocol name length ${length} overruns the ALPN list`);
    names.push(latin1(raw));
  }
  return names;
}

/** RFC 8446 §4.2.1: versions<2..254>, GREASE values (RFC 8701) left out. */
function parseSupportedVersions(d: ByteReader): number[] | TlsPeek {
  const length = d.u8();
  if (length < 0) return cut(length, 'bad-extension', 'The supported_versions extension is empty');
  if (length < 2 || length % 2 !== 0) {
    return malformed('bad-extension', `The supported_versions length ${length} is not a positive even number`);
  }
  const list = d.window(length);
  if (list === null) return malformed('bad-extension', `The supported_versions length ${length} overruns its extension`);
  if (d.remaining > 0) return malformed('bad-extension', `The supported_versions extension has ${d.remaining} bytes after its list`);
  const versions: number[] = [];
  // Bounded: at most 127 versions.
  while (list.remaining > 0) {
    const v = list.u16();
    if (v < 0) return cut(v, 'bad-extension', 'The supported_versions list ends inside a version');
    if (!isGrease(v)) versions.push(v);
  }
  return versions;
}

/**
 * RFC 5246 Appendix E.2: the SSLv2-format ClientHello a TLS 1.0–1.2 client may still send —
 * a two-byte header with the top bit set, message type 1, and no room for extensions, so no
 * name.
 */
function parseSslv2(bytes: Uint8Array): TlsPeek {
  const n = bytes.length;
  if (n < 3) return NEED_MORE;
  if (bytes[2] !== HANDSHAKE_CLIENT_HELLO) return NOT_TLS;
  if (n < 5) {
    if (n === 4 && bytes[3] !== 0 && bytes[3] !== 3) return NOT_TLS;
    return NEED_MORE;
  }
  const version = (bytes[3]! << 8) | bytes[4]!;
  // SSL 2.0 (0x0002) or a TLS 1.x client speaking the old format (0x0300–0x0303).
  if (version !== 0x0002 && (version < 0x0300 || version > 0x0303)) return NOT_TLS;
  const length = ((bytes[0]! & 0x7f) << 8) | bytes[1]!;
  if (2 + length > MAX_HELLO_BYTES) {
    return malformed('too-large', `The SSLv2-format hello declares ${length} bytes, more than the ${MAX_HELLO_BYTES}-byte cap`);
  }
  const fields = parseSslv2Fields(new ByteReader(bytes, 2, 2 + length), length, version);
  // The hello cannot be whole before its declared end: the native loop is asked to report then,
  // not after every read (a hello dripped one byte per segment was a report per byte).
  return fields.kind === 'need-more' && 2 + length > n ? { kind: 'need-more', atLeast: 2 + length } : fields;
}

/** parseSslv2 past the header: the three lengths and the fields they declare. */
function parseSslv2Fields(r: ByteReader, length: number, version: number): TlsPeek {
  const head = r.skip(3);
  if (head < 0) return cut(head, 'bad-handshake', `The SSLv2-format hello declares ${length} bytes, too few for its header`);
  const specsLength = r.u16();
  const sessionIdLength = specsLength < 0 ? specsLength : r.u16();
  const challengeLength = sessionIdLength < 0 ? sessionIdLength : r.u16();
  if (challengeLength < 0) return cut(challengeLength, 'bad-handshake', `The SSLv2-format hello declares ${length} bytes, too few for its lengths`);
  if (specsLength === 0 || specsLength % 3 !== 0) {
    return malformed('bad-handshake', `SSLv2 cipher specs length ${specsLength} is not a positive multiple of 3`);
  }
  if (sessionIdLength !== 0 && sessionIdLength !== 16) {
    return malformed('bad-handshake', `SSLv2 session id length ${sessionIdLength} is neither 0 nor 16`);
  }
  if (challengeLength < 16 || challengeLength > 32) {
    return malformed('bad-handshake', `SSLv2 challenge length ${challengeLength} is not between 16 and 32`);
  }
  const declared = specsLength + sessionIdLength + challengeLength;
  if (declared > r.remaining) {
    return malformed('bad-handshake', `The SSLv2-format hello's fields take ${declared} bytes but ${r.remaining} remain`);
  }
  if (declared < r.remaining) return malformed('trailing-bytes', `The SSLv2-format hello has ${r.remaining - declared} bytes after its fields`);
  if (r.skip(declared) < 0) return NEED_MORE;
  return hello(null, [], false, [version], true);
}

/** RFC 8701 §2: 0x0A0A, 0x1A1A, … 0xFAFA. */
function isGrease(v: number): boolean {
  return (v & 0x0f0f) === 0x0a0a && v >> 8 === (v & 0xff);
}

function hello(sni: string | null, alpn: string[], ech: boolean, versions: number[], sslv2: boolean): TlsPeek {
  return { kind: 'hello', sni, alpn, ech, versions, sslv2 };
}

function malformed(reason: TlsMalformedReason, detail: string): TlsPeek {
  return { kind: 'malformed', reason, detail };
}

/** A failed read: SHORT asks for more bytes, OVERRUN is the malformed verdict given. */
function cut(code: number, reason: TlsMalformedReason, detail: string): TlsPeek {
  return code === SHORT ? NEED_MORE : malformed(reason, detail);
}

function hex(v: number): string {
  return `0x${v.toString(16).padStart(4, '0')}`;
}

/** A peer's value in a message: JSON-quoted (control bytes escaped) and cut to a sane length. */
function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}
