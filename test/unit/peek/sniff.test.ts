import { describe, expect, it } from 'vitest';
import { sniff } from '../../../src/peek/sniff.ts';
import { buildHello, sslv2Hello } from '../../helpers/hello-builder.ts';

const enc = new TextEncoder();
const of = (s: string): Uint8Array => enc.encode(s);

describe('sniff', () => {
  it('is need-more on no bytes', () => {
    expect(sniff(new Uint8Array(0))).toBe('need-more');
  });

  it('tells TLS by a handshake record byte followed by major version 3', () => {
    expect(sniff(Uint8Array.of(0x16))).toBe('need-more');
    expect(sniff(Uint8Array.of(0x16, 0x03))).toBe('tls');
    expect(sniff(buildHello())).toBe('tls');
    expect(sniff(Uint8Array.of(0x16, 0x02))).toBe('unknown');
  });

  it('tells TLS by an SSLv2-format hello header, deciding as each byte arrives', () => {
    const h = sslv2Hello();
    expect(sniff(h.subarray(0, 2))).toBe('need-more');
    expect(sniff(h.subarray(0, 4))).toBe('need-more');
    expect(sniff(h.subarray(0, 5))).toBe('tls');
    expect(sniff(sslv2Hello({ version: 0x0002 }))).toBe('tls');
    expect(sniff(Uint8Array.of(0x80, 0x2e, 0x02))).toBe('unknown');
    expect(sniff(Uint8Array.of(0x80, 0x2e, 0x01, 0x04))).toBe('unknown');
    expect(sniff(Uint8Array.of(0x80, 0x2e, 0x01, 0x03, 0x04))).toBe('unknown');
  });

  it('tells HTTP by a known method followed by a space', () => {
    for (const m of ['GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', 'PRI', 'PROPFIND']) {
      expect(sniff(of(`${m} / HTTP/1.1\r\n`)), m).toBe('http');
    }
  });

  it('is need-more while the bytes are still a prefix of a known method and its space', () => {
    for (const s of ['G', 'GE', 'GET', 'P', 'PO', 'PR', 'PROPFIN', 'OPTIONS']) expect(sniff(of(s)), s).toBe('need-more');
  });

  it('is unknown for a lowercase or unknown method, a method without its space, and server-first or binary protocols', () => {
    for (const s of ['get / HTTP/1.1', 'FOO / HTTP/1.1', 'GETX /', 'GET\t/', 'SSH-2.0-OpenSSH_9.6\r\n', 'X', '\u0000\u0001']) {
      expect(sniff(of(s)), JSON.stringify(s)).toBe('unknown');
    }
    expect(sniff(Uint8Array.of(0x17, 0x03, 0x03))).toBe('unknown');
  });
});
