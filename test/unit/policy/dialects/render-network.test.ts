// renderNetwork: what `GET .../network` shows, in the sandbox0 vocabulary, whatever the dialect.

import { describe, expect, it } from 'vitest';
import { renderNetwork } from '../../../../src/policy/render.ts';
import { parsed } from '../../../helpers/network-body.ts';

const NO_EGRESS = { allowed_domains: [], denied_domains: [], allowed_cidrs: [], denied_cidrs: [], allowed_ports: [], denied_ports: [] };

describe('renderNetwork', () => {
  it('shows a Daytona allow list as block-all with its CIDRs and the essential services on', () => {
    expect(renderNetwork(parsed({ networkAllowList: '208.80.154.232/32, 192.168.1.0/24' }))).toEqual({
      mode: 'block-all',
      egress: { ...NO_EGRESS, allowed_cidrs: ['208.80.154.232/32', '192.168.1.0/24'] },
      essential_services: true,
    });
  });

  it('shows Daytona networkBlockAll as block-all with nothing allowed', () => {
    expect(renderNetwork(parsed({ networkBlockAll: true }))).toEqual({ mode: 'block-all', egress: NO_EGRESS, essential_services: false });
  });

  it('shows sandbox0 ports as the dialect writes them', () => {
    expect(renderNetwork(parsed({ mode: 'block-all', egress: { allowed_ports: [443, '8000-8999'], allowed_cidrs: ['10.0.0.1'] } }))).toEqual({
      mode: 'block-all',
      egress: { ...NO_EGRESS, allowed_cidrs: ['10.0.0.1/32'], allowed_ports: [443, '8000-8999'] },
      essential_services: false,
    });
  });

  it('shows both sides of a Novita policy under allow-all, since both act', () => {
    expect(renderNetwork(parsed({ network: { denyOut: ['8.8.8.0/24'], allowOut: ['8.8.8.8'] } }))).toEqual({
      mode: 'allow-all',
      egress: { ...NO_EGRESS, allowed_cidrs: ['8.8.8.8/32'], denied_cidrs: ['8.8.8.0/24'] },
      essential_services: false,
    });
  });

  it('shows a Novita deny-everything policy as block-all with its allow list, not the deny entry the mode stands for', () => {
    expect(renderNetwork(parsed({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['*.github.com', '1.1.1.1'] } }))).toEqual({
      mode: 'block-all',
      // Novita matches names on 80 by the Host and on 443 by the SNI only: the view says so beside the names.
      egress: {
        ...NO_EGRESS,
        allowed_domains: ['*.github.com'],
        allowed_cidrs: ['1.1.1.1/32'],
        allowed_domain_ports: [
          { port: 80, via: 'http' },
          { port: 443, via: 'tls' },
        ],
      },
      essential_services: false,
    });
  });

  it('renders a body that parses back to the same policy (sandbox0 round trip)', () => {
    const body = { mode: 'allow-all', egress: { denied_domains: ['facebook.com'], denied_cidrs: ['10.0.0.0/8'], denied_ports: [25] } };
    const shown = renderNetwork(parsed(body));
    const { essential_services: _ignored, ...again } = shown;
    expect(parsed(again).policy).toEqual(parsed(body).policy);
  });
});
