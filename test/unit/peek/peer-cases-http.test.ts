// Peers' own request-head cases, read against egressd's verdict: nginx's Host check
// (src/http/ngx_http_request.c, ngx_http_validate_host: a "." after a ".", a NUL or a path
// separator declines the host; a trailing dot is dropped; whatever follows the first ":" is the
// port and is not checked), smokescreen's host:port reading (pkg/smokescreen/hostport/
// hostport_test.go: Go's net.SplitHostPort takes brackets around a name, `[example.net]:1337`),
// and RFC 9112's smuggling rules as the strict servers apply them (one Host, no obs-fold, no
// whitespace before a colon, the absolute-form target over Host). Each row pins egressd's
// verdict under an allow list and a deny list (test/helpers/peer-verdict.ts). No row is a wrong
// verdict: where egressd differs from a peer it refuses what the peer would read one way and
// another server another.

import { describe } from 'vitest';
import { httpVerdict, itJudgesEachRow, type PeerRow } from '../../helpers/peer-verdict.ts';

interface Row extends PeerRow {
  /** The request head, latin1. */
  readonly head: string;
}

const NGINX = 'nginx ngx_http_validate_host';
const SMOKE = 'smokescreen hostport_test.go';
const RFC = 'RFC 9112 (nginx, HAProxy)';

const get = (host: string, target = '/'): string => `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n\r\n`;

const ROWS: readonly Row[] = [
  { peer: NGINX, it: 'a trailing dot is dropped: `denied.test.` is denied.test', head: get('denied.test.'), allowList: 'refuse', denyList: 'refuse' },
  { peer: NGINX, it: 'case does not matter: `X.Allowed.TEST`', head: get('X.Allowed.TEST'), allowList: 'allow', denyList: 'allow' },
  {
    peer: NGINX,
    it: 'two dots in a row: nginx answers 400; egressd refuses the name',
    head: get('x..denied.test'),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  { peer: NGINX, it: 'a leading dot: egressd refuses the name', head: get('.denied.test'), allowList: 'invalid-name', denyList: 'invalid-name' },
  {
    peer: NGINX,
    it: 'a port that is no number: nginx serves the host and ignores it; egressd refuses (RFC 3986 §3.2.3: port = *DIGIT)',
    head: get('allowed.test:http'),
    allowList: 'malformed:bad-host',
    denyList: 'malformed:bad-host',
  },
  { peer: NGINX, it: 'a second ":" after the port', head: get('denied.test:80:81'), allowList: 'malformed:bad-host', denyList: 'malformed:bad-host' },
  {
    peer: NGINX,
    it: 'a NUL in the value: nginx answers 400; egressd refuses the header',
    head: get('denied.test\0.allowed.test'),
    allowList: 'malformed:bad-header',
    denyList: 'malformed:bad-header',
  },
  {
    peer: NGINX,
    it: 'a path separator: nginx answers 400; egressd refuses the host',
    head: get('allowed.test/denied.test'),
    allowList: 'malformed:bad-host',
    denyList: 'malformed:bad-host',
  },
  { peer: NGINX, it: 'a backslash', head: get('allowed.test\\denied.test'), allowList: 'malformed:bad-host', denyList: 'malformed:bad-host' },
  {
    peer: NGINX,
    it: 'an IPv6 literal with a port: an address, judged as a connection without a name',
    head: get('[2001:db8::1]:8080'),
    allowList: 'refuse',
    denyList: 'allow',
  },
  { peer: NGINX, it: 'an empty port after the colon (RFC 3986 allows it)', head: get('denied.test:'), allowList: 'refuse', denyList: 'refuse' },
  {
    peer: SMOKE,
    it: 'brackets around a name (`[example.net]:1337`, which Go reads as example.net): egressd refuses it',
    head: get('[allowed.test]:80'),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  { peer: SMOKE, it: 'a port past 65535 (`:91337`)', head: get('allowed.test:91337'), allowList: 'malformed:bad-host', denyList: 'malformed:bad-host' },
  { peer: SMOKE, it: 'a port with leading zeros (`:007`) is a port', head: get('denied.test:007'), allowList: 'refuse', denyList: 'refuse' },
  {
    peer: SMOKE,
    it: 'a U-label in Host (smokescreen punycodes `🔐.example.com`): egressd refuses bytes above 0x7f on the wire',
    head: get('d\u00e9nied.test'),
    allowList: 'malformed:bad-host',
    denyList: 'malformed:bad-host',
  },
  {
    peer: RFC,
    it: 'two Host headers (RFC 9112 §3.2: a server answers 400)',
    head: 'GET / HTTP/1.1\r\nHost: allowed.test\r\nhost: denied.test\r\n\r\n',
    allowList: 'malformed:duplicate-host',
    denyList: 'malformed:duplicate-host',
  },
  {
    peer: RFC,
    it: 'an empty Host before a real one',
    head: 'GET / HTTP/1.1\r\nHost:\r\nHost: denied.test\r\n\r\n',
    allowList: 'malformed:duplicate-host',
    denyList: 'malformed:duplicate-host',
  },
  {
    peer: RFC,
    it: 'whitespace between Host and its colon (RFC 9112 §5.1: a server answers 400)',
    head: 'GET / HTTP/1.1\r\nHost : denied.test\r\nHost: allowed.test\r\n\r\n',
    allowList: 'malformed:bad-header',
    denyList: 'malformed:bad-header',
  },
  {
    peer: RFC,
    it: 'obs-fold continuing the Host value (RFC 9112 §5.2)',
    head: 'GET / HTTP/1.1\r\nHost: allowed.test\r\n .denied.test\r\n\r\n',
    allowList: 'malformed:obs-fold',
    denyList: 'malformed:obs-fold',
  },
  {
    peer: RFC,
    it: 'an absolute-form target naming another host than Host: the server obeys the target (RFC 9112 §3.2.2); egressd refuses the pair',
    head: get('allowed.test', 'http://denied.test/'),
    allowList: 'malformed:host-mismatch',
    denyList: 'malformed:host-mismatch',
  },
  {
    peer: RFC,
    it: 'an absolute-form target alone is the name',
    head: 'GET http://x.denied.test/p HTTP/1.1\r\n\r\n',
    allowList: 'refuse',
    denyList: 'refuse',
  },
  {
    peer: RFC,
    it: 'userinfo in the target (`http://allowed.test@denied.test/`, RFC 9110 §4.2.4)',
    head: 'GET http://allowed.test@denied.test/ HTTP/1.1\r\n\r\n',
    allowList: 'malformed:bad-host',
    denyList: 'malformed:bad-host',
  },
  {
    peer: RFC,
    it: 'a backslash before "@" (WHATWG URL reads `\\` as `/` and the host as denied.test; RFC 3986 reads userinfo): refused either way',
    head: 'GET http://denied.test\\@allowed.test/ HTTP/1.1\r\n\r\n',
    allowList: 'malformed:bad-host',
    denyList: 'malformed:bad-host',
  },
  {
    peer: RFC,
    it: '"@" after "#" or "?" is not userinfo: the authority ends first (RFC 3986 §3.2)',
    head: 'GET http://allowed.test#@denied.test/ HTTP/1.1\r\n\r\n',
    allowList: 'allow',
    denyList: 'allow',
  },
  {
    peer: RFC,
    it: 'X-Forwarded-Host names nothing: Host decides',
    head: 'GET / HTTP/1.1\r\nX-Forwarded-Host: allowed.test\r\nHost: denied.test\r\n\r\n',
    allowList: 'refuse',
    denyList: 'refuse',
  },
  {
    peer: RFC,
    it: 'a Host that is a list (`allowed.test, denied.test`)',
    head: get('allowed.test,denied.test'),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
  {
    peer: RFC,
    it: 'a percent-encoded dot (`denied%2etest`): a reg-name may hold it, a host name may not',
    head: get('denied%2etest'),
    allowList: 'invalid-name',
    denyList: 'invalid-name',
  },
];

describe('peer request-head cases: what egressd decides', () => {
  itJudgesEachRow(ROWS, (body, row) => httpVerdict(body, row.head));
});
