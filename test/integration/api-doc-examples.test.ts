// docs/api.md's requests from "Sandboxes" to "Check", sent as written and in order to a real
// egressd: a reader who follows them gets the answers the page shows. The sandbox example named
// an organization the page created only further down (404), and the check's answer named an
// organization that no example had given its sandbox.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall, bearer } from '../helpers/admin-api.ts';
import { loopbackDocument } from '../helpers/config-file.ts';
import { watchDaemon, type DaemonProcess } from '../helpers/daemon-process.ts';
import { action } from '../helpers/log-line.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = join(ROOT, 'node_modules/.bin/node');
const TOKEN = 'api-doc-token';

interface Example {
  readonly method: string;
  readonly path: string;
  readonly body: unknown;
  /** The JSON block right after it, when it is an answer (no request line of its own). */
  readonly answer: Record<string, unknown> | null;
}

/** The `METHOD /path` + JSON body blocks of docs/api.md between two headings, in page order. */
function examples(from: string, to: string): Example[] {
  const md = readFileSync(join(ROOT, 'docs/api.md'), 'utf8');
  const part = md.slice(md.indexOf(from), md.indexOf(to));
  const blocks = [...part.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const out: Example[] = [];
  blocks.forEach((b, i) => {
    const m = /^(PUT|POST|GET|DELETE) (\/\S+)\n([\s\S]*)$/.exec(b);
    if (!m) return;
    const next = blocks[i + 1];
    let answer: Record<string, unknown> | null = null;
    // An answer abridged with "..." (the effective view, with counts after traffic) is not compared.
    if (next !== undefined && !/^(PUT|POST|GET|DELETE) /.test(next) && !next.includes('...')) {
      answer = JSON.parse(next) as Record<string, unknown>;
    }
    out.push({ method: m[1]!, path: m[2]!, body: m[3]!.trim() === '' ? undefined : JSON.parse(m[3]!), answer });
  });
  return out;
}

describe('docs/api.md, from "Sandboxes" to "Check", run as written', () => {
  let dir: string;
  let d: DaemonProcess;
  let admin: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'egressd-api-doc-'));
    const file = join(dir, 'egressd.json');
    writeFileSync(file, JSON.stringify(loopbackDocument({}, { token: TOKEN })));
    d = await watchDaemon(spawn(NODE, [join(ROOT, 'src/main.ts'), 'serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] }));
    admin = `http://127.0.0.1:${d.lines.find((l) => action(l) === 'started')!['adminPort']}`;
  });
  afterAll(async () => {
    await d?.stop('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers every request 2xx, and the answers the page shows in full', async () => {
    const all = examples('\n## Sandboxes', '\n## From the command line');
    expect(all.map((e) => `${e.method} ${e.path}`)).toEqual(
      expect.arrayContaining(['PUT /api/v1/orgs/acme', 'PUT /api/v1/sandboxes/sbx-1', 'POST /api/v1/check']),
    );
    for (const e of all) {
      const r = await adminCall(admin, e.method, e.path, e.body, bearer(TOKEN));
      expect(r.status, `${e.method} ${e.path}: ${JSON.stringify(r.body)}`).toBeLessThan(300);
      if (e.answer !== null) expect(r.body, `${e.method} ${e.path}`).toMatchObject(e.answer);
    }
  });
});
