// `egressd inspect [FILE|-]`: what the peek would see in a client's first bytes.
// Exit 0 when parsed, 1 when refused or incomplete.

import { parseClientHello } from '../peek/tls-client-hello.ts';
import { parseHttpHead } from '../peek/http-head.ts';
import { sniff } from '../peek/sniff.ts';
import { normalizeWireName } from '../match/names.ts';

export interface CommandResult {
  readonly code: 0 | 1 | 2 | 4;
  readonly stdout: string;
}

type Report =
  | { protocol: 'tls' | 'http' | 'unknown'; name: string | null; alpn: readonly string[]; ech: boolean }
  | { protocol: 'tls' | 'http' | 'unknown'; error: string };

function named(raw: string | null): { name: string | null } | { error: string } {
  if (raw === null) return { name: null };
  const n = normalizeWireName(raw);
  if (!n.ok) return { error: `invalid-name: ${n.reason}` };
  return { name: 'name' in n ? n.name : null };
}

export function inspectBytes(bytes: Uint8Array): CommandResult {
  const kind = sniff(bytes);
  let report: Report;
  if (kind === 'need-more') {
    report = { protocol: 'unknown', error: 'incomplete: too few bytes to tell the protocol' };
  } else if (kind === 'tls') {
    const r = parseClientHello(bytes);
    if (r.kind === 'hello') {
      const n = named(r.sni);
      report = 'error' in n ? { protocol: 'tls', error: n.error } : { protocol: 'tls', name: n.name, alpn: r.alpn, ech: r.ech };
    } else if (r.kind === 'need-more') report = { protocol: 'tls', error: 'incomplete: the ClientHello is truncated' };
    else if (r.kind === 'malformed') report = { protocol: 'tls', error: `${r.reason}: ${r.detail}` };
    else report = { protocol: 'unknown', error: 'not-tls' };
  } else if (kind === 'http') {
    const r = parseHttpHead(bytes);
    if (r.kind === 'head') {
      const n = named(r.host);
      report = 'error' in n ? { protocol: 'http', error: n.error } : { protocol: 'http', name: n.name, alpn: [], ech: false };
    } else if (r.kind === 'need-more') report = { protocol: 'http', error: 'incomplete: the request head has no end (CRLF CRLF)' };
    else if (r.kind === 'malformed') report = { protocol: 'http', error: `${r.reason}: ${r.detail}` };
    else report = { protocol: 'unknown', error: 'not-http' };
  } else {
    report = { protocol: 'unknown', error: 'neither TLS nor HTTP' };
  }
  return { code: 'error' in report ? 1 : 0, stdout: `${JSON.stringify(report)}\n` };
}
