// The raw protocol between the benchmark's client (load.ts) and its raw origin (origin.ts): a
// real TLS ClientHello naming the origin (so every proxy can route it by SNI, exactly as a TLS
// connection), then a 9-byte command, then plain bytes — no TLS, so the proxies' own cost is
// what the raw figures show.
//
//   'D' u64 n   the origin sends n bytes, then FIN
//   'T' u64 0   the origin sends 2 bytes ("ok"), then FIN (a new-connection probe)
//   'H' u64 0   the origin sends 1 byte and holds the connection until the client closes it

import { buildHello } from '../../test/helpers/hello-builder.ts';

export const RAW_NAME = 'raw.allowed.test';
export const TLS_NAME = 'allowed.test';
export const TLS_ORIGIN = '198.18.1.2';
export const RAW_ORIGIN = '198.18.1.3';
export const PORT = 443;

export type Command = 'D' | 'T' | 'H';

const hello = Buffer.from(buildHello({ sni: [RAW_NAME] }));

/** The first flight of a raw connection: the ClientHello and the command. */
export function request(cmd: Command, n = 0): Buffer {
  const c = Buffer.alloc(9);
  c.write(cmd, 0, 'latin1');
  c.writeBigUInt64BE(BigInt(n), 1);
  return Buffer.concat([hello, c]);
}

/** The length of a first flight that starts with a TLS record: 5-byte header + its length + the command; null until known. */
export function requestLength(head: Buffer): number | null {
  if (head.length < 5) return null;
  return 5 + head.readUInt16BE(3) + 9;
}
