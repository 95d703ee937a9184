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

typedef enum { SHAPE_NEED_MORE = 0, SHAPE_NOT_HTTP, SHAPE_HTTP, SHAPE_TOO_MANY_EMPTY } shape;

// Where request_shape stopped (ff_progress.phase).
enum { PH_LEAD = 0, PH_METHOD, PH_SP1, PH_TARGET, PH_SP2, PH_NAME };

// http-head.ts requestShape, step for step, resumed where the last call ran out of bytes: its
// answer never changes as bytes arrive, so the bytes already read need no second look.
static shape request_shape(ff_progress *p, const uint8_t *b, size_t len) {
  if (p->shape != SHAPE_NEED_MORE) return (shape)p->shape;
  size_t n = len < MAX_HEAD_BYTES ? len : MAX_HEAD_BYTES;
  size_t i = p->at;
  shape r = SHAPE_NEED_MORE;
  static const char name[] = "HTTP/";
  for (;;) {
    switch (p->phase) {
      case PH_LEAD:
        if (i >= n) goto out;
        if (b[i] == CR) {
          if (i + 1 >= n) goto out;
          if (b[i + 1] != LF) {
            r = SHAPE_NOT_HTTP;
            goto out;
          }
          i += 2;
        } else if (b[i] == LF) {
          i += 1;
        } else {
          p->phase = PH_METHOD;
          p->mark = p->skip = i;
          continue;
        }
        if (++p->empty > MAX_LEADING_EMPTY_LINES) {
          r = SHAPE_TOO_MANY_EMPTY;
          goto out;
        }
        continue;
      case PH_METHOD:
        while (i < n && tchar(b[i])) i++;
        if (i == n) goto out;
        if (i == p->mark || (b[i] != SP && b[i] != HTAB)) {
          r = SHAPE_NOT_HTTP;
          goto out;
        }
        p->phase = PH_SP1;
        continue;
      case PH_SP1:
        while (i < n && (b[i] == SP || b[i] == HTAB)) i++;
        if (i == n) goto out;
        p->phase = PH_TARGET;
        p->mark = i;
        continue;
      case PH_TARGET:
        while (i < n && b[i] != SP && b[i] != HTAB && b[i] != CR && b[i] != LF) i++;
        if (i == n) goto out;
        // No target, or a line that ends after it (HTTP/0.9, an SSH banner).
        if (i == p->mark || b[i] == CR || b[i] == LF) {
          r = SHAPE_NOT_HTTP;
          goto out;
        }
        p->phase = PH_SP2;
        continue;
      case PH_SP2:
        while (i < n && (b[i] == SP || b[i] == HTAB)) i++;
        if (i == n) goto out;
        p->phase = PH_NAME;
        p->name_k = 0;
        continue;
      default: // PH_NAME
        for (; p->name_k < 5; p->name_k++, i++) {
          if (i >= n) goto out;
          uint8_t k = p->name_k;
          if ((b[i] & ~0x20) != (name[k] & ~0x20) || (k == 4 && b[i] != 0x2f)) {
            r = SHAPE_NOT_HTTP;
            goto out;
          }
        }
        r = SHAPE_HTTP;
        goto out;
    }
  }
out:
  p->examined += i - p->at;
  p->at = i;
  p->shape = (uint8_t)r;
  return r;
}

static ff_sniffed sniff(ff_progress *p, const uint8_t *b, size_t n) {
  if (p->sniffed != FF_NEED_MORE) return (ff_sniffed)p->sniffed;
  if (n == 0) return FF_NEED_MORE;
  ff_sniffed r;
  uint8_t b0 = b[0];
  // RFC 8446 §5.1 / RFC 5246 Appendix E.1: a handshake record, version {03,XX}.
  if (b0 == 0x16) {
    if (n < 2) return FF_NEED_MORE;
    r = b[1] == 3 ? FF_TLS : FF_UNKNOWN;
  } else if (b0 & 0x80) {
    // RFC 5246 Appendix E.2: an SSLv2-format ClientHello.
    if (n < 3) return FF_NEED_MORE;
    if (b[2] != 1) {
      r = FF_UNKNOWN;
    } else {
      if (n < 4) return FF_NEED_MORE;
      uint8_t major = b[3];
      if (major != 0 && major != 3) {
        r = FF_UNKNOWN;
      } else {
        if (n < 5) return FF_NEED_MORE;
        uint8_t minor = b[4];
        r = (major == 0 && minor == 2) || (major == 3 && minor <= 3) ? FF_TLS : FF_UNKNOWN;
      }
    }
  } else {
    shape s = request_shape(p, b, n);
    if (s == SHAPE_NEED_MORE) return FF_NEED_MORE;
    r = s == SHAPE_NOT_HTTP ? FF_UNKNOWN : FF_HTTP;
  }
  p->sniffed = (uint8_t)r;
  return r;
}

ff_sniffed ff_sniff(const uint8_t *b, size_t n) {
  ff_progress p = {0};
  return sniff(&p, b, n);
}

// tls-client-hello.ts parseRecords' framing: true once the ClientHello's last byte is in, or the
// records say the parser answers now (a record of another type or version, an empty or
// oversized record, a first message that is not a ClientHello, a hello that cannot end within
// `cap`). Whole records are read once: `p` keeps where the next one begins and what the ones
// before it assembled; a record still arriving is read again from its header.
static bool hello_complete(ff_progress *p, const uint8_t *b, size_t n, size_t cap) {
  if (p->rec_pos == 0) p->body = -1;
  for (;;) {
    size_t pos = p->rec_pos;
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
    uint32_t header = p->header;
    int header_bytes = p->header_bytes;
    int64_t body = p->body, assembled = p->assembled;
    p->examined += 5;
    if (body < 0) {
      while (header_bytes < 4 && at < arrived) {
        header = header << 8 | b[at++];
        header_bytes++;
        p->examined++;
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
    p->rec_pos = end;
    p->header = header;
    p->header_bytes = header_bytes;
    p->body = body;
    p->assembled = assembled;
  }
}

// The end of a request head: an empty line, CRLF or a bare LF (the parser judges which). The
// empty lines before the request line (RFC 9112 §2.2, `skip`) end nothing; each byte after them
// is looked at once, with the two before it.
static bool head_complete(ff_progress *p, const uint8_t *b, size_t n) {
  size_t i = p->head_at > p->skip + 1 ? p->head_at : p->skip + 1;
  for (; i < n; i++) {
    p->examined++;
    if (b[i] != LF) continue;
    if (b[i - 1] == LF || (i >= 2 && b[i - 1] == CR && b[i - 2] == LF)) {
      p->head_at = i;
      return true;
    }
  }
  p->head_at = i;
  return false;
}

bool ff_next(ff_progress *p, const uint8_t *b, size_t n, size_t cap) {
  ff_sniffed s = sniff(p, b, n);
  if (n >= cap) return true;
  switch (s) {
    case FF_NEED_MORE: return false;
    case FF_UNKNOWN: return true;
    case FF_TLS: return b[0] == 0x16 ? hello_complete(p, b, n, cap) : true; // SSLv2: the parser's own
    case FF_HTTP: return p->shape == SHAPE_TOO_MANY_EMPTY || head_complete(p, b, n);
  }
  return true;
}

bool ff_complete(const uint8_t *b, size_t n, size_t cap) {
  ff_progress p = {0};
  return ff_next(&p, b, n, cap);
}

bool ff_next_may_stall(const ff_progress *p, const uint8_t *b, size_t n) {
  return n > 0 && b[0] != 0x16 && p->sniffed == FF_NEED_MORE;
}

bool ff_may_stall(const uint8_t *b, size_t n) {
  return n > 0 && b[0] != 0x16 && ff_sniff(b, n) == FF_NEED_MORE;
}
