// The check every spawned-daemon test runs on egressd's log lines (test/helpers/daemon-process.ts):
// an ECS field set written as anything but an object is a line an ECS-mapped index rejects whole.
// The examples are the lines egressd wrote before they were renamed.

import { describe, expect, it } from 'vitest';
import { ecsConflicts } from '../../helpers/log-line.ts';

describe('ecsConflicts', () => {
  it('names an ECS field set given as a string, a number, null or an array', () => {
    expect(ecsConflicts({ event: { action: 'policy-change' }, source: 'api', actor: 'ops' })).toEqual(['source']);
    expect(ecsConflicts({ event: { action: 'data-plane' }, plane: 'native', host: 'event-loop' })).toEqual(['host']);
    expect(ecsConflicts({ event: { action: 'nofile-not-raised' }, error: 'setrlimit(RLIMIT_NOFILE): EPERM' })).toEqual(['error']);
    expect(ecsConflicts({ event: { action: 'connections-shed' }, source: '198.18.0.9' })).toEqual(['source']);
    expect(ecsConflicts({ event: 'x', url: 3, tls: null, dns: [] })).toEqual(['event', 'url', 'tls', 'dns']);
  });

  it('passes ECS objects, the dotted top-level keys of ecs-logging, and fields of egressd’s own', () => {
    expect(
      ecsConflicts({
        '@timestamp': '2026-11-30T12:00:00.000Z',
        'log.level': 'info',
        'ecs.version': '8.11.0',
        message: 'connection',
        event: { action: 'connection' },
        source: { ip: '198.18.0.2', port: 40312 },
        egressd: { verdict: 'allow' },
        err: 'a string is fine here',
        sandbox: 'sbx-1',
      }),
    ).toEqual([]);
  });
});
