// Ajv for egressd's schemas: JSON Schema draft 2020-12, strict, with the keywords our schemas
// carry for editors (VS Code's errorMessage and patternErrorMessage) and for src/schema/check.ts
// (x-checked-by) declared as annotations, so a misspelt keyword still fails.

import { Ajv2020 } from 'ajv/dist/2020.js';

export function ajv(): Ajv2020 {
  const a = new Ajv2020({ allErrors: true, strict: true });
  a.addVocabulary(['errorMessage', 'patternErrorMessage', 'x-checked-by']);
  return a;
}
