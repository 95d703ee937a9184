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

  it('tells HTTP by the shape of a request line, whatever the method token (RFC 9110 §9.1)', () => {
    for (const m of [
      'GET',
      'POST',
      'PUT',
      'HEAD',
      'DELETE',
      'OPTIONS',
      'PATCH',
      'TRACE',
      'CONNECT',
      'PRI',
      'PROPFIND',
      'MKACTIVITY',
      'BREW',
      'get',
      'M-SEARCH',
      'X',
    ]) {
      expect(sniff(of(`${m} / HTTP/1.1\r\n`)), m).toBe('http');
    }
    // The shape is lenient so that the strict parser, not the sniff, refuses what breaks the grammar.
    for (const s of ['GET\t/ HTTP/1.1', 'GET  /  http/1.1', 'GET / HTTP/2.0', 'GET / HTTP/']) expect(sniff(of(s)), s).toBe('http');
  });

  it('skips leading empty lines (RFC 9112 §2.2)', () => {
    for (const s of ['\r\nGET / HTTP/1.1\r\n', '\r\n\r\nPOST /x HTTP/1.0\r\n', '\nGET / HTTP/1.1\r\n']) expect(sniff(of(s)), JSON.stringify(s)).toBe('http');
    expect(sniff(of('\r\n'))).toBe('need-more');
    expect(sniff(of('\r'))).toBe('need-more');
    // Too many empty lines count as HTTP so that the parser refuses them instead of the sniff passing them.
    expect(sniff(of('\r\n'.repeat(9)))).toBe('http');
  });

  it('is need-more while the bytes are still a prefix of a request line', () => {
    for (const s of ['G', 'GE', 'GET', 'GET ', 'GET /', 'GET / ', 'GET / HTT', 'MKACTIVITY', 'SSH-2.0-OpenSSH_9.6']) expect(sniff(of(s)), s).toBe('need-more');
  });

  it('is unknown for bytes without the shape of a request line: banners, commands, binary protocols', () => {
    for (const s of [
      'SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n',
      'SSH-2.0-OpenSSH_9.6\r\n',
      'PING\r\n',
      '*1\r\n$4\r\nPING\r\n',
      'EHLO client.test\r\n',
      'GET /\r\n',
      ' GET / HTTP/1.1',
      'GET / FTP/1.1',
      '\rX',
      '\u0000\u0001',
    ]) {
      expect(sniff(of(s)), JSON.stringify(s)).toBe('unknown');
    }
    expect(sniff(Uint8Array.of(0x17, 0x03, 0x03))).toBe('unknown');
  });
});
