import { describe, expect, it } from 'vitest';
import { queryLine } from '../../../src/dns/query-log.ts';

describe('the dns-query line', () => {
  it('writes ECS objects, never a top-level string `source` or `rule`', () => {
    const line = queryLine({
      sandbox: 'sb-a',
      source: '2001:db8::7',
      transport: 'tcp',
      name: 'x.other.test',
      type: 'TXT',
      verdict: 'refuse',
      reason: 'not-allowed',
      rule: 'mode "block-all"',
    });
    expect(line).toEqual({
      event: { action: 'dns-query', kind: 'event', category: ['network'], type: ['protocol'], outcome: 'failure', reason: 'not-allowed' },
      source: { ip: '2001:db8::7' },
      network: { transport: 'tcp', protocol: 'dns', type: 'ipv6' },
      dns: { question: { name: 'x.other.test', type: 'TXT' } },
      rule: { name: 'mode "block-all"' },
      egressd: { verdict: 'refuse', sandbox: 'sb-a' },
    });
  });

  it('writes a link-local querier without its zone in source.ip, and its interface apart', () => {
    const line = queryLine({ sandbox: 'sb-a', source: 'fe80::b1%eth1', transport: 'udp', name: 'x.test', type: 'A', verdict: 'allow', reason: 'policy' });
    expect(line).toMatchObject({ source: { ip: 'fe80::b1' }, observer: { ingress: { interface: { name: 'eth1' } } }, network: { type: 'ipv6' } });
  });

  it('names the upstream RCODE, leaves out what is absent, and counts an allowed or would-refuse answer a success', () => {
    const line = queryLine({
      sandbox: null,
      source: '198.18.0.5',
      transport: 'udp',
      name: 'a.test',
      type: 'A',
      verdict: 'would-refuse',
      reason: 'report-only',
      rule: null,
      rcode: 3,
      cached: false,
    });
    expect(line).toEqual({
      event: { action: 'dns-query', kind: 'event', category: ['network'], type: ['protocol'], outcome: 'success', reason: 'report-only' },
      source: { ip: '198.18.0.5' },
      network: { transport: 'udp', protocol: 'dns', type: 'ipv4' },
      dns: { question: { name: 'a.test', type: 'A' }, response_code: 'NXDOMAIN' },
      egressd: { verdict: 'would-refuse', cached: false },
    });
    expect(
      queryLine({ sandbox: 'sb', source: '198.18.0.5', transport: 'udp', verdict: 'refuse', reason: 'malformed', rcode: 'FORMERR', detail: 'no question' }),
    ).toMatchObject({
      dns: { response_code: 'FORMERR' },
      error: { message: 'no question' },
    });
    expect(queryLine({ sandbox: 'sb', source: '198.18.0.5', transport: 'udp', verdict: 'allow', reason: 'policy', rcode: 23 })).toMatchObject({
      dns: { response_code: '23' },
    });
  });
});
