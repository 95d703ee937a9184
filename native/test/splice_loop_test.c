// The splice loop on its own, over real loopback TCP sockets: the test holds the client's and
// the upstream's ends, the loop holds the two sockets egressd would (accepted and dialed). Built
// and run by test/integration/native/splice-loop.test.ts (so by `npm test` and CI); exits 0
// when every check passed, prints each failure otherwise.

#include "../splice_loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      failures++;                                                          \
      fprintf(stderr, "FAIL %s:%d: %s: ", __func__, __LINE__, #cond);       \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

// ---- outcomes --------------------------------------------------------------------------------

#define MAX_OUTCOMES 1024
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static sl_outcome outcomes[MAX_OUTCOMES];
static int n_outcomes;

static void report(void *ctx, const sl_outcome *o) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  if (n_outcomes < MAX_OUTCOMES) outcomes[n_outcomes++] = *o;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

static int count_of(uint64_t id) {
  int n = 0;
  for (int i = 0; i < n_outcomes; i++) n += outcomes[i].id == id;
  return n;
}

/** Waits up to ms for the outcome of `id`; false on timeout. */
static bool wait_outcome(uint64_t id, int ms, sl_outcome *out) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += ms / 1000;
  deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&lock);
  for (;;) {
    for (int i = 0; i < n_outcomes; i++) {
      if (outcomes[i].id == id) {
        *out = outcomes[i];
        pthread_mutex_unlock(&lock);
        return true;
      }
    }
    if (pthread_cond_timedwait(&cond, &lock, &deadline) == ETIMEDOUT) {
      pthread_mutex_unlock(&lock);
      return false;
    }
  }
}

// ---- sockets ---------------------------------------------------------------------------------

static int listener;
static struct sockaddr_in listen_addr;

static void listen_once(void) {
  listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  listen_addr.sin_family = AF_INET;
  listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  listen_addr.sin_port = 0;
  socklen_t len = sizeof listen_addr;
  if (bind(listener, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0 || listen(listener, 1024) != 0 ||
      getsockname(listener, (struct sockaddr *)&listen_addr, &len) != 0) {
    perror("listen");
    exit(2);
  }
}

/** A connected pair: *mine stays blocking (the test's end), *theirs is non-blocking (the loop's). */
static void pair(int *mine, int *theirs) {
  *mine = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(*mine, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) {
    perror("connect");
    exit(2);
  }
  *theirs = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (*theirs < 0) {
    perror("accept");
    exit(2);
  }
}

typedef struct {
  int client, upstream; // the test's ends
} conn_ends;

static conn_ends hand_over(sl_loop *l, uint64_t id, const char *up, const char *down, uint32_t idle_ms) {
  conn_ends e;
  int lc, lu;
  pair(&e.client, &lc);
  pair(&e.upstream, &lu);
  int r = sl_loop_add(l, id, lc, lu, up, up ? strlen(up) : 0, down, down ? strlen(down) : 0, idle_ms);
  CHECK(r == 0, "sl_loop_add: %s", strerror(r));
  return e;
}

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      perror("write");
      return;
    }
    c += w;
    n -= (size_t)w;
  }
}

/** Reads until EOF (or error/timeout); returns the count, stores up to cap bytes, *err the errno. */
static size_t read_all(int fd, char *buf, size_t cap, int *err, int timeout_ms) {
  size_t got = 0;
  *err = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0) {
      *err = ETIMEDOUT;
      return got;
    }
    char tmp[65536];
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n == 0) return got;
    if (n < 0) {
      *err = errno;
      return got;
    }
    if (buf && got < cap) memcpy(buf + got, tmp, (size_t)n < cap - got ? (size_t)n : cap - got);
    got += (size_t)n;
  }
}

static void reset_close(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

// ---- the checks ------------------------------------------------------------------------------

#define BULK (16u << 20)

typedef struct {
  int fd;
  unsigned seed;
} writer_arg;

static void *writer(void *p) {
  writer_arg *a = p;
  char *buf = malloc(65536);
  for (size_t off = 0; off < BULK; off += 65536) {
    for (size_t i = 0; i < 65536; i++) buf[i] = (char)((off + i) * 7 + a->seed);
    write_all(a->fd, buf, 65536);
  }
  shutdown(a->fd, SHUT_WR);
  free(buf);
  return NULL;
}

static bool pattern_ok(const char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (b[i] != (char)(i * 7 + seed)) return false;
  return true;
}

static void test_bulk_both_ways_with_initial_bytes(sl_loop *l) {
  conn_ends e = hand_over(l, 1, "PRE", "BANNER", 10000);
  pthread_t t1, t2;
  writer_arg a1 = {e.client, 3}, a2 = {e.upstream, 5};
  pthread_create(&t1, NULL, writer, &a1);
  pthread_create(&t2, NULL, writer, &a2);
  char *up = malloc(BULK + 3), *down = malloc(BULK + 6);
  int err_up = 0, err_down = 0;
  size_t got_down = 0;
  {
    // Read alternately with poll so neither direction stalls the other.
    size_t got_up = 0;
    bool eof_up = false, eof_down = false;
    char tmp[65536];
    while (!eof_up || !eof_down) {
      struct pollfd p[2] = {{.fd = e.upstream, .events = eof_up ? 0 : POLLIN}, {.fd = e.client, .events = eof_down ? 0 : POLLIN}};
      if (poll(p, 2, 10000) <= 0) {
        CHECK(false, "bulk transfer stalled (up %zu, down %zu)", got_up, got_down);
        break;
      }
      if (p[0].revents) {
        ssize_t n = read(e.upstream, tmp, sizeof tmp);
        if (n <= 0) {
          eof_up = true;
          err_up = n < 0 ? errno : 0;
        } else {
          if (got_up + (size_t)n <= BULK + 3) memcpy(up + got_up, tmp, (size_t)n);
          got_up += (size_t)n;
        }
      }
      if (p[1].revents) {
        ssize_t n = read(e.client, tmp, sizeof tmp);
        if (n <= 0) {
          eof_down = true;
          err_down = n < 0 ? errno : 0;
        } else {
          if (got_down + (size_t)n <= BULK + 6) memcpy(down + got_down, tmp, (size_t)n);
          got_down += (size_t)n;
        }
      }
    }
    CHECK(got_up == BULK + 3 && err_up == 0, "upstream got %zu bytes (err %d), expected %u", got_up, err_up, BULK + 3);
    CHECK(got_down == BULK + 6 && err_down == 0, "client got %zu bytes (err %d), expected %u", got_down, err_down, BULK + 6);
    CHECK(memcmp(up, "PRE", 3) == 0 && pattern_ok(up + 3, BULK, 3), "the upstream's bytes differ from the client's");
    CHECK(memcmp(down, "BANNER", 6) == 0 && pattern_ok(down + 6, BULK, 5), "the client's bytes differ from the upstream's");
  }
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  sl_outcome o;
  CHECK(wait_outcome(1, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_CLOSED, "end %d", o.end);
  CHECK(o.bytes_up == BULK + 3 && o.bytes_down == BULK + 6, "counted %llu up, %llu down", (unsigned long long)o.bytes_up,
        (unsigned long long)o.bytes_down);
  free(up);
  free(down);
  close(e.client);
  close(e.upstream);
}

static void test_half_close_each_way(sl_loop *l) {
  conn_ends e = hand_over(l, 2, NULL, NULL, 10000);
  char buf[64];
  int err;
  write_all(e.client, "request", 7);
  shutdown(e.client, SHUT_WR);
  size_t n = read_all(e.upstream, buf, sizeof buf, &err, 5000);
  CHECK(n == 7 && err == 0 && memcmp(buf, "request", 7) == 0, "upstream got %zu bytes then the FIN (err %d)", n, err);
  // The client's FIN did not end the other direction.
  write_all(e.upstream, "reply", 5);
  shutdown(e.upstream, SHUT_WR);
  n = read_all(e.client, buf, sizeof buf, &err, 5000);
  CHECK(n == 5 && err == 0 && memcmp(buf, "reply", 5) == 0, "client got %zu bytes then the FIN (err %d)", n, err);
  sl_outcome o;
  CHECK(wait_outcome(2, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_CLOSED && o.bytes_up == 7 && o.bytes_down == 5, "end %d, %llu up, %llu down", o.end,
        (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
  close(e.client);
  close(e.upstream);
}

static void test_reset_is_passed_on(sl_loop *l, uint64_t id, bool client_resets) {
  conn_ends e = hand_over(l, id, NULL, NULL, 10000);
  int resetter = client_resets ? e.client : e.upstream, other = client_resets ? e.upstream : e.client;
  write_all(resetter, "abc", 3);
  char buf[8];
  size_t got = 0;
  while (got < 3) {
    ssize_t n = read(other, buf + got, sizeof buf - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  CHECK(got == 3, "the other side got %zu of 3 bytes", got);
  reset_close(resetter);
  int err;
  read_all(other, NULL, 0, &err, 5000);
  CHECK(err == ECONNRESET, "the other side saw errno %d (%s), not a reset", err, strerror(err));
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  sl_end want = client_resets ? SL_END_CLIENT_RESET : SL_END_UPSTREAM_RESET;
  CHECK(o.end == want, "end %d, expected %d", o.end, want);
  CHECK((client_resets ? o.bytes_up : o.bytes_down) == 3, "counted %llu/%llu", (unsigned long long)o.bytes_up,
        (unsigned long long)o.bytes_down);
  close(other);
}

static void test_idle_timeout_closes_both(sl_loop *l) {
  conn_ends e = hand_over(l, 5, NULL, NULL, 150);
  // Activity within the period keeps it open past the timeout.
  for (int i = 0; i < 4; i++) {
    usleep(60 * 1000);
    write_all(e.client, "x", 1);
    char c;
    CHECK(read(e.upstream, &c, 1) == 1, "byte %d did not arrive", i);
  }
  sl_outcome o;
  CHECK(count_of(5) == 0, "closed while bytes moved");
  CHECK(wait_outcome(5, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_IDLE_TIMEOUT && o.bytes_up == 4, "end %d, %llu up", o.end, (unsigned long long)o.bytes_up);
  int err;
  read_all(e.client, NULL, 0, &err, 2000);
  CHECK(err == 0, "the client saw errno %d, not a FIN", err);
  read_all(e.upstream, NULL, 0, &err, 2000);
  CHECK(err == 0, "the upstream saw errno %d, not a FIN", err);
  close(e.client);
  close(e.upstream);
}

static void test_abort_closes_both(sl_loop *l) {
  conn_ends e = hand_over(l, 6, "hello", NULL, 10000);
  char buf[8];
  int got = 0;
  while (got < 5) {
    ssize_t n = read(e.upstream, buf + got, sizeof buf - (size_t)got);
    if (n <= 0) break;
    got += (int)n;
  }
  CHECK(got == 5, "the initial bytes did not arrive (%d)", got);
  CHECK(sl_loop_abort(l, 6) == 0, "abort failed");
  CHECK(sl_loop_abort(l, 999) == 0, "aborting an unknown id failed");
  sl_outcome o;
  CHECK(wait_outcome(6, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_ABORTED && o.bytes_up == 5, "end %d, %llu up", o.end, (unsigned long long)o.bytes_up);
  int err;
  read_all(e.client, NULL, 0, &err, 2000);
  CHECK(err == 0, "the client saw errno %d", err);
  close(e.client);
  close(e.upstream);
}

// Many short connections one after another: pooled pipes must never carry one connection's
// bytes into another.
static void test_many_connections_reuse_pipes(sl_loop *l) {
  for (uint64_t id = 100; id < 400; id++) {
    conn_ends e = hand_over(l, id, NULL, NULL, 10000);
    char msg[32], buf[64];
    int len = snprintf(msg, sizeof msg, "connection %llu", (unsigned long long)id);
    write_all(e.upstream, msg, (size_t)len);
    shutdown(e.upstream, SHUT_WR);
    shutdown(e.client, SHUT_WR);
    int err;
    size_t n = read_all(e.client, buf, sizeof buf, &err, 5000);
    CHECK(n == (size_t)len && memcmp(buf, msg, (size_t)len) == 0, "connection %llu got %zu bytes", (unsigned long long)id, n);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_down == (uint64_t)len, "connection %llu", (unsigned long long)id);
    close(e.client);
    close(e.upstream);
  }
  CHECK(sl_loop_size(l) == 0, "%u connections left", sl_loop_size(l));
}

static void test_stop_reports_every_connection(void) {
  int err = 0;
  sl_loop *l = sl_loop_start(report, NULL, &err);
  CHECK(l != NULL, "start: %s", strerror(err));
  conn_ends a = hand_over(l, 500, NULL, NULL, 10000), b = hand_over(l, 501, NULL, NULL, 10000);
  sl_loop_stop(l);
  pthread_mutex_lock(&lock);
  CHECK(count_of(500) == 1 && count_of(501) == 1, "outcomes: %d and %d", count_of(500), count_of(501));
  pthread_mutex_unlock(&lock);
  close(a.client);
  close(a.upstream);
  close(b.client);
  close(b.upstream);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); // as Node does
  listen_once();
  int err = 0;
  sl_loop *l = sl_loop_start(report, NULL, &err);
  if (!l) {
    fprintf(stderr, "sl_loop_start: %s\n", strerror(err));
    return 2;
  }
  test_bulk_both_ways_with_initial_bytes(l);
  test_half_close_each_way(l);
  test_reset_is_passed_on(l, 3, true);
  test_reset_is_passed_on(l, 4, false);
  test_idle_timeout_closes_both(l);
  test_abort_closes_both(l);
  test_many_connections_reuse_pipes(l);
  sl_loop_stop(l);
  test_stop_reports_every_connection();
  pthread_mutex_lock(&lock);
  for (uint64_t id = 1; id < 7; id++) CHECK(count_of(id) == 1, "connection %llu reported %d times", (unsigned long long)id, count_of(id));
  pthread_mutex_unlock(&lock);
  if (failures) {
    fprintf(stderr, "splice_loop_test: %d failure(s)\n", failures);
    return 1;
  }
  printf("splice_loop_test: all checks passed\n");
  return 0;
}
