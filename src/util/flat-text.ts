// Text that goes into a connection's log line, made flat.
//
// A template literal or `+` whose result has 13 characters or more makes a rope (V8's ConsString),
// and V8's fast JSON.stringify takes no rope: a single one in a connection's line (a verdict's
// rule composed per connection, `allowed_domains "x" + allowed_ports "443"`) sends the whole line
// through the slow serializer, about three times the instructions (issue 12: 26,000 of egressd's
// 177,000 per connection). Array.prototype.join builds its result flat, in one piece.

/** `parts` joined into one flat string (see above): for text a connection's log line carries. */
export function flatText(parts: readonly string[]): string {
  return parts.join('');
}
