// Real ClientHellos: the shared reference corpus (public projects' captures, see its README)
// and the hellos recorded from this machine's clients (test/fixtures/hellos). Each is parsed
// whole, fed in two chunks split at every byte, re-framed into several records, and cut at
// every length — a cut hello is always need-more, never a name.

import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseClientHello, type TlsPeek } from '../../../src/peek/tls-client-hello.ts';
import { sniff } from '../../../src/peek/sniff.ts';
import { frame, handshakeOf } from '../../helpers/hello-builder.ts';

const ROOT = resolve(import.meta.dirname, '../../..');
const SHARED = resolve(ROOT, '../shared/clienthellos');
const RECORDED = join(ROOT, 'test/fixtures/hellos');

/** Expected SNI per the corpus README's table; ech where the README says 0xfe0d is present. */
const CORPUS: Record<string, { sni: string | null; ech?: boolean; sslv2?: boolean }> = {
  'chrome125_x25519kyber768_grease-ech.bin': { sni: 'lh3.google.com', ech: true },
  'chrome_real-ech_outer-sni_cloudflare-ech.bin': { sni: 'cloudflare-ech.com', ech: true },
  'chrome_tls-connect_httptoolkit.bin': { sni: 'localhost' },
  'openjdk25_httpclient_zeek-org.bin': { sni: 'zeek.org' },
  'ip-literal-sni_104.236.167.107.bin': { sni: '104.236.167.107' },
  'sslv2-format_clienthello.bin': { sni: null, sslv2: true },
  'tls13_hrr_first-clienthello.bin': { sni: null },
  'wolfssl_tls13_no-sni.bin': { sni: null },
  'openssl35_x25519mlkem768_no-sni.bin': { sni: null },
  'openssl35_secp384r1mlkem1024_no-sni.bin': { sni: null },
  'openssl35_mlkem1024_no-sni.bin': { sni: null },
  'go-crypto-tls_client_tls13_no-sni.bin': { sni: null },
  'curl7740_localhost_utls-dump.bin': { sni: 'localhost' },
};
const HRR_SECOND = 'tls13_hrr_second-clienthello.bin';

/** Every strict prefix is need-more; the two chunks [0,k) and [k,n) fed cumulatively give the whole's answer. */
function expectEverySplit(bytes: Uint8Array, whole: TlsPeek): void {
  for (let k = 0; k < bytes.length; k++) {
    const first = bytes.slice(0, k);
    const r = parseClientHello(first);
    if (r.kind !== 'need-more') expect.fail(`a cut at ${k}/${bytes.length} gave ${JSON.stringify(r)}`);
    const fed = new Uint8Array(bytes.length);
    fed.set(first);
    fed.set(bytes.slice(k), k);
    const after = parseClientHello(fed);
    if (JSON.stringify(after) !== JSON.stringify(whole)) expect.fail(`split at ${k} gave ${JSON.stringify(after)}`);
  }
}

/** The hello's handshake message re-framed into records of the given sizes. */
function reframings(bytes: Uint8Array): Uint8Array[] {
  const message = handshakeOf(bytes);
  return [
    frame(message, { records: 2, versions: [0x0301, 0x0303] }),
    frame(message, { records: 5, versions: [0x0303] }),
    frame(message, { records: Math.ceil(message.length / 64), versions: [0x0301, 0x0302, 0x0303] }),
    frame(message, { records: [1, 2, 3, message.length - 6] }),
  ];
}

const sharedMissing = existsSync(SHARED) ? null : `${SHARED} is absent`;
if (sharedMissing) console.warn(`reference ClientHello corpus skipped: ${sharedMissing}`);

describe.skipIf(sharedMissing !== null)('the shared ClientHello corpus', () => {
  // describe.skipIf still runs this body to collect the tests: read nothing when skipped.
  const read = (file: string): Uint8Array => (sharedMissing === null ? new Uint8Array(readFileSync(join(SHARED, file))) : new Uint8Array(0));

  for (const [file, want] of Object.entries(CORPUS)) {
    describe(file, () => {
      const bytes = read(file);
      const whole = parseClientHello(bytes);

      it('gives the SNI in the corpus table', () => {
        expect(whole).toMatchObject({ kind: 'hello', sni: want.sni, ech: want.ech ?? false, sslv2: want.sslv2 ?? false });
        expect(sniff(bytes)).toBe('tls');
      });

      it('is need-more when cut anywhere, and the same hello when fed in two chunks split anywhere', () => {
        expectEverySplit(bytes, whole);
      });

      // An SSLv2-format hello has no records to re-frame.
      if (want.sslv2 !== true)
        it('is the same hello re-framed into several records, and need-more cut anywhere', () => {
          for (const framed of reframings(bytes)) {
            expect(parseClientHello(framed)).toEqual(whole);
          }
          const [two] = reframings(bytes);
          for (let k = 0; k < two!.length; k++) {
            const r = parseClientHello(two!.subarray(0, k));
            if (r.kind !== 'need-more') expect.fail(`a cut at ${k} of the two-record framing gave ${JSON.stringify(r)}`);
          }
        });
    });
  }

  describe(HRR_SECOND, () => {
    // The second hello of a HelloRetryRequest exchange, captured with the ChangeCipherSpec the
    // client sent before it (RFC 8446 §D.4). A stream that opens with a CCS is not a fresh
    // client's: not-tls, by the first-byte rule. A peek-once filter only ever sees the first
    // hello on a connection, which tls13_hrr_first-clienthello.bin is.
    const bytes = read(HRR_SECOND);

    it('is not-tls as captured, because it opens with a ChangeCipherSpec record', () => {
      expect(bytes[0]).toBe(0x14);
      expect(parseClientHello(bytes)).toEqual({ kind: 'not-tls' });
    });

    it('holds a hello with no name after its ChangeCipherSpec record', () => {
      const afterCcs = bytes.subarray(5 + ((bytes[3]! << 8) | bytes[4]!));
      expect(parseClientHello(afterCcs)).toMatchObject({ kind: 'hello', sni: null });
      expectEverySplit(afterCcs, parseClientHello(afterCcs));
    });
  });
});

interface Recorded {
  readonly file: string;
  readonly client: string;
  readonly sni: string;
  readonly alpn: readonly string[];
}
const manifestFile = join(RECORDED, 'manifest.json');
const recorded: readonly Recorded[] = existsSync(manifestFile) ? (JSON.parse(readFileSync(manifestFile, 'utf8')) as Recorded[]) : [];

describe("the hellos recorded from this machine's clients", () => {
  it('include at least curl, openssl, Node and Python', () => {
    const files = recorded.map((r) => r.file);
    for (const f of ['curl.bin', 'openssl.bin', 'node.bin', 'python.bin']) expect(files).toContain(f);
  });

  for (const entry of recorded) {
    describe(`${entry.file} (${entry.client})`, () => {
      const bytes = new Uint8Array(readFileSync(join(RECORDED, entry.file)));
      const whole = parseClientHello(bytes);

      it('gives the name and ALPN list the client was told to send', () => {
        expect(whole).toMatchObject({ kind: 'hello', sni: entry.sni, alpn: entry.alpn, sslv2: false });
        expect(sniff(bytes)).toBe('tls');
      });

      it('is need-more when cut anywhere, and the same hello when fed in two chunks split anywhere', () => {
        expectEverySplit(bytes, whole);
      });

      it('is the same hello re-framed into several records', () => {
        for (const framed of reframings(bytes)) expect(parseClientHello(framed)).toEqual(whole);
      });
    });
  }
});
