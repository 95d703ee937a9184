// The schemas the daemon checks against, as one plain JSON document (src/schema/generated/
// schemas.json, read by src/schema/schemas.ts): generated from the definitions beside this file.

import { CheckRequest, LimitsBody, OrgBody, OrgId, SandboxBody, SandboxId } from './bodies.ts';
import { ConfigFile } from './config-file.ts';

export function runtimeSchemas(): Record<string, unknown> {
  return JSON.parse(JSON.stringify({ SandboxId, OrgId, LimitsBody, SandboxBody, OrgBody, CheckRequest, ConfigFile })) as Record<string, unknown>;
}
