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

/**
 * How far ff_next has read one connection's first flight; all zero before the first byte. The
 * loop asks after every read, so asking must cost the new bytes, not the whole flight again: a
 * client dripping a 16 KiB flight one byte per segment made the stateless ff_complete walk it
 * 16,384 times (about 100 ms of the loop thread, which every tenant's connections share, per
 * connection). Opaque to callers but for `examined`.
 */
typedef struct {
  size_t examined;        // bytes looked at so far, all calls together (tests bound it)
  uint8_t sniffed;        // ff_sniffed once decided, FF_NEED_MORE before
  uint8_t shape;          // request_shape's answer once decided
  uint8_t phase, name_k;  // request_shape: where it stopped
  uint8_t empty;          // request_shape: empty lines so far
  size_t at, mark;        // request_shape: the next byte; where the method or target began
  size_t skip;            // the leading empty lines' length, once the shape is HTTP
  size_t head_at;         // head_complete: the next byte to look at
  size_t rec_pos;         // hello_complete: where the next record begins
  uint32_t header;        // hello_complete: the handshake header so far
  int header_bytes;
  int64_t body, assembled;
} ff_progress;

/**
 * ff_complete for a flight that only grows: `b` holds every byte of the flight so far, the bytes
 * of earlier calls unchanged. Each call looks only at what it has not yet read (a record being
 * reassembled: its header again, at most 9 bytes). `p` starts zeroed.
 */
bool ff_next(ff_progress *p, const uint8_t *b, size_t n, size_t cap);

/** ff_may_stall after ff_next(p, b, n, ...) with the same bytes: no byte is read again. */
bool ff_next_may_stall(const ff_progress *p, const uint8_t *b, size_t n);

#endif
