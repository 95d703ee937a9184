// See first_flight.h.

#include "first_flight.h"

// src/peek/http-head.ts
#define MAX_LEADING_EMPTY_LINES 8
#define MAX_HEAD_BYTES 16384
#define CR 0x0d
#define LF 0x0a
#define SP 0x20
#define HTAB 0x09

// RFC 9110 §5.6.2: tchar.
static bool tchar(uint8_t c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~': return true;
    default: return false;
  }
}

typedef enum { SHAPE_NEED_MORE, SHAPE_NOT_HTTP, SHAPE_HTTP, SHAPE_TOO_MANY_EMPTY } shape;

// http-head.ts requestShape, step for step.
static shape request_shape(const uint8_t *b, size_t len) {
  size_t n = len < MAX_HEAD_BYTES ? len : MAX_HEAD_BYTES;
  size_t i = 0;
  int empty = 0;
  while (i < n && (b[i] == CR || b[i] == LF)) {
    if (b[i] == CR) {
      if (i + 1 >= n) return SHAPE_NEED_MORE;
      if (b[i + 1] != LF) return SHAPE_NOT_HTTP;
      i += 2;
    } else {
      i += 1;
    }
    if (++empty > MAX_LEADING_EMPTY_LINES) return SHAPE_TOO_MANY_EMPTY;
  }
  size_t method = i;
  while (i < n && tchar(b[i])) i++;
  if (i == n) return SHAPE_NEED_MORE;
  if (i == method || (b[i] != SP && b[i] != HTAB)) return SHAPE_NOT_HTTP;
  while (i < n && (b[i] == SP || b[i] == HTAB)) i++;
  size_t target = i;
  while (i < n && b[i] != SP && b[i] != HTAB && b[i] != CR && b[i] != LF) i++;
  if (i == n) return SHAPE_NEED_MORE;
  if (i == target || b[i] == CR || b[i] == LF) return SHAPE_NOT_HTTP;
  while (i < n && (b[i] == SP || b[i] == HTAB)) i++;
  static const char name[] = "HTTP/";
  for (size_t k = 0; k < 5; k++) {
    if (i + k >= n) return SHAPE_NEED_MORE;
    if ((b[i + k] & ~0x20) != (name[k] & ~0x20) || (k == 4 && b[i + k] != 0x2f)) return SHAPE_NOT_HTTP;
  }
  return SHAPE_HTTP;
}

ff_sniffed ff_sniff(const uint8_t *b, size_t n) {
  if (n == 0) return FF_NEED_MORE;
  uint8_t b0 = b[0];
  // RFC 8446 §5.1 / RFC 5246 Appendix E.1: a handshake record, version {03,XX}.
  if (b0 == 0x16) {
    if (n < 2) return FF_NEED_MORE;
    return b[1] == 3 ? FF_TLS : FF_UNKNOWN;
  }
  // RFC 5246 Appendix E.2: an SSLv2-format ClientHello.
  if (b0 & 0x80) {
    if (n < 3) return FF_NEED_MORE;
    if (b[2] != 1) return FF_UNKNOWN;
    if (n < 4) return FF_NEED_MORE;
    uint8_t major = b[3];
    if (major != 0 && major != 3) return FF_UNKNOWN;
    if (n < 5) return FF_NEED_MORE;
    uint8_t minor = b[4];
    return (major == 0 && minor == 2) || (major == 3 && minor <= 3) ? FF_TLS : FF_UNKNOWN;
  }
  shape s = request_shape(b, n);
  return s == SHAPE_NEED_MORE ? FF_NEED_MORE : s == SHAPE_NOT_HTTP ? FF_UNKNOWN : FF_HTTP;
}

// tls-client-hello.ts parseRecords' framing: true once the ClientHello's last byte is in, or the
// records say the parser answers now (a record of another type or version, an empty or
// oversized record, a first message that is not a ClientHello, a hello that cannot end within
// `cap`).
static bool hello_complete(const uint8_t *b, size_t n, size_t cap) {
  size_t pos = 0;
  uint32_t header = 0;
  int header_bytes = 0;
  int64_t body = -1, assembled = 0;
  for (;;) {
    if (pos >= n) return false;
    if (b[pos] != 0x16) return true;
    if (pos + 1 >= n) return false;
    if (b[pos + 1] != 3) return true;
    if (pos + 5 > n) return false;
    size_t length = (size_t)b[pos + 3] << 8 | b[pos + 4];
    if (length == 0 || length > 16384) return true;
    size_t end = pos + 5 + length;
    size_t arrived = end < n ? end : n;
    size_t at = pos + 5;
    if (body < 0) {
      while (header_bytes < 4 && at < arrived) {
        header = header << 8 | b[at++];
        header_bytes++;
      }
      if (header_bytes == 4) {
        if (header >> 24 != 1) return true;
        body = header & 0xffffff;
      }
    }
    if (body >= 0) {
      int64_t need = body - assembled;
      int64_t in_record = (int64_t)(end - at);
      int64_t earliest_end = need <= in_record ? (int64_t)at + need : (int64_t)end + 5 + (need - in_record);
      if (earliest_end > (int64_t)cap) return true;
      int64_t avail = (int64_t)(arrived - at);
      assembled += need < avail ? need : avail;
      if (assembled == body) return true;
    }
    if (arrived < end) return false;
    pos = end;
  }
}

// The end of a request head: an empty line, CRLF or a bare LF (the parser judges which).
static bool head_complete(const uint8_t *b, size_t n) {
  size_t skip = 0; // the empty lines before the request line (RFC 9112 §2.2) end nothing
  while (skip < n && (b[skip] == CR || b[skip] == LF)) skip++;
  for (size_t i = skip + 1; i < n; i++) {
    if (b[i] != LF) continue;
    if (b[i - 1] == LF || (i >= 2 && b[i - 1] == CR && b[i - 2] == LF)) return true;
  }
  return false;
}

bool ff_complete(const uint8_t *b, size_t n, size_t cap) {
  if (n >= cap) return true;
  switch (ff_sniff(b, n)) {
    case FF_NEED_MORE: return false;
    case FF_UNKNOWN: return true;
    case FF_TLS: return b[0] == 0x16 ? hello_complete(b, n, cap) : true; // SSLv2: the parser's own
    case FF_HTTP: return request_shape(b, n) == SHAPE_TOO_MANY_EMPTY || head_complete(b, n);
  }
  return true;
}

bool ff_may_stall(const uint8_t *b, size_t n) {
  return n > 0 && b[0] != 0x16 && ff_sniff(b, n) == FF_NEED_MORE;
}
