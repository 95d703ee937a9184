// The live table of sandboxes: which policy applies to a connection, found by its source
// address. Policies are compiled here, once per change; lookups on the hot path are a Map get.

import type { Policy } from './model.ts';
import { compilePolicy, type CompiledPolicy } from './compile.ts';
import { decide, type Decision, type Facts } from './decide.ts';
import { compileProtected, type ProtectedSet } from './protected.ts';

/** What the data path needs of a sandbox's policy. */
export interface SandboxPolicy {
  /** The sandbox id, or null for a source that belongs to no sandbox (the default policy). */
  readonly id: string | null;
  decide(facts: Facts): Decision;
  /**
   * Whether a name could change the verdict made without one. False lets the tcp listener
   * decide by address and port alone, so server-first protocols are not delayed.
   */
  nameMatters(facts: Facts): boolean;
}

export interface PolicyLookup {
  lookup(source: string): SandboxPolicy;
}

export interface SandboxDefinition {
  readonly id: string;
  /** Canonical source addresses (see config/schema canonicalSource). */
  readonly sources: readonly string[];
  readonly network: Policy;
}

class CompiledSandbox implements SandboxPolicy {
  readonly id: string | null;
  readonly compiled: CompiledPolicy;
  readonly #hasDomains: boolean;
  constructor(id: string | null, policy: Policy, protectedSet: ProtectedSet) {
    this.id = id;
    this.compiled = compilePolicy(policy, protectedSet);
    this.#hasDomains = policy.allow.domains.length > 0 || policy.deny.domains.length > 0;
  }
  decide(facts: Facts): Decision {
    return decide(this.compiled, facts);
  }
  nameMatters(facts: Facts): boolean {
    if (!this.#hasDomains) return false;
    const d = decide(this.compiled, { ...facts, name: null });
    // A protected address stays refused and an address/port allow stays allowed whatever
    // name comes: steps (1) and (2) of decide do not look at the name.
    return !(d.reason === 'protected-address' || (d.verdict === 'allow' && d.reason === 'allow-rule'));
  }
}

export class PolicyStore implements PolicyLookup {
  #protected: ProtectedSet;
  #default: CompiledSandbox;
  #bySource = new Map<string, CompiledSandbox>();
  #byId = new Map<string, { def: SandboxDefinition; compiled: CompiledSandbox }>();
  #version = 0;

  constructor(opts: { protected: { extra: readonly string[]; except: readonly string[] }; defaultNetwork: Policy; sandboxes: readonly SandboxDefinition[] }) {
    this.#protected = compileProtected({ extra: [...opts.protected.extra], except: [...opts.protected.except] });
    this.#default = new CompiledSandbox(null, opts.defaultNetwork, this.#protected);
    for (const sb of opts.sandboxes) this.put(sb);
  }

  get version(): number {
    return this.#version;
  }

  get sandboxCount(): number {
    return this.#byId.size;
  }

  lookup(source: string): SandboxPolicy {
    return this.#bySource.get(source) ?? this.#default;
  }

  get(id: string): SandboxDefinition | undefined {
    return this.#byId.get(id)?.def;
  }

  /** Creates or replaces a sandbox. The caller has checked that its sources are free. */
  put(def: SandboxDefinition): void {
    const compiled = new CompiledSandbox(def.id, def.network, this.#protected);
    this.remove(def.id);
    this.#byId.set(def.id, { def, compiled });
    for (const s of def.sources) this.#bySource.set(s, compiled);
    this.#version++;
  }

  remove(id: string): boolean {
    const old = this.#byId.get(id);
    if (!old) return false;
    for (const s of old.def.sources) if (this.#bySource.get(s) === old.compiled) this.#bySource.delete(s);
    this.#byId.delete(id);
    this.#version++;
    return true;
  }

  /** The sandbox that owns a source address, if any. */
  ownerOf(source: string): string | null {
    return this.#bySource.get(source)?.id ?? null;
  }
}
