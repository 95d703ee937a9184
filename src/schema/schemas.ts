// The schemas the daemon checks bodies and config files against, as generated from their TypeBox
// definitions (src/schema/define/) by `node scripts/gen-schema.ts` into generated/schemas.json.
// The daemon reads this plain JSON Schema and never loads TypeBox itself: TypeBox is 709 modules,
// and loading them cost an idle daemon about 7 MB of RSS (measured), which issue 12's budget has
// no room for. test/unit/schema/generated.test.ts fails while the JSON differs from the definitions.

import generated from './generated/schemas.json' with { type: 'json' };
import type { SchemaNode } from './check.ts';

type Name = 'SandboxId' | 'OrgId' | 'LimitsBody' | 'SandboxBody' | 'OrgBody' | 'CheckRequest' | 'ConfigFile';
const schemas = generated as unknown as Readonly<Record<Name, SchemaNode>>;

/** A sandbox id (`ID_PATTERN`). */
export const SandboxId = schemas.SandboxId;
/** An organization id (`ID_PATTERN`). */
export const OrgId = schemas.OrgId;
/** A `limits` object: connections, undecided, perSecond, burst. */
export const LimitsBody = schemas.LimitsBody;
/** `PUT /api/v1/sandboxes/{id}`. */
export const SandboxBody = schemas.SandboxBody;
/** `PUT /api/v1/orgs/{id}`. */
export const OrgBody = schemas.OrgBody;
/** `POST /api/v1/check`. */
export const CheckRequest = schemas.CheckRequest;
/** The config file. */
export const ConfigFile = schemas.ConfigFile;
