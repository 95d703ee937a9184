import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { migrateReqProblem, readHostTcp, timeWaitReuseProblem } from '../../../src/limits/host-tcp.ts';

describe('readHostTcp', () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const folder = (files: Record<string, string>): string => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-host-tcp-'));
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    return dir;
  };

  it("reads the kernel's files as they are written (a tab between the range's ends, a newline after)", () => {
    expect(readHostTcp(folder({ tcp_tw_reuse: '2\n', tcp_timestamps: '1\n', ip_local_port_range: '32768\t60999\n', tcp_migrate_req: '0\n' }))).toEqual({
      twReuse: 2,
      timestamps: 1,
      localPorts: { from: 32768, to: 60999 },
      migrateReq: 0,
    });
  });

  it('gives null for what is missing or does not read as the kernel writes it, never a guess', () => {
    expect(readHostTcp(folder({}))).toEqual({ twReuse: null, timestamps: null, localPorts: null, migrateReq: null });
    expect(readHostTcp(folder({ tcp_tw_reuse: 'on', tcp_timestamps: '-1', ip_local_port_range: '60999 32768', tcp_migrate_req: 'yes' }))).toEqual({
      twReuse: null,
      timestamps: null,
      localPorts: null,
      migrateReq: null,
    });
    expect(readHostTcp(folder({ ip_local_port_range: '1024 70000' })).localPorts).toBeNull();
  });
});

describe('timeWaitReuseProblem', () => {
  const ports = { from: 32768, to: 60999 };
  it('names tcp_tw_reuse other than 1, then timestamps off; nothing when reuse works or nothing was read', () => {
    expect(timeWaitReuseProblem({ twReuse: 2, timestamps: 1, localPorts: ports, migrateReq: 1 })).toMatch(/tcp_tw_reuse is 2 \(loopback only\)/);
    expect(timeWaitReuseProblem({ twReuse: 0, timestamps: 1, localPorts: ports, migrateReq: 1 })).toMatch(/tcp_tw_reuse is 0:/);
    expect(timeWaitReuseProblem({ twReuse: 1, timestamps: 0, localPorts: ports, migrateReq: 1 })).toMatch(/tcp_timestamps is 0/);
    expect(timeWaitReuseProblem({ twReuse: 1, timestamps: 1, localPorts: ports, migrateReq: 1 })).toBeNull();
    expect(timeWaitReuseProblem({ twReuse: null, timestamps: null, localPorts: null, migrateReq: null })).toBeNull();
  });
});

describe('migrateReqProblem', () => {
  const t = { twReuse: 1, timestamps: 1, localPorts: null };
  it('names tcp_migrate_req 0; nothing when it is 1 or could not be read (a kernel before 5.14)', () => {
    expect(migrateReqProblem({ ...t, migrateReq: 0 })).toMatch(/^net\.ipv4\.tcp_migrate_req is 0: .*reset/);
    expect(migrateReqProblem({ ...t, migrateReq: 1 })).toBeNull();
    expect(migrateReqProblem({ ...t, migrateReq: null })).toBeNull();
  });
});
