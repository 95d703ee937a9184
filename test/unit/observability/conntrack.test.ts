// The conntrack table's count and limit, read from /proc/sys/net/netfilter's two files, or
// nothing when conntrack is not there.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readConntrackTable } from '../../../src/observability/conntrack.ts';

describe('readConntrackTable', () => {
  const dirs: string[] = [];
  const dir = (files: Record<string, string>): string => {
    const d = mkdtempSync(join(tmpdir(), 'egressd-conntrack-'));
    dirs.push(d);
    for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('reads nf_conntrack_count and nf_conntrack_max as the kernel writes them', () => {
    expect(readConntrackTable(dir({ nf_conntrack_count: '2000\n', nf_conntrack_max: '262144\n' }))).toEqual({ entries: 2000, limit: 262_144 });
  });

  it.each([
    ['no files (nf_conntrack not loaded)', {}],
    ['no limit', { nf_conntrack_count: '5\n' }],
    ['no count', { nf_conntrack_max: '262144\n' }],
    ['a count that is not a number', { nf_conntrack_count: 'x\n', nf_conntrack_max: '262144\n' }],
    // Number() read these as 0, 0 and 16: a table that was not read, read as empty or nearly.
    ['an empty count', { nf_conntrack_count: '', nf_conntrack_max: '262144\n' }],
    ['an empty limit', { nf_conntrack_count: '5\n', nf_conntrack_max: '\n' }],
    ['a count in hexadecimal', { nf_conntrack_count: '0x10\n', nf_conntrack_max: '262144\n' }],
  ])('is null with %s', (_, files) => {
    expect(readConntrackTable(dir(files))).toBeNull();
  });
});
