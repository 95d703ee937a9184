// RFC 9460 §2.2 RDATA: SvcPriority, an uncompressed TargetName, then SvcParams in key order.
import { describe, expect, it } from 'vitest';
import { stripEch } from '../../../src/dns/ech.ts';

function param(key: number, value: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16BE(key, 0);
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, value]);
}
const u16s = (...ks: number[]): Buffer => Buffer.concat(ks.map((k) => Buffer.from([k >> 8, k & 255])));
const target = Buffer.from('\x03cdn\x04test\x00', 'latin1');
const rdata = (...params: Buffer[]): Buffer => Buffer.concat([u16s(1), target, ...params]);
const alpn = param(1, Buffer.from('\x02h2', 'latin1'));
const ech = param(5, Buffer.from('fake-ech-config-list'));
const v4hint = param(4, Buffer.from([198, 18, 1, 10]));

describe('stripEch', () => {
  it('removes the ech parameter and keeps every other one byte for byte', () => {
    expect(stripEch(rdata(alpn, v4hint, ech))).toEqual({ kind: 'stripped', rdata: rdata(alpn, v4hint) });
  });

  it('leaves a record without ech alone', () => {
    expect(stripEch(rdata(alpn, v4hint))).toEqual({ kind: 'unchanged' });
    expect(stripEch(Buffer.concat([u16s(0), target]))).toEqual({ kind: 'unchanged' }); // AliasMode
  });

  it('drops ech from mandatory, and mandatory itself when ech was all it listed (RFC 9460 §8)', () => {
    expect(stripEch(rdata(param(0, u16s(1, 5)), alpn, ech))).toEqual({ kind: 'stripped', rdata: rdata(param(0, u16s(1)), alpn) });
    expect(stripEch(rdata(param(0, u16s(5)), alpn, ech))).toEqual({ kind: 'stripped', rdata: rdata(alpn) });
  });

  it('calls malformed what is not SVCB RDATA, at every truncation', () => {
    const whole = rdata(alpn, ech);
    for (let n = 0; n < whole.length; n++) {
      const r = stripEch(whole.subarray(0, n));
      // A cut that falls exactly between parameters is a shorter, valid record.
      if (r.kind !== 'malformed') expect([12, 12 + alpn.length], `cut at ${n}`).toContain(n);
    }
    expect(stripEch(Buffer.concat([u16s(1), Buffer.from([0xc0, 0x0c]), ech]))).toMatchObject({ kind: 'malformed' });
  });
});
