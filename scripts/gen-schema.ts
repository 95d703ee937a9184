// Writes the documents generated from the one schema (src/schema/): the config file's JSON
// Schema for editors (docs/schema/config.schema.json) and the admin API's OpenAPI 3.1
// description (docs/openapi.json, which the daemon also serves at GET /api/v1/openapi.json).
// test/unit/schema/generated.test.ts fails while a committed copy differs from what this writes.
//
//   npm run docs:schema   (node scripts/gen-schema.ts on the pinned Node)

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configJsonSchema } from '../src/schema/define/config-file.ts';
import { runtimeSchemas } from '../src/schema/define/runtime.ts';
import { openApiDocument } from '../src/schema/define/openapi.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;

export const GENERATED: readonly { readonly path: string; readonly make: () => unknown }[] = [
  { path: 'src/schema/generated/schemas.json', make: runtimeSchemas },
  { path: 'docs/schema/config.schema.json', make: configJsonSchema },
  { path: 'src/schema/generated/openapi.json', make: () => openApiDocument(version) },
  { path: 'docs/openapi.json', make: () => openApiDocument(version) },
];

/** The file's text: two-space JSON and a final newline, as committed. */
export const render = (doc: unknown): string => `${JSON.stringify(doc, null, 2)}\n`;

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const g of GENERATED) {
    writeFileSync(join(root, g.path), render(g.make()));
    process.stdout.write(`gen-schema: wrote ${g.path}\n`);
  }
}
