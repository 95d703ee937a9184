import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadCatalog } from '../../../src/policy/catalog/catalog.ts';
import { normalizePattern } from '../../../src/match/names.ts';
import { compileProtected } from '../../../src/match/protected.ts';
import { parseNetworkBody } from '../../../src/policy/network-body.ts';
import { compileLayer, verdict } from '../../../src/policy/verdict.ts';
import { SharedDomains } from '../../../src/policy/compile.ts';

// The "Essential services" sections of the two Daytona network-limits documents, read from ../shared/seeds/
// (000 up to "Troubleshooting", 001 up to "### Testing Network Access"), so that the hosts are
// taken from the documents' own text rather than from a list written beside the catalog.
const SEEDS = fileURLToPath(new URL('../../../../shared/seeds/', import.meta.url));
function section(file: string, from: string, to: string): string | null {
  let text: string;
  try {
    text = readFileSync(join(SEEDS, file), 'utf8');
  } catch {
    return null;
  }
  const start = text.indexOf(from);
  const end = text.indexOf(to, start);
  return start < 0 || end < 0 ? null : text.slice(start, end);
}
const SEED_000 = section('000_3b2dba26ad59d8a0.txt', 'Essential services\n', 'Troubleshooting');
const SEED_001 = section('001_a07ce38195c34e52.txt', '### Essential Services', '### Testing Network Access');
const seedsMissing = SEED_000 === null || SEED_001 === null ? `the platform documents are not at ${SEEDS}` : null;
if (seedsMissing) console.warn(`catalog-against-seeds tests skipped: ${seedsMissing}`);
const SEED_000_ESSENTIAL_SERVICES = SEED_000 ?? '';
const SEED_001_ESSENTIAL_SERVICES = SEED_001 ?? '';

/** Every host or `*.` pattern a section names. */
function hostsIn(text: string): string[] {
  return [...new Set(text.match(/(?:\*\.)?(?:[a-z0-9-]+\.)+[a-z]{2,}/g) ?? [])];
}

const CATALOG_FILE = fileURLToPath(new URL('../../../src/policy/catalog/essential-services.yaml', import.meta.url));

const tmp = mkdtempSync(join(tmpdir(), 'egressd-catalog-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
function catalogFile(name: string, text: string | Uint8Array): string {
  const p = join(tmp, name);
  writeFileSync(p, text);
  return p;
}

function loaded(opts: Parameters<typeof loadCatalog>[0] = {}): { domains: string[]; categories: string[] } {
  const r = loadCatalog(opts);
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return r;
}

describe.skipIf(seedsMissing !== null)('the built-in essential-services catalog against the Daytona documents', () => {
  it('extracts the seed sections it checks against (the extraction itself is not empty)', () => {
    // 140 names in Daytona "Network Limits (Firewall)"'s section, 73 in the older Daytona "Network Limits" summary's; a broken regex would make the
    // containment tests below pass vacuously.
    expect(hostsIn(SEED_000_ESSENTIAL_SERVICES)).toHaveLength(140);
    expect(hostsIn(SEED_001_ESSENTIAL_SERVICES)).toHaveLength(73);
  });

  it('contains every host and pattern Daytona "Network Limits (Firewall)" names', () => {
    const { domains } = loaded();
    expect(hostsIn(SEED_000_ESSENTIAL_SERVICES).filter((h) => !domains.includes(h))).toEqual([]);
  });

  it('contains every host the older Daytona "Network Limits" summary names, including those Daytona "Network Limits (Firewall)" covers only by a wildcard', () => {
    const { domains } = loaded();
    expect(hostsIn(SEED_001_ESSENTIAL_SERVICES).filter((h) => !domains.includes(h))).toEqual([]);
    expect(domains).toContain('registry-1.docker.io');
  });

  it("keeps Daytona's list whole and apart: `categories` names nothing that neither version of it names", () => {
    const named = new Set([...hostsIn(SEED_000_ESSENTIAL_SERVICES), ...hostsIn(SEED_001_ESSENTIAL_SERVICES)]);
    const doc = parse(readFileSync(CATALOG_FILE, 'utf8')) as { categories: Record<string, string[]> };
    expect(
      Object.values(doc.categories)
        .flat()
        .filter((d) => !named.has(d)),
    ).toEqual([]);
  });

  it("gives every entry beyond Daytona's list a source: the service's own document, by title and https URL", () => {
    const named = new Set([...hostsIn(SEED_000_ESSENTIAL_SERVICES), ...hostsIn(SEED_001_ESSENTIAL_SERVICES)]);
    const r = loadCatalog();
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    const sourced = new Set(r.published.map((p) => p.host));
    expect(r.domains.filter((d) => !named.has(d) && !sourced.has(d))).toEqual([]);
    expect(r.published.length).toBeGreaterThan(0);
    for (const p of r.published) {
      expect(p.title.trim().length, p.host).toBeGreaterThan(0);
      expect(p.url, p.host).toMatch(/^https:\/\/[^/\s]+\/\S*$/);
    }
  });
});

describe('the built-in essential-services catalog', () => {
  it('has every category of Daytona "Network Limits (Firewall)"', () => {
    expect(loaded().categories).toEqual([
      'npm',
      'yarn',
      'bun',
      'github',
      'gitlab',
      'bitbucket',
      'azure-devops',
      'pypi',
      'composer',
      'ubuntu-debian',
      'cdn',
      'ai-ml',
      'container-registries',
      'maven',
      'google-fonts',
      'aws-s3',
      'gcs',
      'daytona',
      'developer-tools',
      'messaging',
      'llm-observability',
    ]);
  });

  it('writes every entry in normalized form, so each passes normalizePattern unchanged', () => {
    const doc = parse(readFileSync(CATALOG_FILE, 'utf8')) as { categories: Record<string, string[]> };
    const entries = Object.values(doc.categories).flat();
    expect(entries.length).toBeGreaterThan(160);
    const failures = entries.map((e) => [e, normalizePattern(e)] as const).filter(([e, r]) => !r.ok || r.pattern !== e);
    expect(failures).toEqual([]);
  });

  it("lets an image pull from mcr.microsoft.com fetch its layers (issue 10 part 11's example), and Docker Hub's and Quay's", () => {
    const { domains } = loaded({ categories: ['container-registries'] });
    const matches = (host: string) => domains.some((d) => d === host || (d.startsWith('*.') && host.endsWith(d.slice(1))));
    // Layer downloads go to regional data endpoints, CDNs and buckets outside the registry's name.
    for (const host of [
      'westus2.data.mcr.microsoft.com',
      'eastus.data.mcr.microsoft.com',
      'production.cloudflare.docker.com',
      'docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com',
      'cdn01.quay.io',
      'registry-1.docker.io',
      'auth.docker.io',
    ]) {
      expect(matches(host), host).toBe(true);
    }
    expect(matches('data.mcr.microsoft.com')).toBe(false);
  });

  it('allows a Daytona sandbox with networkAllowList to fetch MCR, Docker Hub and Quay layers through the real verdict', () => {
    const parsed = parseNetworkBody({ networkAllowList: '192.168.1.0/24' });
    if (!parsed.ok) throw new Error(JSON.stringify(parsed.issues));
    const layer = compileLayer(parsed.value, { protectedRanges: compileProtected({}), catalog: new SharedDomains(loaded().domains), dnsServers: [] });
    const chain = { sandbox: 'sb', org: null, layer };
    for (const name of ['westus2.data.mcr.microsoft.com', 'production.cloudflare.docker.com', 'cdn02.quay.io', 'mcr.microsoft.com']) {
      expect(verdict(chain, { name, ip: '20.60.0.1', port: 443 }), name).toMatchObject({ verdict: 'allow', reason: 'allow-rule' });
    }
    expect(verdict(chain, { name: 'mcr.microsoft.com.evil.test', ip: '20.60.0.1', port: 443 }).verdict).toBe('refuse');
  });

  it('joins a published host only to its own category', () => {
    expect(loaded({ categories: ['npm'] }).domains).not.toContain('*.data.mcr.microsoft.com');
    expect(loaded({ categories: ['azure-devops'] }).domains).toContain('*.vsassets.io');
  });

  it('refuses a published entry without a source, or under a category that does not exist', () => {
    const file = catalogFile(
      'unsourced.yaml',
      [
        'categories:',
        '  a: [a.example]',
        'published:',
        '  a:',
        '    - host: b.example',
        '    - host: c.example',
        '      title: Doc',
        '      url: http://insecure.example/doc',
        '    - { host: d.example, title: Doc, url: "https://docs.example/x", note: hi }',
        '  missing:',
        '    - { host: e.example, title: Doc, url: "https://docs.example/x" }',
      ].join('\n'),
    );
    const r = loadCatalog({ file });
    expect(r.ok).toBe(false);
    const reasons = r.ok ? [] : r.issues.map((i) => i.reason);
    expect(reasons).toEqual([
      expect.stringMatching(/published\.a\[0\]: Expected the source document's title, got undefined/),
      expect.stringMatching(/published\.a\[1\]: Expected the source document's https URL, got the string "http:\/\/insecure\.example\/doc"/),
      expect.stringMatching(/published\.a\[2\]: Unknown field "note"/),
      expect.stringMatching(/published\.missing: no category of that name/),
    ]);
  });

  it('lists each domain once even where a category repeats another', () => {
    const { domains } = loaded();
    expect(new Set(domains).size).toBe(domains.length);
  });
});

describe('loadCatalog options', () => {
  it('selects only the categories asked for, in the order asked', () => {
    const r = loaded({ categories: ['bun', 'daytona'] });
    expect(r.categories).toEqual(['bun', 'daytona']);
    expect(r.domains).toEqual(['bun.sh', '*.bun.sh', 'app.daytona.io']);
  });

  it('gives only the extra names when no category is selected', () => {
    expect(loaded({ categories: [], extra: ['internal.example.com'] }).domains).toEqual(['internal.example.com']);
  });

  it('normalizes extra names like the policy names they are matched with', () => {
    expect(loaded({ categories: [], extra: ['Mirror.Example.COM.', '*.Corp.Example.com'] }).domains).toEqual(['mirror.example.com', '*.corp.example.com']);
  });

  it('refuses an unknown category with its index and the known names', () => {
    const r = loadCatalog({ categories: ['npm', 'pip'] });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]!.field).toBe('categories[1]');
    expect(r.issues[0]!.reason).toMatch(/^Unknown category "pip"; known categories are npm, yarn, /);
  });

  it("refuses an extra entry that is not a domain pattern, with the validator's reason", () => {
    const r = loadCatalog({ extra: ['ok.example.com', '*.com', '10.0.0.1'] });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.map((i) => i.field)).toEqual(['extra[1]', 'extra[2]']);
    expect(r.issues[0]!.reason).toContain('public suffix "com"');
    expect(r.issues[1]!.reason).toContain('is an IP address');
  });

  it('refuses "*" as an extra name: it would turn essential services into every name', () => {
    const r = loadCatalog({ extra: ['*'] });
    expect(r).toEqual({ ok: false, issues: [{ field: 'extra[0]', reason: 'Pattern "*" would allow every name; name the services instead' }] });
  });

  it('reads another file of the same shape instead of the built-in one', () => {
    const file = catalogFile('own.yaml', 'categories:\n  mirrors:\n    - Mirror.Example.com\n    - "*.cdn.example.net"\n');
    expect(loadCatalog({ file })).toEqual({ ok: true, domains: ['mirror.example.com', '*.cdn.example.net'], categories: ['mirrors'], published: [] });
  });

  it('reports a file it cannot read against "file", naming the path', () => {
    const r = loadCatalog({ file: join(tmp, 'missing.yaml') });
    expect(r).toEqual({ ok: false, issues: [{ field: 'file', reason: `Cannot read catalog file ${JSON.stringify(join(tmp, 'missing.yaml'))} (ENOENT)` }] });
  });

  it('reports a file that is not YAML', () => {
    const r = loadCatalog({ file: catalogFile('bad.yaml', 'categories: [unclosed\n') });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues[0]!.reason).toMatch(/^Catalog file ".*bad\.yaml" is not valid YAML at line 2, column 1: /);
  });

  it('reads a file named .json as JSON alone: what YAML would take is refused at its line and column', () => {
    const text = '{"categories": {"mirrors": ["mirror.example.com"],\n}}';
    expect(loadCatalog({ file: catalogFile('lenient.yaml', text) }).ok).toBe(true);
    const r = loadCatalog({ file: catalogFile('lenient.json', text) });
    expect(r.ok || r.issues[0]!.reason).toMatch(/^Catalog file ".*lenient\.json" is not valid JSON at line 2, column 1: Not valid JSON: /);
  });

  it('reports a file that is not UTF-8 at its first byte that is not, rather than reading U+FFFD', () => {
    const file = catalogFile('latin1.yaml', Buffer.concat([Buffer.from('categories:\n  mirrors: [b'), Buffer.from([0xfc]), Buffer.from('cher.example]\n')]));
    const r = loadCatalog({ file });
    expect(r.ok || r.issues[0]!.reason).toMatch(/^Catalog file ".*latin1\.yaml" is not UTF-8 at line 2, column 14: byte 0xFC \(offset 25\)/);
  });

  it('reports a category written twice rather than keeping one of its lists', () => {
    const r = loadCatalog({ file: catalogFile('dup.yaml', 'categories:\n  a: [a.example.com]\n  a: [b.example.com]\n') });
    expect(r.ok || r.issues[0]!.reason).toMatch(/is not valid YAML at line 3, column 3: Map keys must be unique$/);
  });

  it('reports a file of the wrong shape', () => {
    const top = loadCatalog({ file: catalogFile('top.yaml', 'categories: {}\nhosts: []\n') });
    expect(top.ok || top.issues[0]!.reason).toMatch(/has unknown field "hosts"; the fields are categories and published$/);
    const list = loadCatalog({ file: catalogFile('list.yaml', 'categories:\n  npm: registry.npmjs.org\n') });
    expect(list.ok || list.issues[0]!.reason).toMatch(/at categories\.npm: expected a list of domain patterns, got the string "registry\.npmjs\.org"$/);
  });

  it('reports each bad entry of a file with its category and index', () => {
    const file = catalogFile('entries.yaml', 'categories:\n  one:\n    - good.example.com\n    - "bad name"\n  Two:\n    - x.example.com\n');
    const r = loadCatalog({ file });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.map((i) => i.field)).toEqual(['file', 'file']);
    expect(r.issues[0]!.reason).toMatch(/at categories\.one\[1\]: Pattern "bad name" contains " "/);
    expect(r.issues[1]!.reason).toMatch(/at categories\.Two: category names are lowercase letters, digits and "-"$/);
  });

  it('refuses a file larger than it reads, without parsing it', () => {
    const file = catalogFile('huge.yaml', `categories:\n  big:\n${'    - a.example.com\n'.repeat(250_000)}`);
    const r = loadCatalog({ file });
    expect(r.ok || r.issues[0]!.reason).toMatch(/bytes; at most 4194304 are read$/);
  });

  it('stops reading a catalog that is not a regular file once it passes the bound (a pipe)', async () => {
    // A pipe (`catalog.file: /dev/stdin`, a process substitution) has no size to refuse it by:
    // read whole, 5 MB here (or /dev/zero, for ever) was read into memory and parsed.
    const fifo = join(tmp, 'catalog.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const writer = spawn(process.execPath, ['-e', 'require("node:fs").writeFileSync(process.argv[1], Buffer.alloc(5e6, 0x61))', fifo], { stdio: 'ignore' });
    const gone = once(writer, 'exit');
    try {
      const r = loadCatalog({ file: fifo });
      expect(r).toEqual({ ok: false, issues: [{ field: 'file', reason: `Catalog file ${JSON.stringify(fifo)} is longer than 4194304 bytes, the most read` }] });
    } finally {
      writer.kill();
      await gone;
    }
  });

  it('stops expanding YAML aliases before they multiply without bound', () => {
    const lines = [
      'a: &a [x.example.com, x.example.com, x.example.com, x.example.com, x.example.com, x.example.com, x.example.com, x.example.com, x.example.com]',
    ];
    for (let i = 1; i < 9; i++)
      lines.push(
        `${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9)
          .fill(`*${String.fromCharCode(96 + i)}`)
          .join(', ')}]`,
      );
    lines.push('categories:\n  boom: *i');
    const r = loadCatalog({ file: catalogFile('laughs.yaml', `${lines.join('\n')}\n`) });
    // Placed at the first alias: expansion fails after parsing, where the yaml package gives no place.
    expect(r.ok || r.issues[0]!.reason).toMatch(/is not valid YAML at line 2, column 8: Aliases expand the document past 400000 values \(an alias bomb\)/);
  });
});
