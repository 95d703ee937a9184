// A verdict's rule text goes into every connection's log line, and V8's fast JSON.stringify takes
// no rope (a ConsString, what a template literal makes): one sends the whole line through the slow
// serializer, about three times the instructions (issue 12, util/flat-text.ts). Checked with V8's
// own %StringIsFlat, in a child process that allows it.

import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const helper = new URL('../../helpers/network-body.ts', import.meta.url).href;
const decide = new URL('../../../src/policy/decide.ts', import.meta.url).href;
const compile = new URL('../../../src/policy/compile.ts', import.meta.url).href;
const protectedRanges = new URL('../../../src/match/protected.ts', import.meta.url).href;

describe('rule texts', () => {
  it('are flat strings: an allow rule composed of a host rule and a port rule', () => {
    const script = `
      const { parsed } = await import(${JSON.stringify(helper)});
      const { decide } = await import(${JSON.stringify(decide)});
      const { compilePolicy } = await import(${JSON.stringify(compile)});
      const { compileProtected } = await import(${JSON.stringify(protectedRanges)});
      const flat = new Function('s', 'return %StringIsFlat(s)');
      const r = parsed({ mode: 'block-all', egress: { allowed_domains: ['api.example.test'], allowed_ports: [8443] } });
      const p = compilePolicy(r.policy, compileProtected({ except: ['198.18.0.0/15'] }), null);
      const out = {};
      const d = decide(p, { name: 'api.example.test', ip: '198.18.1.2', port: 8443 });
      out.both = d.rule;
      out.bothFlat = flat(d.rule);
      console.log(JSON.stringify(out));
    `;
    const out = JSON.parse(
      execFileSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 }),
    ) as Record<string, unknown>;
    expect(out['both']).toBe('allowed_domains "api.example.test" + allowed_ports "8443"');
    expect(out['bothFlat']).toBe(true);
  });
});
