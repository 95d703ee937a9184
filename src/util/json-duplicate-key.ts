// RFC 8259 §4: "The names within an object SHOULD be unique", and of an object that breaks it,
// "the behavior of software that receives such an object is unpredictable": JSON.parse keeps the
// last value, other readers the first. A policy body whose reading depends on the reader (a
// control plane that checked `"networkBlockAll": true` then `false` reaching egressd as `false`)
// is refused instead, as the config file's YAML reader refuses a duplicate key.

/**
 * The path of the first key that an object of `text` gives more than once
 * (`network.egress.denied_cidrs`, `a[2].b`), or null when every object's keys are unique.
 * `text` must be valid JSON (JSON.parse accepted it); keys are compared once decoded, so `"mode"`
 * and `"m\u006fde"` are the same key. One pass over the text, no tree built.
 */
export function duplicateKeyPath(text: string): string | null {
  return duplicateKey(text)?.path ?? null;
}

/** As duplicateKeyPath, with the UTF-16 offset of the second occurrence's opening quote. */
export function duplicateKey(text: string): { path: string; offset: number } | null {
  // One frame per open object (its keys so far and the key being read) or array (its index).
  const frames: ({ keys: Set<string>; key: string } | { keys: null; index: number })[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      frames.push({ keys: new Set(), key: '' });
      expectKey = true;
    } else if (c === 0x5b /* [ */) {
      frames.push({ keys: null, index: 0 });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      frames.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      const top = frames[frames.length - 1];
      if (top === undefined) continue;
      if (top.keys === null) top.index++;
      else expectKey = true;
    } else if (c === 0x22 /* " */) {
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      const top = frames[frames.length - 1];
      if (expectKey && top !== undefined && top.keys !== null) {
        const literal = text.slice(i, j + 1);
        const key = literal.includes('\\') ? (JSON.parse(literal) as string) : literal.slice(1, -1);
        top.key = key;
        if (top.keys.has(key)) return { path: pathOf(frames), offset: i };
        top.keys.add(key);
        expectKey = false;
      }
      i = j;
    }
  }
  return null;
}

/** The frames' keys and indexes in the field-path style of the API's errors. */
function pathOf(frames: readonly ({ keys: Set<string>; key: string } | { keys: null; index: number })[]): string {
  let path = '';
  for (const f of frames) path += f.keys === null ? `[${f.index}]` : path === '' ? f.key : `.${f.key}`;
  return path;
}
