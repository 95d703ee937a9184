// A fuzzer for first_flight.c, the code that reads the bytes a hostile sandbox sends first. Built
// with -fsanitize=address,undefined and run by test/integration/native/first-flight-fuzz.test.ts
// (seeded, a few seconds); run by hand for longer:
//
//   cc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -std=c11 -D_GNU_SOURCE
//     -Inative native/test/first_flight_fuzz.c native/first_flight.c -o /tmp/fff
//   /tmp/fff SEED ITERATIONS SECONDS [CORPUS_FILE...]
//
// Inputs: TLS records framing a handshake message whose declared lengths lie near every edge
// (0, 2^24 - 1, the cap, one past it), HTTP heads built from the tokens that decide their shape,
// random bytes, and mutations of those and of the corpus files (real ClientHellos, the builder's).
// Every input is handed over at every prefix and in random splits, each time in a heap block of
// exactly its length, so a read one byte past what arrived is AddressSanitizer's to report.
// Checks (Envoy tls_inspector's fuzz properties): an answer never changes back as bytes arrive;
// ff_next split any way answers as ff_complete and ff_may_stall does; each byte is looked at a
// bounded number of times. Exits 0 and prints "fuzz: N inputs" when every check held.
//
// `--first-complete` reads inputs from stdin instead ([u32 little-endian length][bytes] ...) and
// prints, for each, the smallest prefix ff_complete (cap 16384) calls whole, or -1: the
// differential test compares it with the TypeScript parsers.

#include "../first_flight.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CAP 16384
#define MAX_INPUT (CAP + 1024)

static unsigned long failures;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      if (++failures <= 20) {                               \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                       \
        fputc('\n', stderr);                                \
      }                                                     \
    }                                                       \
  } while (0)

// xorshift64*: deterministic for a seed, the same on every machine.
static unsigned long long rng_state;
static unsigned long long rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}
static size_t below(size_t n) { return n == 0 ? 0 : (size_t)(rnd() % n); }

// A length near an edge that matters to the framing.
static size_t edge_length(size_t truth) {
  static const size_t edges[] = {0, 1, 2, 3, 4, 5, 255, 256, 16379, 16380, 16383, 16384, 16385, 65535, 0xfffffe, 0xffffff};
  switch (below(4)) {
    case 0: return truth;
    case 1: return truth + below(3) - 1; // one off either way
    case 2: return edges[below(sizeof edges / sizeof edges[0])];
    default: return below(20000);
  }
}

// A handshake message (mostly a ClientHello) cut into records of random sizes, some of them lying.
static size_t gen_tls(uint8_t *out) {
  static uint8_t msg[MAX_INPUT];
  size_t body = below(4) == 0 ? below(17000) : below(2000);
  if (body + 4 > sizeof msg) body = sizeof msg - 4;
  size_t declared = below(3) == 0 ? edge_length(body) & 0xffffff : body;
  msg[0] = below(16) == 0 ? (uint8_t)rnd() : 1;
  msg[1] = (uint8_t)(declared >> 16);
  msg[2] = (uint8_t)(declared >> 8);
  msg[3] = (uint8_t)declared;
  for (size_t i = 0; i < body; i++) msg[4 + i] = (uint8_t)rnd();
  size_t mlen = 4 + body, o = 0, frag_max = below(3) == 0 ? 1 + below(8) : 1 + below(17000);
  for (size_t at = 0; at < mlen && o + 5 < MAX_INPUT;) {
    size_t n = 1 + below(frag_max);
    if (n > mlen - at) n = mlen - at;
    if (o + 5 + n > MAX_INPUT) n = MAX_INPUT - o - 5;
    size_t record_len = below(12) == 0 ? edge_length(n) & 0xffff : n;
    out[o++] = below(40) == 0 ? (uint8_t)rnd() : 0x16;
    out[o++] = below(40) == 0 ? (uint8_t)rnd() : 3;
    out[o++] = (uint8_t)(1 + below(4));
    out[o++] = (uint8_t)(record_len >> 8);
    out[o++] = (uint8_t)record_len;
    memcpy(out + o, msg + at, n);
    o += n;
    at += n;
  }
  return o;
}

static size_t put(uint8_t *out, size_t o, const char *s) {
  size_t n = strlen(s);
  if (o + n > MAX_INPUT) n = MAX_INPUT - o;
  memcpy(out + o, s, n);
  return o + n;
}

// An HTTP head from the tokens that decide its shape and its end.
static size_t gen_http(uint8_t *out) {
  static const char *tokens[] = {"GET", "PRI", "CONNECT", "brew", " ", "\t", "/", "*", "http://a.test/", "HTTP/1.1", "http/1.0",
                                 "HTTP/", "\r\n", "\n", "\r", "Host: a.test", "X: y", ":", "\r\n\r\n", "\n\n", "\n\r\n", "\x16", "\x80"};
  size_t o = 0;
  if (below(3) == 0)
    for (size_t k = below(12); k > 0; k--) o = put(out, o, below(2) ? "\r\n" : "\n");
  if (below(2)) o = put(out, o, "GET / HTTP/1.1\r\n");
  size_t pieces = below(4) == 0 ? below(3000) : below(30);
  for (size_t k = 0; k < pieces && o < MAX_INPUT; k++) {
    if (below(8) == 0) {
      out[o++] = (uint8_t)rnd();
    } else if (below(50) == 0) {
      size_t n = below(4000);
      for (size_t j = 0; j < n && o < MAX_INPUT; j++) out[o++] = 'a';
    } else {
      o = put(out, o, tokens[below(sizeof tokens / sizeof tokens[0])]);
    }
  }
  return o;
}

static size_t gen_random(uint8_t *out) {
  static const uint8_t firsts[] = {0x16, 0x80, 0x81, 0xff, 'G', 'P', '\r', '\n', 0x17, 0x15};
  size_t n = below(4) == 0 ? below(MAX_INPUT) : below(64);
  for (size_t i = 0; i < n; i++) out[i] = (uint8_t)rnd();
  if (n > 0 && below(2)) out[0] = firsts[below(sizeof firsts)];
  if (n > 2 && below(2)) out[1] = 3;
  if (n > 4 && out[0] & 0x80 && below(2)) out[2] = 1, out[3] = 3, out[4] = (uint8_t)below(5);
  return n;
}

// Flips, overwrites with edge values, cuts, duplicates: what a hostile client does to a real hello.
static size_t mutate(uint8_t *b, size_t n) {
  for (size_t k = 1 + below(4); k > 0; k--) {
    size_t at = below(n);
    switch (below(6)) {
      case 0:
        if (n) b[at] ^= (uint8_t)(1u << below(8));
        break;
      case 1:
        if (n) b[at] = (uint8_t[]){0, 1, 0x16, 3, 0x40, 0x7f, 0x80, 0xff, '\r', '\n'}[below(10)];
        break;
      case 2:
        if (n >= 2) b[at - (at > 0)] = 0xff, b[at - (at > 0) + 1] = 0xff;
        break;
      case 3:
        n = below(n + 1);
        break;
      case 4: { // repeat a slice (more records, a longer flight)
        size_t len = below(n - at + 1);
        if (n + len <= MAX_INPUT) memmove(b + at + len, b + at, n - at), n += len;
        break;
      }
      default:
        if (n < MAX_INPUT) memmove(b + at + 1, b + at, n - at), b[at] = (uint8_t)rnd(), n++;
    }
  }
  return n;
}

// `b`'s first `k` bytes in a heap block of exactly k bytes: a read past them is out of bounds.
static uint8_t *exact(const uint8_t *b, size_t k) {
  uint8_t *p = malloc(k ? k : 1);
  if (!p) abort();
  memcpy(p, b, k);
  return p;
}

static void check_input(const uint8_t *b, size_t n, size_t cap) {
  // Every prefix (every one for a short flight; for a long one, the edges and a random sample).
  bool was_complete = false;
  ff_sniffed sniffed = FF_NEED_MORE;
  size_t step = n <= 3000 ? 1 : 1 + below(64);
  for (size_t k = 0; k <= n; k += (k < 32 || n - k < 32 || k + 1 == cap || k == cap) ? 1 : step) {
    uint8_t *p = exact(b, k);
    bool c = ff_complete(p, k, cap);
    ff_sniffed s = ff_sniff(p, k);
    bool stall = ff_may_stall(p, k);
    free(p);
    CHECK(!was_complete || c, "n %zu cap %zu: whole at a shorter prefix, not at %zu", n, cap, k);
    CHECK(sniffed == FF_NEED_MORE || s == sniffed, "n %zu: sniffed %d, then %d at %zu", n, sniffed, s, k);
    CHECK(!stall || s == FF_NEED_MORE, "n %zu: may stall at %zu though sniffed %d", n, k, s);
    if (k >= cap) CHECK(c, "n %zu: %zu bytes, at the cap %zu, not whole", n, k, cap);
    was_complete = c;
    if (s != FF_NEED_MORE) sniffed = s;
  }
  // ff_next fed in random splits (one byte at a time, sometimes), each call in a block of its own.
  ff_progress pr = {0};
  bool one = below(3) == 0;
  for (size_t k = 0; k <= n;) {
    uint8_t *p = exact(b, k);
    bool done = ff_next(&pr, p, k, cap);
    bool stall = done ? false : ff_next_may_stall(&pr, p, k);
    bool want = ff_complete(p, k, cap);
    bool want_stall = want ? false : ff_may_stall(p, k);
    free(p);
    CHECK(done == want, "n %zu cap %zu: ff_next %d, ff_complete %d at %zu", n, cap, done, want, k);
    CHECK(stall == want_stall, "n %zu: ff_next_may_stall %d, ff_may_stall %d at %zu", n, stall, want_stall, k);
    if (done) break;
    if (k == n) break;
    k += one ? 1 : 1 + below(n - k < 700 ? n - k : 700);
    if (k > n) k = n;
  }
  // Each byte once, and per call at most a record's and a handshake header's 9 bytes again.
  CHECK(pr.examined <= 10 * (n + 1), "n %zu: %zu bytes looked at", n, pr.examined);
}

static size_t pick_cap(size_t n) {
  switch (below(8)) {
    case 0: return n > 0 ? n : 1;  // a flight exactly at the cap
    case 1: return n > 1 ? n - 1 : 1; // one byte past it
    case 2: return n + 1;
    case 3: return 1 + below(CAP);
    default: return CAP;
  }
}

static size_t read_file(const char *path, uint8_t *out) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot read %s\n", path);
    exit(2);
  }
  size_t n = fread(out, 1, MAX_INPUT, f);
  fclose(f);
  return n;
}

static int first_complete_mode(void) {
  static uint8_t b[1 << 20];
  unsigned char len[4];
  while (fread(len, 1, 4, stdin) == 4) {
    size_t n = (size_t)len[0] | (size_t)len[1] << 8 | (size_t)len[2] << 16 | (size_t)len[3] << 24;
    if (n > sizeof b || fread(b, 1, n, stdin) != n) return 2;
    long first = -1;
    for (size_t k = 0; k <= n && first < 0; k++) {
      uint8_t *p = exact(b, k);
      if (ff_complete(p, k, CAP)) first = (long)k;
      free(p);
    }
    printf("%ld\n", first);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--first-complete") == 0) return first_complete_mode();
  unsigned long long seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 1;
  unsigned long iterations = argc > 2 ? strtoul(argv[2], NULL, 0) : 20000;
  double seconds = argc > 3 ? strtod(argv[3], NULL) : 5;
  int files = argc > 4 ? argc - 4 : 0;
  rng_state = seed * 0x9e3779b97f4a7c15ULL + 1;

  static uint8_t corpus[64][MAX_INPUT];
  static size_t corpus_len[64];
  if (files > 64) files = 64;
  for (int i = 0; i < files; i++) corpus_len[i] = read_file(argv[4 + i], corpus[i]);
  // The corpus as it is, at every prefix and under every cap edge, before anything random.
  for (int i = 0; i < files; i++) {
    size_t n = corpus_len[i];
    size_t caps[] = {CAP, n, n > 1 ? n - 1 : 1, n + 1};
    for (size_t c = 0; c < 4; c++) check_input(corpus[i], n, caps[c]);
  }

  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  static uint8_t b[MAX_INPUT];
  unsigned long done = 0;
  for (; done < iterations; done++) {
    if ((done & 15) == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > seconds) break;
    }
    size_t n;
    switch (below(files > 0 ? 5 : 4)) {
      case 0: n = gen_tls(b); break;
      case 1: n = gen_http(b); break;
      case 2: n = gen_random(b); break;
      case 3: n = gen_tls(b), n = mutate(b, n); break;
      default: {
        int i = (int)below((size_t)files);
        memcpy(b, corpus[i], corpus_len[i]);
        n = mutate(b, corpus_len[i]);
      }
    }
    check_input(b, n, pick_cap(n));
    if (failures > 20) break;
  }
  printf("fuzz: %lu inputs (seed %llu, %d corpus files)\n", done + (unsigned long)files, seed, files);
  if (failures) {
    fprintf(stderr, "%lu checks failed\n", failures);
    return 1;
  }
  printf("all checks passed\n");
  return 0;
}
