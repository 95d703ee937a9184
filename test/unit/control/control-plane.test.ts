// Changes that overlap in time: every API change is validated, written and applied in one
// serialized section, so a change that was queued behind another, or a config reload (SIGHUP)
// that lands while an API change waits for its fsync, is judged against what the earlier one
// left, never against what it read before.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ControlPlane, digestOf, type ChangeEvent, type SandboxRecord } from '../../../src/control/control-plane.ts';
import { StateStore, type EntryKind } from '../../../src/control/state-store.ts';
import { PolicyStore } from '../../../src/control/store.ts';

const EMPTY = { domains: [], cidrs: [], ports: [] };

/** A real state whose next `put` waits until the test lets it go: a write held mid-fsync. */
class HeldState extends StateStore {
  #hold: { entered: () => void; release: Promise<void> } | null = null;

  /** Holds the next put; resolves `entered` once it has begun (its change was validated). */
  holdNextPut(): { entered: Promise<void>; release: () => void } {
    let entered!: () => void;
    let release!: () => void;
    const enteredP = new Promise<void>((r) => (entered = r));
    this.#hold = { entered, release: new Promise<void>((r) => (release = r)) };
    return { entered: enteredP, release };
  }

  override async put(kind: EntryKind, id: string, body: Readonly<Record<string, unknown>>): Promise<number> {
    const h = this.#hold;
    this.#hold = null;
    if (h !== null) {
      h.entered();
      await h.release;
    }
    return super.put(kind, id, body);
  }
}

let dir: string;
const open: ControlPlane[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'egressd-cp-'));
});
afterEach(async () => {
  for (const c of open.splice(0)) await c.close();
  rmSync(dir, { recursive: true, force: true });
});

async function plane(state: StateStore | null): Promise<ControlPlane> {
  const store = new PolicyStore(
    { protected: { extra: [], except: ['198.18.0.0/15'], nat64Prefixes: [] }, catalog: [], dnsServers: [] },
    { dialect: 'sandbox0', policy: { mode: 'block-all', allow: EMPTY, deny: EMPTY }, essentialServices: false, dnsServersAllowed: false },
  );
  const cp = new ControlPlane(store, state);
  open.push(cp);
  await cp.load([]);
  return cp;
}

const ALLOW_PYPI = { mode: 'block-all', egress: { allowed_domains: ['pypi.org'] } };

describe('PUT /sandboxes/{id}/network queued behind another change', () => {
  it('behind a DELETE: is refused as not found, and does not bring the deleted sandbox back', async () => {
    const cp = await plane(null);
    expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.1'], network: { mode: 'allow-all' } })).ok).toBe(true);
    const [del, net] = await Promise.all([cp.deleteSandbox('sb-1'), cp.putNetwork('sb-1', ALLOW_PYPI)]);
    expect(del.ok).toBe(true);
    expect(net).toMatchObject({ ok: false, error: { kind: 'not-found' } });
    expect(cp.sandbox('sb-1')).toBeUndefined();
    expect(cp.store.ownerOf('198.18.0.1')).toBeNull();
  });

  it('behind a PUT that moved the sandbox to other sources and another organization: keeps what that PUT set', async () => {
    const cp = await plane(null);
    expect((await cp.putOrg('acme', { tier: 3 })).ok).toBe(true);
    expect((await cp.putOrg('beta', { tier: 4 })).ok).toBe(true);
    expect((await cp.putSandbox('sb-1', { sources: ['198.18.0.1'], org: 'acme' })).ok).toBe(true);
    const [moved, net] = await Promise.all([
      cp.putSandbox('sb-1', { sources: ['198.18.0.2'], org: 'beta', reportOnly: true }),
      cp.putNetwork('sb-1', ALLOW_PYPI),
    ]);
    expect(moved.ok && net.ok).toBe(true);
    expect(cp.sandbox('sb-1')).toMatchObject({ sources: ['198.18.0.2'], org: 'beta', reportOnly: true, network: ALLOW_PYPI });
    // The address the first PUT gave up stays free: the network change did not claim it again.
    expect(cp.store.ownerOf('198.18.0.1')).toBeNull();
    expect(cp.store.ownerOf('198.18.0.2')).toBe('sb-1');
  });
});

describe('a config reload while an API change waits for its write', () => {
  const config = (id: string, source: string): SandboxRecord => ({ id, sources: [source], org: null, network: { mode: 'allow-all' }, origin: 'config' });

  it('cannot give the same source address to a config sandbox: one of the two is refused', async () => {
    const state = new HeldState(join(dir, 'state.db'));
    const cp = await plane(state);
    const held = state.holdNextPut();
    const api = cp.putSandbox('api-1', { sources: ['198.18.0.7'], network: ALLOW_PYPI });
    await held.entered;
    const reload = cp.replaceConfigSandboxes([config('cfg-1', '198.18.0.7')]);
    held.release();
    const put = await api;
    expect([put.ok, (await reload).ok]).not.toEqual([true, true]);
    const owners = cp.sandboxes().filter((s) => s.sources.includes('198.18.0.7'));
    expect(owners).toHaveLength(1);
    expect(cp.store.ownerOf('198.18.0.7')).toBe(owners[0]!.id);
  });

  it('cannot make a config sandbox of the id an API change is creating', async () => {
    const state = new HeldState(join(dir, 'state.db'));
    const cp = await plane(state);
    const held = state.holdNextPut();
    const api = cp.putSandbox('sb-1', { sources: ['198.18.0.7'], network: ALLOW_PYPI });
    await held.entered;
    const reload = cp.replaceConfigSandboxes([config('sb-1', '198.18.0.8')]);
    held.release();
    const put = await api;
    expect([put.ok, (await reload).ok]).not.toEqual([true, true]);
    // Whichever won, the record and the live table agree on who owns which address.
    const r = cp.sandbox('sb-1')!;
    for (const s of r.sources) expect(cp.store.ownerOf(s)).toBe('sb-1');
    for (const s of ['198.18.0.7', '198.18.0.8'].filter((x) => !r.sources.includes(x))) expect(cp.store.ownerOf(s)).toBeNull();
  });
});

describe("a config reload's change events", () => {
  const config = (id: string, source: string, mode = 'allow-all'): SandboxRecord => ({ id, sources: [source], org: null, network: { mode }, origin: 'config' });

  it('carry the digest from before the reload, and a delete for each sandbox it removes', async () => {
    const cp = await plane(null);
    const a = config('cfg-a', '198.18.0.1');
    const b = config('cfg-b', '198.18.0.2');
    expect((await cp.replaceConfigSandboxes([a, b])).ok).toBe(true);
    const events: ChangeEvent[] = [];
    cp.onChange((e) => events.push(e));
    const a2 = config('cfg-a', '198.18.0.1', 'block-all');
    expect((await cp.replaceConfigSandboxes([a2])).ok).toBe(true);
    expect(events.map((e) => [e.action, e.id, e.before, e.after])).toEqual(
      expect.arrayContaining([
        ['put', 'cfg-a', digestOf(a), digestOf(a2)],
        ['delete', 'cfg-b', digestOf(b), null],
      ]),
    );
    expect(events).toHaveLength(2);
    expect(cp.store.ownerOf('198.18.0.2')).toBeNull();
  });
});
