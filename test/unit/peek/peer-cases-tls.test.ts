// Peers' own ClientHello cases, read against egressd's verdict: the server_name parsing of Go's
// crypto/tls (src/crypto/tls/handshake_messages.go, clientHelloMsg.unmarshal, case
// extensionServerName; its tests in handshake_messages_test.go), BoringSSL's
// (ssl/handshake_server.cc, extract_sni), and Envoy's tls_inspector (which hands the hello to
// BoringSSL: source/extensions/filters/listener/tls_inspector/tls_inspector.cc; a hello BoringSSL
// refuses counts as tls_not_found and the connection goes on without a name unless
// close_connection_on_client_hello_parsing_errors is set, so a hello with two host_names is taken
// as one naming none; egressd refuses every malformed hello, whatever the policy). Each row says
// what the peer does and what egressd does, and pins egressd's verdict under an allow list and a
// deny list (test/helpers/peer-verdict.ts). No row is a wrong verdict: where egressd differs from
// a peer it refuses (a hello the peer would half-read), or reads the name the peer's resolver would.
//
// OpenSSL's answers were recorded on this machine (OpenSSL 3.0 under Python 3.11's ssl, a server
// with an sni_callback, fed these bytes): it refuses an entry of another name_type before or after
// the host_name, two host_names, two server_name extensions, a NUL and a 256-byte name ("bad
// extension"); it reads `A.Test.`, a 254-byte name, `198.18.1.3` and `a b.test` as names.

import { describe, expect, it } from 'vitest';
import { parseClientHello } from '../../../src/peek/tls-client-hello.ts';
import { buildHello, ext, u8, vec16 } from '../../helpers/hello-builder.ts';
import { DENY_LIST, itJudgesEachRow, tlsVerdict, type PeerRow } from '../../helpers/peer-verdict.ts';

interface Row extends PeerRow {
  readonly bytes: Uint8Array;
}

const GO = 'Go crypto/tls handshake_messages.go';
const BSSL = 'BoringSSL ssl/handshake_server.cc extract_sni';
const ENVOY = 'Envoy tls_inspector';

/** A raw server_name extension body: any list of (type, name) entries. */
const serverNames = (...entries: [number, string][]): Uint8Array => {
  const parts = entries.map(([t, n]) => [u8(t), vec16(new TextEncoder().encode(n))]).flat();
  const list = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    list.set(p, o);
    o += p.length;
  }
  return vec16(list);
};
/** Three 63-character labels: 191 characters. */
const LONG_LABELS = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}`;
const withServerNameData = (data: Uint8Array): Uint8Array => buildHello({ sni: null, extra: [ext(0x0000, data)] });

const ROWS: readonly Row[] = [
  {
    peer: GO,
    it: 'a host_name with a trailing dot: Go refuses the hello ("An SNI value may not include a trailing dot"); egressd judges the name without it, as a resolver reads it',
    bytes: buildHello({ sni: ['denied.test.'] }),
    allowList: 'refuse',
    denyList: 'refuse',
  },
  {
    peer: GO,
    it: 'the allowed name with a trailing dot and in upper case is the allowed name (RFC 4343 §3, RFC 1034 §3.1)',
    bytes: buildHello({ sni: ['WWW.Allowed.Test.'] }),
    allowList: 'allow',
    denyList: 'allow',
  },
  {
    peer: GO,
    it: 'an entry of another name_type before the host_name: Go skips it and reads the host_name; BoringSSL and OpenSSL refuse; egressd refuses (bad-extension)',
    bytes: withServerNameData(serverNames([1, 'denied.test'], [0, 'allowed.test'])),
    allowList: 'malformed:bad-extension',
    denyList: 'malformed:bad-extension',
  },
  {
    peer: GO,
    it: 'an entry of another name_type after the host_name: Go skips it; BoringSSL refuses (bytes after the first entry); egressd refuses',
    bytes: withServerNameData(serverNames([0, 'allowed.test'], [1, 'denied.test'])),
    allowList: 'malformed:bad-extension',
    denyList: 'malformed:bad-extension',
  },
  {
    peer: GO,
    it: 'two host_names in one list: Go refuses ("Multiple names of the same name_type are prohibited"), BoringSSL too; egressd refuses',
    bytes: buildHello({ sni: ['allowed.test', 'denied.test'] }),
    allowList: 'malformed:duplicate-sni',
    denyList: 'malformed:duplicate-sni',
  },
  {
    peer: GO,
    it: 'two server_name extensions: Go refuses any extension type seen twice (seenExts); egressd refuses',
    bytes: buildHello({ sni: ['allowed.test'], sniExtensions: 2 }),
    allowList: 'malformed:duplicate-sni',
    denyList: 'malformed:duplicate-sni',
  },
  {
    peer: GO,
    it: 'an empty host_name, and an empty list: Go and BoringSSL refuse; egressd refuses',
    bytes: withServerNameData(serverNames([0, ''])),
    allowList: 'malformed:empty-sni',
    denyList: 'malformed:empty-sni',
  },
  {
    peer: GO,
    it: 'an empty server_name list',
    bytes: withServerNameData(vec16(new Uint8Array(0))),
    allowList: 'malformed:empty-sni',
    denyList: 'malformed:empty-sni',
  },
  {
    peer: GO,
    it: 'bytes after the list inside the extension: Go refuses (extData not empty), BoringSSL too; egressd refuses',
    bytes: withServerNameData(new Uint8Array([...serverNames([0, 'allowed.test']), 0])),
    allowList: 'malformed:bad-extension',
    denyList: 'malformed:bad-extension',
  },
  {
    peer: GO,
    it: 'an extension after pre_shared_key: Go refuses ("pre_shared_key must be the last extension"); egressd refuses',
    bytes: buildHello({ sni: ['allowed.test'], extra: [ext(0x0029, new Uint8Array(8)), ext(0x0017)] }),
    allowList: 'malformed:bad-extension',
    denyList: 'malformed:bad-extension',
  },
  {
    peer: BSSL,
    it: 'a NUL inside the host_name: BoringSSL answers unrecognized_name (CBS_contains_zero_byte); egressd refuses the name whole, never cut at the NUL',
    bytes: buildHello({ sni: ['allowed.test\0.denied.test'] }),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  {
    peer: BSSL,
    it: 'a host_name of 256 bytes: BoringSSL refuses past TLSEXT_MAXLEN_host_name (255); egressd refuses past 253 characters (RFC 1035 §2.3.4)',
    bytes: buildHello({ sni: [`${LONG_LABELS}.${'d'.repeat(51)}.allowed.test`] }),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  {
    peer: BSSL,
    it: 'a 253-character name below the allowed one is read whole, and with its trailing dot (254 bytes) too',
    bytes: buildHello({ sni: [`${LONG_LABELS}.${'d'.repeat(48)}.allowed.test.`] }),
    allowList: 'allow',
    denyList: 'allow',
  },
  {
    peer: BSSL,
    it: 'a host_name with a byte above 0x7f: BoringSSL copies the bytes; egressd refuses them (RFC 6066 §3: ASCII), never punycodes them',
    bytes: buildHello({ sni: [new Uint8Array([0x64, 0xc3, 0xa9, 0x6e, 0x69, 0x65, 0x64, 0x2e, 0x74, 0x65, 0x73, 0x74])] }),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  {
    peer: BSSL,
    it: 'an IP address as host_name (RFC 6066 §3 forbids literals): BoringSSL takes it as a name; egressd judges the connection as one without a name',
    bytes: buildHello({ sni: ['198.18.1.3'] }),
    allowList: 'refuse',
    denyList: 'allow',
  },
  {
    peer: ENVOY,
    it: 'no server_name: tls_inspector counts sni_not_found and goes on; egressd judges without a name',
    bytes: buildHello({ sni: null }),
    allowList: 'refuse',
    denyList: 'allow',
  },
  {
    peer: ENVOY,
    it: 'a hello cut into one-byte records (tls_inspector_test "MultipleReads"): the same name',
    bytes: buildHello({ sni: ['x.denied.test'] }, { records: 200 }),
    allowList: 'refuse',
    denyList: 'refuse',
  },
  {
    peer: ENVOY,
    it: 'a real ECH hello: the outer SNI is the provider\u2019s public name, which is all egressd (and tls_inspector) can read',
    bytes: buildHello({ sni: ['public.allowed.test'], ech: true }),
    allowList: 'allow',
    denyList: 'allow',
  },
  {
    peer: ENVOY,
    it: 'a GREASE ECH extension beside the real name: the name decides, not the extension',
    bytes: buildHello({ sni: ['denied.test'], ech: true }),
    allowList: 'refuse',
    denyList: 'refuse',
  },
  {
    peer: ENVOY,
    it: 'a hello that declares more than 16 KiB (tls_inspector "ClientHelloTooBig"): refused before it is read',
    bytes: new Uint8Array([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00]),
    allowList: 'malformed:too-large',
    denyList: 'malformed:too-large',
  },
];

describe('peer ClientHello cases: what egressd decides', () => {
  itJudgesEachRow(ROWS, (body, row) => tlsVerdict(body, row.bytes));

  it('reads the ECH flag whatever the SNI, and the outer name as the name', () => {
    const r = parseClientHello(buildHello({ sni: ['public.allowed.test'], ech: true }));
    expect(r).toMatchObject({ kind: 'hello', sni: 'public.allowed.test', ech: true });
  });

  it('refuses a 2-entry list of an unknown type only: no host_name means nothing a server could route on', () => {
    expect(tlsVerdict(DENY_LIST, withServerNameData(serverNames([2, 'denied.test'])))).toBe('malformed:bad-extension');
  });

  it('reads a record version of 0x0300 and a legacy_version of 0x0301, as old stacks send them', () => {
    expect(tlsVerdict(DENY_LIST, buildHello({ sni: ['denied.test'], legacyVersion: 0x0301, versions: null }, { versions: [0x0300] }))).toBe('refuse');
  });
});
