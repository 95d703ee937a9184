// When a client's first flight is whole enough to judge (issue 12: one report per connection).
// Pure functions over the bytes read so far, no I/O. They frame, they never judge: the parsers
// in src/peek/ read the name and decide; these only say when asking them is worth a report, and
// they mirror src/peek/sniff.ts and the framing of src/peek/tls-client-hello.ts exactly where
// they must agree (what may still stall, where a ClientHello ends).

#ifndef EGRESSD_FIRST_FLIGHT_H
#define EGRESSD_FIRST_FLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { FF_NEED_MORE = 0, FF_TLS = 1, FF_HTTP = 2, FF_UNKNOWN = 3 } ff_sniffed;

/** src/peek/sniff.ts: which protocol the bytes open, or need-more. */
ff_sniffed ff_sniff(const uint8_t *b, size_t n);

/**
 * Whether the first flight is complete enough to report: a whole ClientHello (reassembled from as
 * many records as it spans, RFC 8446 §5.1), the end of an HTTP/1.x request head (a blank line,
 * RFC 9112 §2.1), or bytes the parsers answer at once (not TLS, not HTTP, a framing error, a
 * hello declared longer than `cap`). False while they could still be a flight in progress.
 */
bool ff_complete(const uint8_t *b, size_t n, size_t cap);

/**
 * src/peek/peek-steps.ts mayStall: bytes that could still open an HTTP request line and are not
 * a TLS handshake record (0x16 keeps the whole peek deadline).
 */
bool ff_may_stall(const uint8_t *b, size_t n);

#endif
