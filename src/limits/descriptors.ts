// The descriptor side of the global limit: RLIMIT_NOFILE, raised at start to its hard limit
// (as nginx's worker_rlimit_nofile and sniproxy do), through the small rlimit addon
// (native/rlimit.c; Node has no setrlimit), and the budget of proxied connections it allows.

import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';

export interface NofileLimits {
  /** null: unlimited (RLIM_INFINITY). */
  readonly soft: number | null;
  readonly hard: number | null;
}

interface RlimitAddon {
  nofile(): { soft: number; hard: number };
  raiseNofile(): { soft: number; hard: number };
}

const ADDON_PATH = '../../native/build/rlimit.node';
let addon: RlimitAddon | Error | undefined;

function load(): RlimitAddon | Error {
  if (addon) return addon;
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as RlimitAddon;
  } catch (err) {
    addon = new Error(`"${ADDON_PATH}": ${err instanceof Error ? err.message : String(err)} (npm ci builds it)`);
  }
  return addon;
}

const fromNative = (l: { soft: number; hard: number }): NofileLimits => ({ soft: l.soft < 0 ? null : l.soft, hard: l.hard < 0 ? null : l.hard });

/**
 * Raises the soft RLIMIT_NOFILE to the hard limit and returns what is in force afterwards,
 * with `before` and, when the addon is missing or setrlimit(2) fails, the reason (the
 * limits then stay as they were, read from /proc/self/limits).
 */
export function raiseNofile(): { before: NofileLimits; after: NofileLimits; error: string | null } {
  const a = load();
  if (a instanceof Error) {
    const l = nofileFromProc();
    return { before: l, after: l, error: a.message };
  }
  const before = fromNative(a.nofile());
  try {
    return { before, after: fromNative(a.raiseNofile()), error: null };
  } catch (err) {
    return { before, after: before, error: `setrlimit(RLIMIT_NOFILE): ${(err as Error).message}` };
  }
}

/** RLIMIT_NOFILE as /proc/self/limits shows it (no addon needed). */
export function nofileFromProc(): NofileLimits {
  try {
    const text = readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
    const n = (s: string | undefined): number | null => (s === undefined || s === 'unlimited' ? null : Number(s));
    return { soft: n(m?.[1]), hard: n(m?.[2]) };
  } catch {
    return { soft: null, hard: null };
  }
}

/** Descriptors this process has open now (/proc/self/fd), or null where that cannot be read. */
export function openDescriptors(): number | null {
  try {
    // The listing itself opens one descriptor for the directory.
    return readdirSync('/proc/self/fd').length - 1;
  } catch {
    return null;
  }
}

/**
 * How many proxied connections fit in the descriptor limit: each holds two (the client's and
 * the upstream's), after the descriptors already open at start (listeners, the event loop,
 * stdio) and a reserve for the admin listener, DNS, the state file and logging.
 */
export function connectionBudget(soft: number | null, inUse: number, reserve: number): number | null {
  if (soft === null) return null;
  return Math.max(0, Math.floor((soft - inUse - reserve) / 2));
}

/** The share of the descriptors left for connections that the native loops' accept slots take. */
export const ACCEPT_SLOTS_SHARE = 1 / 4;
/** native/splice_loop.h SL_MAX_UNANSWERED: a loop's slots at most. */
export const MAX_ACCEPT_SLOTS = 512;

/**
 * Each native loop's accept slots: how many connections it may hold accepted before admission
 * has answered them (native/splice_loop.h sl_loop_accept_cap). Each holds a descriptor admission
 * does not count yet, so they are taken out of the descriptors left for connections before the
 * budget is sized (connectionBudget's `inUse` grows by `loops` × this): a quarter of them, split
 * between the loops, 1 to MAX_ACCEPT_SLOTS each. Null when there is no descriptor limit, or no
 * loop accepts (the JS path admits in accept's own callback and holds nothing unanswered).
 */
export function acceptSlots(soft: number | null, inUse: number, reserve: number, loops: number): number | null {
  if (soft === null || loops < 1) return null;
  const free = Math.max(0, soft - inUse - reserve);
  return Math.max(1, Math.min(MAX_ACCEPT_SLOTS, Math.floor((free * ACCEPT_SLOTS_SHARE) / loops)));
}
