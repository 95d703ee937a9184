// What happens to one DNS query from a sandbox, top to bottom:
//   parse → sandbox by source → rate limit → may this sandbox reach the name? → cache | upstream
//   → strip ECH → does the alias chain run through a name it denies? → remember the addresses
//   given → withhold the other records of names it denies → answer
// A name the sandbox may not reach is answered NXDOMAIN (or REFUSED, `dns.refusal`) here, so its
// labels never leave the host. Nothing here throws to the listener: every query gets an answer
// or, when it is not a query at all, silence.

import type { Answer } from 'dns-packet';
import type { Config } from '../config/schema.ts';
import type { PolicyLookup } from '../control/store.ts';
import { allowsAnything, nameReach, type PolicyChain } from '../policy/verdict.ts';
import { DomainTrie } from '../match/domain-trie.ts';
import { judgedDnsName, normalizeWireName } from '../match/names.ts';
import type { Logger } from '../observability/logger.ts';
import { MAX_CACHE_TTL_S, AnswerCache } from './cache.ts';
import { withoutDeniedRecords } from './denied-records.ts';
import { HTTPS_TYPE, SVCB_TYPE, stripEch } from './ech.ts';
import type { ResolvedNames } from './memory.ts';
import { answerResponse, errorResponse, parseQuery, refusalResponse, udpLimit, type Answered, type ParsedQuery, type Query } from './message.ts';
import { QueryLines } from './query-lines.ts';
import { TokenBuckets } from './token-bucket.ts';
import type { Forwarder } from './upstream.ts';
import { canonicalSource } from '../match/ip.ts';
import { cacheKey, clampTtlMs, type AddressCache } from '../net/dns-cache.ts';
import { chainAliases, chainOwners, MAX_CHAIN_ALIASES, recordTtl } from '../net/dns-client.ts';
import { QueryTenants } from '../net/query-sockets.ts';
import type { TenantKeyOf } from '../match/tenant-key.ts';

export type Transport = 'udp' | 'tcp';

/** A query's verdict: a small fixed set, safe as a metric label. */
export type QueryVerdict = 'allow' | 'refuse' | 'rate-limited' | 'inflight-limited' | 'malformed' | 'servfail';

/** Query types counted by name; every other type is `other` (a label must stay a small set). */
const COUNTED_TYPES = new Set(['A', 'AAAA', 'HTTPS', 'SVCB', 'CNAME', 'MX', 'TXT', 'PTR', 'SRV', 'NS', 'SOA', 'CAA', 'ANY', 'DS', 'DNSKEY']);

export interface QueryEvent {
  readonly verdict: QueryVerdict;
  readonly type: string;
  readonly cached: boolean;
  /** Time the upstream took, when it was asked. */
  readonly upstreamMs?: number;
}

export interface DnsServiceDeps {
  readonly config: () => Config;
  /** The key a source's limits are counted under (match/tenant-key.ts). */
  readonly tenantOf: TenantKeyOf;
  readonly policies: PolicyLookup;
  readonly forwarder: Pick<Forwarder, 'query'>;
  readonly cache: AnswerCache;
  /** The data path's address cache (net/dns-cache.ts): A and AAAA answers given out go in too. */
  readonly addresses?: AddressCache;
  readonly memory: ResolvedNames;
  readonly log: Logger;
  readonly onQuery?: (e: QueryEvent) => void;
  /** Told of dns-query lines left out (dns/query-lines.ts), by reason, as the line after them is written. */
  readonly onLinesSuppressed?: (reason: string, n: number) => void;
}

const TCP_LIMIT = 65_535;

/**
 * Records of an answer that cost its query one token of the sandbox's rate (`dns.limits`): an
 * ordinary answer (a few addresses, a short chain, the 60 of a large pool) takes the query's own
 * one; handling an answer costs ~2 µs a record, so 64 are about what one ordinary query costs.
 */
const RECORDS_PER_QUERY = 64;
/**
 * Characters of an answer's names that cost its query one token: writing a name is split, label by
 * label, and compressOwners reads each of its suffixes, so a record's work grows with its names.
 * 64 ordinary records hold about 1,500 (a 16-character owner, a CNAME's target); an upstream
 * answering with 240 owners of 250 characters (60,000) took 2 to 5 ms a query where 1,900 A
 * records of one short owner (30,400) take 1 to 3 ms (measured, both over UDP and TCP).
 */
const NAME_CHARS_PER_QUERY = 2048;
/** Record types whose data is one name (RFC 1035 §3.3, RFC 6672 §2.1). */
const NAME_DATA = new Set(['CNAME', 'DNAME', 'NS', 'PTR']);

/** An upstream query's outcome, and how long the upstream took (what each sandbox waits for it, #fetch). */
interface Fetched {
  readonly r: Answered | { failed: string };
  readonly ms: number;
}

/** Resolves after `ms` (at once for none); the timer holds no process open. */
function after(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * The tokens an answer costs the sandbox that gets it: one per RECORDS_PER_QUERY records in all
 * its sections or per NAME_CHARS_PER_QUERY characters of their names, whichever is more, at
 * least one.
 */
function answerCost(a: Answered): number {
  let records = 0;
  let chars = 0;
  for (const rs of [a.answers, a.authorities, a.additionals]) {
    records += rs.length;
    for (const r of rs) {
      const data = (r as { data?: unknown }).data;
      chars += r.name.length + (NAME_DATA.has(r.type) && typeof data === 'string' ? data.length : 0);
    }
  }
  return Math.max(1, Math.ceil(records / RECORDS_PER_QUERY), Math.ceil(chars / NAME_CHARS_PER_QUERY));
}

/** A name in an answer that a deny rule of the sandbox names (#denied), and report-only mode's part in it. */
interface DeniedName {
  /** As judged (match/names.ts judgedDnsName). */
  readonly name: string;
  readonly rule: string | null;
  /** Report-only mode lets it through: reported, never refused nor withheld. */
  readonly reportOnly: boolean;
}

export class DnsService {
  readonly #deps: DnsServiceDeps;
  readonly #buckets: TokenBuckets;
  readonly #zones: DomainTrie | null;
  readonly #inflightBy = new Map<string, number>();
  #inflight = 0;
  /** Questions on their way upstream, and the sandboxes that asked them (the first, then those that joined). */
  readonly #pending = new Map<string, { answer: Promise<Fetched>; tenants: QueryTenants }>();
  /** The lines above debug, bounded per sandbox, verdict and reason (dns/query-lines.ts). */
  readonly #lines: QueryLines;

  constructor(deps: DnsServiceDeps) {
    this.#deps = deps;
    const c = deps.config().dns;
    this.#buckets = new TokenBuckets({ perSecond: c.limits.perSecond, burst: c.limits.burst });
    this.#lines = new QueryLines(deps.log, deps.onLinesSuppressed);
    if (c.zones.length > 0) {
      const t = new DomainTrie();
      c.zones.forEach((z, i) => t.insert(z, i));
      this.#zones = t;
    } else {
      this.#zones = null;
    }
  }

  /**
   * The response to one message from `source` (canonical address), or null for silence.
   * `length`: the message's, when `msg` is only what heldQuery kept of it.
   */
  answer(msg: Buffer, rawSource: string, transport: Transport, length = msg.length): Promise<Buffer | null> {
    // Read here, apart from the wait: an async function keeps its arguments until it returns, and
    // a sandbox's queries joined to its own upstream query (burst + rate x timeout of them) kept
    // each its datagram, up to 4,096 bytes, where the question is all a wait needs.
    // As before, whatever it throws comes back as the promise's rejection, never thrown at the caller.
    try {
      return this.#answer(parseQuery(msg, length), canonicalSource(rawSource) ?? rawSource, transport);
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }

  async #answer(parsed: ParsedQuery, source: string, transport: Transport): Promise<Buffer | null> {
    if (parsed.kind === 'drop') {
      this.#count('malformed', 'other', false);
      return null;
    }
    let policy = this.#deps.policies.lookup(source);
    const key = this.#deps.tenantOf(policy.sandbox, source);
    if (!this.#buckets.take(key)) {
      this.#count('rate-limited', parsed.kind === 'query' ? parsed.query.type : 'other', false);
      const q = parsed.kind === 'query' ? parsed.query : null;
      this.#lines.write(key, 'info', { sandbox: policy.sandbox, source, transport, name: q?.name, type: q?.type, verdict: 'refuse', reason: 'rate-limited' });
      return parsed.kind === 'query'
        ? refusalResponse(parsed.query, 'REFUSED')
        : errorResponse(parsed.id, parsed.flags, 'REFUSED', parsed.question, parsed.edns);
    }
    if (parsed.kind === 'error') {
      this.#count('malformed', parsed.question?.type ?? 'other', false);
      this.#lines.write(key, 'info', {
        sandbox: policy.sandbox,
        source,
        transport,
        name: parsed.question?.name,
        type: parsed.question?.type,
        verdict: 'refuse',
        reason: 'malformed',
        rcode: parsed.rcode,
        detail: parsed.why,
      });
      return errorResponse(parsed.id, parsed.flags, parsed.rcode, parsed.question, parsed.edns);
    }
    const q = parsed.query;
    let about = { sandbox: policy.sandbox, source, transport, name: q.name, type: q.type };
    const limit = transport === 'udp' ? udpLimit(q) : TCP_LIMIT;
    const config = this.#deps.config();

    let gate = this.#gate(policy, q.name);
    if (!gate.reach) {
      this.#count('refuse', q.type, false);
      this.#lines.write(key, 'info', { ...about, verdict: 'refuse', reason: gate.reason, rule: gate.rule });
      return refusalResponse(q, config.dns.refusal === 'refused' ? 'REFUSED' : 'NXDOMAIN');
    }

    const answerKey = AnswerCache.key(q.name, q.type, q.edns?.dnssecOk === true, q.checkingDisabled);
    const hit = this.#deps.cache.get(answerKey, key);
    let answered: Answered;
    let ageS = 0;
    let upstreamMs: number | undefined;
    /**
     * Whether this query had the upstream asked and its answer read (not its own view of the
     * cache, nor its own question joined again), or got one another sandbox's query read as if
     * it had read it (#fetch): owed alike, so the bucket tells nothing of another's query either.
     */
    let fetched = false;
    if (hit) {
      answered = hit.answered;
      ageS = hit.ageS;
    } else {
      // The in-flight bounds count upstream queries: a question this sandbox already has on its
      // way upstream is joined (#fetch), costs the resolver nothing more, and is bounded by the
      // rate limit it passed above. Counting its waiters too refused a flood's repeats of one name
      // while the name's first query was out, tokens already spent, before the answer could be
      // cached. Another sandbox's question is counted as this one's own query would be (#fetch
      // answers it as if it had asked alone): joined free, a sandbox holding its whole share could
      // tell by the answer or the refusal whether another was asking the name at that moment.
      const joins = this.#pending.get(answerKey)?.tenants.all.has(key) === true;
      fetched = !joins;
      const limits = config.dns.limits;
      const held = this.#inflightBy.get(key) ?? 0;
      if (!joins && (held >= limits.inflightPerSandbox || this.#inflight >= limits.inflightTotal)) {
        this.#count('inflight-limited', q.type, false);
        this.#lines.write(key, 'info', { ...about, verdict: 'refuse', reason: 'inflight-limited' });
        return refusalResponse(q, 'REFUSED');
      }
      if (!joins) {
        this.#inflightBy.set(key, held + 1);
        this.#inflight++;
      }
      const started = performance.now();
      let r: Answered | { failed: string };
      try {
        r = await this.#fetch(answerKey, q, key);
      } finally {
        if (!joins) {
          const left = (this.#inflightBy.get(key) ?? 1) - 1;
          if (left <= 0) this.#inflightBy.delete(key);
          else this.#inflightBy.set(key, left);
          this.#inflight--;
        }
      }
      upstreamMs = performance.now() - started;
      if ('failed' in r) {
        this.#count('servfail', q.type, false, upstreamMs);
        this.#lines.write(key, 'warn', { ...about, verdict: 'error', reason: 'upstream-failed', detail: r.failed });
        return refusalResponse(q, 'SERVFAIL');
      }
      answered = r;
      // The wait upstream may have outlasted a policy change, which the API answered meanwhile:
      // the answer is given, and remembered, only as the policy in force now for this source
      // allows (its sandbox may have changed too: a source handed to another one).
      const now = this.#deps.policies.lookup(source);
      if (now !== policy) {
        policy = now;
        about = { ...about, sandbox: policy.sandbox };
        gate = this.#gate(policy, q.name);
        if (!gate.reach) {
          this.#count('refuse', q.type, false, upstreamMs);
          this.#lines.write(key, 'info', { ...about, verdict: 'refuse', reason: gate.reason, rule: gate.rule });
          return refusalResponse(q, config.dns.refusal === 'refused' ? 'REFUSED' : 'NXDOMAIN');
        }
      }
    }

    // The rate counts work, not messages: every record of an answer is judged, remembered, aged
    // and encoded again on each query that gets it, over UDP (truncated only once encoded) or TCP.
    // A 40-byte query for a cached 64 KiB answer of 1,900 A records cost the event loop, which
    // every sandbox's DNS and connections share, ~3.5 ms against ~0.2 ms for one record (measured):
    // counted as one query, a burst of 1000 is ~3.5 s of a stalled loop. So a large answer takes a
    // token per RECORDS_PER_QUERY records (dnsdist's response byte rate charges a client for its
    // answers alike), at most a full bucket with the query's own, so that it is answered once full.
    // One this query had read from the upstream was paid for in work whether answered or not:
    // refused, its cost is owed all the same (the bucket goes below empty), or a sandbox asking
    // new names of a zone it serves had a 64 KiB answer read for each token (1 to 5 ms, measured:
    // at 500 a second, more than the event loop has).
    const extra = Math.min(answerCost(answered), this.#buckets.burst) - 1;
    if (extra > 0 && !this.#buckets.take(key, extra)) {
      if (fetched) this.#buckets.owe(key, extra);
      this.#count('rate-limited', q.type, hit !== undefined, upstreamMs);
      this.#lines.write(key, 'info', { ...about, verdict: 'refuse', reason: 'rate-limited' });
      return refusalResponse(q, 'REFUSED');
    }

    const target = this.#deniedTarget(policy, answered);
    if (target !== null && !target.reportOnly) {
      this.#count('refuse', q.type, hit !== undefined, upstreamMs);
      this.#lines.write(key, 'info', {
        ...about,
        verdict: 'refuse',
        reason: 'deny-rule',
        rule: `alias ${JSON.stringify(target.name)}: ${target.rule ?? 'deny-rule'}`,
        cached: hit !== undefined,
      });
      return refusalResponse(q, config.dns.refusal === 'refused' ? 'REFUSED' : 'NXDOMAIN');
    }

    if (policy.sandbox !== null) this.#remember(policy.sandbox, q.name, answered, ageS);
    // Records of other names the sandbox's policy denies (glue, the NS of a denied zone, an
    // MX, SRV or HTTPS record pointing at a denied host) are withheld: the sandbox would learn the
    // denied host's addresses without asking. Per sandbox, after the cache, as #deniedTarget.
    // Report-only mode withholds nothing and reports what it would have withheld.
    const judged = new Map<string, DeniedName | null>();
    const wouldWithhold = new Set<string>();
    const shown = withoutDeniedRecords(answered, (name) => {
      let d = judged.get(name);
      if (d === undefined) judged.set(name, (d = this.#denied(policy, name)));
      if (d?.reportOnly === true) wouldWithhold.add(d.name);
      return d === null || d.reportOnly ? null : d.name;
    });
    this.#count('allow', q.type, hit !== undefined, upstreamMs);
    // A name answered only because of report-only mode is part of the report (refused by the gate,
    // or by its chain, as #deniedTarget would: the gate's rule first, as enforcing asks it first),
    // and so is an answer that lost records to a deny rule, or would have: logged at info.
    const reportOnly = gate.reason === 'report-only' || target !== null;
    const rule = gate.reason !== 'report-only' && target !== null ? `alias ${JSON.stringify(target.name)}: ${target.rule ?? 'deny-rule'}` : gate.rule;
    this.#lines.write(key, reportOnly || shown.withheld.length > 0 || wouldWithhold.size > 0 ? 'info' : 'debug', {
      ...about,
      verdict: reportOnly ? 'would-refuse' : 'allow',
      reason: reportOnly ? 'report-only' : gate.reason,
      rule,
      rcode: answered.rcode,
      cached: hit !== undefined,
      ...(shown.withheld.length > 0 ? { withheld: shown.withheld } : {}),
      ...(wouldWithhold.size > 0 ? { wouldWithhold: [...wouldWithhold] } : {}),
    });
    try {
      return answerResponse(q, shown.answered, ageS, limit);
    } catch (e) {
      this.#lines.write(key, 'warn', { ...about, verdict: 'error', reason: 'unencodable', detail: (e as Error).message });
      return refusalResponse(q, 'SERVFAIL');
    }
  }

  /**
   * Whether the name may be forwarded for this sandbox: the policy could reach it, or it lies
   * in an operator's zone (`dns.zones`) and the policy allows anything at all and does not deny
   * it by name. A name that is no host name (an address, bad characters) is refused.
   */
  #gate(policy: PolicyChain, name: string): { reach: boolean; reason: string; rule: string | null } {
    const n = normalizeWireName(name);
    if (!n.ok || !('name' in n)) return { reach: false, reason: 'invalid-name', rule: null };
    const r = nameReach(policy, n.name);
    // Report-only: forwarded, and reported (the rule that would refuse the name).
    if (r.reach) return { reach: true, reason: r.wouldRefuse === true ? 'report-only' : 'policy', rule: r.rule };
    const denied = r.denied;
    if (!denied && this.#zones !== null && allowsAnything(policy)) {
      const i = this.#zones.match(n.name);
      if (i >= 0) return { reach: true, reason: 'zone', rule: `dns.zones ${JSON.stringify(this.#deps.config().dns.zones[i])}` };
    }
    return { reach: false, reason: denied ? 'deny-rule' : 'not-allowed', rule: r.rule };
  }

  /**
   * The first alias target of the answer (a CNAME's or DNAME's, RFC 1034 §3.6.2, RFC 6672 §2)
   * that a deny rule of this sandbox names and no port reaches, or null. Such a chain would hand
   * the sandbox the denied name's addresses under the name it asked, and the DNS memory would
   * then judge a nameless connection to them by that name; BIND's RPZ judges every CNAME target
   * of a chain as it judges the question. A target the policy merely does not name (a CDN's) is
   * no reason: most chains end in one. Judged per sandbox, on cached answers too. One that only
   * report-only mode lets through is answered with `reportOnly` (the first one refused outright
   * comes before it).
   */
  #deniedTarget(policy: PolicyChain, a: Answered): DeniedName | null {
    let would: DeniedName | null = null;
    for (const r of a.answers) {
      if ((r.type !== 'CNAME' && r.type !== 'DNAME') || typeof r.data !== 'string') continue;
      const d = this.#denied(policy, r.data);
      if (d !== null && !d.reportOnly) return d;
      would ??= d;
    }
    return would;
  }

  /**
   * `name` (as written in a record) as judged (match/names.ts judgedDnsName: a name that is no
   * host name, a wildcard owner, as a child of the host name above it), with the rule, when a
   * deny rule of this sandbox names it and no port reaches it, `reportOnly` when report-only mode
   * lets it through all the same; null otherwise, and for what has no host name above it (the
   * root).
   */
  #denied(policy: PolicyChain, name: string): DeniedName | null {
    const n = judgedDnsName(name);
    if (n === null) return null;
    const reach = nameReach(policy, n);
    if (!reach.denied) return null;
    return !reach.reach || reach.wouldRefuse === true ? { name: n, rule: reach.rule, reportOnly: reach.reach } : null;
  }

  /**
   * One upstream query per question in flight, however many sandboxes ask it at once, and one per
   * answer's TTL, however many ask it then. It is each asker's as if it had asked alone: a retry
   * over TCP takes a place of any of them with room in its share (net/query-sockets.ts
   * QueryTenants); each gets the answer in a cache view of its own (dns/cache.ts), first seen
   * when it gets it; and a sandbox getting an answer another's query fetched, in flight or
   * cached, gets it no sooner than the fetch took from its own query, so neither its TTLs nor its
   * timing tell that another sandbox asked (cache snooping). What the sandbox asked itself (a
   * repeat of its own question in flight) is answered as soon as it comes.
   */
  async #fetch(answerKey: string, q: Query, key: string): Promise<Answered | { failed: string }> {
    const asked = performance.now();
    const cache = this.#deps.cache;
    const cached = cache.shared(answerKey, key);
    if (cached !== undefined) {
      await after(cached.fetchMs);
      cache.adopt(answerKey, cached.answered, key);
      return cached.answered;
    }
    const pending = this.#pending.get(answerKey);
    if (pending) {
      const own = pending.tenants.all.has(key);
      pending.tenants.join(key);
      const { r, ms } = await pending.answer;
      if (own) return r;
      await after(asked + ms - performance.now());
      if (!('failed' in r)) cache.adopt(answerKey, r, key);
      return r;
    }
    const tenants = new QueryTenants(key);
    const answer = this.#deps.forwarder.query(q.name, q.type, q.edns?.dnssecOk === true, q.checkingDisabled, tenants).then((r): Fetched => {
      if (!r.ok) return { r: { failed: `${r.cause}: ${r.detail}` }, ms: r.ms };
      const a = this.#prepare(r.answered);
      cache.set(answerKey, a, key, r.ms);
      // With CD set the upstream did not validate (RFC 4035 §3.2.2): what it answers is for the
      // asker alone, never the address another sandbox's connection is dialed to (the data
      // path's own lookups leave CD clear). Its answer cache entry is keyed apart already.
      if (!q.checkingDisabled) this.#share(q.name, a, tenants);
      return { r: a, ms: r.ms };
    });
    this.#pending.set(answerKey, { answer, tenants });
    void answer.finally(() => this.#pending.delete(answerKey));
    return (await answer).r;
  }

  /** TTLs clamped to the cache's bound (so a sandbox asks again when egressd would) and ECH removed. */
  #prepare(a: Answered): Answered {
    const strip = this.#deps.config().dns.stripEch;
    const fix = (rs: readonly Answer[]): Answer[] => {
      const out: Answer[] = [];
      for (const r of rs) {
        let rec = r;
        if ('ttl' in rec && typeof rec.ttl === 'number') {
          const ttl = Math.min(recordTtl(rec.ttl), MAX_CACHE_TTL_S);
          if (ttl !== rec.ttl) rec = { ...rec, ttl } as Answer;
        }
        const t = rec.type as string;
        if (strip && (t === `UNKNOWN_${HTTPS_TYPE}` || t === `UNKNOWN_${SVCB_TYPE}`) && Buffer.isBuffer((rec as { data?: unknown }).data)) {
          const s = stripEch((rec as { data: Buffer }).data);
          if (s.kind === 'malformed') continue;
          if (s.kind === 'stripped') rec = { ...rec, data: s.rdata } as Answer;
        }
        out.push(rec);
      }
      return out;
    };
    return { ...a, answers: fix(a.answers), authorities: fix(a.authorities), additionals: fix(a.additionals) };
  }

  /**
   * Puts the addresses of an A or AAAA answer into the data path's address cache, beside what
   * it already holds for the name (the other family), for the shorter of the two TTLs.
   */
  #share(name: string, a: Answered, tenants: QueryTenants): void {
    const cache = this.#deps.addresses;
    const key = cacheKey(name);
    if (!cache || key === null || a.rcode !== 0) return;
    const found: string[] = [];
    let ttl = Infinity;
    const owners = chainOwners(name, a.answers);
    for (const r of a.answers) {
      if ((r.type === 'A' || r.type === 'AAAA') && typeof r.data === 'string' && owners.has(r.name.toLowerCase())) {
        found.push(r.data);
        ttl = Math.min(ttl, recordTtl(r.ttl));
      }
    }
    if (found.length === 0) return;
    let ttlMs = clampTtlMs(ttl);
    // The chain's aliases go with the addresses: a connection dialed from this entry judges them
    // as this listener did before answering (#deniedTarget), whichever sandbox asked.
    // A chain past MAX_CHAIN_ALIASES is not shared: egressd's own lookup would not use it either
    // (it fails as a resolver's does), and every alias kept is judged on every connection.
    const aliases = new Set(chainAliases(name, a.answers));
    if (aliases.size > MAX_CHAIN_ALIASES) return;
    const old = cache.get(key);
    // The other family's answer joins this one unless their chains together would pass the bound
    // (an upstream answering each query with another chain): then this answer replaces it.
    if (old?.ok && new Set([...aliases, ...(old.aliases ?? [])]).size <= MAX_CHAIN_ALIASES) {
      found.push(...old.addresses);
      for (const x of old.aliases ?? []) aliases.add(x);
      ttlMs = Math.min(ttlMs, cache.remainingMs(key));
    }
    const addresses = [...new Set(found)];
    cache.set(
      key,
      aliases.size > 0 ? { ok: true, addresses, aliases: [...aliases] } : { ok: true, addresses },
      ttlMs,
      tenants.fewest((t) => cache.heldBy(t)),
    );
  }

  #remember(sandbox: string, name: string, a: Answered, ageS: number): void {
    const given: string[] = [];
    let ttl = MAX_CACHE_TTL_S;
    // Only the chain's own records: a record of another owner is no address of `name`'s, and would
    // have a nameless connection to it judged by `name`.
    const owners = chainOwners(name, a.answers);
    for (const r of a.answers) {
      if ((r.type === 'A' || r.type === 'AAAA') && typeof r.data === 'string' && owners.has(r.name.toLowerCase())) {
        given.push(canonicalSource(r.data) ?? r.data);
        ttl = Math.min(ttl, recordTtl(r.ttl));
      }
    }
    if (given.length === 0) return;
    // The chain goes with the name (the aliases #deniedTarget judged): a deny rule added later is
    // judged on it when a nameless connection comes to one of the addresses (net/connection.ts).
    this.#deps.memory.remember(sandbox, name, given, Math.max(0, ttl - ageS), chainAliases(name, a.answers));
  }

  #count(verdict: QueryVerdict, type: string, cached: boolean, upstreamMs?: number): void {
    try {
      this.#deps.onQuery?.({ verdict, type: COUNTED_TYPES.has(type) ? type : 'other', cached, ...(upstreamMs !== undefined ? { upstreamMs } : {}) });
    } catch {
      // A metrics callback must not cost a sandbox its answer.
    }
  }

  /** Writes the lines still gathered (dns/query-lines.ts) and stops their timer. */
  close(): void {
    this.#lines.close();
  }
}
