// The splice loop on its own, over real loopback TCP sockets: the test holds the client's and
// the upstream's ends, the loop holds the two sockets egressd would (accepted and dialed). Built
// and run by test/integration/native/splice-loop.test.ts (so by `npm test` and CI); exits 0
// when every check passed, prints each failure otherwise.

#include "../splice_loop.h"
#include "../first_flight.h"

#include <arpa/inet.h>
#include <dirent.h>
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
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef SL_TEST_HOSTED
// Every loop of the test is hosted (sl_loop_start_hosted) by a thread of the test's own, which
// runs a turn whenever the loop's descriptor is readable or its timer is due, as Node's event
// loop does for data_plane.c. The tests are the same; so is every check.
typedef struct {
  sl_loop *l;
  sl_report_fn report;
  void *ctx;
  int err, stop[2];
  bool started;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t ready;
} sl_host;

#define MAX_HOSTS 8
static sl_host hosts[MAX_HOSTS];

static void *host_main(void *arg) {
  sl_host *h = arg;
  int err = 0;
  sl_loop *l = sl_loop_start_hosted(h->report, h->ctx, &err);
  pthread_mutex_lock(&h->lock);
  h->l = l;
  h->err = err;
  h->started = true;
  pthread_cond_signal(&h->ready);
  pthread_mutex_unlock(&h->lock);
  if (!l) return NULL;
  int timeout = -1;
  for (;;) {
    struct pollfd p[2] = {{.fd = sl_loop_fd(l), .events = POLLIN}, {.fd = h->stop[0], .events = POLLIN}};
    if (poll(p, 2, timeout) < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    timeout = sl_loop_turn(l);
  }
  sl_loop_stop(l);
  return NULL;
}

static sl_loop *hosted_start(sl_report_fn report, void *ctx, int *err) {
  for (int i = 0; i < MAX_HOSTS; i++) {
    sl_host *h = &hosts[i];
    if (h->l || h->started) continue;
    *h = (sl_host){.report = report, .ctx = ctx};
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->ready, NULL);
    if (pipe(h->stop) != 0 || pthread_create(&h->thread, NULL, host_main, h) != 0) {
      *err = errno;
      return NULL;
    }
    pthread_mutex_lock(&h->lock);
    while (!h->started) pthread_cond_wait(&h->ready, &h->lock);
    pthread_mutex_unlock(&h->lock);
    if (!h->l) {
      *err = h->err;
      pthread_join(h->thread, NULL);
      h->started = false;
    }
    return h->l;
  }
  *err = EMFILE;
  return NULL;
}

// The host stops its loop on its own thread (sl_loop_stop must be called there).
static void hosted_stop(sl_loop *l) {
  for (int i = 0; i < MAX_HOSTS; i++) {
    sl_host *h = &hosts[i];
    if (h->l != l) continue;
    ssize_t n = write(h->stop[1], "x", 1);
    (void)n;
    pthread_join(h->thread, NULL);
    close(h->stop[0]);
    close(h->stop[1]);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->ready);
    *h = (sl_host){0};
    return;
  }
  fprintf(stderr, "hosted_stop: not a hosted loop\n");
  abort();
}

#define sl_loop_start(report, ctx, err) hosted_start(report, ctx, err)
#define sl_loop_stop(l) hosted_stop(l)
#endif

// A failure says which check and its values on stderr (unbuffered) at once, and is counted by
// place for the last line of the run, so that a log cut short (a CI's, vitest's diff) still names
// every check that failed. Each test's name goes to stdout (line-buffered) as it starts, and a
// SIGTERM (a timeout) says which one was running.
static int failures;
#define MAX_FAILED_PLACES 64
typedef struct {
  const char *func;
  int line, count;
} failed_place;
static failed_place failed_at[MAX_FAILED_PLACES];
static int n_failed_at;
static volatile sig_atomic_t running_len;
static char running[160];

static void failed(const char *func, int line) {
  failures++;
  for (int i = 0; i < n_failed_at; i++)
    if (failed_at[i].line == line) {
      failed_at[i].count++;
      return;
    }
  if (n_failed_at < MAX_FAILED_PLACES) failed_at[n_failed_at++] = (failed_place){func, line, 1};
}

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      failed(__func__, __LINE__);                                          \
      fprintf(stderr, "FAIL %s:%d: %s: ", __func__, __LINE__, #cond);       \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

/** Names the test about to run (stdout), for a run killed in it. */
static void starting(const char *call) {
  running_len = 0;
  int n = snprintf(running, sizeof running, "%s", call);
  running_len = n < 0 ? 0 : n >= (int)sizeof running ? (int)sizeof running - 1 : n;
  printf("splice_loop_test: %s\n", call);
}

#define RUN(call) (starting(#call), call)

// A check that needs this thread to act within a time (a flight's pieces within the grace, a
// reset before an idle timeout), measured by the test's own clock: an attempt where it did not
// (held off a core on a loaded machine) proves nothing and is made again, LATE_ATTEMPTS times at
// most. When every attempt was late the check is not made, and the run says so on stdout: the
// load of the machine is no failure of the loop (5 late attempts of a flight in pieces failed 2
// runs of 9 at load 10).
#define LATE_ATTEMPTS 10

static void not_checked(const char *what, int attempts) {
  printf("splice_loop_test: not checked, this thread late in %d attempts: %s\n", attempts, what);
}

static void on_sigterm(int sig) {
  // write(2) alone: async-signal-safe.
  static const char head[] = "splice_loop_test: killed (SIGTERM) while running ";
  ssize_t w = write(2, head, sizeof head - 1);
  w = write(2, running, (size_t)running_len);
  w = write(2, "\n", 1);
  (void)w;
  signal(sig, SIG_DFL);
  raise(sig);
}

/** The last line of a failed run: every place that failed, with its count. */
static void print_failed_places(void) {
  fprintf(stderr, "splice_loop_test: %d failure(s) at", failures);
  for (int i = 0; i < n_failed_at; i++) {
    fprintf(stderr, " %s:%d", failed_at[i].func, failed_at[i].line);
    if (failed_at[i].count > 1) fprintf(stderr, " (x%d)", failed_at[i].count);
  }
  fprintf(stderr, "%s\n", n_failed_at == MAX_FAILED_PLACES ? " and more" : "");
}

// ---- outcomes --------------------------------------------------------------------------------

#define MAX_OUTCOMES 8192
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static sl_outcome outcomes[MAX_OUTCOMES];
static uint64_t outcome_us[MAX_OUTCOMES]; // when each was reported (sl_monotonic_us)
static int n_outcomes;

// The report of `gate_id` holds its loop's thread until `gate_open` (a loop stuck mid-turn).
static uint64_t gate_id;
static bool gate_open = true;

// sl_loop_on_turn: every report is followed by the end of its turn, on the loop's thread.
static int turns, reported_since_turn;
static pthread_t loop_thread_seen;

static void on_turn(void *ctx) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  turns++;
  reported_since_turn = 0;
  loop_thread_seen = pthread_self();
  pthread_mutex_unlock(&lock);
}

static void report(void *ctx, const sl_outcome *o) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  reported_since_turn++;
  if (n_outcomes < MAX_OUTCOMES) {
    outcome_us[n_outcomes] = sl_monotonic_us();
    outcomes[n_outcomes++] = *o;
  }
  pthread_cond_broadcast(&cond);
  while (o->id == gate_id && !gate_open) pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
}

static int count_of(uint64_t id) {
  int n = 0;
  for (int i = 0; i < n_outcomes; i++) n += outcomes[i].id == id;
  return n;
}

/** When the outcome of `id` was reported (sl_monotonic_us); 0 when it was not. */
static uint64_t outcome_time(uint64_t id) {
  pthread_mutex_lock(&lock);
  uint64_t at = 0;
  for (int i = 0; i < n_outcomes && at == 0; i++)
    if (outcomes[i].id == id) at = outcome_us[i];
  pthread_mutex_unlock(&lock);
  return at;
}

/** CLOCK_REALTIME `ms` from now: the absolute deadline pthread_cond_timedwait takes. */
static struct timespec deadline_after(int ms) {
  struct timespec d;
  clock_gettime(CLOCK_REALTIME, &d);
  d.tv_sec += ms / 1000;
  d.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (d.tv_nsec >= 1000000000L) {
    d.tv_sec++;
    d.tv_nsec -= 1000000000L;
  }
  return d;
}

/** Waits up to ms for the outcome of `id`; false on timeout. */
static bool wait_outcome(uint64_t id, int ms, sl_outcome *out) {
  struct timespec deadline = deadline_after(ms);
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

static void narrow_pair(int *mine, int *theirs, int rcvbuf, int sndbuf);

/** A connected pair: *mine stays blocking (the test's end), *theirs is non-blocking (the loop's). */
static void pair(int *mine, int *theirs) {
  narrow_pair(mine, theirs, 0, 0);
}

typedef struct {
  int client, upstream; // the test's ends
  int loop_upstream;    // the loop's end of the upstream pair (its queue is read with SIOCINQ while the connection lives)
  int loop_client;      // the loop's end of the client pair, likewise
} conn_ends;

static conn_ends hand_over(sl_loop *l, uint64_t id, const char *up, const char *down, uint32_t idle_ms) {
  conn_ends e;
  int lc, lu;
  pair(&e.client, &lc);
  pair(&e.upstream, &lu);
  e.loop_upstream = lu;
  e.loop_client = lc;
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
/** Reads from `fd` until `want` bytes are in (at most `cap`), the peer ends or errs, or no byte
 * comes for `timeout_ms`; the count read. */
static size_t read_n(int fd, char *buf, size_t cap, size_t want, int timeout_ms) {
  size_t got = 0;
  while (got < want) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0) break;
    ssize_t n = read(fd, buf + got, cap - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

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
  CHECK(o.first_fin == 0, "first FIN from side %d, not the client's", o.first_fin);
  close(e.client);
  close(e.upstream);
}

static void test_reset_is_passed_on(sl_loop *l, uint64_t id, bool client_resets) {
  conn_ends e = hand_over(l, id, NULL, NULL, 10000);
  int resetter = client_resets ? e.client : e.upstream, other = client_resets ? e.upstream : e.client;
  write_all(resetter, "abc", 3);
  char buf[8];
  size_t got = read_n(other, buf, sizeof buf, 3, 5000);
  CHECK(got == 3, "the other side got %zu of 3 bytes", got);
  uint64_t before_reset = sl_monotonic_us();
  reset_close(resetter);
  int err;
  read_all(other, NULL, 0, &err, 5000);
  CHECK(err == ECONNRESET, "the other side saw errno %d (%s), not a reset", err, strerror(err));
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  // The end's time is the loop's, between the reset and its report (the addon's queue comes after).
  CHECK(o.ended_us >= before_reset && o.ended_us <= outcome_time(id), "ended at %llu, not between the reset at %llu and the report at %llu",
        (unsigned long long)o.ended_us, (unsigned long long)before_reset, (unsigned long long)outcome_time(id));
  sl_end want = client_resets ? SL_END_CLIENT_RESET : SL_END_UPSTREAM_RESET;
  CHECK(o.end == want, "end %d, expected %d", o.end, want);
  CHECK((client_resets ? o.bytes_up : o.bytes_down) == 3, "counted %llu/%llu", (unsigned long long)o.bytes_up,
        (unsigned long long)o.bytes_down);
  close(other);
}

// Activity within the period keeps it open past the timeout: each byte written less than the
// idle timeout (2 ms less: the loop's whole milliseconds) after the one before, the first after
// the hand-over. An attempt where this thread was later than that proves nothing, and is made
// again (LATE_ATTEMPTS).
static void test_idle_timeout_closes_both(sl_loop *l) {
  enum { IDLE_MS = 150 };
  for (int attempt = 1;; attempt++) {
    uint64_t id = attempt == 1 ? 5 : 3950 + (uint64_t)attempt;
    uint64_t last_us = sl_monotonic_us();
    conn_ends e = hand_over(l, id, NULL, NULL, IDLE_MS);
    bool in_time = true, moved = true;
    for (int i = 0; i < 4 && moved; i++) {
      usleep(60 * 1000);
      write_all(e.client, "x", 1);
      uint64_t now = sl_monotonic_us();
      in_time = in_time && now - last_us + 2000 < IDLE_MS * 1000;
      last_us = now;
      char c;
      moved = read(e.upstream, &c, 1) == 1;
    }
    if (!in_time) {
      sl_outcome o;
      wait_outcome(id, 5000, &o);
      close(e.client);
      close(e.upstream);
      if (attempt < LATE_ATTEMPTS) continue;
      not_checked("activity within the idle timeout keeps a connection open", attempt);
      return;
    }
    sl_outcome o;
    CHECK(moved && count_of(id) == 0, "closed while bytes moved");
    CHECK(wait_outcome(id, 5000, &o), "no outcome");
    CHECK(o.end == SL_END_IDLE_TIMEOUT && o.bytes_up == 4, "end %d, %llu up", o.end, (unsigned long long)o.bytes_up);
    int err;
    read_all(e.client, NULL, 0, &err, 2000);
    CHECK(err == 0, "the client saw errno %d, not a FIN", err);
    read_all(e.upstream, NULL, 0, &err, 2000);
    CHECK(err == 0, "the upstream saw errno %d, not a FIN", err);
    close(e.client);
    close(e.upstream);
    return;
  }
}

// Many connections' timers at once, due in an order unlike their creation's, some ended early
// (their timers leave the heap from its middle): each idle one ends by its idle timeout and not
// before it, and every one is reported. Built with SL_TIMER_AUDIT, each turn also checks the
// timer heap's order against a scan of every connection.
static void test_many_timers_each_in_its_time(sl_loop *l) {
  enum { N = 96, FIRST = 7000 };
  conn_ends e[N];
  uint64_t added_us[N];
  uint32_t idle_ms[N];
  for (int i = 0; i < N; i++) {
    idle_ms[i] = 100 + (uint32_t)((i * 37) % N) * 4; // 100 to 480 ms, scrambled
    added_us[i] = sl_monotonic_us();
    e[i] = hand_over(l, FIRST + (uint64_t)i, NULL, NULL, idle_ms[i]);
  }
  uint64_t shut_us[N];
  for (int i = 0; i < N; i += 5) {
    shutdown(e[i].client, SHUT_WR);
    shutdown(e[i].upstream, SHUT_WR);
    shut_us[i] = sl_monotonic_us();
  }
  for (int i = 0; i < N; i++) {
    sl_outcome o;
    uint64_t id = FIRST + (uint64_t)i;
    if (!wait_outcome(id, 10000, &o)) {
      CHECK(false, "connection %d: no outcome", i);
      continue;
    }
    // The loop's clock is in whole milliseconds: up to 1 ms early by the test's.
    long long after_ms = (long long)(outcome_time(id) - added_us[i]) / 1000;
    if (i % 5 == 0) {
      // Closed by its FINs when they came before its idle timeout could (2 ms: the loop's whole
      // milliseconds; a turn runs its events before its timers). Later (this thread held off a
      // core while it made the others: connection 0, idle 100 ms, in 2 runs of 9 at load 10),
      // the idle timeout may rightly come first, though never before its time.
      bool fins_first = shut_us[i] - added_us[i] + 2000 < (uint64_t)idle_ms[i] * 1000;
      CHECK(o.end == SL_END_CLOSED || (!fins_first && o.end == SL_END_IDLE_TIMEOUT && after_ms + 1 >= (long long)idle_ms[i]),
            "connection %d: end %d after %lld ms, not closed by its FINs %lld ms after it came (idle timeout %u ms)", i, o.end, after_ms,
            (long long)(shut_us[i] - added_us[i]) / 1000, idle_ms[i]);
      continue;
    }
    CHECK(o.end == SL_END_IDLE_TIMEOUT && after_ms + 1 >= (long long)idle_ms[i], "connection %d: end %d after %lld ms, its idle timeout %u ms", i, o.end,
          after_ms, idle_ms[i]);
  }
  for (int i = 0; i < N; i++) {
    close(e[i].client);
    close(e[i].upstream);
  }
}

static void test_abort_closes_both(sl_loop *l) {
  conn_ends e = hand_over(l, 6, "hello", NULL, 10000);
  char buf[8];
  int got = (int)read_n(e.upstream, buf, sizeof buf, 5, 5000);
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

// A reader that does not read for a while: the loop's writes block (EPOLLOUT is added to the
// socket's interest only then) and resume when it reads; every byte arrives, in order.
static void test_slow_reader_blocks_then_drains(sl_loop *l) {
  conn_ends e = hand_over(l, 10, NULL, NULL, 10000);
  pthread_t t;
  writer_arg a = {e.upstream, 9};
  pthread_create(&t, NULL, writer, &a);
  usleep(300 * 1000); // the socket buffers and the pipe fill; the loop waits for EPOLLOUT
  char *down = malloc(BULK);
  int err;
  size_t n = read_all(e.client, down, BULK, &err, 10000);
  CHECK(n == BULK && err == 0 && pattern_ok(down, BULK, 9), "the client got %zu of %u bytes (err %d), or other bytes", n, BULK, err);
  pthread_join(t, NULL);
  shutdown(e.client, SHUT_WR);
  sl_outcome o;
  CHECK(wait_outcome(10, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_down == BULK, "end %d, %llu down", o.end, (unsigned long long)o.bytes_down);
  free(down);
  close(e.client);
  close(e.upstream);
}

static int turns_now(void) {
  pthread_mutex_lock(&lock);
  int t = turns;
  pthread_mutex_unlock(&lock);
  return t;
}

static int queued_in(int fd) {
  int n = 0;
  ioctl(fd, SIOCINQ, &n);
  return n;
}

// A direction whose pipe holds bytes its writer cannot take stops listening to its source
// (sl_conn.paused): segments arriving from the upstream while the client does not read wake the
// loop no more (each one was a turn for nothing), and a reset from that upstream is passed on as
// soon as the client has read the bytes before it, not at the idle timeout.
// The loop has stopped reading when bytes queued on its upstream socket are still there 100 ms
// later and after a turn of the loop (which ran the edge they made). Even so, on a loaded machine
// the kernel may still drain the client's way later (2 runs of 9 at load 10: 16 KiB fewer queued
// after the segments, which woke it), and such an attempt proves nothing: made again
// (LATE_ATTEMPTS). A loop that never stops reading fails every attempt that got that far.
static void test_blocked_direction_sleeps_until_drained(sl_loop *l) {
  char *chunk = calloc(1, 16384);
  for (int attempt = 1;; attempt++) {
    uint64_t id = attempt == 1 ? 30 : 3980 + (uint64_t)attempt;
    conn_ends e = hand_over(l, id, NULL, NULL, 20000);
    int one = 1;
    setsockopt(e.upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(e.upstream, F_SETFL, fcntl(e.upstream, F_GETFL) | O_NONBLOCK);
    // Until the loop stops reading (the client's socket and the pipe are full), 16 KiB at a
    // time, so that socket's receive buffer keeps room for what follows.
    int queued = 0;
    size_t sent = 0;
    for (int i = 0; i < 4000 && queued == 0; i++) {
      ssize_t w = write(e.upstream, chunk, 16384);
      if (w > 0) sent += (size_t)w;
      else usleep(1000);
      usleep(500);
      int q = queued_in(e.loop_upstream);
      if (q == 0) continue;
      usleep(100 * 1000);
      CHECK(sl_loops_sync(&l, 1, 5000) == 0, "the loop did not turn");
      if (queued_in(e.loop_upstream) >= q) queued = queued_in(e.loop_upstream);
    }
    int before = turns_now();
    CHECK(queued > 0, "the loop's upstream socket never kept bytes queued");
    // 32 segments, one every 2 ms, each of which used to wake the loop.
    for (int i = 0; i < 32; i++) {
      ssize_t w = write(e.upstream, chunk, 1024);
      if (w < 0) break;
      sent += (size_t)w;
      usleep(2000);
    }
    usleep(50 * 1000);
    int woken = turns_now() - before, more = queued_in(e.loop_upstream) - queued;
    bool proves = more >= 16 * 1024;
    if (!proves && attempt == LATE_ATTEMPTS) not_checked("a blocked direction sleeps until drained", attempt);
    if (proves) CHECK(woken <= 4, "the loop turned %d times while its client read nothing", woken);
    // What the loop's kernel acknowledged reaches the client before the reset; the rest of what
    // the upstream wrote may be dropped by its own reset.
    int unacked = 0;
    ioctl(e.upstream, SIOCOUTQ, &unacked);
    reset_close(e.upstream);
    int err;
    size_t n = read_all(e.client, NULL, 0, &err, 5000);
    CHECK(err == ECONNRESET && n >= sent - (size_t)unacked && n <= sent, "the client got %zu bytes (%zu sent, %d unacknowledged), then errno %d", n,
          sent, unacked, err);
    sl_outcome o = {0};
    CHECK(wait_outcome(id, 2000, &o) && o.end == SL_END_UPSTREAM_RESET && o.bytes_down == n, "end %d after the upstream's reset, %llu down", o.end,
          (unsigned long long)o.bytes_down);
    close(e.client);
    if (proves || attempt == LATE_ATTEMPTS) break;
  }
  free(chunk);
}

// The upstream resets behind bytes the client does not read: the loop waits for the client to
// take them, up to the idle timeout, and then ends as the upstream's reset, passed on as a reset,
// never as the FIN an idle close sends.
// The reset must come before the idle timeout: the loop's idle clock starts no earlier than the
// hand-over, by whole milliseconds (2 ms). A reset sent later (this thread held off a core while it
// filled the buffers: 1 run at load 8, nice 19) rightly finds the connection closed as idle.
static void test_reset_behind_unread_bytes_at_idle(sl_loop *l) {
  enum { IDLE_MS = 300 };
  char *chunk = calloc(1, 65536);
  for (int attempt = 1;; attempt++) {
    uint64_t id = attempt == 1 ? 31 : 3900 + (uint64_t)attempt;
    uint64_t added_us = sl_monotonic_us();
    conn_ends e = hand_over(l, id, NULL, NULL, IDLE_MS);
    for (int i = 0, blocked = 0; i < 1000 && blocked < 20; i++) {
      if (send(e.upstream, chunk, 65536, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) continue;
      blocked++;
      usleep(2000);
    }
    reset_close(e.upstream);
    bool in_time = sl_monotonic_us() - added_us + 2000 < IDLE_MS * 1000;
    sl_outcome o = {0};
    bool ended = wait_outcome(id, 3000, &o);
    int err;
    read_all(e.client, NULL, 0, &err, 2000);
    close(e.client);
    if (!in_time && attempt < LATE_ATTEMPTS) continue;
    if (!in_time) {
      not_checked("a reset behind unread bytes ends as a reset at idle", attempt);
      break;
    }
    CHECK(ended && o.end == SL_END_UPSTREAM_RESET && o.err == ECONNRESET, "end %d, errno %d", o.end, o.err);
    CHECK(err == ECONNRESET, "the client saw errno %d (%s), not a reset", err, strerror(err));
    break;
  }
  free(chunk);
}

// A connection reset while its pipe holds bytes bound for the client: that pipe must be closed,
// never pooled, so the next connections (which take pooled pipes) get their own bytes only.
static void test_pipe_with_bytes_is_never_reused(sl_loop *l) {
  for (uint64_t id = 20; id < 30; id++) {
    conn_ends e = hand_over(l, id, NULL, NULL, 10000);
    // The client never reads: 4 MiB cannot fit in its socket buffers, so bytes wait in the pipe.
    char *chunk = malloc(1u << 20);
    memset(chunk, 'S', 1u << 20);
    int fl = fcntl(e.upstream, F_GETFL);
    fcntl(e.upstream, F_SETFL, fl | O_NONBLOCK);
    size_t sent = 0;
    for (int i = 0; i < 200 && sent < (4u << 20); i++) {
      ssize_t w = write(e.upstream, chunk, 1u << 20);
      if (w > 0) sent += (size_t)w;
      else usleep(5000);
    }
    free(chunk);
    // A turn of the loop, which ran the edge of the bytes written, so its pipe holds some: not
    // 20 ms of this thread's sleep, in which a loop held off a core read none (nice 19, load 10).
    CHECK(sl_loops_sync(&l, 1, 5000) == 0, "the loop did not turn");
    reset_close(e.client);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLIENT_RESET, "connection %llu: end %d", (unsigned long long)id, o.end);
    CHECK(o.bytes_down > 0 && o.bytes_down <= sent, "connection %llu counted %llu of %zu bytes", (unsigned long long)id,
          (unsigned long long)o.bytes_down, sent);
    close(e.upstream);
    // The next connection: exactly its own bytes each way, nothing stale before them.
    conn_ends f = hand_over(l, id + 1000, NULL, NULL, 10000);
    write_all(f.upstream, "fresh-down", 10);
    shutdown(f.upstream, SHUT_WR);
    write_all(f.client, "fresh-up", 8);
    shutdown(f.client, SHUT_WR);
    char buf[64];
    int err;
    size_t n = read_all(f.client, buf, sizeof buf, &err, 5000);
    CHECK(n == 10 && memcmp(buf, "fresh-down", 10) == 0, "connection %llu's client got %zu bytes, starting %.4s", (unsigned long long)id + 1000,
          n, buf);
    n = read_all(f.upstream, buf, sizeof buf, &err, 5000);
    CHECK(n == 8 && memcmp(buf, "fresh-up", 8) == 0, "connection %llu's upstream got %zu bytes", (unsigned long long)id + 1000, n);
    CHECK(wait_outcome(id + 1000, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_up == 8 && o.bytes_down == 10, "end %d, %llu up, %llu down",
          o.end, (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
    close(f.client);
    close(f.upstream);
  }
}

// Edge-triggered edge cases, each many times so the events fall differently: an answer and its
// FIN in one event (the FIN read from the event, not from a last read), an answer and a reset,
// and bytes arriving one way while the other way's writes are blocked.
static void test_answer_and_fin_in_one_event(sl_loop *l) {
  for (uint64_t id = 600; id < 650; id++) {
    conn_ends e = hand_over(l, id, "req", NULL, 10000);
    char buf[64];
    size_t got = read_n(e.upstream, buf, sizeof buf, 3, 5000);
    CHECK(got == 3, "connection %llu: the upstream got %zu bytes", (unsigned long long)id, got);
    // Odd ids: the answer and the FIN in one segment's time; even: a pause between them.
    write_all(e.upstream, "answer", 6);
    if (id % 2 == 0) usleep(2000);
    shutdown(e.upstream, SHUT_WR);
    int err;
    size_t n = read_all(e.client, buf, sizeof buf, &err, 5000);
    CHECK(n == 6 && err == 0 && memcmp(buf, "answer", 6) == 0, "connection %llu: the client got %zu bytes (err %d)", (unsigned long long)id, n, err);
    // The client's direction is still open: its bytes go through after the upstream's FIN.
    write_all(e.client, "more", 4);
    shutdown(e.client, SHUT_WR);
    n = read_all(e.upstream, buf, sizeof buf, &err, 5000);
    CHECK(n == 4 && err == 0, "connection %llu: the upstream got %zu more bytes (err %d)", (unsigned long long)id, n, err);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_up == 7 && o.bytes_down == 6, "connection %llu: end %d, %llu up, %llu down",
          (unsigned long long)id, o.end, (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
    close(e.client);
    close(e.upstream);
  }
}

// The upstream answers and resets at once, its bytes maybe still unread by the loop. Without a
// FIN first (odd ids) that is a reset mid-exchange: the client gets the answer, then the reset
// (the kernel acknowledged the answer: it is passed on first). With its FIN first (even ids) the upstream had finished: the client
// gets every byte and the FIN, and the connection closed, ended by the upstream — whether the
// loop read the FIN before the reset came or found both at once (the reset of a socket in
// CLOSE_WAIT reads EPIPE).
static void test_answer_then_reset(sl_loop *l) {
  for (uint64_t id = 650; id < 680; id++) {
    conn_ends e = hand_over(l, id, "req", NULL, 10000);
    char buf[64];
    read_n(e.upstream, buf, sizeof buf, 3, 5000); // the request, before the answer
    write_all(e.upstream, "answer", 6);
    if (id % 2 == 0) shutdown(e.upstream, SHUT_WR);
    reset_close(e.upstream);
    int err;
    size_t n = read_all(e.client, buf, sizeof buf, &err, 5000);
    sl_outcome o;
    if (id % 2 == 0) {
      CHECK(n == 6 && err == 0, "connection %llu: the client got %zu bytes and errno %d, not all 6 and the FIN", (unsigned long long)id, n, err);
      CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_down == 6 && o.first_fin == 1,
            "connection %llu: end %d, %llu down, first FIN %d", (unsigned long long)id, o.end, (unsigned long long)o.bytes_down, o.first_fin);
    } else {
      CHECK(err == ECONNRESET && n == 6, "connection %llu: the client got %zu bytes and errno %d, not all 6 and a reset", (unsigned long long)id, n, err);
      CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_UPSTREAM_RESET && o.bytes_down == 6, "connection %llu: end %d, %llu down",
            (unsigned long long)id, o.end, (unsigned long long)o.bytes_down);
    }
    close(e.client);
  }
}

// A side sends its last bytes and its FIN, the other answers late (a TLS close_notify), and the
// first side's socket, closed with those bytes unread, resets: each way, many times. The first
// side had finished, so this is a close, not a reset: the other side still gets every byte the
// first sent (the reset may come while the loop holds some of them) and the FIN, and no reset;
// the outcome is CLOSED, ended by the first side, with every byte counted.
static void test_reset_after_fin_is_a_close(sl_loop *l) {
  enum { LAST = 64 * 1024 };
  char *last = malloc(LAST), *got = malloc(LAST + 1);
  for (int i = 0; i < LAST; i++) last[i] = (char)('a' + i % 26);
  for (uint64_t id = 750; id < 770; id++) {
    bool client_first = id % 2 == 0;
    conn_ends e = hand_over(l, id, NULL, NULL, 10000);
    int first = client_first ? e.client : e.upstream, other = client_first ? e.upstream : e.client;
    write_all(first, last, LAST);
    shutdown(first, SHUT_WR);
    write_all(other, "late", 4); // before reading: the loop may still hold the first's bytes
    // Every byte and the FIN taken by the loop's kernel, and "late" here unread: close(2) resets.
    struct pollfd p = {.fd = first, .events = POLLIN};
    int queued = 1;
    for (int i = 0; i < 200 && (queued > 0 || !(p.revents & POLLIN)); i++) {
      poll(&p, 1, 10);
      ioctl(first, SIOCOUTQ, &queued);
    }
    CHECK(queued == 0 && (p.revents & POLLIN), "connection %llu: %d bytes unsent, late bytes %s", (unsigned long long)id, queued,
          p.revents & POLLIN ? "here" : "not here");
    close(first);
    int err;
    size_t n = read_all(other, got, LAST + 1, &err, 5000);
    CHECK(n == LAST && err == 0 && memcmp(got, last, LAST) == 0, "connection %llu: the other side got %zu of %d bytes, errno %d",
          (unsigned long long)id, n, LAST, err);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o), "connection %llu: no outcome", (unsigned long long)id);
    uint64_t from_first = client_first ? o.bytes_up : o.bytes_down, from_other = client_first ? o.bytes_down : o.bytes_up;
    CHECK(o.end == SL_END_CLOSED && o.first_fin == (client_first ? 0 : 1) && from_first == LAST && from_other == 4,
          "connection %llu: end %d, first FIN %d, %llu up, %llu down", (unsigned long long)id, o.end, o.first_fin,
          (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
    close(other);
  }
  free(last);
  free(got);
}

// The upstream finished (its FIN passed on), then the client sent more than the upstream reads,
// so the loop stopped reading its client socket with bytes queued there, and the upstream, closing
// with bytes unread, reset. Still a close (as above): the loop reads off what its client socket
// holds before it closes it, as close(2) with bytes unread would reset the client (tcp_close).
static void test_gone_side_leaves_nothing_unread(sl_loop *l) {
  conn_ends e = hand_over(l, 790, NULL, NULL, 10000);
  write_all(e.upstream, "bye", 3);
  shutdown(e.upstream, SHUT_WR);
  char buf[8];
  size_t got = read_n(e.client, buf, sizeof buf, sizeof buf, 2000); // "bye", then the FIN ends the read
  CHECK(got == 3 && memcmp(buf, "bye", 3) == 0, "the client got %zu bytes before the FIN", got);
  char *chunk = calloc(1, 16384);
  // 16 KiB at a time until the loop stops reading (bytes queued on its client socket are still
  // there 100 ms later), so that socket keeps room and every byte sent reaches it.
  int queued = 0;
  for (int i = 0; i < 4000 && queued == 0; i++) {
    if (send(e.client, chunk, 16384, MSG_DONTWAIT | MSG_NOSIGNAL) <= 0) usleep(1000);
    usleep(500);
    int q = queued_in(e.loop_client);
    if (q == 0) continue;
    usleep(100 * 1000);
    if (queued_in(e.loop_client) >= q) queued = queued_in(e.loop_client);
  }
  CHECK(queued > 0, "the loop's client socket never kept bytes queued");
  int unsent = 1;
  for (int i = 0; i < 200 && unsent > 0; i++) {
    ioctl(e.client, SIOCOUTQ, &unsent);
    if (unsent > 0) usleep(5000);
  }
  CHECK(unsent == 0, "%d bytes of the client's still in flight: the check proves nothing", unsent);
  close(e.upstream); // with the client's bytes unread: a reset
  sl_outcome o = {0};
  CHECK(wait_outcome(790, 5000, &o) && o.end == SL_END_CLOSED && o.first_fin == 1, "end %d, first FIN %d", o.end, o.first_fin);
  usleep(50 * 1000);
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(e.client, SOL_SOCKET, SO_ERROR, &err, &len);
  CHECK(err == 0, "the client was reset (%s) after a clean end, %d bytes were unread at the loop", strerror(err), queued);
  free(chunk);
  close(e.client);
}

// The client does not read, so the loop's writes to it block; meanwhile its own bytes go up at
// once, and then it reads every byte down, in order.
static void test_bytes_up_while_writes_down_block(sl_loop *l) {
  conn_ends e = hand_over(l, 690, NULL, NULL, 10000);
  pthread_t t;
  writer_arg a = {e.upstream, 11};
  pthread_create(&t, NULL, writer, &a);
  usleep(200 * 1000); // the client's buffers and the pipe are full: the loop waits for EPOLLOUT
  for (int i = 0; i < 5; i++) {
    write_all(e.client, "ping", 4);
    char buf[4];
    size_t got = read_n(e.upstream, buf, 4, 4, 2000);
    CHECK(got == 4 && memcmp(buf, "ping", 4) == 0, "ping %d: the upstream got %zu bytes while the client's writes were blocked", i, got);
  }
  char *down = malloc(BULK);
  int err;
  size_t n = read_all(e.client, down, BULK, &err, 10000);
  CHECK(n == BULK && err == 0 && pattern_ok(down, BULK, 11), "the client got %zu of %u bytes (err %d), or other bytes", n, BULK, err);
  pthread_join(t, NULL);
  shutdown(e.client, SHUT_WR);
  sl_outcome o;
  CHECK(wait_outcome(690, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_down == BULK && o.bytes_up == 20, "end %d, %llu up, %llu down", o.end,
        (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
  free(down);
  close(e.client);
  close(e.upstream);
}

// Small writes to a reader whose buffers are tiny: the loop's writes from its own buffer (a
// direction under SL_COPY_LIMIT) come up short, and the rest waits in the connection's overflow,
// written before any byte read after it. Every byte arrives once, in order, then the FIN; or,
// when the client resets with bytes waiting, the reset is passed on and the overflow freed.
static void test_copy_overflow_keeps_order(sl_loop *l) {
  enum { TOTAL = 48 << 10, CHUNK = 1024 };
  for (int resets = 0; resets < 2; resets++) {
    uint64_t id = 720 + (uint64_t)resets;
    int small = 4096;
    int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(client, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    if (connect(client, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) {
      perror("connect");
      exit(2);
    }
    int ours = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    setsockopt(ours, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    int upstream, ours_up;
    pair(&upstream, &ours_up);
    CHECK(sl_loop_add(l, id, ours, ours_up, NULL, 0, NULL, 0, 10000) == 0, "sl_loop_add");
    char chunk[CHUNK];
    for (int off = 0; off < TOTAL; off += CHUNK) {
      for (int i = 0; i < CHUNK; i++) chunk[i] = (char)((off + i) * 7 + 13);
      write_all(upstream, chunk, CHUNK);
    }
    shutdown(upstream, SHUT_WR);
    usleep(100 * 1000); // the client's buffers are full: the rest waits in the loop or upstream
    sl_outcome o;
    if (resets) {
      reset_close(client);
      int err;
      read_all(upstream, NULL, 0, &err, 5000);
      CHECK(err == ECONNRESET, "the upstream saw errno %d, not the reset", err);
      CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLIENT_RESET && o.bytes_down <= TOTAL, "end %d, %llu down", o.end,
            (unsigned long long)o.bytes_down);
      close(upstream);
      continue;
    }
    char *down = malloc(TOTAL + 1);
    int err;
    size_t n = read_all(client, down, TOTAL + 1, &err, 5000);
    CHECK(n == TOTAL && err == 0 && pattern_ok(down, TOTAL, 13), "the client got %zu of %d bytes (err %d), or other bytes", n, TOTAL, err);
    free(down);
    shutdown(client, SHUT_WR);
    CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_down == TOTAL && o.bytes_up == 0, "end %d, %llu down", o.end,
          (unsigned long long)o.bytes_down);
    close(client);
    close(upstream);
  }
}

// A byte the client sends as TCP urgent data (MSG_OOB: telnet's and FTP's Synch, RFC 854, RFC
// 959 §4.1.3; rlogin's flow control) in the middle of a spliced transfer: splice(2) stops at the
// urgent mark and, once the FIN is in, answers 0 with the rest still queued (tcp_splice_read,
// net/ipv4/tcp.c, whose loop at URG data was CVE-2017-6214). That 0 is no end:
// every byte after the mark goes on, the urgent byte itself left out as recv(2) and Node's reads
// leave it out (SO_OOBINLINE off), and the one FIN is the client's own.
static void test_urgent_byte_mid_bulk_is_not_an_end(sl_loop *l) {
  enum { BEFORE = 256 << 10, AFTER = 256 << 10, CHUNK = 65536 };
  conn_ends e = hand_over(l, 740, NULL, NULL, 10000);
  char *buf = malloc(BEFORE + AFTER + 1);
  for (size_t i = 0; i < BEFORE + AFTER; i++) buf[i] = (char)(i * 7 + 11);
  write_all(e.client, buf, BEFORE);
  // Past SL_COPY_LIMIT: the direction is spliced by now.
  size_t got = read_n(e.upstream, buf, BEFORE + AFTER + 1, BEFORE, 5000);
  CHECK(got == BEFORE, "the upstream got %zu of the first %d bytes", got, BEFORE);
  CHECK(send(e.client, "!", 1, MSG_OOB) == 1, "send MSG_OOB: %s", strerror(errno));
  for (size_t i = 0; i < AFTER; i++) buf[BEFORE + i] = (char)((BEFORE + i) * 7 + 11);
  write_all(e.client, buf + BEFORE, AFTER);
  shutdown(e.client, SHUT_WR);
  int err;
  size_t rest = read_all(e.upstream, buf + BEFORE, AFTER + 1, &err, 5000);
  // Before: 0 bytes after the mark, then a FIN the client never sent.
  CHECK(rest == AFTER && err == 0 && pattern_ok(buf, BEFORE + AFTER, 11), "after the urgent byte the upstream got %zu of %d bytes (err %d), or other bytes",
        rest, AFTER, err);
  write_all(e.upstream, "bye", 3);
  shutdown(e.upstream, SHUT_WR);
  char tail[8];
  size_t n = read_all(e.client, tail, sizeof tail, &err, 5000);
  CHECK(n == 3 && err == 0, "the client got %zu bytes then the FIN (err %d)", n, err);
  sl_outcome o;
  CHECK(wait_outcome(740, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_CLOSED && o.bytes_up == BEFORE + AFTER && o.bytes_down == 3 && o.first_fin == 0, "end %d, %llu up, %llu down, first FIN %d", o.end,
        (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down, o.first_fin);
  free(buf);
  close(e.client);
  close(e.upstream);
}

// Urgent data with bytes behind it, all queued before the loop reads (the loop held mid-turn
// meanwhile): a read stops short at the mark with the bytes after it still queued, and no new
// edge comes for them. Once copied (a small exchange) and once spliced (past SL_COPY_LIMIT), both
// ways: every byte but the urgent one arrives.
static void test_urgent_byte_with_bytes_behind_it(sl_loop *l) {
  uint64_t gate = 7900;
  for (int spliced = 0; spliced < 2; spliced++) {
    uint64_t id = 741 + (uint64_t)spliced;
    conn_ends e = hand_over(l, id, NULL, NULL, 10000);
    size_t lead = spliced ? 256u << 10 : 0;
    char *buf = malloc(lead + 64);
    if (lead) {
      memset(buf, 'p', lead);
      write_all(e.client, buf, lead);
      write_all(e.upstream, buf, lead);
      CHECK(read_n(e.upstream, buf, lead, lead, 5000) == lead, "the upstream did not get the lead");
      CHECK(read_n(e.client, buf, lead, lead, 5000) == lead, "the client did not get the lead");
    }
    for (int from = 0; from < 2; from++) {
      int src = from == 0 ? e.client : e.upstream, dst = from == 0 ? e.upstream : e.client;
      // The loop is held in the report of a connection of its own while the bytes arrive.
      conn_ends g = hand_over(l, gate, NULL, NULL, 10000);
      pthread_mutex_lock(&lock);
      gate_id = gate;
      gate_open = false;
      pthread_mutex_unlock(&lock);
      sl_loop_abort(l, gate);
      sl_outcome o;
      CHECK(wait_outcome(gate, 5000, &o), "no outcome for the connection that holds the loop");
      write_all(src, "hello1", 6);
      CHECK(send(src, "!", 1, MSG_OOB) == 1, "send MSG_OOB: %s", strerror(errno));
      write_all(src, "world2", 6);
      usleep(50 * 1000);
      pthread_mutex_lock(&lock);
      gate_open = true;
      pthread_cond_broadcast(&cond);
      pthread_mutex_unlock(&lock);
      char got[64] = {0};
      size_t n = read_n(dst, got, sizeof got, 12, 2000);
      // Before: "hello1", and "world2" waited in the loop's socket for an edge that never came.
      CHECK(n == 12 && memcmp(got, "hello1world2", 12) == 0, "%s: %s got %zu bytes \"%.*s\"", spliced ? "spliced" : "copied",
            from == 0 ? "the upstream" : "the client", n, (int)n, got);
      close(g.client);
      close(g.upstream);
      gate++;
    }
    sl_loop_abort(l, id);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o), "no outcome");
    free(buf);
    close(e.client);
    close(e.upstream);
  }
}

/** pair(), with a receive buffer of `rcvbuf` on the test's end (set before the handshake, so its
 * window is that small) and a send buffer of `sndbuf` on the loop's: 0 leaves either alone. */
static void narrow_pair(int *mine, int *theirs, int rcvbuf, int sndbuf) {
  *mine = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (rcvbuf) setsockopt(*mine, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (connect(*mine, (struct sockaddr *)&listen_addr, sizeof listen_addr) != 0) {
    perror("connect");
    exit(2);
  }
  *theirs = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (*theirs < 0) {
    perror("accept");
    exit(2);
  }
  if (sndbuf) setsockopt(*theirs, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
}

// Urgent data, bytes behind it and the FIN, all come while the direction is paused (its writer
// blocked by a reader that does not read, sl_conn.paused) and its socket was emptied by the
// last read: EPOLLPRI is out of the interest set then, with EPOLLIN, and EPOLLRDHUP is not, so
// the loop learns of the FIN and not of the urgent data. Once the reader reads, the loop's read
// stops short at the mark, and used to be taken for the last before that FIN: the bytes behind
// the mark were dropped, the reader got the FIN early, the sender a reset. Copied (the peer's
// buffers kept small, so that the writer blocks within SL_COPY_LIMIT) and spliced, both ways.
static void test_urgent_byte_and_fin_while_paused(sl_loop *l) {
  enum { LEAD = 256 << 10, PROBE = 8 };
  for (int spliced = 0; spliced < 2; spliced++) {
    for (int from = 0; from < 2; from++) {
      uint64_t id = 745 + (uint64_t)(spliced * 2 + from);
      conn_ends e;
      int lc, lu;
      // Small buffers toward the reader only: the writer blocks early; the source's own
      // socket keeps its room for what is queued while the direction is paused.
      narrow_pair(&e.client, &lc, from == 1 ? 4096 : 0, from == 1 ? 4096 : 0);
      narrow_pair(&e.upstream, &lu, from == 0 ? 4096 : 0, from == 0 ? 4096 : 0);
      e.loop_client = lc;
      e.loop_upstream = lu;
      CHECK(sl_loop_add(l, id, lc, lu, NULL, 0, NULL, 0, 10000) == 0, "sl_loop_add");
      int src = from == 0 ? e.client : e.upstream, dst = from == 0 ? e.upstream : e.client;
      int loop_src = from == 0 ? lc : lu;
      int one = 1;
      setsockopt(src, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      char *buf = calloc(1, LEAD + 64);
      if (spliced) {
        // Past SL_COPY_LIMIT: the direction is spliced by now.
        write_all(src, buf, LEAD);
        CHECK(read_n(dst, buf, LEAD, LEAD, 5000) == LEAD, "the reader did not get the lead");
      }
      // The reader stops reading. Small writes, each read by the loop by itself (the read empties
      // the socket), until one is left in the loop's socket: the direction is paused, and what
      // waits before the mark is fewer bytes than a pipe has buffers.
      size_t sent = 0;
      int queued = 0;
      for (int i = 0; i < 20000 && queued == 0; i++) {
        write_all(src, "probe..!", PROBE);
        sent += PROBE;
        usleep(500);
        if (queued_in(loop_src) == 0) continue;
        usleep(50 * 1000);
        queued = queued_in(loop_src);
      }
      CHECK(queued > 0 && queued < 16, "%s: %d bytes left in the loop's socket: the check proves nothing", spliced ? "spliced" : "copied", queued);
      write_all(src, "hello1", 6);
      CHECK(send(src, "!", 1, MSG_OOB) == 1, "send MSG_OOB: %s", strerror(errno));
      write_all(src, "world2", 6);
      shutdown(src, SHUT_WR);
      usleep(50 * 1000);
      int err;
      char *got = malloc(sent + 64);
      size_t n = read_all(dst, got, sent + 64, &err, 5000);
      // Before: the bytes up to "hello1", then the FIN.
      CHECK(n == sent + 12 && err == 0 && memcmp(got + sent, "hello1world2", 12) == 0, "%s, %s: the reader got %zu of %zu bytes (err %d), ending \"%.*s\"",
            spliced ? "spliced" : "copied", from == 0 ? "up" : "down", n, sent + 12, err, n >= 12 ? 12 : (int)n, n >= 12 ? got + n - 12 : got);
      shutdown(dst, SHUT_WR);
      char tail[8];
      size_t back = read_all(src, tail, sizeof tail, &err, 5000);
      CHECK(back == 0 && err == 0, "the sender got %zu bytes, then errno %d", back, err);
      sl_outcome o;
      uint64_t want = (spliced ? LEAD : 0) + sent + 12;
      CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && (from == 0 ? o.bytes_up : o.bytes_down) == want, "end %d, %llu up, %llu down, %llu wanted",
            o.end, (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down, (unsigned long long)want);
      free(got);
      free(buf);
      close(e.client);
      close(e.upstream);
    }
  }
}

// Commands wake the loop however they come (the wake-up descriptor is edge-triggered and never
// read): one at a time on an idle loop, and in bursts from two threads; each runs at once, none
// waits for an unrelated event.
typedef struct {
  sl_loop *l;
  uint64_t first;
} burst_arg;

static void *abort_burst(void *p) {
  burst_arg *a = p;
  for (uint64_t id = a->first; id < a->first + 100; id++) sl_loop_abort(a->l, id);
  return NULL;
}

static void test_every_command_wakes_the_loop(sl_loop *l) {
  for (uint64_t id = 3000; id < 3100; id++) {
    conn_ends e = hand_over(l, id, NULL, NULL, 60000);
    usleep(id % 3 == 0 ? 1000 : 0); // sometimes idle first, sometimes right behind the hand-over
    sl_loop_abort(l, id);
    sl_outcome o;
    CHECK(wait_outcome(id, 1000, &o) && o.end == SL_END_ABORTED, "connection %llu: its abort did not run within 1 s", (unsigned long long)id);
    close(e.client);
    close(e.upstream);
  }
  conn_ends ends[200];
  for (uint64_t i = 0; i < 200; i++) ends[i] = hand_over(l, 3100 + i, NULL, NULL, 60000);
  pthread_t t1, t2;
  burst_arg a1 = {l, 3100}, a2 = {l, 3200};
  pthread_create(&t1, NULL, abort_burst, &a1);
  pthread_create(&t2, NULL, abort_burst, &a2);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  for (uint64_t i = 0; i < 200; i++) {
    sl_outcome o;
    CHECK(wait_outcome(3100 + i, 1000, &o) && o.end == SL_END_ABORTED, "connection %llu: its abort did not run within 1 s", (unsigned long long)(3100 + i));
    close(ends[i].client);
    close(ends[i].upstream);
  }
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

// A burst of held connections grows the timer heap's array; once they are gone it gives the room
// back (to its first 64), and grows again for the next burst, whose connections are carried.
static void test_timer_room_shrinks_after_a_burst(sl_loop *l) {
  enum { N = 300, FIRST = 20000 };
  for (int round = 0; round < 2; round++) {
    conn_ends e[N];
    for (int i = 0; i < N; i++) e[i] = hand_over(l, FIRST + (uint64_t)(round * N + i), NULL, NULL, 10000);
    for (int t = 0; t < 500 && sl_loop_size(l) < N; t++) usleep(10 * 1000);
    CHECK(sl_loop_size(l) == N && sl_loop_timer_room(l) >= N, "round %d: %u connections held, room for %u timers", round, sl_loop_size(l), sl_loop_timer_room(l));
    // Each still carries its bytes.
    write_all(e[N - 1].upstream, "x", 1);
    char c = 0;
    CHECK(read_n(e[N - 1].client, &c, 1, 1, 5000) == 1 && c == 'x', "round %d: the last connection carried nothing", round);
    for (int i = 0; i < N; i++) {
      uint64_t id = FIRST + (uint64_t)(round * N + i);
      sl_loop_abort(l, id);
    }
    for (int i = 0; i < N; i++) {
      sl_outcome o;
      CHECK(wait_outcome(FIRST + (uint64_t)(round * N + i), 5000, &o), "round %d: connection %d: no outcome", round, i);
      close(e[i].client);
      close(e[i].upstream);
    }
    CHECK(sl_loop_size(l) == 0 && sl_loop_timer_room(l) == 64, "round %d: after the burst, %u connections and room for %u timers", round, sl_loop_size(l),
          sl_loop_timer_room(l));
  }
}

static void *open_gate_later(void *arg) {
  (void)arg;
  usleep(100 * 1000);
  pthread_mutex_lock(&lock);
  gate_open = true;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  return NULL;
}

// sl_loops_sync returns only once every loop ran the aborts posted before it: the connection is
// closed, and reported, when it returns. A loop held mid-turn makes it give up after its bound
// and say so, without the abort having run.
static void test_sync_waits_for_the_aborts(void) {
  int err = 0;
  sl_loop *ls[2] = {sl_loop_start(report, NULL, &err), sl_loop_start(report, NULL, &err)};
  CHECK(ls[0] && ls[1], "start: %s", strerror(err));
  CHECK(sl_loops_sync(ls, 2, 1000) == 0, "idle loops did not answer");
  conn_ends held = hand_over(ls[0], 700, NULL, NULL, 10000), doomed = hand_over(ls[0], 701, NULL, NULL, 10000);
  conn_ends other = hand_over(ls[1], 702, NULL, NULL, 10000);
  pthread_mutex_lock(&lock);
  gate_id = 700;
  gate_open = false;
  pthread_mutex_unlock(&lock);
  sl_loop_abort(ls[0], 700);
  sl_outcome o;
  CHECK(wait_outcome(700, 5000, &o), "no outcome for the connection that holds the loop");
  // Loop 0 is held in 700's report: the abort of 701 waits in its queue.
  sl_loop_abort(ls[0], 701);
  sl_loop_abort(ls[1], 702);
  CHECK(sl_loops_sync(ls, 2, 100) == 1, "a held loop was counted as having answered");
  pthread_mutex_lock(&lock);
  CHECK(count_of(701) == 0, "the held loop ran a command");
  CHECK(count_of(702) == 1, "the free loop's abort had not run when sync returned");
  pthread_mutex_unlock(&lock);
  struct pollfd p = {.fd = doomed.client, .events = POLLIN};
  CHECK(poll(&p, 1, 0) == 0, "the held loop's connection is already closed");
  // The gate opens while the caller waits: it returns once the abort ran, not at its bound.
  pthread_t t;
  pthread_create(&t, NULL, open_gate_later, NULL);
  CHECK(sl_loops_sync(ls, 2, 5000) == 0, "sync gave up on a loop that answered");
  pthread_mutex_lock(&lock);
  CHECK(count_of(701) == 1, "sync returned before the abort ran");
  pthread_mutex_unlock(&lock);
  int e;
  read_all(doomed.client, NULL, 0, &e, 2000);
  CHECK(e == 0, "the client saw errno %d, not the close", e);
  pthread_join(t, NULL);
  sl_loop_stop(ls[0]);
  sl_loop_stop(ls[1]);
  close(held.client);
  close(held.upstream);
  close(doomed.client);
  close(doomed.upstream);
  close(other.client);
  close(other.upstream);
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

// ---- set-up: accept, peek, dial, refuse, shed ----------------------------------------------------

#define MAX_EVENTS 1024
typedef struct {
  sl_event e;
  char bytes[4096];
} saved_event;
static saved_event events[MAX_EVENTS];
static int n_events;

static void on_setup(void *ctx, const sl_event *e) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  if (n_events < MAX_EVENTS) {
    events[n_events].e = *e;
    size_t n = e->len < sizeof events[n_events].bytes ? e->len : sizeof events[n_events].bytes;
    if (n) memcpy(events[n_events].bytes, e->bytes, n);
    events[n_events].e.bytes = NULL;
    events[n_events].e.len = n;
    n_events++;
  }
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

/** Waits for the first event of `kind` (for `id`, when non-zero) from index *from on; false on timeout. */
static bool wait_event(int kind, uint64_t id, int *from, int ms, saved_event *out) {
  struct timespec deadline = deadline_after(ms);
  pthread_mutex_lock(&lock);
  for (;;) {
    for (int i = *from; i < n_events; i++) {
      if ((int)events[i].e.kind == kind && (id == 0 || events[i].e.id == id)) {
        *out = events[i];
        *from = i + 1;
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

static int seen; // events before this index are consumed

static int listen_on_loop(sl_loop *l, int tag, struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr->sin_port = 0;
  socklen_t len = sizeof *addr;
  if (bind(fd, (struct sockaddr *)addr, sizeof *addr) != 0 || listen(fd, 128) != 0 || getsockname(fd, (struct sockaddr *)addr, &len) != 0) {
    perror("listen");
    exit(2);
  }
  CHECK(sl_loop_listen(l, fd, tag) == 0, "sl_loop_listen");
  return fd;
}

static int connect_to(const struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/** A loop that sets connections up itself, listening with `tag` on a loopback port (`front`). */
static sl_loop *setup_loop(int tag, struct sockaddr_in *front) {
  int err = 0;
  sl_loop *l = sl_loop_start(report, NULL, &err);
  CHECK(l != NULL, "start: %s", strerror(err));
  sl_loop_setup(l, on_setup, 16384);
  listen_on_loop(l, tag, front);
  return l;
}

/** A client that connects and sends `first`; the ACCEPTED event, with every first byte peeked. */
static uint64_t accept_with(sl_loop *l, const struct sockaddr_in *front, const char *first, int *client) {
  *client = connect_to(front);
  CHECK(*client >= 0, "connect: %s", strerror(errno));
  if (first) write_all(*client, first, strlen(first));
  saved_event ev;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "no ACCEPTED event");
  CHECK(ev.e.tag == 7, "tag %d", ev.e.tag);
  CHECK(ev.e.err != 0, "SO_ORIGINAL_DST answered for a connection no one redirected");
  size_t want = first ? strlen(first) : 0;
  if (ev.e.len < want) {
    // The bytes came after the accept: the peek command reads them.
    sl_loop_peek(l, ev.e.id, 5000, 0, 0, (uint32_t)want);
    saved_event more;
    CHECK(wait_event(SL_EV_PEEK, ev.e.id, &seen, 5000, &more), "no PEEK event");
    CHECK(more.e.state == SL_PEEK_MORE && ev.e.len + more.e.len == want, "peek state %d, %zu bytes", more.e.state, ev.e.len + more.e.len);
  }
  return ev.e.id;
}

static struct sockaddr_storage storage_of(const struct sockaddr_in *a) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, a, sizeof *a);
  return ss;
}

// A loopback address whose port nothing listens on: a dial to it is refused at once.
static struct sockaddr_in closed_port(void) {
  struct sockaddr_in closed = listen_addr;
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  closed.sin_port = 0;
  bind(probe, (struct sockaddr *)&closed, sizeof closed);
  socklen_t len = sizeof closed;
  getsockname(probe, (struct sockaddr *)&closed, &len);
  close(probe);
  return closed;
}

static void test_setup_dial_next_address_then_splice(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "hello", &client);
  // The first address refuses (a port nothing listens on), the second answers.
  struct sockaddr_in closed = closed_port();
  struct sockaddr_storage addrs[2] = {storage_of(&closed), storage_of(&listen_addr)};
  CHECK(sl_loop_dial(l, id, addrs, 2, 5000, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false) == 0, "dial");
  int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  CHECK(upstream >= 0, "the upstream was not dialed");
  write_all(client, " world", 6);
  shutdown(client, SHUT_WR);
  char buf[64];
  int err;
  size_t n = read_all(upstream, buf, sizeof buf, &err, 5000);
  CHECK(n == 11 && memcmp(buf, "hello world", 11) == 0, "upstream got %zu bytes", n);
  write_all(upstream, "bye", 3);
  shutdown(upstream, SHUT_WR);
  n = read_all(client, buf, sizeof buf, &err, 5000);
  CHECK(n == 3 && memcmp(buf, "bye", 3) == 0, "client got %zu bytes", n);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_CLOSED && o.bytes_up == 11 && o.bytes_down == 3, "end %d, %llu up, %llu down", o.end, (unsigned long long)o.bytes_up,
        (unsigned long long)o.bytes_down);
  CHECK(o.dialed == 1 && o.attempts == 2 && o.attempt_err[0] == ECONNREFUSED && o.attempt_err[1] == 0, "dialed %d of %d, first %d", o.dialed,
        o.attempts, o.attempt_err[0]);
  close(client);
  close(upstream);
}

static void test_setup_policy_change_asks_again(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  sl_set_policy_version(2);
  struct sockaddr_storage a = storage_of(&listen_addr);
  sl_loop_dial(l, id, &a, 1, 5000, 250, SL_MAX_ADDRS, 10000, 1, false, 0, false);
  int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  saved_event ev;
  CHECK(wait_event(SL_EV_CONNECTED, id, &seen, 5000, &ev), "no CONNECTED event after a policy change");
  CHECK(ev.e.state == 0 && ev.e.err == 0, "dialed %d, err %d", ev.e.state, ev.e.err);
  // Nothing went upstream before the answer.
  struct pollfd p = {.fd = upstream, .events = POLLIN};
  CHECK(poll(&p, 1, 100) == 0, "bytes reached the upstream before the verdict");
  sl_loop_refuse(l, id, SL_REFUSE_ANSWER, "denied", 6, 2000, 1 << 20);
  char buf[16];
  int err;
  size_t n = read_all(client, buf, sizeof buf, &err, 5000);
  CHECK(n == 6 && memcmp(buf, "denied", 6) == 0 && err == 0, "client got %zu bytes (err %d)", n, err);
  n = read_all(upstream, buf, sizeof buf, &err, 5000);
  CHECK(n == 0, "the upstream got %zu bytes of a refused connection", n);
  close(client);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.bytes_up == 0 && o.bytes_down == 0, "counted %llu up", (unsigned long long)o.bytes_up);
  close(upstream);
  sl_set_policy_version(0);
}

static void test_setup_peek_deadlines(sl_loop *l, const struct sockaddr_in *front) {
  // Silent: nothing within the first-byte wait.
  int c1;
  uint64_t id = accept_with(l, front, NULL, &c1);
  sl_loop_peek(l, id, 5000, 100, 0, 1);
  saved_event ev;
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 2000, &ev) && ev.e.state == SL_PEEK_SILENT, "state %d, not silent", ev.e.state);
  sl_loop_refuse(l, id, SL_REFUSE_RESET, NULL, 0, 0, 0);
  int err;
  read_all(c1, NULL, 0, &err, 2000);
  CHECK(err == ECONNRESET, "a reset refusal reads errno %d", err);
  close(c1);
  // Stalled: bytes, then silence for stall_ms.
  int c2;
  uint64_t connect_us = sl_monotonic_us();
  id = accept_with(l, front, "pi", &c2);
  sl_loop_peek(l, id, 5000, 0, 100, 3);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 2000, &ev) && ev.e.state == SL_PEEK_STALLED, "state %d, not stalled", ev.e.state);
  // The deadline: dripping bytes never pushes it back. Each byte written 2 ms before it (counted
  // from the accept, no earlier than the connect; the loop's clock in whole milliseconds) is in
  // its report: none when this thread was held off a core until then (1 run at load 8, nice 19).
  sl_loop_peek(l, id, 400, 0, 0, 1000);
  size_t in_time = 0;
  for (int i = 0; i < 6; i++) {
    usleep(100 * 1000);
    write_all(c2, "n", 1);
    in_time += sl_monotonic_us() - connect_us < 398 * 1000;
  }
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 2000, &ev) && ev.e.state == SL_PEEK_TIMEOUT, "state %d, not timeout", ev.e.state);
  CHECK(ev.e.len >= in_time && ev.e.len <= 4, "%zu new bytes by the deadline, %zu written before it", ev.e.len, in_time);
  sl_loop_abort(l, id);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_ABORTED, "aborted in the waiting stage: end %d", o.end);
  close(c2);
  // Closed: the client leaves mid-peek.
  int c3;
  id = accept_with(l, front, "G", &c3);
  sl_loop_peek(l, id, 5000, 0, 0, 10);
  close(c3);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 2000, &ev) && ev.e.state == SL_PEEK_CLOSED, "state %d, not closed", ev.e.state);
  sl_loop_refuse(l, id, SL_REFUSE_DROP, NULL, 0, 0, 0);
  CHECK(wait_outcome(id, 5000, &o), "no outcome after the drop");
}

// An answer larger than the socket's buffers: the loop waits for EPOLLOUT (added to the socket's
// interest only when a write blocks) and writes the rest, then half-closes.
static void test_setup_refusal_answer_blocks(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  size_t len = 4u << 20;
  char *answer = malloc(len);
  for (size_t i = 0; i < len; i++) answer[i] = (char)(i * 7 + 1);
  CHECK(sl_loop_refuse(l, id, SL_REFUSE_ANSWER, answer, len, 5000, 1 << 20) == 0, "refuse");
  usleep(200 * 1000);
  char *got = malloc(len);
  int err;
  size_t n = read_all(client, got, len, &err, 5000);
  CHECK(n == len && err == 0 && pattern_ok(got, len, 1), "the client got %zu of %zu bytes (err %d), or other bytes", n, len, err);
  close(client);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome after the answer");
  free(answer);
  free(got);
}

// A loopback listener whose accept queue is full and never accepted from: the kernel drops
// further SYNs, so a dial to it never answers (and no packet leaves the host).
typedef struct {
  int full;
  int fillers[4];
  struct sockaddr_in addr;
} blackhole;

static blackhole blackhole_open(void) {
  blackhole bh = {.addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}};
  socklen_t len = sizeof bh.addr;
  bh.full = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bind(bh.full, (struct sockaddr *)&bh.addr, sizeof bh.addr);
  listen(bh.full, 0);
  getsockname(bh.full, (struct sockaddr *)&bh.addr, &len);
  for (int i = 0; i < 4; i++) {
    bh.fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    connect(bh.fillers[i], (struct sockaddr *)&bh.addr, sizeof bh.addr);
  }
  usleep(50 * 1000);
  return bh;
}

static void blackhole_close(blackhole *bh) {
  for (int i = 0; i < 4; i++) close(bh->fillers[i]);
  close(bh->full);
}

static void test_setup_dial_timeout(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  blackhole bh = blackhole_open();
  struct sockaddr_storage a = storage_of(&bh.addr);
  sl_loop_dial(l, id, &a, 1, 200, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.dialed == -1 && o.end == SL_END_ERROR && o.err != 0, "dialed %d, end %d, err %d", o.dialed, o.end, o.err);
  int err;
  read_all(client, NULL, 0, &err, 2000);
  CHECK(err == ECONNRESET, "the client saw errno %d, not a reset", err);
  close(client);
  blackhole_close(&bh);
}

// RFC 8305 §5: an address that does not answer within the attempt delay does not hold up the
// next one; the first to connect wins and the other is abandoned.
static void test_setup_dial_staggers(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  blackhole bh = blackhole_open();
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&listen_addr)};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  sl_loop_dial(l, id, addrs, 2, 5000, 100, SL_MAX_ADDRS, 10000, 0, true, 0, false);
  saved_event ev;
  CHECK(wait_event(SL_EV_CONNECTED, id, &seen, 3000, &ev), "no CONNECTED event");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  CHECK(ev.e.state == 1 && ev.e.err == 1, "dialed %d (err %d): the second address should win and splice", ev.e.state, ev.e.err);
  CHECK(ms >= 90 && ms < 2000, "connected after %ld ms, not after the 100 ms attempt delay", ms);
  int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  char c;
  CHECK(upstream >= 0 && read(upstream, &c, 1) == 1 && c == 'x', "the peeked byte did not reach the upstream");
  sl_loop_abort(l, id);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.dialed == 1 && o.attempts == 2 && o.attempt_err[0] == SL_ATTEMPT_CANCELLED, "dialed %d of %d, first %d", o.dialed, o.attempts,
        o.attempt_err[0]);
  close(client);
  close(upstream);
  blackhole_close(&bh);
}

// The descriptors this process has open now.
static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; // the listing's own
}

// Each attempt in flight is a descriptor, so admission may allow fewer at once than there are
// addresses (`parallel`): the loop never holds more, and at the cap the oldest attempt gives way
// once it had its share of the time left (split evenly between it and the addresses not yet
// tried), so an answering address late in the list is still reached within the connect timeout.
static void test_setup_dial_capped(sl_loop *l, const struct sockaddr_in *front) {
  for (int parallel = 1; parallel <= 2; parallel++) {
    int client;
    uint64_t id = accept_with(l, front, "x", &client);
    blackhole bh = blackhole_open();
    struct sockaddr_storage addrs[4] = {storage_of(&bh.addr), storage_of(&bh.addr), storage_of(&bh.addr), storage_of(&listen_addr)};
    int base = open_fds(), most = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    // 1200 ms in all, 50 ms attempt delay. parallel 1: 300 ms for each silent address, the
    // fourth starts at 900. parallel 2: the first two by 50 ms; the first gives way at 400
    // (1200 / 3) for the third, the second at 625 ((1200 - 50) / 2 after it began) for the fourth.
    CHECK(sl_loop_dial(l, id, addrs, 4, 1200, 50, parallel, 10000, 0, true, 0, false) == 0, "dial");
    saved_event ev;
    bool connected = false;
    for (int i = 0; i < 300 && !connected; i++) {
      int n = open_fds() - base;
      if (n > most) most = n;
      connected = wait_event(SL_EV_CONNECTED, id, &seen, 5, &ev);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK(connected && ev.e.state == 3, "parallel %d: no connection to the fourth address (connected %d, state %d)", parallel, connected, ev.e.state);
    CHECK(most >= 1 && most <= parallel, "parallel %d: %d descriptors held at once by the dial", parallel, most);
    CHECK(ms >= (parallel == 1 ? 850 : 575), "parallel %d: connected after %ld ms, before the silent addresses had their shares", parallel, ms);
    int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    char c;
    CHECK(upstream >= 0 && read(upstream, &c, 1) == 1 && c == 'x', "the peeked byte did not reach the upstream");
    sl_loop_abort(l, id);
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o), "no outcome");
    CHECK(o.dialed == 3 && o.attempts == 4, "dialed %d of %d", o.dialed, o.attempts);
    CHECK(o.attempt_err[0] == ETIMEDOUT && o.attempt_err[1] == ETIMEDOUT, "given up: %d %d", o.attempt_err[0], o.attempt_err[1]);
    CHECK(o.attempt_err[2] == (parallel == 1 ? ETIMEDOUT : SL_ATTEMPT_CANCELLED), "parallel %d: the third ended %d", parallel, o.attempt_err[2]);
    close(client);
    close(upstream);
    blackhole_close(&bh);
  }
}

// At the cap each attempt still has the attempt delay: 400 ms shared by four silent addresses
// would be 100 ms each; one at a time, as without a cap, the second starts at 250 ms and no third.
static void test_setup_dial_capped_keeps_the_delay(sl_loop *l, const struct sockaddr_in *front) {
  blackhole bh = blackhole_open();
  for (int parallel = 1; parallel <= 4; parallel += 3) {
    int client;
    uint64_t id = accept_with(l, front, "x", &client);
    struct sockaddr_storage addrs[4] = {storage_of(&bh.addr), storage_of(&bh.addr), storage_of(&bh.addr), storage_of(&bh.addr)};
    CHECK(sl_loop_dial(l, id, addrs, 4, 400, 250, parallel, 10000, 0, true, 0, false) == 0, "dial");
    sl_outcome o;
    CHECK(wait_outcome(id, 5000, &o), "no outcome");
    CHECK(o.err == ETIMEDOUT && o.attempts == 2 && o.attempt_err[0] == ETIMEDOUT && o.attempt_err[1] == ETIMEDOUT,
          "parallel %d: err %d, %d addresses tried", parallel, o.err, o.attempts);
    close(client);
  }
  blackhole_close(&bh);
}

// Why a failed dial ended, as the JS path says it (dial-first.ts): its deadline, with a silent
// address still in flight, is a timeout though a later address refused; when every address
// failed, the failure that came last in time, not the last address's.
static void test_setup_dial_failure_cause(sl_loop *l, const struct sockaddr_in *front) {
  struct sockaddr_in closed = closed_port();
  blackhole bh = blackhole_open();
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&closed)};
  // The second refuses after the 50 ms attempt delay; the first is still silent at 300 ms.
  CHECK(sl_loop_dial(l, id, addrs, 2, 300, 50, SL_MAX_ADDRS, 10000, 0, true, 0, false) == 0, "dial");
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.end == SL_END_ERROR && o.err == ETIMEDOUT, "a dial ended by its deadline: end %d, err %d", o.end, o.err);
  CHECK(o.attempts == 2 && o.attempt_err[0] == ETIMEDOUT && o.attempt_err[1] == ECONNREFUSED, "tried %d: %d %d", o.attempts, o.attempt_err[0],
        o.attempt_err[1]);
  close(client);
  blackhole_close(&bh);
}

// A verdict with a deadline of its own (a remembered DNS name it rested on): a dial that connects
// before it splices by itself; one that connects after it (here: the first address holds the dial
// past it) is reported first, with nothing sent upstream, as after a policy change.
static void test_setup_verdict_deadline(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "y", &client);
  struct sockaddr_storage a = storage_of(&listen_addr);
  sl_loop_dial(l, id, &a, 1, 5000, 250, SL_MAX_ADDRS, 10000, 0, false, sl_monotonic_us() + 5000000u, false);
  int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  char c;
  CHECK(upstream >= 0 && read(upstream, &c, 1) == 1 && c == 'y', "a verdict still in force was not spliced by the loop");
  sl_loop_abort(l, id);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  close(client);
  close(upstream);

  id = accept_with(l, front, "z", &client);
  blackhole bh = blackhole_open();
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&listen_addr)};
  // Expires 30 ms in; the second address is tried only after the 100 ms attempt delay.
  sl_loop_dial(l, id, addrs, 2, 5000, 100, SL_MAX_ADDRS, 10000, 0, false, sl_monotonic_us() + 30000u, false);
  saved_event ev;
  CHECK(wait_event(SL_EV_CONNECTED, id, &seen, 3000, &ev), "no CONNECTED event once the verdict's deadline passed");
  CHECK(ev.e.state == 1 && ev.e.err == 0, "dialed %d, err %d: should wait for the caller", ev.e.state, ev.e.err);
  upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  struct pollfd p = {.fd = upstream, .events = POLLIN};
  CHECK(upstream >= 0 && poll(&p, 1, 100) == 0, "bytes reached the upstream after the verdict's deadline");
  sl_loop_refuse(l, id, SL_REFUSE_RESET, NULL, 0, 0, 0);
  CHECK(wait_outcome(id, 5000, &o), "no outcome");
  CHECK(o.bytes_up == 0, "counted %llu up", (unsigned long long)o.bytes_up);
  int err;
  size_t n = read_all(upstream, NULL, 0, &err, 2000);
  CHECK(n == 0, "the upstream got %zu bytes", n);
  close(client);
  close(upstream);
  blackhole_close(&bh);
}

static void test_setup_sheds_at_emfile(sl_loop *l, const struct sockaddr_in *front) {
  struct rlimit old;
  getrlimit(RLIMIT_NOFILE, &old);
  struct rlimit low = {.rlim_cur = 64, .rlim_max = old.rlim_max};
  CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
  // Three clients connect first (their sockets exist), then every other descriptor is taken.
  int clients[3];
  for (int i = 0; i < 3; i++) clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int fillers[64], n_fill = 0;
  while (n_fill < 64) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    fillers[n_fill++] = fd;
  }
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  for (int i = 0; i < 3; i++) CHECK(connect(clients[i], (const struct sockaddr *)front, sizeof *front) == 0, "connect %d", i);
  saved_event ev;
  int shed = 0;
  while (shed < 3 && wait_event(SL_EV_SHED, 0, &seen, 3000, &ev)) {
    CHECK(ev.e.tag == 7 && (ev.e.err == EMFILE || ev.e.err == ENFILE), "tag %d err %d", ev.e.tag, ev.e.err);
    shed++;
  }
  CHECK(shed == 3, "%d of 3 refusals reported", shed);
  for (int i = 0; i < 3; i++) {
    int err;
    read_all(clients[i], NULL, 0, &err, 2000);
    CHECK(err == ECONNRESET, "client %d saw errno %d, not a reset", i, err);
    close(clients[i]);
  }
  usleep(300 * 1000);
  getrusage(RUSAGE_SELF, &after);
  long cpu_us = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) * 1000000L + (after.ru_utime.tv_usec - before.ru_utime.tv_usec) +
                (after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1000000L + (after.ru_stime.tv_usec - before.ru_stime.tv_usec);
  CHECK(cpu_us < 150000, "%ld µs of CPU while out of descriptors: a busy loop", cpu_us);
  for (int i = 0; i < n_fill; i++) close(fillers[i]);
  setrlimit(RLIMIT_NOFILE, &old);
  // Descriptors free again: accepting goes on.
  int c;
  uint64_t id = accept_with(l, front, "ok", &c);
  sl_loop_abort(l, id);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o), "no outcome after recovery");
  close(c);
}

// A burst queued at once is taken in full: a wake-up takes one connection, and while the
// listener is ready again on the next turn the batch doubles (on_accept), so nothing is left
// waiting in the queue and no wake-up is lost.
static void test_setup_burst_is_accepted(sl_loop *l, const struct sockaddr_in *front) {
  enum { BURST = 100 };
  int clients[BURST];
  for (int i = 0; i < BURST; i++) {
    clients[i] = connect_to(front);
    CHECK(clients[i] >= 0, "connect %d: %s", i, strerror(errno));
  }
  uint64_t ids[BURST];
  int got = 0;
  saved_event ev;
  while (got < BURST && wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev)) ids[got++] = ev.e.id;
  CHECK(got == BURST, "%d of %d queued connections accepted", got, BURST);
  for (int i = 0; i < got; i++) sl_loop_abort(l, ids[i]);
  for (int i = 0; i < got; i++) {
    sl_outcome o;
    CHECK(wait_outcome(ids[i], 5000, &o) && o.end == SL_END_ABORTED, "connection %d: no outcome", i);
  }
  for (int i = 0; i < BURST; i++)
    if (clients[i] >= 0) close(clients[i]);
}

// A socket whose file outlives the loop's descriptor stays in the epoll set after the loop closes
// it (close(2) removes it only with the file's last reference): sl_loop_add's sockets are dup(2)s
// of Node's, and a fork(2)'s child holds every descriptor until its exec. Its late bytes and FIN
// must reach no connection made after it, the one allocated where it was included: here they
// would end that connection's client direction early (its next short read taken for the end).
static void test_late_events_of_a_closed_shared_socket(sl_loop *l, const struct sockaddr_in *front) {
  for (uint64_t round = 0; round < 8; round++) {
    uint64_t stale_id = 5000 + round;
    int stale_client, stale_ours, stale_up, stale_up_ours;
    pair(&stale_client, &stale_ours);
    pair(&stale_up, &stale_up_ours);
    int kept = dup(stale_ours);
    CHECK(sl_loop_add(l, stale_id, stale_ours, stale_up_ours, NULL, 0, NULL, 0, 10000) == 0, "sl_loop_add");
    sl_loop_abort(l, stale_id);
    sl_outcome o;
    CHECK(wait_outcome(stale_id, 5000, &o) && o.end == SL_END_ABORTED, "the first connection was not aborted");
    usleep(5 * 1000); // its turn is over: the struct is freed
    int client;
    uint64_t id = accept_with(l, front, "one", &client);
    struct sockaddr_storage a = storage_of(&listen_addr);
    CHECK(sl_loop_dial(l, id, &a, 1, 5000, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false) == 0, "dial");
    int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    CHECK(upstream >= 0, "not dialed");
    char buf[64];
    size_t got = read_n(upstream, buf, sizeof buf, 3, 5000);
    CHECK(got == 3 && memcmp(buf, "one", 3) == 0, "round %llu: the upstream got %zu bytes", (unsigned long long)round, got);
    // Edges on the closed socket's registration: bytes, then its FIN.
    write_all(stale_client, "stale", 5);
    shutdown(stale_client, SHUT_WR);
    usleep(20 * 1000);
    write_all(client, "two", 3);
    got = read_n(upstream, buf, sizeof buf, 3, 5000);
    CHECK(got == 3 && memcmp(buf, "two", 3) == 0, "round %llu: the upstream got %zu bytes", (unsigned long long)round, got);
    struct pollfd p = {.fd = upstream, .events = POLLIN};
    CHECK(poll(&p, 1, 50) == 0, "round %llu: the upstream saw an end the client never sent", (unsigned long long)round);
    shutdown(client, SHUT_WR);
    int err;
    CHECK(read_all(upstream, buf, sizeof buf, &err, 5000) == 0 && err == 0, "round %llu: no clean FIN after the client's", (unsigned long long)round);
    write_all(upstream, "back", 4);
    shutdown(upstream, SHUT_WR);
    CHECK(read_all(client, buf, sizeof buf, &err, 5000) == 4 && err == 0, "round %llu: the client did not get the answer", (unsigned long long)round);
    CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_up == 6 && o.bytes_down == 4, "round %llu: end %d, %llu up, %llu down",
          (unsigned long long)round, o.end, (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
    pthread_mutex_lock(&lock);
    CHECK(count_of(stale_id) == 1, "the closed connection reported %d times", count_of(stale_id));
    pthread_mutex_unlock(&lock);
    close(kept);
    close(stale_client);
    close(stale_up);
    close(client);
    close(upstream);
  }
}

/** ACCEPTED events from *from on within `ms`, their ids in `ids` (up to `max`). */
static int accepted_within(int *from, int ms, uint64_t *ids, int max) {
  int n = 0;
  saved_event ev;
  while (n < max && wait_event(SL_EV_ACCEPTED, 0, from, ms, &ev)) ids[n++] = ev.e.id;
  return n;
}

// The cap of unanswered connections (sl_loop_accept_cap: the caller's descriptor budget): at it
// the loop accepts nothing more, the kernel's queue holds the rest, and each answer (a command,
// or sl_loop_answered) lets exactly one more in, with no timer; counted as a pause.
static void test_setup_cap_of_unanswered(sl_loop *l, const struct sockaddr_in *front) {
  uint64_t capped0, out0, capped1, out1;
  sl_loop_accept_pauses(l, &capped0, &out0);
  CHECK(sl_loop_accept_cap(l, 2) == 0, "sl_loop_accept_cap");
  enum { N = 5 };
  int clients[N];
  for (int i = 0; i < N; i++) {
    clients[i] = connect_to(front);
    CHECK(clients[i] >= 0, "connect %d: %s", i, strerror(errno));
    write_all(clients[i], "x", 1);
  }
  uint64_t ids[N];
  int got = accepted_within(&seen, 2000, ids, 2);
  CHECK(got == 2, "%d of the first 2 connections accepted under a cap of 2", got);
  CHECK(accepted_within(&seen, 200, ids + got, 1) == 0, "a third connection accepted while 2 were unanswered");
  sl_loop_accept_pauses(l, &capped1, &out1);
  CHECK(capped1 > capped0 && out1 == out0, "pauses at the cap %llu -> %llu, out of descriptors %llu -> %llu", (unsigned long long)capped0,
        (unsigned long long)capped1, (unsigned long long)out0, (unsigned long long)out1);
  // Taken on by the caller, still open: its slot is free.
  sl_loop_answered(l, ids[0]);
  got += accepted_within(&seen, 2000, ids + got, 1);
  CHECK(got == 3, "no connection accepted after an answer");
  CHECK(accepted_within(&seen, 200, ids + got, 1) == 0, "more than one connection accepted for one answer");
  // A command answers too; answering one twice frees nothing more.
  sl_loop_abort(l, ids[1]);
  sl_loop_answered(l, ids[0]);
  got += accepted_within(&seen, 2000, ids + got, 1);
  CHECK(got == 4, "no connection accepted after a command");
  CHECK(accepted_within(&seen, 200, ids + got, 1) == 0, "a slot freed twice");
  // A higher cap lets the rest in at once.
  sl_loop_accept_cap(l, SL_MAX_UNANSWERED);
  got += accepted_within(&seen, 2000, ids + got, N - got);
  CHECK(got == N, "%d of %d accepted once the cap was raised", got, N);
  for (int i = 0; i < got; i++) sl_loop_abort(l, ids[i]);
  for (int i = 0; i < got; i++) {
    sl_outcome o;
    CHECK(wait_outcome(ids[i], 5000, &o), "connection %d: no outcome", i);
  }
  for (int i = 0; i < N; i++) close(clients[i]);
}

// A connection waiting in the upstream listener's queue, accepted (blocking), or -1 after `ms`.
static int accept_within(int ms) {
  struct pollfd p = {.fd = listener, .events = POLLIN};
  if (poll(&p, 1, ms) != 1) return -1;
  return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

// A client that resets while its upstream is dialed (the first address does not answer) ends
// the dial at once: every attempt's descriptor closed, the outcome the client's reset, and nothing
// it sent goes upstream (without egressd between them its connection would have ended before the
// upstream's handshake). Before, the dial went on for the whole connect timeout (20 s here), the
// next address was dialed and given the client's bytes.
static void test_setup_client_resets_during_dial(sl_loop *l, const struct sockaddr_in *front) {
  blackhole bh = blackhole_open();
  int client;
  uint64_t id = accept_with(l, front, "flight", &client);
  int before = open_fds();
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&listen_addr)};
  // The attempt delay is long enough that a loaded machine cannot reach the second address
  // before the reset; the check below waits it out.
  sl_loop_dial(l, id, addrs, 2, 20000, 1000, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  write_all(client, "more bytes", 10);
  // The dial under way: its first attempt's socket is open (a reset before it is the next
  // test's). Waited for, not slept: the loop's thread may run late on a loaded machine.
  for (int i = 0; i < 3000 && open_fds() <= before; i++) usleep(1000);
  CHECK(open_fds() > before, "the dial's first attempt never began");
  reset_close(client);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's reset (connect timeout 20 s)");
  CHECK(o.end == SL_END_CLIENT_RESET && o.err == ECONNRESET && o.dialed == -1 && o.bytes_up == 0, "end %d, err %d, dialed %d, %llu up", o.end, o.err,
        o.dialed, (unsigned long long)o.bytes_up);
  CHECK(o.attempts >= 1 && o.attempt_err[0] == SL_ATTEMPT_CANCELLED, "%d attempts, the first ended %d", o.attempts, o.attempt_err[0]);
  // The test's client and the loop's, and every attempt: gone.
  int left = open_fds() - (before - 2);
  CHECK(left == 0, "%d descriptors still held after the outcome", left);
  // Past the attempt delay: a dial still going would reach the second address now.
  int upstream = accept_within(1200);
  CHECK(upstream < 0, "the upstream was dialed after the client's reset");
  if (upstream >= 0) close(upstream);
  blackhole_close(&bh);
}

// A dial asked for after the connection `id` ended (its client reset): nothing is dialed, and its
// one outcome stands.
static void check_late_dial_does_nothing(sl_loop *l, uint64_t id) {
  struct sockaddr_storage a = storage_of(&listen_addr);
  sl_loop_dial(l, id, &a, 1, 5000, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  int upstream = accept_within(100);
  CHECK(upstream < 0, "a connection whose client had reset was dialed");
  if (upstream >= 0) close(upstream);
  CHECK(count_of(id) == 1, "%d outcomes", count_of(id));
}

// A client that resets while its connection waits for a command (its name resolved, its verdict
// judged) is reported at once, not when the command comes; a dial asked for later does nothing.
static void test_setup_client_resets_while_waiting(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "x", &client);
  reset_close(client);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's reset");
  CHECK(o.end == SL_END_CLIENT_RESET && o.dialed == -1 && o.attempts == 0, "end %d, dialed %d, %d attempts", o.end, o.dialed, o.attempts);
  check_late_dial_does_nothing(l, id);
}

// A client that resets while its flight is read: the read takes the reset's error, so no later
// event would show it, and a dial command sent meanwhile (the caller judged on what came before)
// must not find the connection waiting: it ends at once as the client's reset. Before, the loop
// reported CLOSED and waited; the dial command that crossed the report dialed, until the connect
// timeout (a sandbox resetting 50 ms after its first byte hit this 19 times in 20).
static void test_setup_client_resets_while_its_flight_is_read(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "G", &client);
  sl_loop_peek(l, id, 5000, 0, 0, 10);
  usleep(20 * 1000);
  reset_close(client);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's reset");
  CHECK(o.end == SL_END_CLIENT_RESET && o.err == ECONNRESET && o.dialed == -1, "end %d, err %d, dialed %d", o.end, o.err, o.dialed);
  check_late_dial_does_nothing(l, id);
}

// The same under a peek the caller commanded (sl_loop_peek: its parser asked for more, no listener
// rules): what came after the last report and short of report_at, then the reset, is reported
// (CLOSED) before the outcome, once, as under the loop's own reading (client_left): the caller
// judges those bytes as the JavaScript path does. Before, they went with the connection.
static void test_setup_client_resets_under_a_commanded_peek(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "G", &client);
  int from = seen;
  sl_loop_peek(l, id, 5000, 0, 0, 100);
  write_all(client, "ET / HTTP/1.1\r\nBad Line\r\n", 26);
  usleep(20 * 1000);
  reset_close(client);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's reset");
  CHECK(o.end == SL_END_CLIENT_RESET && o.dialed == -1, "end %d, dialed %d", o.end, o.dialed);
  // Emitted before the outcome, on the loop's thread: there once the outcome is.
  char got[64];
  size_t n = 0;
  int reports = 0, state = -1;
  saved_event ev;
  while (wait_event(SL_EV_PEEK, id, &from, 0, &ev) && n + ev.e.len <= sizeof got) {
    memcpy(got + n, ev.bytes, ev.e.len);
    n += ev.e.len;
    state = ev.e.state;
    reports++;
  }
  CHECK(n == 26 && memcmp(got, "ET / HTTP/1.1\r\nBad Line\r\n", 26) == 0, "%zu of the 26 bytes before the reset reported", n);
  CHECK(reports == 1 && state == SL_PEEK_CLOSED, "%d reports, the last %d", reports, state);
  check_late_dial_does_nothing(l, id);
}

// A client's FIN during the dial is not its going away (EPOLLRDHUP alone): it sent its request and
// reads the answer. The request and the FIN reach the upstream once an address answers, and the
// answer comes back (`printf 'GET / HTTP/1.0\r\n\r\n' | nc -q0`).
static void test_setup_client_fin_during_dial(sl_loop *l, const struct sockaddr_in *front) {
  blackhole bh = blackhole_open();
  int client;
  uint64_t id = accept_with(l, front, "request", &client);
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&listen_addr)};
  sl_loop_dial(l, id, addrs, 2, 20000, 300, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  usleep(20 * 1000);
  shutdown(client, SHUT_WR);
  int upstream = accept_within(3000);
  CHECK(upstream >= 0, "the dial never reached the second address");
  if (upstream >= 0) {
    char buf[64] = {0};
    int err;
    size_t n = read_all(upstream, buf, sizeof buf, &err, 3000);
    CHECK(n == 7 && memcmp(buf, "request", 7) == 0 && err == 0, "the upstream got %zu bytes (%.*s), then errno %d", n, (int)n, buf, err);
    write_all(upstream, "answer", 6);
    shutdown(upstream, SHUT_WR);
    n = read_all(client, buf, sizeof buf, &err, 3000);
    CHECK(n == 6 && memcmp(buf, "answer", 6) == 0 && err == 0, "the client got %zu bytes, then errno %d", n, err);
    close(upstream);
  }
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.dialed == 1 && o.bytes_up == 7 && o.bytes_down == 6, "end %d, dialed %d, %llu up",
        o.end, o.dialed, (unsigned long long)o.bytes_up);
  close(client);
  blackhole_close(&bh);
}

// A TLS client's FIN while its upstream is dialed, the dial told so (fin_ends): the client can
// never finish its handshake (RFC 8446 §2), so the FIN ends the dial at once, as a reset does:
// every attempt's descriptor closed, SL_END_CLIENT_FIN, nothing sent upstream, the client reset.
// Before, the FIN left the dial running to its connect timeout (20 s here), and the next address
// was dialed and given the client's bytes.
static void test_setup_tls_client_fin_during_dial(sl_loop *l, const struct sockaddr_in *front) {
  blackhole bh = blackhole_open();
  int client;
  uint64_t id = accept_with(l, front, "hello", &client);
  int before = open_fds();
  struct sockaddr_storage addrs[2] = {storage_of(&bh.addr), storage_of(&listen_addr)};
  sl_loop_dial(l, id, addrs, 2, 20000, 1000, SL_MAX_ADDRS, 10000, 0, false, 0, true);
  for (int i = 0; i < 3000 && open_fds() <= before; i++) usleep(1000);
  CHECK(open_fds() > before, "the dial's first attempt never began");
  shutdown(client, SHUT_WR);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's FIN (connect timeout 20 s)");
  CHECK(o.end == SL_END_CLIENT_FIN && o.err == 0 && o.dialed == -1 && o.bytes_up == 0, "end %d, err %d, dialed %d, %llu up", o.end, o.err, o.dialed,
        (unsigned long long)o.bytes_up);
  CHECK(o.attempts >= 1 && o.attempt_err[0] == SL_ATTEMPT_CANCELLED, "%d attempts, the first ended %d", o.attempts, o.attempt_err[0]);
  // Only the test's client is left: the loop's side and every attempt are closed.
  int left = open_fds() - (before - 1);
  CHECK(left == 0, "%d descriptors still held after the outcome", left);
  // The client is reset, not answered with a FIN that would pass for an answer that ended.
  char buf[8];
  int err = 0;
  read_all(client, buf, sizeof buf, &err, 1000);
  CHECK(err == ECONNRESET, "the client read errno %d, not a reset", err);
  int upstream = accept_within(1200);
  CHECK(upstream < 0, "the upstream was dialed after the client's FIN");
  if (upstream >= 0) close(upstream);
  close(client);
  blackhole_close(&bh);
}

// A TLS client's FIN while its connection waits for a command (its name resolved), told so by
// sl_loop_fin_ends: reported at once, whether the FIN came before the command (here) or after it;
// a dial asked for later does nothing. Without the command, the same FIN waits (an HTTP client's
// half-close): only the caller knows what the first flight was.
static void test_setup_tls_client_fin_while_waiting(sl_loop *l, const struct sockaddr_in *front) {
  int client;
  uint64_t id = accept_with(l, front, "hello", &client);
  shutdown(client, SHUT_WR);
  usleep(50 * 1000);
  CHECK(count_of(id) == 0, "a FIN ended a connection not told that a FIN ends it");
  sl_loop_fin_ends(l, id);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of fin_ends after the client's FIN");
  CHECK(o.end == SL_END_CLIENT_FIN && o.dialed == -1 && o.attempts == 0, "end %d, dialed %d, %d attempts", o.end, o.dialed, o.attempts);
  check_late_dial_does_nothing(l, id);
  close(client);

  id = accept_with(l, front, "hello", &client);
  sl_loop_fin_ends(l, id);
  usleep(20 * 1000);
  CHECK(count_of(id) == 0, "fin_ends alone ended the connection");
  shutdown(client, SHUT_WR);
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's FIN after fin_ends");
  CHECK(o.end == SL_END_CLIENT_FIN && o.dialed == -1, "end %d, dialed %d", o.end, o.dialed);
  close(client);
}

static void test_setup(void) {
  struct sockaddr_in front;
  sl_loop *l = setup_loop(7, &front);
  RUN(test_setup_dial_timeout(l, &front));
  RUN(test_setup_dial_staggers(l, &front));
  RUN(test_setup_dial_capped(l, &front));
  RUN(test_setup_dial_failure_cause(l, &front));
  RUN(test_setup_dial_capped_keeps_the_delay(l, &front));
  RUN(test_setup_dial_next_address_then_splice(l, &front));
  RUN(test_setup_client_resets_during_dial(l, &front));
  RUN(test_setup_client_resets_while_waiting(l, &front));
  RUN(test_setup_client_resets_while_its_flight_is_read(l, &front));
  RUN(test_setup_client_resets_under_a_commanded_peek(l, &front));
  RUN(test_setup_client_fin_during_dial(l, &front));
  RUN(test_setup_tls_client_fin_during_dial(l, &front));
  RUN(test_setup_tls_client_fin_while_waiting(l, &front));
  RUN(test_setup_policy_change_asks_again(l, &front));
  RUN(test_setup_verdict_deadline(l, &front));
  RUN(test_setup_peek_deadlines(l, &front));
  RUN(test_setup_refusal_answer_blocks(l, &front));
  RUN(test_setup_sheds_at_emfile(l, &front));
  RUN(test_setup_burst_is_accepted(l, &front));
  RUN(test_setup_cap_of_unanswered(l, &front));
  RUN(test_late_events_of_a_closed_shared_socket(l, &front));
  sl_loop_unlisten(l, 7);
  usleep(50 * 1000);
  CHECK(connect_to(&front) < 0 && errno == ECONNREFUSED, "still accepting after unlisten");
  CHECK(sl_loop_size(l) == 0, "%u connections left", sl_loop_size(l));
  sl_loop_stop(l);
}

// ---- short of descriptors: the loop's own cache gives way, a carried connection is never cut -----

/** Takes every descriptor left under a limit of 256 (the old limit in *old); how many it took. */
static int fill_descriptors(int *fillers, int max, struct rlimit *old) {
  getrlimit(RLIMIT_NOFILE, old);
  struct rlimit low = {.rlim_cur = 256, .rlim_max = old->rlim_max};
  CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit");
  int n = 0;
  while (n < max) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    fillers[n++] = fd;
  }
  return n;
}

static void release_descriptors(int *fillers, int n, const struct rlimit *old) {
  for (int i = 0; i < n; i++) close(fillers[i]);
  setrlimit(RLIMIT_NOFILE, old);
}

/** Writes `n` bytes of pattern `seed` to `from` and reads them at `to`; whether all came intact. */
static bool carried(int from, int to, size_t n, unsigned seed) {
  char *got = malloc(n);
  writer_arg a = {from, seed};
  pthread_t t;
  pthread_create(&t, NULL, writer, &a);
  size_t have = read_n(to, got, n, n, 10000);
  pthread_join(t, NULL);
  bool ok = have == n && pattern_ok(got, n, seed);
  free(got);
  return ok;
}

// Out of descriptors (RLIMIT_NOFILE reached by something else): the pipes the loop keeps pooled
// are closed to make room, so a waiting connection is accepted rather than reset; and a
// connection that needs a pipe while none can be made is carried through the loop's buffer
// rather than cut.
static void test_out_of_descriptors(void) {
  struct sockaddr_in front;
  sl_loop *l = setup_loop(10, &front);
  // A bulk transfer leaves its pipe in the pool.
  conn_ends e = hand_over(l, 9001, NULL, NULL, 10000);
  CHECK(carried(e.client, e.upstream, BULK, 9), "the first transfer");
  close(e.client);
  close(e.upstream);
  sl_outcome o;
  CHECK(wait_outcome(9001, 5000, &o), "no outcome");
  int fillers[256];
  struct rlimit old;
  int n = fill_descriptors(fillers, 256, &old);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 && n > 0) {
    close(fillers[--n]);
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  }
  CHECK(c >= 0 && connect(c, (const struct sockaddr *)&front, sizeof front) == 0, "connect: %s", strerror(errno));
  saved_event ev;
  int from = seen;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev), "not accepted with pipes pooled");
  CHECK(!wait_event(SL_EV_SHED, 0, &from, 1, &ev), "shed while pooled pipes held descriptors");
  sl_loop_abort(l, ev.e.id);
  CHECK(wait_outcome(ev.e.id, 5000, &o), "no outcome");
  close(c);
  release_descriptors(fillers, n, &old);
  // A dial, too: the pool refilled by a transfer, a connection accepted, then every descriptor
  // taken; its upstream's socket comes from the pool's.
  e = hand_over(l, 9003, NULL, NULL, 10000);
  CHECK(carried(e.client, e.upstream, BULK, 13), "the third transfer");
  close(e.client);
  close(e.upstream);
  CHECK(wait_outcome(9003, 5000, &o), "no outcome");
  c = connect_to(&front);
  CHECK(c >= 0 && wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev), "not accepted");
  uint64_t dialed = ev.e.id;
  n = fill_descriptors(fillers, 256, &old);
  struct sockaddr_storage to = storage_of(&listen_addr);
  sl_loop_dial(l, dialed, &to, 1, 5000, 250, SL_MAX_ADDRS, 10000, 0, true, 0, false);
  CHECK(wait_event(SL_EV_CONNECTED, dialed, &seen, 3000, &ev), "the dial did not connect with pipes pooled");
  sl_loop_abort(l, dialed);
  CHECK(wait_outcome(dialed, 5000, &o) && o.dialed == 0, "dialed %d, attempt errno %d", o.dialed, o.attempt_err[0]);
  release_descriptors(fillers, n, &old);
  close(c);
  int u = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  if (u >= 0) close(u);
  // Handed over first, then every descriptor taken (the pool is empty now): no pipe for it.
  e = hand_over(l, 9002, NULL, NULL, 10000);
  n = fill_descriptors(fillers, 256, &old);
  int spare[2];
  CHECK(pipe(spare) != 0 && errno == EMFILE, "a pipe could still be made");
  CHECK(carried(e.client, e.upstream, BULK, 11), "a transfer with no pipe to be had was not carried whole");
  shutdown(e.upstream, SHUT_WR);
  char b;
  CHECK(read_n(e.client, &b, 1, 1, 5000) == 0, "the client did not get the upstream's FIN");
  CHECK(wait_outcome(9002, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_up == BULK, "end %d, %llu up", o.end, (unsigned long long)o.bytes_up);
  release_descriptors(fillers, n, &old);
  close(e.client);
  close(e.upstream);
  sl_loop_stop(l);
}

// ---- the first flight (first_flight.c, and the loop reading it by itself) ----------------------

/** A ClientHello of `body` bytes (content irrelevant to framing) cut into records of `frag` bytes. */
static size_t hello_records(uint8_t *out, size_t body, size_t frag) {
  uint8_t msg[8192];
  size_t mlen = 4 + body;
  msg[0] = 1;
  msg[1] = (uint8_t)(body >> 16);
  msg[2] = (uint8_t)(body >> 8);
  msg[3] = (uint8_t)body;
  for (size_t i = 0; i < body; i++) msg[4 + i] = (uint8_t)(i * 13 + 5);
  size_t o = 0;
  for (size_t at = 0; at < mlen; at += frag) {
    size_t n = mlen - at < frag ? mlen - at : frag;
    out[o++] = 0x16;
    out[o++] = 3;
    out[o++] = 1;
    out[o++] = (uint8_t)(n >> 8);
    out[o++] = (uint8_t)n;
    memcpy(out + o, msg + at, n);
    o += n;
  }
  return o;
}

static bool ff_str(const char *s) {
  return ff_complete((const uint8_t *)s, strlen(s), 16384);
}

static void test_first_flight_framing(void) {
  uint8_t h[9000];
  // One record, then the same hello in records of 1, 2, 100 bytes (RFC 8446 §5.1): complete at
  // the last byte and at no prefix before it.
  size_t frags[] = {10000, 1, 2, 100};
  for (size_t f = 0; f < sizeof frags / sizeof frags[0]; f++) {
    size_t n = hello_records(h, 517, frags[f]);
    size_t early = 0;
    for (size_t k = 0; k < n; k++) early += ff_complete(h, k, 16384);
    CHECK(early == 0 && ff_complete(h, n, 16384), "records of %zu: complete at %zu prefixes, at the end %d", frags[f], early, ff_complete(h, n, 16384));
    CHECK(!ff_may_stall(h, 1), "a handshake record's first byte may stall");
  }
  // What the parser answers at once: another record type next, a bad version, an empty record,
  // a first message other than a ClientHello, a hello that cannot end within the cap.
  size_t n = hello_records(h, 517, 100);
  h[105] = 0x17;
  CHECK(ff_complete(h, 110, 16384), "an application-data record inside the hello");
  n = hello_records(h, 517, 100);
  h[106] = 2;
  CHECK(ff_complete(h, 110, 16384), "a continuation record of version 2");
  uint8_t empty[] = {0x16, 3, 1, 0, 0};
  CHECK(ff_complete(empty, 5, 16384), "an empty handshake record");
  n = hello_records(h, 517, 10000);
  h[5] = 2;
  CHECK(ff_complete(h, 9, 16384), "a ServerHello first");
  n = hello_records(h, 8000, 10000);
  CHECK(ff_complete(h, 9, 4096), "a hello declared longer than the cap");
  (void)n;
  // HTTP: the head ends at an empty line, CRLF or a bare LF; empty lines before it end nothing.
  CHECK(!ff_str("GET / HTTP/1.1\r\nHost: a.test\r\n") && ff_str("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), "a CRLF head");
  CHECK(ff_str("GET / HTTP/1.1\nHost: a.test\n\n"), "a bare-LF head");
  CHECK(!ff_str("\r\n\r\nGET / HTTP/1.1\r\n"), "leading empty lines");
  CHECK(ff_str("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET"), "more leading empty lines than the parser takes");
  // Neither TLS nor HTTP: at once. Could still open a request line: not yet, and it may stall.
  CHECK(ff_str("SSH-2.0-OpenSSH_9.2\r\n") && ff_str("\x17\x03\x03") && ff_str("GET\r\n"), "not HTTP");
  CHECK(!ff_str("pi") && ff_may_stall((const uint8_t *)"pi", 2), "a partial method");
  CHECK(!ff_str("ping ") && ff_may_stall((const uint8_t *)"ping ", 5), "a method and a space");
  CHECK(!ff_str("GET / HTTP/1.1\r\n") && !ff_may_stall((const uint8_t *)"GET / HTTP/1.1\r\n", 16), "a whole request line: HTTP, no stall");
  CHECK(ff_sniff((const uint8_t *)"\x80\x2e\x01\x03\x01", 5) == FF_TLS && ff_str("\x80\x2e\x01\x03\x01"), "SSLv2: the parser's");
}

// A first flight that drips in one byte per read: the loop asks ff_next after every read, and each
// byte must be looked at once (a few header bytes of a record being reassembled again), never
// the whole flight per read. The stateless walk cost about 100 ms of the loop thread per
// connection for a 16 KiB flight, on the thread every tenant's connections share. At every
// prefix ff_next answers as ff_complete, and ff_next_may_stall as ff_may_stall.
static void drip_check(const char *what, const uint8_t *b, size_t n, size_t cap) {
  ff_progress p = {0};
  size_t k = 1, wrong = 0;
  bool done = false;
  for (; k <= n && !done; k++) {
    done = ff_next(&p, b, k, cap);
    if (done != ff_complete(b, k, cap) || (!done && ff_next_may_stall(&p, b, k) != ff_may_stall(b, k))) wrong++;
  }
  CHECK(wrong == 0, "%s: ff_next disagrees with ff_complete at %zu prefixes", what, wrong);
  // Each byte once, and per read at most the 9 header bytes of the record being reassembled.
  CHECK(p.examined <= 10 * n, "%s: %zu bytes looked at over a one-byte drip of %zu", what, p.examined, n);
}

static void test_first_flight_dripped_is_read_once(void) {
  static uint8_t b[16384];
  // A request target that never ends (the shape stays undecided, so the stall wait is asked too).
  memcpy(b, "GET /", 5);
  memset(b + 5, 'a', sizeof b - 5);
  drip_check("a 16 KiB request target", b, sizeof b, sizeof b);
  // A request head of many short header lines that never ends.
  memcpy(b, "GET / HTTP/1.1\r\n", 16);
  for (size_t i = 16; i + 5 <= sizeof b; i += 5) memcpy(b + i, "a:b\r\n", 5);
  drip_check("a 16 KiB head without its end", b, sizeof b - 1, sizeof b);
  // A method of 16 KiB, and leading empty lines then a method.
  memset(b, 'G', sizeof b);
  drip_check("a 16 KiB method", b, sizeof b, sizeof b);
  // A ClientHello in records of one byte of handshake each, until it cannot end within the cap.
  static uint8_t h[16384 * 6 + 64];
  size_t n = hello_records(h, 2700, 1);
  drip_check("a hello in 1-byte records", h, n < 16384 ? n : 16384, 16384);
  // And whole hellos in records of 1, 2, 3, 100 bytes, each ending within the cap.
  size_t frags[] = {1, 2, 3, 100, 10000};
  for (size_t f = 0; f < sizeof frags / sizeof frags[0]; f++) {
    n = hello_records(h, 517, frags[f]);
    drip_check("a 517-byte hello", h, n, 16384);
  }
  const char *heads[] = {"\r\n\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "GET / HTTP/1.1\nHost: a.test\n\n", "ping \r\n", "A  B   hTtP/1.1\r\n\r\n", "\r\r\n"};
  for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) drip_check(heads[i], (const uint8_t *)heads[i], strlen(heads[i]), 16384);
}

static sl_loop *rules_loop;
// rules_front accepts at once; eager_front only once bytes came (TCP_DEFER_ACCEPT), so a test
// knows what is there at the accept.
static struct sockaddr_in rules_front, eager_front;

/** Events for `id` from *from on, of any kind, until `ms` pass with none; how many. */
static int events_for(uint64_t id, int from, int ms) {
  usleep((useconds_t)ms * 1000);
  int n = 0;
  pthread_mutex_lock(&lock);
  for (int i = from; i < n_events; i++) n += events[i].e.id == id;
  pthread_mutex_unlock(&lock);
  return n;
}

static long ms_since(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

// A flight written in pieces a few milliseconds apart is one report: unless this thread was held
// off a core for SL_FLIGHT_GRACE_MS between its first and last piece (a loaded machine), when the
// loop rightly reports what it has. Such an attempt proves nothing and is made again (see
// LATE_ATTEMPTS).

/**
 * Whether the last of the bytes written at `t0` and `t1` (CLOCK_MONOTONIC) came within the grace
 * the loop counts from its read of the first: read no earlier than written, by a clock in whole
 * milliseconds (so 1 ms of it may be early), its events run before its timers in a turn.
 */
static bool within_grace(const struct timespec *t0, const struct timespec *t1) {
  long us = (t1->tv_sec - t0->tv_sec) * 1000000L + (t1->tv_nsec - t0->tv_nsec) / 1000;
  return us < (SL_FLIGHT_GRACE_MS - 2) * 1000L;
}

/** Writes `n` pieces (`at` offsets, `pause_ms` apart); false when the last came too late for one report (within_grace). */
static bool write_pieces(int fd, const uint8_t *b, const size_t *at, int n, int pause_ms) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < n; i++) {
    if (i) usleep((useconds_t)pause_ms * 1000);
    write_all(fd, b + at[i], at[i + 1] - at[i]);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return within_grace(&t0, &t1);
}

/** Waits for the end of `id` (aborted) and skips every event it made. */
static void discard_attempt(uint64_t id) {
  sl_loop_abort(rules_loop, id);
  sl_outcome o;
  wait_outcome(id, 5000, &o);
  pthread_mutex_lock(&lock);
  seen = n_events;
  pthread_mutex_unlock(&lock);
}

/**
 * A new connection to eager_front sends `b` in `pieces` pieces 10 ms apart (`at`: where each
 * starts, then the end): it must be reported once, as ACCEPTED with every byte.
 */
static void check_one_report(const uint8_t *b, const size_t *at, int pieces, const char *what) {
  size_t n = at[pieces];
  for (int attempt = 1;; attempt++) {
    int client = connect_to(&eager_front);
    bool timely = write_pieces(client, b, at, pieces, 10);
    int from = seen;
    saved_event ev;
    CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "%s: no ACCEPTED event", what);
    if (!timely) {
      discard_attempt(ev.e.id);
      close(client);
      if (attempt < LATE_ATTEMPTS) continue;
      not_checked(what, attempt);
      return;
    }
    CHECK(ev.e.state == SL_PEEK_MORE && ev.e.len == n && memcmp(ev.bytes, b, n) == 0, "%s: state %d, %zu of %zu bytes", what, ev.e.state, ev.e.len, n);
    CHECK(events_for(ev.e.id, from, 100) == 1, "more than one report for one %s", what);
    sl_loop_abort(rules_loop, ev.e.id);
    sl_outcome o;
    CHECK(wait_outcome(ev.e.id, 5000, &o), "%s: no outcome", what);
    close(client);
    return;
  }
}

// A ClientHello in 3 records, written in 3 pieces: one report, ACCEPTED, every byte.
static void test_flight_across_reads_is_one_report(void) {
  uint8_t h[2000];
  size_t n = hello_records(h, 1500, 600);
  size_t at[] = {0, 3, 700, n};
  check_one_report(h, at, 3, "ClientHello");
}

// An HTTP request head in 2 pieces: one report.
static void test_http_head_across_reads_is_one_report(void) {
  const char *head = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  size_t at[] = {0, 18, 32};
  check_one_report((const uint8_t *)head, at, 2, "request head");
}

/** Connects without sending; the ACCEPTED report, which must say WAITING with no byte. */
static uint64_t accept_silent(int *client) {
  *client = connect_to(&rules_front);
  saved_event ev;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "no ACCEPTED event");
  CHECK(ev.e.state == SL_PEEK_WAITING && ev.e.len == 0, "state %d with %zu bytes for a client that sent nothing yet", ev.e.state, ev.e.len);
  return ev.e.id;
}

// A flight that comes `after_ms` after the handshake (a busy client, a loaded host): the empty
// accept waits SL_EMPTY_GRACE_MS for it, so the connection is reported once, with every byte —
// not an empty ACCEPTED and then a PEEK. The loop accepts no earlier than connect(2) was called,
// so a flight written before the grace ends, counted from that call, is in before the loop's own
// grace ends; one written later (this thread held off a core between connect and write: 84 of
// 200 runs failed with six busy loops on its core) rightly gets the empty report, proves nothing,
// and is tried again, as check_one_report does.
static void check_flight_after_accept_is_one_report(long after_ms, long written_by_ms) {
  uint8_t h[2000];
  size_t n = hello_records(h, 700, 700);
  for (int attempt = 1;; attempt++) {
    int from = seen;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int client = connect_to(&rules_front);
    usleep((useconds_t)after_ms * 1000);
    write_all(client, h, n);
    bool timely = ms_since(&t0) < written_by_ms;
    saved_event ev;
    CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "no ACCEPTED event");
    if (!timely) {
      discard_attempt(ev.e.id);
      close(client);
      if (attempt < LATE_ATTEMPTS) continue;
      not_checked("a flight soon after the accept is one report", attempt);
      return;
    }
    CHECK(ev.e.state == SL_PEEK_MORE && ev.e.len == n && memcmp(ev.bytes, h, n) == 0, "state %d, %zu of %zu bytes: the empty accept was reported (flight %ld ms late)",
          ev.e.state, ev.e.len, n, after_ms);
    CHECK(events_for(ev.e.id, from, 100) == 1, "more than one report for one flight");
    sl_loop_abort(rules_loop, ev.e.id);
    close(client);
    return;
  }
}

// A moment late, and 25 ms late: 50 TLS clients in one Node process send their ClientHello more
// than 10 ms after the handshake for most connections (bench/conn-js.ts --workload tls), so a
// grace of 10 ms made two reports of them.
static void test_flight_soon_after_accept_is_one_report(void) {
  check_flight_after_accept_is_one_report(SL_EMPTY_GRACE_MS / 4, SL_EMPTY_GRACE_MS / 2);
  check_flight_after_accept_is_one_report(25, SL_EMPTY_GRACE_MS - 10);
}

// A client that sends nothing (the server speaks first) is reported after SL_EMPTY_GRACE_MS, long
// before the first-byte deadline: its upstream is dialed without waiting for bytes that never come.
// Before that deadline is what WAITING says (at it the report is SILENT), so this thread's clock
// bounds it from below only: a loaded machine makes the report later, never earlier.
static void test_silent_client_reported_after_the_empty_grace(void) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int client;
  uint64_t id = accept_silent(&client);
  long ms = ms_since(&t0);
  CHECK(ms >= SL_EMPTY_GRACE_MS - 1, "an empty accept reported after %ld ms", ms);
  sl_loop_abort(rules_loop, id);
  close(client);
}

// A silent client reported after SL_EMPTY_GRACE_MS keeps its slot among the unanswered until the
// caller answers: reports not yet read must not let a silent flood in as fast as it comes.
static void test_silent_client_holds_its_slot_until_answered(void) {
  CHECK(sl_loop_accept_cap(rules_loop, 1) == 0, "sl_loop_accept_cap");
  int a;
  uint64_t id = accept_silent(&a);
  int b = connect_to(&rules_front);
  const char *head = "GET / HTTP/1.1\r\nHost: b.test\r\n\r\n";
  write_all(b, head, strlen(head));
  uint64_t other;
  CHECK(accepted_within(&seen, 150, &other, 1) == 0, "a second connection accepted while a silent one, reported, was unanswered");
  sl_loop_answered(rules_loop, id);
  CHECK(accepted_within(&seen, 2000, &other, 1) == 1, "no connection accepted once the silent one was answered");
  sl_loop_accept_cap(rules_loop, SL_MAX_UNANSWERED);
  sl_loop_abort(rules_loop, id);
  sl_loop_abort(rules_loop, other);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o) && wait_outcome(other, 5000, &o), "no outcome");
  close(a);
  close(b);
}

// Past half the cap of unanswered connections the graces are given up: a silent flood would
// otherwise hold every slot SL_EMPTY_GRACE_MS each before the caller's per-sandbox admission saw
// any of it. Under a cap of 8, a client with an incomplete flight and 4 silent ones (5 > 8 / 2)
// are all reported at the 5th accept, each WAITING with what it sent. Reported late, an attempt
// proves nothing (this thread or the loop's held off a core on a loaded machine) and is made
// again; without the change every attempt is late, the first connection reported no earlier than
// SL_EMPTY_GRACE_MS after its connect(2). So "at once" is "before the first one's grace ended"
// (20 ms before: 5 of 5 attempts were later at load 10, 2 runs of 9).
#define PRESSED_CLIENTS 5
#define PRESSED_WITHIN_MS (SL_EMPTY_GRACE_MS - 2)

static void test_flights_reported_at_once_past_half_the_cap(void) {
  CHECK(sl_loop_accept_cap(rules_loop, 8) == 0, "sl_loop_accept_cap");
  for (int attempt = 1;; attempt++) {
    int clients[PRESSED_CLIENTS];
    uint64_t ids[PRESSED_CLIENTS];
    saved_event evs[PRESSED_CLIENTS];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    clients[0] = connect_to(&rules_front);
    CHECK(clients[0] >= 0, "connect: %s", strerror(errno));
    write_all(clients[0], "GET / HT", 8);
    for (int i = 1; i < PRESSED_CLIENTS; i++) {
      clients[i] = connect_to(&rules_front);
      CHECK(clients[i] >= 0, "connect %d: %s", i, strerror(errno));
    }
    // The connects took long enough for the grace to end on the first ones: nothing to tell.
    bool timely = ms_since(&t0) < SL_EMPTY_GRACE_MS / 2;
    int got = 0;
    while (got < PRESSED_CLIENTS && wait_event(SL_EV_ACCEPTED, 0, &seen, PRESSED_WITHIN_MS, &evs[got])) got++;
    timely = timely && got == PRESSED_CLIENTS && ms_since(&t0) < PRESSED_WITHIN_MS;
    while (got < PRESSED_CLIENTS && wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &evs[got])) got++;
    CHECK(got == PRESSED_CLIENTS, "%d of %d connections reported", got, PRESSED_CLIENTS);
    for (int i = 0; i < got; i++) ids[i] = evs[i].e.id;
    if (timely || attempt == LATE_ATTEMPTS) {
      CHECK(timely, "%d attempts: the connections past half the cap were not reported within %d ms", attempt, (int)PRESSED_WITHIN_MS);
      int with_bytes = 0;
      for (int i = 0; i < got; i++) {
        CHECK(evs[i].e.state == SL_PEEK_WAITING, "state %d, not WAITING", evs[i].e.state);
        if (evs[i].e.len == 0) continue;
        with_bytes++;
        CHECK(evs[i].e.len == 8 && memcmp(evs[i].bytes, "GET / HT", 8) == 0, "%zu bytes, not the 8 sent", evs[i].e.len);
      }
      CHECK(with_bytes == 1, "%d reports with bytes, not the one incomplete flight", with_bytes);
    }
    for (int i = 0; i < got; i++) sl_loop_abort(rules_loop, ids[i]);
    for (int i = 0; i < got; i++) {
      sl_outcome o;
      CHECK(wait_outcome(ids[i], 5000, &o), "connection %d: no outcome", i);
    }
    for (int i = 0; i < PRESSED_CLIENTS; i++) close(clients[i]);
    pthread_mutex_lock(&lock);
    seen = n_events;
    pthread_mutex_unlock(&lock);
    if (timely || attempt == LATE_ATTEMPTS) break;
  }
  // At half the cap (3 of 8, and once the pressure is over), the grace again: none of 3 silent
  // clients is reported before SL_EMPTY_GRACE_MS. A loaded machine only makes them later.
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  enum { CALM = 3 };
  int clients[CALM];
  uint64_t ids[CALM];
  for (int i = 0; i < CALM; i++) {
    clients[i] = connect_to(&rules_front);
    CHECK(clients[i] >= 0, "connect %d: %s", i, strerror(errno));
  }
  for (int i = 0; i < CALM; i++) {
    saved_event ev;
    CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "connection %d not reported", i);
    long ms = ms_since(&t0);
    CHECK(ev.e.state == SL_PEEK_WAITING && ev.e.len == 0, "state %d with %zu bytes", ev.e.state, ev.e.len);
    CHECK(ms >= SL_EMPTY_GRACE_MS - 1, "a silent client reported after %ld ms at half the cap, before the grace", ms);
    ids[i] = ev.e.id;
  }
  for (int i = 0; i < CALM; i++) sl_loop_abort(rules_loop, ids[i]);
  for (int i = 0; i < CALM; i++) {
    sl_outcome o;
    CHECK(wait_outcome(ids[i], 5000, &o), "connection %d: no outcome", i);
    close(clients[i]);
  }
  // A cap lowered under the connections held presses the loop too: 2 silent clients in their
  // grace, then a cap of 2, and both are reported at once (late: an attempt on a loaded machine,
  // made again).
  // Timed from the connects: without the press, reported no earlier than their grace from then.
  for (int attempt = 1;; attempt++) {
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 2; i++) {
      clients[i] = connect_to(&rules_front);
      CHECK(clients[i] >= 0, "connect %d: %s", i, strerror(errno));
    }
    CHECK(sl_loops_sync(&rules_loop, 1, 1000) == 0, "the loop did not turn");
    sl_loop_accept_cap(rules_loop, 2);
    for (int i = 0; i < 2; i++) {
      saved_event ev;
      CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "connection %d not reported", i);
      ids[i] = ev.e.id;
    }
    long ms = ms_since(&t0);
    for (int i = 0; i < 2; i++) sl_loop_abort(rules_loop, ids[i]);
    for (int i = 0; i < 2; i++) {
      sl_outcome o;
      CHECK(wait_outcome(ids[i], 5000, &o), "connection %d: no outcome", i);
      close(clients[i]);
    }
    sl_loop_accept_cap(rules_loop, SL_MAX_UNANSWERED);
    if (ms < PRESSED_WITHIN_MS || attempt == LATE_ATTEMPTS) {
      CHECK(ms < PRESSED_WITHIN_MS, "%d attempts: reported %ld ms after the connects, not at once when the cap was lowered", attempt, ms);
      break;
    }
  }
}

// Under pressure the accepted connection is read at once, its report being due at once: a flight
// already there (eager_front accepts only once bytes came) makes one report, whole, not an empty
// one and then the flight. A cap of 1 is pressed from the first connection.
static void test_flight_there_at_the_accept_is_one_report_under_pressure(void) {
  CHECK(sl_loop_accept_cap(rules_loop, 1) == 0, "sl_loop_accept_cap");
  CHECK(sl_loops_sync(&rules_loop, 1, 1000) == 0, "the loop did not take its cap");
  const char *head = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  size_t n = strlen(head);
  int client = connect_to(&eager_front);
  write_all(client, head, n);
  int from = seen;
  saved_event ev;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 5000, &ev), "no ACCEPTED event");
  CHECK(ev.e.state == SL_PEEK_MORE && ev.e.len == n && memcmp(ev.bytes, head, n) == 0, "state %d, %zu of %zu bytes", ev.e.state, ev.e.len, n);
  CHECK(events_for(ev.e.id, from, 100) == 1, "more than one report for one flight");
  sl_loop_abort(rules_loop, ev.e.id);
  sl_outcome o;
  CHECK(wait_outcome(ev.e.id, 5000, &o), "no outcome");
  close(client);
  sl_loop_accept_cap(rules_loop, SL_MAX_UNANSWERED);
}

// Nothing after SL_EMPTY_GRACE_MS: reported then (WAITING); the flight, when it comes, in one PEEK
// report.
// Its two pieces 10 ms apart: made again when this thread wrote the second past the grace.
static void test_flight_after_accept(void) {
  uint8_t h[2000];
  size_t n = hello_records(h, 700, 300);
  size_t at[] = {0, 200, n};
  for (int attempt = 1;; attempt++) {
    int client;
    uint64_t id = accept_silent(&client);
    bool timely = write_pieces(client, h, at, 2, 10);
    int from = seen;
    saved_event ev;
    CHECK(wait_event(SL_EV_PEEK, id, &seen, 5000, &ev), "no PEEK event");
    if (!timely) {
      discard_attempt(id);
      close(client);
      if (attempt < LATE_ATTEMPTS) continue;
      not_checked("a flight after the empty accept is one report", attempt);
      return;
    }
    CHECK(ev.e.state == SL_PEEK_MORE && ev.e.len == n && memcmp(ev.bytes, h, n) == 0, "state %d, %zu of %zu bytes", ev.e.state, ev.e.len, n);
    CHECK(events_for(id, from, 100) == 1, "more than one PEEK report");
    sl_loop_abort(rules_loop, id);
    close(client);
    return;
  }
}

// Bytes the loop read and did not report wait at most SL_FLIGHT_GRACE_MS, whenever they came:
// the parser answers on a flight's first chunk and again as it grows (src/net/peek-socket.ts
// PeekBuffer), so a bad request line or a bare LF that came after an earlier report is refused
// at once, as on the JavaScript path, and not at the deadline or the cap. WAITING says the report
// came before the stall (STALLED) and the deadline (TIMEOUT); this thread's clock bounds it from
// below only.
static void test_flight_late_bytes_reported_within_the_grace(void) {
  struct timespec t0;
  saved_event ev;
  // After an empty accept: the first bytes, an incomplete head.
  int client;
  uint64_t id = accept_silent(&client);
  usleep(20 * 1000);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  write_all(client, "GET / HTTP/1.1\n", 15);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 3000, &ev), "no PEEK report");
  long ms = ms_since(&t0);
  CHECK(ev.e.state == SL_PEEK_WAITING && ev.e.len == 15, "state %d with %zu bytes", ev.e.state, ev.e.len);
  CHECK(ms >= SL_FLIGHT_GRACE_MS - 10, "reported after %ld ms, before the grace", ms);
  // After that report: the next bytes too, still read by the loop.
  clock_gettime(CLOCK_MONOTONIC, &t0);
  write_all(client, "Host: a.test\n", 13);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 3000, &ev), "no second PEEK report");
  ms = ms_since(&t0);
  CHECK(ev.e.state == SL_PEEK_WAITING && ev.e.len == 13 && memcmp(ev.bytes, "Host: a.test\n", 13) == 0, "state %d with %zu bytes", ev.e.state,
        ev.e.len);
  CHECK(ms >= SL_FLIGHT_GRACE_MS - 10, "reported after %ld ms, before the grace", ms);
  // The head's end: one report, the flight whole.
  write_all(client, "\n", 1);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 3000, &ev) && ev.e.state == SL_PEEK_MORE && ev.e.len == 1, "state %d with %zu bytes", ev.e.state, ev.e.len);
  sl_loop_abort(rules_loop, id);
  close(client);
}

// A client that resets while bytes it sent wait unreported (in their grace, or a whole flight read
// in the same wake-up as its reset, after an empty report): those bytes are reported (CLOSED)
// before the outcome, for the caller to judge. They decide where they alone decide, a bad request
// line or a refused name, as on the JavaScript path (src/net/peek-socket.ts); before, they were
// dropped with the connection, and a bad request reset at once was logged peek-closed here and
// malformed-http there (test/integration/first-flight-endings.test.ts).
static void test_flight_unreported_bytes_and_reset(void) {
  for (int k = 0; k < 2; k++) {
    int client;
    uint64_t id = accept_silent(&client);
    saved_event ev;
    if (k == 0) {
      write_all(client, "GET / HTTP/1.1\r\n", 16);
      CHECK(wait_event(SL_EV_PEEK, id, &seen, 3000, &ev) && ev.e.state == SL_PEEK_WAITING, "no WAITING report of the first bytes");
    }
    // k 0: an incomplete head's bad line, in its grace at the reset; k 1: a whole head and its
    // reset, after an empty report (read in one wake-up, the read that completes the flight meets
    // the reset: unread_error; or the flight reported whole, then the reset).
    const char *rest = k == 0 ? "Bad Line\r\n" : "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    write_all(client, rest, strlen(rest));
    reset_close(client);
    sl_outcome o = {0};
    CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's reset");
    CHECK(o.end == SL_END_CLIENT_RESET && o.dialed == -1 && o.bytes_up == 0, "end %d, dialed %d, %llu up", o.end, o.dialed, (unsigned long long)o.bytes_up);
    // Emitted before the outcome, on the same thread: there once the outcome is.
    char got[64];
    size_t n = 0;
    int state = -1;
    while (wait_event(SL_EV_PEEK, id, &seen, 0, &ev) && n + ev.e.len <= sizeof got) {
      memcpy(got + n, ev.bytes, ev.e.len);
      n += ev.e.len;
      state = ev.e.state;
    }
    CHECK(n == strlen(rest) && memcmp(got, rest, n) == 0, "%s: %zu of the %zu bytes before the reset reported", k == 0 ? "late bytes" : "a whole flight", n,
          strlen(rest));
    CHECK(state == SL_PEEK_CLOSED || (k == 1 && state == SL_PEEK_MORE), "reported as %d", state);
  }
}

// The deadlines, as the JavaScript path keeps them (src/peek/peek-steps.ts, connection.ts). Each
// report comes never before its time; how soon after is the machine's, and the state says which
// deadline made it (SILENT at first_byte_ms, STALLED at stall_ms, both before the deadline's
// TIMEOUT; the grace's WAITING before STALLED), so no bound on this thread's clock is put after
// it: at load 8 (nice 19) the test saw SILENT 3.6 s late, TIMEOUT 1.9 s late, and pinned to one
// core beside 3 busy loops the grace's report 266 ms after its bytes.
static void test_flight_deadlines(void) {
  struct timespec t0;
  saved_event ev;
  // Silent: SILENT after first_byte_ms (200).
  int c1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint64_t id = accept_silent(&c1);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 10000, &ev) && ev.e.state == SL_PEEK_SILENT, "state %d, not silent", ev.e.state);
  long ms = ms_since(&t0);
  CHECK(ms >= 190, "silent after %ld ms, not 200", ms);
  sl_loop_abort(rules_loop, id);
  close(c1);
  // Stalled: "pi" could still open a request line; after the grace it is reported (WAITING),
  // then STALLED stall_ms (300) after its last byte.
  int c2 = connect_to(&eager_front);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  write_all(c2, "pi", 2);
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev), "no ACCEPTED event");
  id = ev.e.id;
  CHECK(ev.e.state == SL_PEEK_WAITING && ev.e.len == 2, "state %d with %zu bytes: not the grace's report", ev.e.state, ev.e.len);
  ms = ms_since(&t0);
  CHECK(ms >= SL_FLIGHT_GRACE_MS - 10, "the grace's report after %ld ms", ms);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 10000, &ev) && ev.e.state == SL_PEEK_STALLED && ev.e.len == 0, "state %d, %zu bytes, not stalled", ev.e.state, ev.e.len);
  ms = ms_since(&t0);
  CHECK(ms >= 290, "stalled after %ld ms, not 300", ms);
  sl_loop_abort(rules_loop, id);
  close(c2);
  // A partial TLS record keeps the whole deadline (600), however it drips: TIMEOUT. The deadline
  // counts from the accept, no earlier than the connect: a byte written 2 ms before it from then
  // is in the report (fewer when this thread was late), the last one, 200 ms after it, is not.
  uint64_t connect_us = sl_monotonic_us();
  int c3 = connect_to(&rules_front);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  uint8_t h[600];
  size_t n = hello_records(h, 517, 10000);
  write_all(c3, h, 1);
  size_t in_time = sl_monotonic_us() - connect_us < 598 * 1000;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 10000, &ev) && ev.e.state == SL_PEEK_WAITING, "state %d", ev.e.state);
  id = ev.e.id;
  size_t before = ev.e.len;
  for (int i = 1; i < 9; i++) {
    usleep(100 * 1000);
    write_all(c3, h + i, 1);
    in_time += sl_monotonic_us() - connect_us < 598 * 1000;
  }
  // Each byte is reported within the grace (WAITING) as it drips, and read on: TIMEOUT ends it.
  size_t got = before;
  bool timeout = false;
  while (!timeout && wait_event(SL_EV_PEEK, id, &seen, 10000, &ev)) {
    CHECK(got + ev.e.len <= 9 && memcmp(ev.bytes, h + got, ev.e.len) == 0, "the bytes at %zu", got);
    CHECK(ev.e.state == SL_PEEK_WAITING || ev.e.state == SL_PEEK_TIMEOUT, "state %d", ev.e.state);
    got += ev.e.len;
    timeout = ev.e.state == SL_PEEK_TIMEOUT;
  }
  CHECK(timeout, "not timed out");
  ms = ms_since(&t0);
  CHECK(ms >= 590, "timed out after %ld ms, not 600", ms);
  CHECK(got >= in_time && got <= 8, "%zu bytes by the deadline, %zu written before it", got, in_time);
  sl_loop_abort(rules_loop, id);
  close(c3);
  (void)n;
  // Closed mid-flight: CLOSED with what came.
  int c4 = connect_to(&rules_front);
  write_all(c4, "GET / HT", 8);
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev) && ev.e.state == SL_PEEK_WAITING, "state %d", ev.e.state);
  id = ev.e.id;
  shutdown(c4, SHUT_WR);
  CHECK(wait_event(SL_EV_PEEK, id, &seen, 3000, &ev) && ev.e.state == SL_PEEK_CLOSED, "state %d, not closed", ev.e.state);
  sl_loop_abort(rules_loop, id);
  close(c4);
  // The cap (16384): a head that never ends is FULL, with every byte up to the cap.
  int c5 = connect_to(&rules_front);
  char line[1024];
  memset(line, 'a', sizeof line);
  memcpy(line, "GET / HTTP/1.1\r\nX: ", 19);
  write_all(c5, line, sizeof line);
  for (int i = 0; i < 16; i++) write_all(c5, line + 19, sizeof line - 19);
  int from = seen;
  bool full = false;
  for (int k = 0; k < 2 && !full; k++) {
    CHECK(wait_event(k == 0 ? SL_EV_ACCEPTED : SL_EV_PEEK, 0, &from, 3000, &ev), "no report");
    full = ev.e.state == SL_PEEK_FULL;
  }
  CHECK(full, "state %d, not full", ev.e.state);
  seen = from;
  sl_loop_abort(rules_loop, ev.e.id);
  close(c5);
}

// A client that waits for the server (SMTP, SSH): reported at once, dialed and spliced while the
// loop was still waiting for a byte; what it sends later goes upstream, after the banner.
static void test_server_first_is_spliced_without_a_byte(void) {
  int client;
  uint64_t id = accept_silent(&client);
  struct sockaddr_storage a = storage_of(&listen_addr);
  CHECK(sl_loop_dial(rules_loop, id, &a, 1, 5000, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false) == 0, "dial");
  int upstream = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  CHECK(upstream >= 0, "not dialed");
  write_all(upstream, "220 hello\r\n", 11);
  char buf[64];
  size_t got = read_n(client, buf, sizeof buf, 11, 5000);
  CHECK(got == 11 && memcmp(buf, "220 hello\r\n", 11) == 0, "the banner: %zu bytes", got);
  write_all(client, "HELO x\r\n", 8);
  shutdown(client, SHUT_WR);
  int err;
  size_t n = read_all(upstream, buf, sizeof buf, &err, 5000);
  CHECK(n == 8 && memcmp(buf, "HELO x\r\n", 8) == 0, "the upstream got %zu bytes", n);
  shutdown(upstream, SHUT_WR);
  sl_outcome o;
  CHECK(wait_outcome(id, 5000, &o) && o.end == SL_END_CLOSED && o.bytes_up == 8 && o.bytes_down == 11, "end %d, %llu up, %llu down", o.end,
        (unsigned long long)o.bytes_up, (unsigned long long)o.bytes_down);
  saved_event ev;
  int from = seen;
  CHECK(!wait_event(SL_EV_PEEK, id, &from, 100, &ev), "a PEEK report after the dial command");
  close(client);
  close(upstream);
}

// A client whose flight the loop still reads by itself (reported incomplete, WAITING) when the
// caller, whose parser had enough, says its FIN ends it (sl_loop_fin_ends): the loop's own reading
// stops, and the FIN ends the connection (SL_END_CLIENT_FIN), not a CLOSED report no one waits for.
static void test_fin_ends_while_the_flight_is_read(void) {
  int client = connect_to(&rules_front);
  // A TLS record's header and the start of its payload: incomplete for the loop.
  write_all(client, "\x16\x03\x01\x00\x40\x01\x00", 7);
  saved_event ev;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev) && ev.e.state == SL_PEEK_WAITING, "state %d, not waiting", ev.e.state);
  uint64_t id = ev.e.id;
  sl_loop_fin_ends(rules_loop, id);
  usleep(20 * 1000);
  shutdown(client, SHUT_WR);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of the client's FIN after fin_ends");
  CHECK(o.end == SL_END_CLIENT_FIN && o.dialed == -1, "end %d, dialed %d", o.end, o.dialed);
  close(client);
}

// A client whose whole flight and reset both came before the loop accepted it (it waited in the
// listener's queue behind the cap of unanswered connections): the edge that said "reset" is spent
// on the read of the flight, which stops once the flight is whole, so the error must be taken
// then. The connection ends as the client's reset; a dial asked for on the flight dials nothing.
// Before, the flight was reported, the reset never seen, and the dial held to its connect timeout
// (20 s here; a sandbox resetting under a flood held a dial each time, 30 s in
// test/integration/net/ending-storm.test.ts).
static void test_flight_and_reset_before_accept(void) {
  CHECK(sl_loop_accept_cap(rules_loop, 1) == 0, "sl_loop_accept_cap");
  int silent;
  uint64_t held = accept_silent(&silent);
  int client = connect_to(&rules_front);
  const char *head = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
  write_all(client, head, strlen(head));
  usleep(20 * 1000);
  reset_close(client);
  usleep(20 * 1000);
  // The slot is freed: the waiting connection is accepted, its flight and its reset both there.
  sl_loop_answered(rules_loop, held);
  saved_event ev;
  CHECK(wait_event(SL_EV_ACCEPTED, 0, &seen, 3000, &ev), "no ACCEPTED event");
  uint64_t id = ev.e.id;
  blackhole bh = blackhole_open();
  struct sockaddr_storage a = storage_of(&bh.addr);
  sl_loop_dial(rules_loop, id, &a, 1, 20000, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 3000, &o), "no outcome within 3 s of a dial for a client that had reset (connect timeout 20 s)");
  CHECK(o.end == SL_END_CLIENT_RESET && o.dialed == -1 && o.bytes_up == 0, "end %d, dialed %d, %llu up", o.end, o.dialed, (unsigned long long)o.bytes_up);
  if (!o.id) sl_loop_abort(rules_loop, id), wait_outcome(id, 3000, &o);
  blackhole_close(&bh);
  sl_loop_abort(rules_loop, held);
  wait_outcome(held, 3000, &o);
  close(silent);
  sl_loop_accept_cap(rules_loop, SL_MAX_UNANSWERED);
}

static void test_first_flight(void) {
  RUN(test_first_flight_framing());
  RUN(test_first_flight_dripped_is_read_once());
  rules_loop = setup_loop(8, &rules_front);
  CHECK(sl_loop_rules(rules_loop, 8, 600, 200, 300) == 0, "rules");
  int eager = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int defer_s = 5;
  eager_front = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof eager_front;
  if (setsockopt(eager, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof defer_s) != 0 || bind(eager, (struct sockaddr *)&eager_front, len) != 0 ||
      listen(eager, 128) != 0 || getsockname(eager, (struct sockaddr *)&eager_front, &len) != 0) {
    perror("eager listener");
    exit(2);
  }
  CHECK(sl_loop_listen(rules_loop, eager, 9) == 0 && sl_loop_rules(rules_loop, 9, 600, 200, 300) == 0, "eager listener");
  // The rules are a command of their own: a turn may take the listener without them, and accept
  // a first connection before they come (then reported at once, with its first 3 bytes: a test
  // failed so about once in 30 runs).
  CHECK(sl_loops_sync(&rules_loop, 1, 1000) == 0, "the loop did not take its rules");
  RUN(test_flight_across_reads_is_one_report());
  RUN(test_http_head_across_reads_is_one_report());
  RUN(test_flight_after_accept());
  RUN(test_flight_soon_after_accept_is_one_report());
  RUN(test_silent_client_reported_after_the_empty_grace());
  RUN(test_silent_client_holds_its_slot_until_answered());
  RUN(test_flights_reported_at_once_past_half_the_cap());
  RUN(test_flight_there_at_the_accept_is_one_report_under_pressure());
  RUN(test_flight_late_bytes_reported_within_the_grace());
  RUN(test_flight_unreported_bytes_and_reset());
  RUN(test_flight_deadlines());
  RUN(test_server_first_is_spliced_without_a_byte());
  RUN(test_fin_ends_while_the_flight_is_read());
  RUN(test_flight_and_reset_before_accept());
  usleep(50 * 1000);
  CHECK(sl_loop_size(rules_loop) == 0, "%u connections left", sl_loop_size(rules_loop));
  // Stopped while a flight is still incomplete: its ACCEPTED report still comes before its outcome.
  int late = connect_to(&eager_front);
  write_all(late, "pi", 2);
  usleep(10 * 1000);
  sl_loop_stop(rules_loop);
  pthread_mutex_lock(&lock);
  for (int i = 0; i < n_outcomes; i++) {
    if (outcomes[i].id < (1ull << 48)) continue;
    bool accepted = false;
    for (int k = 0; k < n_events && !accepted; k++) accepted = events[k].e.kind == SL_EV_ACCEPTED && events[k].e.id == outcomes[i].id;
    CHECK(accepted, "an outcome for %llu, never reported as accepted", (unsigned long long)outcomes[i].id);
  }
  pthread_mutex_unlock(&lock);
  close(late);
}

// A hosted loop driven by this thread: the refusal posted from on_turn, in reply to the accept
// reported in that turn, runs in the same sl_loop_turn call, with no wake-up (the loop's
// descriptor is not readable after it); a command posted outside a turn wakes it.
static sl_loop *answering_loop;
static uint64_t answer_id;

static void refuse_from_turn(void *ctx) {
  (void)ctx;
  pthread_mutex_lock(&lock);
  uint64_t id = 0;
  for (int i = seen; i < n_events; i++)
    if (events[i].e.kind == SL_EV_ACCEPTED) id = events[i].e.id;
  pthread_mutex_unlock(&lock);
  if (id && id != answer_id) {
    answer_id = id;
    sl_loop_refuse(answering_loop, id, SL_REFUSE_ANSWER, "bye\n", 4, 5000, 1 << 20);
  }
}

static int loop_readable(sl_loop *l, int ms) {
  struct pollfd p = {.fd = sl_loop_fd(l), .events = POLLIN};
  return poll(&p, 1, ms);
}

// A hosted loop (driven by sl_loop_turn), or NULL after a failed check.
static sl_loop *start_hosted(void) {
  int err = 0;
  sl_loop *l = sl_loop_start_hosted(report, NULL, &err);
  CHECK(l != NULL, "start hosted: %s", strerror(err));
  return l;
}

static void test_hosted_turn_runs_its_answers(void) {
  sl_loop *l = start_hosted();
  if (!l) return;
  pthread_mutex_lock(&lock);
  seen = n_events;
  pthread_mutex_unlock(&lock);
  answering_loop = l;
  sl_loop_setup(l, on_setup, 16384);
  sl_loop_on_turn(l, refuse_from_turn);
  struct sockaddr_in front;
  listen_on_loop(l, 7, &front);
  // The listen command itself came from outside a turn: it woke the loop.
  CHECK(loop_readable(l, 1000) == 1, "a command posted outside a turn did not wake the hosted loop");
  CHECK(sl_loop_turn(l) == -1, "an idle hosted loop has a timer");
  int client = connect_to(&front);
  CHECK(client >= 0, "connect: %s", strerror(errno));
  write_all(client, "hello", 5);
  // Turns until the accept is reported (the listener's event, then the connection's).
  for (int i = 0; i < 20 && answer_id == 0; i++)
    if (loop_readable(l, 1000) == 1) sl_loop_turn(l);
  CHECK(answer_id != 0, "the accept was not reported");
  char buf[16] = {0};
  size_t n = read_n(client, buf, sizeof buf, 4, 1000); // no turn runs meanwhile
  CHECK(n == 4 && memcmp(buf, "bye\n", 4) == 0, "the refusal posted in the turn was not written in it: %zu bytes", n);
  CHECK(loop_readable(l, 0) == 0, "the hosted loop woke itself for a command posted during its turn");
  close(client);
  for (int i = 0; i < 20 && !count_of(answer_id); i++)
    if (loop_readable(l, 1000) == 1) sl_loop_turn(l);
  pthread_mutex_lock(&lock);
  CHECK(count_of(answer_id) == 1, "the refused connection was reported %d times", count_of(answer_id));
  pthread_mutex_unlock(&lock);
  (sl_loop_stop)(l);
}

// A hosted loop's host answers an accepted connection between turns (as egressd does from a
// setImmediate, when the verdict waits for DNS): the slot is free at once, with no wake-up of
// the loop (a write to its eventfd, a turn of the host's event loop and of the loop's own).
static void test_hosted_answer_between_turns(void) {
  sl_loop *l = start_hosted();
  if (!l) return;
  pthread_mutex_lock(&lock);
  int from = n_events;
  pthread_mutex_unlock(&lock);
  sl_loop_setup(l, on_setup, 16384);
  struct sockaddr_in front;
  listen_on_loop(l, 8, &front);
  sl_loop_accept_cap(l, 1);
  for (int i = 0; i < 20 && loop_readable(l, 0) == 1; i++) sl_loop_turn(l);
  int first = connect_to(&front);
  write_all(first, "one", 3);
  saved_event ev = {0};
  bool accepted = false;
  for (int i = 0; i < 20 && !accepted; i++) {
    if (loop_readable(l, 1000) == 1) sl_loop_turn(l);
    accepted = wait_event(SL_EV_ACCEPTED, 0, &from, 0, &ev);
  }
  CHECK(accepted, "the first connection was not reported");
  for (int i = 0; i < 20 && loop_readable(l, 0) == 1; i++) sl_loop_turn(l);
  CHECK(sl_loop_answered(l, ev.e.id) == 0, "sl_loop_answered");
  CHECK(loop_readable(l, 0) == 0, "the answer between turns woke the hosted loop");
  // The cap is 1: the next connection is accepted only if the answer freed the slot.
  int second = connect_to(&front);
  write_all(second, "two", 3);
  accepted = false;
  for (int i = 0; i < 20 && !accepted; i++) {
    if (loop_readable(l, 1000) == 1) sl_loop_turn(l);
    accepted = wait_event(SL_EV_ACCEPTED, 0, &from, 0, &ev);
  }
  CHECK(accepted, "the answer did not free the slot: the second connection was not accepted");
  close(first);
  close(second);
  (sl_loop_stop)(l);
}

// ---- bytes and a reset in one wake-up (hosted: the test decides when a turn runs) -------------

// Turns the hosted loop until it has nothing ready.
static void turn_until_quiet(sl_loop *l) {
  for (int i = 0; i < 100 && loop_readable(l, 0) == 1; i++) sl_loop_turn(l);
}

// Moves `n` bytes of a pattern from `src` through the hosted loop to `dst` (test ends both),
// turning it between reads; true when every byte came, in order.
static bool carry_hosted(sl_loop *l, int src, int dst, size_t n) {
  char *out = malloc(n), *in = malloc(n);
  for (size_t i = 0; i < n; i++) out[i] = (char)(i * 7 + 3);
  size_t w = 0, r = 0;
  for (int i = 0; i < 5000 && r < n; i++) {
    ssize_t k = w < n ? send(src, out + w, n - w, MSG_DONTWAIT | MSG_NOSIGNAL) : 0;
    if (k > 0) w += (size_t)k;
    if (loop_readable(l, 1) == 1) sl_loop_turn(l);
    k = recv(dst, in + r, n - r, MSG_DONTWAIT);
    if (k > 0) r += (size_t)k;
  }
  bool ok = r == n && memcmp(in, out, n) == 0;
  free(out);
  free(in);
  return ok;
}

// Waits, running no turn, until the loop's socket `fd` holds `queued` unread bytes and the
// reset that followed them (poll(2) consumes neither).
static bool arrived_unread(int fd, int queued) {
  for (int i = 0; i < 200; i++) {
    struct pollfd p = {.fd = fd, .events = 0};
    if (poll(&p, 1, 10) == 1 && (p.revents & POLLERR) && queued_in(fd) == queued) return true;
  }
  return false;
}

// Turns the hosted loop until `id`'s outcome is reported (about 2 s at most).
static void turn_until_outcome(sl_loop *l, uint64_t id) {
  for (int i = 0; i < 200 && count_of(id) == 0; i++) {
    loop_readable(l, 10);
    sl_loop_turn(l);
  }
}

// A hosted loop's host runs the queue itself in sl_loops_sync, between turns: a command run there
// counts its times from when it runs, not from the last turn's clock, however long ago that
// turn was. A connection handed over 300 ms after the last turn, with an idle timeout of 200 ms,
// used to be idle from that turn on: closed at the next turn, 200 ms before its time.
static void test_hosted_sync_runs_commands_on_time(void) {
  sl_loop *l = start_hosted();
  if (!l) return;
  turn_until_quiet(l);
  sl_loop_turn(l);
  usleep(300 * 1000);
  uint64_t added = sl_monotonic_us();
  conn_ends e = hand_over(l, 9100, NULL, NULL, 200);
  CHECK(sl_loops_sync(&l, 1, 1000) == 0, "sync");
  turn_until_outcome(l, 9100);
  sl_outcome o = {0};
  CHECK(wait_outcome(9100, 0, &o), "no outcome");
  long long after_ms = (long long)(outcome_time(9100) - added) / 1000;
  CHECK(o.end == SL_END_IDLE_TIMEOUT && after_ms + 1 >= 200, "end %d after %lld ms, its idle timeout 200 ms", o.end, after_ms);
  close(e.client);
  close(e.upstream);
  (sl_loop_stop)(l);
}

// Linux keeps a reset socket's queued bytes readable (tcp_recvmsg copies them before it reports
// the error), so bytes the kernel acknowledged before a reset are passed on before the reset is,
// also when both are found in one wake-up: an origin that answers early and resets (an HTTP 413
// for an upload it will not read), a client that sends its last bytes and resets. Each case puts
// the bytes and the reset in the loop's socket before a turn runs. `bulk`: the direction was
// spliced before (a first transfer past SL_COPY_LIMIT), else copied; `upload`: the other side's
// bytes arrive in the same wake-up (the loop's write of them is what fails first); `fin`: the
// side sent its FIN before its reset, which is then a close ended by it. `lost`: the socket's
// error is taken before the turn, as a splice into it that moved some bytes and then met the
// reset takes it (splice_to_socket reports the count): a closed socket all the same, whose read
// ends in an EOF the peer never sent. Not with `upload`: that splice left bytes in the pipe, so
// no write to the socket comes before its own event (a write would find EPIPE, which is the
// reset of a socket whose FIN came).
static void reset_in_one_wakeup(sl_loop *l, uint64_t id, bool upstream_resets, bool bulk, bool upload, bool fin, bool lost) {
  enum { ANSWER = 3000, PREFACE = 96 * 1024 };
  const char *what = upstream_resets ? "upstream" : "client";
  conn_ends e = hand_over(l, id, "req", NULL, 10000);
  turn_until_quiet(l);
  char buf[8];
  CHECK(read_n(e.upstream, buf, sizeof buf, 3, 1000) == 3, "%llu: the request did not arrive", (unsigned long long)id);
  int resetter = upstream_resets ? e.upstream : e.client, other = upstream_resets ? e.client : e.upstream;
  int loop_resetter = upstream_resets ? e.loop_upstream : e.loop_client, loop_other = upstream_resets ? e.loop_client : e.loop_upstream;
  size_t preface = bulk ? PREFACE : 0;
  if (bulk) CHECK(carry_hosted(l, resetter, other, preface), "%llu: the first %zu bytes did not pass", (unsigned long long)id, preface);
  turn_until_quiet(l);
  if (upload) {
    // First in the loop's ready list: its write to the side that reset is what fails first.
    write_all(other, "upload", 6);
    for (int i = 0; i < 200 && queued_in(loop_other) < 6; i++) usleep(1000);
    CHECK(queued_in(loop_other) == 6, "%llu: the upload did not arrive", (unsigned long long)id);
  }
  char *answer = malloc(ANSWER), *got = malloc(ANSWER + 1);
  for (int i = 0; i < ANSWER; i++) answer[i] = (char)('A' + i % 23);
  write_all(resetter, answer, ANSWER);
  if (fin) shutdown(resetter, SHUT_WR);
  reset_close(resetter);
  CHECK(arrived_unread(loop_resetter, ANSWER), "%llu: the %s's bytes and reset did not arrive together (%d queued)", (unsigned long long)id, what,
        queued_in(loop_resetter));
  if (lost) {
    int soerr = 0;
    socklen_t len = sizeof soerr;
    getsockopt(loop_resetter, SOL_SOCKET, SO_ERROR, &soerr, &len);
    CHECK(soerr == ECONNRESET, "%llu: the loop's socket held errno %d, not the reset", (unsigned long long)id, soerr);
  }
  turn_until_outcome(l, id);
  int err;
  size_t n = read_all(other, got, ANSWER + 1, &err, 2000);
  CHECK(n == ANSWER && memcmp(got, answer, ANSWER) == 0 && err == (fin ? 0 : ECONNRESET),
        "%llu: the other side got %zu of the %s's %d bytes, then errno %d (%s)", (unsigned long long)id, n, what, ANSWER, err, strerror(err));
  sl_outcome o = {0};
  CHECK(count_of(id) == 1 && wait_outcome(id, 0, &o), "%llu: %d outcomes", (unsigned long long)id, count_of(id));
  uint64_t from = upstream_resets ? o.bytes_down : o.bytes_up, to = upstream_resets ? o.bytes_up : o.bytes_down;
  // The upload was read (and counted) before its write met the reset.
  uint64_t to_want = (upstream_resets ? 3 : 0) + (upload ? 6 : 0);
  uint64_t from_want = (upstream_resets ? 0 : 3) + preface + ANSWER;
  sl_end end_want = fin ? SL_END_CLOSED : upstream_resets ? SL_END_UPSTREAM_RESET : SL_END_CLIENT_RESET;
  CHECK(o.end == end_want && o.err == (fin ? 0 : ECONNRESET) && from == from_want && to == to_want && o.first_fin == (fin ? (upstream_resets ? 1 : 0) : -1),
        "%llu: end %d (want %d), errno %d, %llu from the %s (want %llu), %llu to it (want %llu), first FIN %d", (unsigned long long)id, o.end, end_want,
        o.err, (unsigned long long)from, what, (unsigned long long)from_want, (unsigned long long)to, (unsigned long long)to_want, o.first_fin);
  free(answer);
  free(got);
  close(other);
}

static void test_reset_with_bytes_in_one_wakeup(void) {
  sl_loop *l = start_hosted();
  if (!l) return;
  uint64_t id = 9200; // ids no other check uses
  for (int up = 1; up >= 0; up--)
    for (int bulk = 0; bulk < 2; bulk++)
      for (int upload = 0; upload < 2; upload++)
        for (int fin = 0; fin < 2; fin++)
          for (int lost = 0; lost < 2 - fin - upload; lost++) reset_in_one_wakeup(l, id++, up, bulk, upload, fin, lost);
  (sl_loop_stop)(l);
}

// ---- two attempts of one dial ending in one wake-up (hosted: the test decides when a turn runs) -

// A loopback listener nothing else uses (its accept queue is the test's to read); its address.
static int loopback_listener(struct sockaddr_in *addr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof *addr;
  if (bind(fd, (struct sockaddr *)addr, sizeof *addr) != 0 || listen(fd, 16) != 0 || getsockname(fd, (struct sockaddr *)addr, &len) != 0) {
    perror("listen");
    exit(2);
  }
  return fd;
}

// A connection accepted from `ls` (blocking), waiting up to `ms` for one; -1 when none came.
static int accept_one(int ls, int ms) {
  struct pollfd p = {.fd = ls, .events = POLLIN};
  return poll(&p, 1, ms) == 1 ? accept4(ls, NULL, NULL, SOCK_CLOEXEC) : -1;
}

// Turns the hosted loop until it reports an event of `kind` for `id` (0: any); false when none comes.
static bool turn_until_event(sl_loop *l, int kind, uint64_t id, saved_event *out) {
  for (int i = 0; i < 200; i++) {
    if (wait_event(kind, id, &seen, 0, out)) return true;
    loop_readable(l, 10);
    sl_loop_turn(l);
  }
  return false;
}

// A client accepted by the hosted loop with `first` read; its id.
static uint64_t accept_hosted(sl_loop *l, const struct sockaddr_in *front, const char *first, int *client) {
  *client = connect_to(front);
  CHECK(*client >= 0, "connect: %s", strerror(errno));
  write_all(*client, first, strlen(first));
  saved_event ev = {0};
  CHECK(turn_until_event(l, SL_EV_ACCEPTED, 0, &ev), "no ACCEPTED event");
  CHECK(ev.e.len == strlen(first), "%zu first bytes read at the accept", ev.e.len);
  return ev.e.id;
}

// How the attempt that loses the race ends, in the wake-up where the other connects.
typedef enum { LOSER_CLOSES, LOSER_RESETS, LOSER_REFUSED } loser_end;

// RFC 8305 staggered attempts: two in flight (an attempt delay of 0 starts both in one turn), the
// first connected, the second ended (its server accepted and closed, accepted and reset, or its
// port is closed) before the loop turns again, so both events come in one epoll_wait batch, the
// winner's first. Whatever the loser's event says is the loser's: the connection splices with the
// winner and carries bytes both ways, and its client sees no end the winner did not send.
// `ask_again`: the policy changed during the dial, so the loop reports the connection and waits
// for sl_loop_splice (ST_WAIT) with the loser's event already applied, or not. `refused_first`
// (LOSER_REFUSED): the refused address is the first, so its event comes first and the winner's
// after it.
static void two_attempts_end_in_one_wakeup(sl_loop *l, const struct sockaddr_in *front, loser_end how, bool ask_again, bool refused_first) {
  struct sockaddr_in win_addr, lose_addr;
  int win_ls = loopback_listener(&win_addr), lose_ls = -1;
  if (how == LOSER_REFUSED) lose_addr = closed_port();
  else lose_ls = loopback_listener(&lose_addr);
  int client;
  uint64_t id = accept_hosted(l, front, "hi", &client);
  if (ask_again) sl_set_policy_version(2);
  int win = refused_first ? 1 : 0;
  struct sockaddr_storage addrs[2];
  addrs[win] = storage_of(&win_addr);
  addrs[1 - win] = storage_of(&lose_addr);
  CHECK(sl_loop_dial(l, id, addrs, 2, 5000, 0, SL_MAX_ADDRS, 10000, ask_again ? 1 : 0, false, 0, false) == 0, "dial");
  sl_loop_turn(l); // the dial's command starts the first attempt, its timer the second
  int up = accept_one(win_ls, 1000);
  CHECK(up >= 0, "%d/%d: the listening address was not dialed", how, ask_again);
  if (how != LOSER_REFUSED) {
    int lose = accept_one(lose_ls, 1000);
    CHECK(lose >= 0, "%d/%d: the second address was not dialed in the same turn", how, ask_again);
    if (how == LOSER_CLOSES) close(lose);
    else reset_close(lose);
  }
  usleep(20 * 1000); // the loser's FIN, reset or refusal reaches its socket
  CHECK(loop_readable(l, 0) == 1, "%d/%d: nothing ready", how, ask_again);
  sl_loop_turn(l); // both attempts' events
  if (ask_again) {
    saved_event ev = {0};
    CHECK(turn_until_event(l, SL_EV_CONNECTED, id, &ev) && ev.e.state == win, "%d/%d: no CONNECTED report for the listening address", how, ask_again);
    sl_loop_splice(l, id, 10000);
    sl_set_policy_version(0);
    loop_readable(l, 1000);
    sl_loop_turn(l);
  }
  if (up >= 0) {
    char buf[4];
    CHECK(read_n(up, buf, sizeof buf, 2, 2000) == 2, "%d/%d: the first bytes did not reach the upstream", how, ask_again);
    // Down, up, down: an end the loser's event passed for the winner's would stop the second.
    CHECK(carry_hosted(l, up, client, 3000), "%d/%d: the upstream's first answer did not reach the client", how, ask_again);
    CHECK(carry_hosted(l, client, up, 3000), "%d/%d: the client's bytes did not reach the upstream", how, ask_again);
    CHECK(carry_hosted(l, up, client, 3000), "%d/%d: the upstream's second answer did not reach the client", how, ask_again);
    shutdown(client, SHUT_WR);
    shutdown(up, SHUT_WR);
  }
  turn_until_outcome(l, id);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 0, &o) && o.end == SL_END_CLOSED && o.bytes_up == 3002 && o.bytes_down == 6000 && o.dialed == win && o.attempts == 2,
        "%d/%d: end %d (err %d), %llu up, %llu down, dialed %d of %d", how, ask_again, o.end, o.err, (unsigned long long)o.bytes_up,
        (unsigned long long)o.bytes_down, o.dialed, o.attempts);
  close(client);
  if (up >= 0) close(up);
  close(win_ls);
  if (lose_ls >= 0) close(lose_ls);
}

// Two attempts refused in one wake-up while a third address listens: the first refusal starts the
// third attempt at once (RFC 8305 §5), and the second refusal, still in the batch, is the second
// attempt's own, never the third's, which connects.
static void two_refusals_then_an_answer(sl_loop *l, const struct sockaddr_in *front) {
  struct sockaddr_in win_addr, refused = closed_port();
  int win_ls = loopback_listener(&win_addr);
  int client;
  uint64_t id = accept_hosted(l, front, "hi", &client);
  struct sockaddr_storage addrs[3] = {storage_of(&refused), storage_of(&refused), storage_of(&win_addr)};
  CHECK(sl_loop_dial(l, id, addrs, 3, 5000, 0, SL_MAX_ADDRS, 10000, 0, false, 0, false) == 0, "dial");
  sl_loop_turn(l); // both refused attempts start, and are refused, before the next turn
  CHECK(loop_readable(l, 0) == 1, "nothing ready");
  sl_loop_turn(l); // both refusals' events
  int up = -1;
  for (int i = 0; i < 200 && up < 0 && count_of(id) == 0; i++) {
    up = accept4(win_ls, NULL, NULL, SOCK_CLOEXEC);
    if (up >= 0) break;
    loop_readable(l, 10);
    sl_loop_turn(l);
  }
  CHECK(up >= 0, "the third address was not dialed");
  if (up >= 0) {
    char buf[4];
    turn_until_quiet(l);
    CHECK(read_n(up, buf, sizeof buf, 2, 2000) == 2, "the first bytes did not reach the upstream");
    CHECK(carry_hosted(l, up, client, 3000), "the upstream's answer did not reach the client");
    shutdown(client, SHUT_WR);
    shutdown(up, SHUT_WR);
  }
  turn_until_outcome(l, id);
  sl_outcome o = {0};
  CHECK(wait_outcome(id, 0, &o) && o.end == SL_END_CLOSED && o.dialed == 2 && o.attempts == 3 && o.attempt_err[0] == ECONNREFUSED &&
            o.attempt_err[1] == ECONNREFUSED && o.attempt_err[2] == 0,
        "end %d (err %d), dialed %d of %d: %d %d %d", o.end, o.err, o.dialed, o.attempts, o.attempt_err[0], o.attempt_err[1], o.attempt_err[2]);
  close(client);
  if (up >= 0) close(up);
  close(win_ls);
}

static void test_dial_attempts_in_one_wakeup(void) {
  sl_loop *l = start_hosted();
  if (!l) return;
  pthread_mutex_lock(&lock);
  seen = n_events;
  pthread_mutex_unlock(&lock);
  sl_loop_setup(l, on_setup, 16384);
  struct sockaddr_in front;
  listen_on_loop(l, 7, &front);
  for (int how = LOSER_CLOSES; how <= LOSER_REFUSED; how++)
    for (int ask_again = 0; ask_again < 2; ask_again++) two_attempts_end_in_one_wakeup(l, &front, (loser_end)how, ask_again, false);
  two_attempts_end_in_one_wakeup(l, &front, LOSER_REFUSED, false, true);
  two_refusals_then_an_answer(l, &front);
  (sl_loop_stop)(l);
}

// ---- the timer storm: many connections' timers in one heap, at random -----------------------

// A seeded generator (xorshift64*): SL_STORM_SEED=n repeats a run; every failure names its seed.
static uint64_t storm_seed, storm_rng;

static uint32_t storm_rand(uint32_t lo, uint32_t hi) {
  storm_rng ^= storm_rng >> 12;
  storm_rng ^= storm_rng << 25;
  storm_rng ^= storm_rng >> 27;
  return lo + (uint32_t)(((storm_rng * 2685821657736338717ull) >> 33) % (uint64_t)(hi - lo + 1));
}

// What a handed-over connection does. Each action comes at most half its idle timeout after the
// one before, so the loop has read it long before the timer it restarts is due. H_STUCK: the
// client fills an upstream that reads nothing, then resets; its idle timeout is past
// SL_RESET_LINGER_MS, which the reset brings its due down to.
typedef enum { H_IDLE, H_ACTIVE, H_HALF, H_CLOSE, H_RESET, H_ABORT, H_STUCK, H_KINDS } storm_h_kind;
// What a set-up connection's client does; the test answers the report that ends its peek (a dial
// a moment later, as after a name's resolution). A timer a command sets comes well before the
// rules' deadline, so one that was not armed is late by more than the slack.
typedef enum { S_SILENT, S_HEAD, S_STALL, S_DRIP, S_PEEKCMD, S_RESET, S_DIALSILENT, S_SPLICE, S_KINDS } storm_s_kind;

#define STORM_H 240
#define STORM_S 84
#define STORM_ACTS 4
// How late a report or an outcome may come after its due: a loaded machine, AddressSanitizer.
#define STORM_SLACK_US 4000000ull
// The storm's rules: the deadline, the first byte's, the stall (as test_first_flight's).
#define STORM_DEADLINE_MS 2500
#define STORM_FIRST_BYTE_MS 200
#define STORM_STALL_MS 300
#define STORM_CAP 40

typedef struct {
  int kind;
  uint64_t id; // handed over: chosen; set up: from its ACCEPTED report (0 until then)
  uint32_t idle_ms;
  int client, upstream;   // the test's ends (-1: closed)
  int loop_c, loop_u;     // handed over: the loop's ends, until handed over
  uint64_t at[STORM_ACTS + 1]; // [0]: the hand-over or the connect; then each action (us after t0)
  int n_at, done;              // actions planned, and taken
  uint64_t did[STORM_ACTS + 1]; // when each was taken (sl_monotonic_us)
  int port;                     // set up: the client's port, which ACCEPTED names
  uint32_t answer_ms;           // the linger, the connect timeout, or the peek deadline given
  uint64_t answered_us;         // when the report ending the peek was answered
  uint64_t answer_due_us;       // S_HEAD, S_SPLICE: when to answer it (0: not yet known)
  int end_state;                // that report's state; -1: none yet
  uint64_t end_state_us;
  bool peeked; // S_PEEKCMD: the peek command was sent
} storm_conn;

static storm_conn storm_h[STORM_H], storm_s[STORM_S];

// The storm loop's set-up reports, without their bytes, for the test's thread to answer.
#define STORM_EVENTS 2048
typedef struct {
  sl_event_kind kind;
  uint64_t id;
  int state, port;
  uint64_t at_us;
} storm_event;
static storm_event storm_events[STORM_EVENTS];
static int n_storm_events;

static void storm_on_event(void *ctx, const sl_event *e) {
  (void)ctx;
  uint64_t now = sl_monotonic_us();
  pthread_mutex_lock(&lock);
  if (n_storm_events < STORM_EVENTS)
    storm_events[n_storm_events++] = (storm_event){
        .kind = e->kind, .id = e->id, .state = e->state, .port = ntohs(((const struct sockaddr_in *)&e->peer)->sin_port), .at_us = now};
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

/** Whether `at` is no earlier than `due` (both us), to the loop's whole milliseconds. */
static bool storm_not_before(uint64_t at, uint64_t due) {
  return at + 1000 >= due;
}

static void storm_plan_h(storm_conn *c, int i) {
  *c = (storm_conn){.kind = i % H_KINDS, .id = 800000 + (uint64_t)i, .end_state = -1};
  c->idle_ms = c->kind == H_STUCK ? storm_rand(4000, 5000) : storm_rand(100, 700);
  // Now and then the least idle timeouts a caller can give (0 is taken for 1 ms).
  if (c->kind == H_IDLE && storm_rand(0, 3) == 0) c->idle_ms = storm_rand(0, 3);
  c->at[0] = (uint64_t)storm_rand(0, 400) * 1000;
  c->n_at = c->kind == H_ACTIVE ? (int)storm_rand(1, STORM_ACTS) : c->kind == H_CLOSE ? 2 : c->kind == H_IDLE ? 0 : 1;
  for (int k = 1; k <= c->n_at; k++) c->at[k] = c->at[k - 1] + (uint64_t)storm_rand(1, c->kind == H_STUCK ? 500 : c->idle_ms / 2) * 1000;
  narrow_pair(&c->client, &c->loop_c, 0, 0);
  narrow_pair(&c->upstream, &c->loop_u, c->kind == H_STUCK ? 4096 : 0, c->kind == H_STUCK ? 4096 : 0);
}

static void storm_plan_s(storm_conn *c, int i) {
  *c = (storm_conn){.kind = i % S_KINDS, .client = -1, .upstream = -1, .end_state = -1};
  c->at[0] = (uint64_t)storm_rand(0, 900) * 1000;
  if (c->kind == S_DRIP) {
    // A byte of a ClientHello's record every 80 ms: never whole, never stalled, so the deadline.
    c->n_at = STORM_ACTS;
    for (int k = 1; k <= c->n_at; k++) c->at[k] = c->at[0] + (uint64_t)k * 80000;
  } else if (c->kind == S_RESET) {
    c->n_at = 1;
    c->at[1] = c->at[0] + (uint64_t)storm_rand(80, 250) * 1000; // before the stall report (300 ms)
  }
  c->answer_ms = c->kind == S_PEEKCMD || c->kind == S_SPLICE       ? storm_rand(60, 500)
                 : c->kind == S_HEAD || c->kind == S_DIALSILENT ? storm_rand(50, 500)
                                                                     : storm_rand(0, 400);
}

/** A handed-over connection's next step, due now: the hand-over, then each action. */
static void storm_step_h(sl_loop *l, storm_conn *c) {
  int k = c->done++;
  c->did[k] = sl_monotonic_us();
  if (k == 0) {
    int r = sl_loop_add(l, c->id, c->loop_c, c->loop_u, NULL, 0, NULL, 0, c->idle_ms);
    CHECK(r == 0, "seed %llu: sl_loop_add: %s", (unsigned long long)storm_seed, strerror(r));
    return;
  }
  switch (c->kind) {
    case H_ACTIVE: send(c->client, "x", 1, MSG_NOSIGNAL); return;
    case H_HALF: shutdown(c->client, SHUT_WR); return;
    case H_CLOSE: shutdown(k == 1 ? c->client : c->upstream, SHUT_WR); return;
    case H_RESET:
      reset_close(c->client);
      c->client = -1;
      return;
    case H_STUCK: {
      // Until the loop holds what the upstream does not take, and the client's buffer is full.
      static char fill[65536];
      for (int idle = 0, i = 0; idle < 3 && i < 1024; i++) {
        if (send(c->client, fill, sizeof fill, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) idle = 0;
        else idle++, usleep(2000);
      }
      c->did[k] = sl_monotonic_us();
      reset_close(c->client);
      c->client = -1;
      return;
    }
    case H_ABORT: sl_loop_abort(l, c->id); return;
    default: return;
  }
}

/** A set-up connection's client's next step, due now: the connect, then each action. */
static void storm_step_s(const struct sockaddr_in *front, storm_conn *c, const uint8_t *hello) {
  int k = c->done++;
  c->did[k] = sl_monotonic_us();
  if (k == 0) {
    c->client = connect_to(front);
    CHECK(c->client >= 0, "seed %llu: connect: %s", (unsigned long long)storm_seed, strerror(errno));
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(c->client, (struct sockaddr *)&me, &len);
    c->port = ntohs(me.sin_port);
    const char *head = "GET / HTTP/1.1\r\nHost: storm.test\r\n\r\n";
    if (c->kind == S_HEAD) send(c->client, head, strlen(head), MSG_NOSIGNAL);
    if (c->kind == S_STALL) send(c->client, "pi", 2, MSG_NOSIGNAL);
    if (c->kind == S_DRIP) send(c->client, hello, 1, MSG_NOSIGNAL);
    // A partial record: never whole, and no stall wait (a ClientHello's).
    if (c->kind == S_PEEKCMD) send(c->client, hello, 7, MSG_NOSIGNAL);
    if (c->kind == S_RESET) send(c->client, "GET / HT", 8, MSG_NOSIGNAL);
    if (c->kind == S_SPLICE) send(c->client, head, strlen(head), MSG_NOSIGNAL);
    return;
  }
  if (c->kind == S_DRIP) send(c->client, hello + k, 1, MSG_NOSIGNAL);
  if (c->kind == S_RESET) {
    reset_close(c->client);
    c->client = -1;
  }
}

/** The delayed answer of S_HEAD and S_SPLICE, due now: a dial to nowhere, or to the test's listener. */
static void storm_answer_late(sl_loop *l, storm_conn *c, const struct sockaddr_storage *hole) {
  c->answer_due_us = 0;
  c->answered_us = sl_monotonic_us();
  struct sockaddr_storage up = storage_of(&listen_addr);
  if (c->kind == S_HEAD) sl_loop_dial(l, c->id, hole, 1, c->answer_ms, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false);
  else sl_loop_dial(l, c->id, &up, 1, 5000, 250, SL_MAX_ADDRS, c->answer_ms, 0, false, 0, false);
}

/** The test's answer to a set-up report: what each kind's client is waiting for. */
static void storm_answer(sl_loop *l, storm_conn *c, const storm_event *ev, const struct sockaddr_storage *hole) {
  bool waiting = ev->state == SL_PEEK_WAITING;
  if (c->kind == S_PEEKCMD && waiting && !c->peeked) {
    // Read on under the caller's deadline (counted from the accept), in place of the rules'.
    c->peeked = true;
    sl_loop_peek(l, c->id, c->answer_ms, 0, 0, 1000);
    return;
  }
  if (c->kind == S_DIALSILENT && waiting && ev->kind == SL_EV_ACCEPTED) {
    // Server-first: dialed on the empty report, the loop still reading.
    c->answered_us = sl_monotonic_us();
    sl_loop_dial(l, c->id, hole, 1, c->answer_ms, 250, SL_MAX_ADDRS, 10000, 0, false, 0, false);
    return;
  }
  if (waiting || c->end_state >= 0 || c->answered_us) return;
  c->end_state = ev->state;
  c->end_state_us = ev->at_us;
  if (c->kind == S_HEAD || c->kind == S_SPLICE) {
    c->answer_due_us = ev->at_us + (uint64_t)storm_rand(0, 300) * 1000;
    return;
  }
  c->answered_us = sl_monotonic_us();
  switch (c->kind) {
    case S_SILENT:
    case S_PEEKCMD: sl_loop_refuse(l, c->id, SL_REFUSE_ANSWER, "no\n", 3, c->answer_ms, 1 << 20); return;
    case S_STALL: sl_loop_abort(l, c->id); return;
    default: sl_loop_refuse(l, c->id, SL_REFUSE_RESET, NULL, 0, 0, 0); return;
  }
}

/** The handed-over connection's outcome `o`, reported at `at`, against its plan. */
static void storm_check_h(const storm_conn *c, const sl_outcome *o, uint64_t at) {
  uint64_t idle_us = (uint64_t)(c->idle_ms ? c->idle_ms : 1) * 1000;
  uint64_t last_byte = c->did[0], last = c->did[c->done - 1], acted = c->n_at ? c->did[c->n_at] : 0;
  // The bytes written before the end restarted its clock. One written more than 3/4 of the idle
  // timeout after the step before (this thread held off a core) may rightly come too late.
  bool late = false;
  for (int k = 1; k < c->done && c->kind == H_ACTIVE; k++) {
    if (c->did[k] < at) last_byte = c->did[k];
    late |= c->did[k] - c->did[k - 1] > idle_us * 3 / 4;
  }
  int want = c->kind == H_CLOSE ? SL_END_CLOSED : c->kind == H_RESET || c->kind == H_STUCK ? SL_END_CLIENT_RESET : c->kind == H_ABORT ? SL_END_ABORTED : SL_END_IDLE_TIMEOUT;
  unsigned long long seed = (unsigned long long)storm_seed;
  if (c->kind == H_STUCK) {
    // What the client sent is never taken: reset SL_RESET_LINGER_MS after its reset, not idle.
    uint64_t due = c->did[1] + 1000000;
    CHECK((int)o->end == want && storm_not_before(at, due) && at <= due + STORM_SLACK_US, "seed %llu: handed over %llu (stuck): end %d, %lld ms after its due",
          seed, (unsigned long long)c->id, o->end, ((long long)at - (long long)due) / 1000);
    return;
  }
  // Its idle timeout may come before an action only when the action was late (all were taken).
  if (o->end == SL_END_IDLE_TIMEOUT || want == SL_END_IDLE_TIMEOUT) {
    CHECK((int)o->end == want || (o->end == SL_END_IDLE_TIMEOUT && at < acted), "seed %llu: handed over %llu (kind %d, idle %u ms): end %d, not %d", seed,
          (unsigned long long)c->id, c->kind, c->idle_ms, o->end, want);
    CHECK(late || storm_not_before(at, last_byte + idle_us), "seed %llu: handed over %llu (kind %d): idle after %lld ms, before its %u ms", seed,
          (unsigned long long)c->id, c->kind, (long long)(at - last_byte) / 1000, c->idle_ms);
  } else {
    CHECK((int)o->end == want && at >= acted, "seed %llu: handed over %llu (kind %d): end %d, not %d", seed, (unsigned long long)c->id, c->kind, o->end, want);
  }
  CHECK(at <= last + idle_us + STORM_SLACK_US, "seed %llu: handed over %llu (kind %d, idle %u ms): ended %lld ms after its last step", seed,
        (unsigned long long)c->id, c->kind, c->idle_ms, (long long)(at - last) / 1000);
}

/** The set-up connection's reports and outcome `o`, reported at `at`, against its plan. */
static void storm_check_s(const storm_conn *c, const sl_outcome *o, uint64_t at) {
  unsigned long long seed = (unsigned long long)storm_seed, id = (unsigned long long)c->id;
  uint64_t connected = c->did[0], answer_us = (uint64_t)c->answer_ms * 1000;
  // The report that ended the peek, at its due.
  uint64_t due = 0;
  int want = -1;
  switch (c->kind) {
    case S_SILENT: want = SL_PEEK_SILENT, due = connected + STORM_FIRST_BYTE_MS * 1000; break;
    case S_HEAD: want = SL_PEEK_MORE, due = connected; break;
    case S_STALL: want = SL_PEEK_STALLED, due = connected + STORM_STALL_MS * 1000; break;
    case S_DRIP: want = SL_PEEK_TIMEOUT, due = connected + STORM_DEADLINE_MS * 1000; break;
    case S_PEEKCMD: want = SL_PEEK_TIMEOUT, due = connected + answer_us; break;
    case S_SPLICE: want = SL_PEEK_MORE, due = connected; break;
    default: break;
  }
  if (want >= 0) {
    CHECK(c->end_state == want, "seed %llu: set up %llu (kind %d): the peek ended %d, not %d", seed, id, c->kind, c->end_state, want);
    CHECK(c->end_state < 0 || (storm_not_before(c->end_state_us, due) && c->end_state_us <= due + STORM_SLACK_US),
          "seed %llu: set up %llu (kind %d): peek report %lld ms after its due", seed, id, c->kind, ((long long)c->end_state_us - (long long)due) / 1000);
  }
  int end = -1;
  uint64_t from = c->answered_us, least = 0;
  switch (c->kind) {
    case S_SILENT:
    case S_PEEKCMD: end = SL_END_CLOSED, least = from + answer_us; break; // the refusal's linger
    case S_HEAD:
    case S_DIALSILENT: end = SL_END_ERROR, least = from + answer_us; break; // the dial's timeout
    case S_STALL: end = SL_END_ABORTED, least = from; break;
    case S_SPLICE: end = SL_END_IDLE_TIMEOUT, least = from + answer_us; break; // spliced, then idle
    case S_DRIP: end = SL_END_CLOSED, least = from; break;
    case S_RESET:
      // The reset; or (this thread late) the stall's report, and the refusal that answered it,
      // or the reset that came before the refusal ran.
      end = c->answered_us && (c->done < 2 || o->end == SL_END_CLOSED) ? SL_END_CLOSED : SL_END_CLIENT_RESET;
      from = least = c->done < 2 ? c->answered_us : !c->answered_us || c->did[1] < c->answered_us ? c->did[1] : c->answered_us;
      break;
    default: break;
  }
  CHECK((int)o->end == end && (end != SL_END_ERROR || o->err == ETIMEDOUT), "seed %llu: set up %llu (kind %d): end %d (err %d), not %d", seed, id, c->kind,
        o->end, o->err, end);
  CHECK(from != 0 && storm_not_before(at, least) && at <= least + STORM_SLACK_US, "seed %llu: set up %llu (kind %d): ended %lld ms after its due", seed, id,
        c->kind, ((long long)at - (long long)least) / 1000);
}

// Hundreds of connections' timers in one loop at once, at random (seeded): handed-over ones with
// idle timeouts from 0 to 700 ms, restarted by bytes, ended early by half-closes, resets and
// aborts (their timers leave the heap from anywhere in it); and set-up ones accepted under rules,
// silent, dripping, stalled or reset, answered with a peek deadline, a refusal's linger or a
// dial to an address that never answers, under a cap of unanswered connections they cross now
// and then. Each connection ends exactly once, never before its due, and soon after it. Built
// with SL_TIMER_AUDIT, each turn also checks the heap.
static void test_timer_storm(void) {
  const char *env = getenv("SL_STORM_SEED");
  // A fixed seed by default, so that CI repeats the same storm; SL_STORM_SEED explores others.
  storm_seed = env ? strtoull(env, NULL, 10) : 20261202ull;
  storm_rng = storm_seed ? storm_seed : 1;
  int err = 0;
  sl_loop *l = sl_loop_start(report, NULL, &err);
  CHECK(l != NULL, "start: %s", strerror(err));
  if (!l) return;
  sl_loop_setup(l, storm_on_event, 16384);
  struct sockaddr_in front;
  listen_on_loop(l, 11, &front);
  CHECK(sl_loop_rules(l, 11, STORM_DEADLINE_MS, STORM_FIRST_BYTE_MS, STORM_STALL_MS) == 0, "rules");
  // A cap the storm's set-up connections cross now and then: past half of it their first reports
  // are due at once (grace, press), which brings keys forward from anywhere in the heap.
  CHECK(sl_loop_accept_cap(l, STORM_CAP) == 0, "sl_loop_accept_cap");
  CHECK(sl_loops_sync(&l, 1, 1000) == 0, "the loop did not take its rules");
  blackhole bh = blackhole_open();
  struct sockaddr_storage hole = storage_of(&bh.addr);
  uint8_t hello[600];
  hello_records(hello, 517, 10000);
  for (int i = 0; i < STORM_H; i++) storm_plan_h(&storm_h[i], i);
  for (int i = 0; i < STORM_S; i++) storm_plan_s(&storm_s[i], i);
  pthread_mutex_lock(&lock);
  int next_event = n_storm_events;
  pthread_mutex_unlock(&lock);
  // Given up when no connection has ended for 10 s (4 times the longest timer the storm sets, the
  // rules' deadline), or after 120 s: not at 15 s from the start, which a starved run passed with
  // 11 connections still to end (load 8, nice 19) and every one of their checks failed.
  uint64_t t0 = sl_monotonic_us(), last_end = t0;
  int ended = 0;
  while (ended < STORM_H + STORM_S && sl_monotonic_us() - last_end < 10000000 && sl_monotonic_us() - t0 < 120000000) {
    uint64_t now = sl_monotonic_us() - t0;
    for (int i = 0; i < STORM_H; i++) {
      storm_conn *c = &storm_h[i];
      if (c->done <= c->n_at && c->at[c->done] <= now) storm_step_h(l, c);
    }
    for (int i = 0; i < STORM_S; i++) {
      storm_conn *c = &storm_s[i];
      // A client stops once its peek has ended (a drip into a refused connection proves nothing).
      if (c->done <= c->n_at && c->at[c->done] <= now && c->end_state < 0) storm_step_s(&front, c, hello);
      if (c->answer_due_us && c->answer_due_us <= now + t0) storm_answer_late(l, c, &hole);
    }
    storm_event evs[64];
    int n = 0;
    pthread_mutex_lock(&lock);
    while (next_event < n_storm_events && n < 64) evs[n++] = storm_events[next_event++];
    pthread_mutex_unlock(&lock);
    for (int e = 0; e < n; e++) {
      storm_conn *c = NULL;
      for (int i = 0; i < STORM_S && !c; i++)
        if (evs[e].kind == SL_EV_ACCEPTED ? storm_s[i].port == evs[e].port && storm_s[i].id == 0 : storm_s[i].id == evs[e].id) c = &storm_s[i];
      CHECK(c != NULL, "seed %llu: a report (kind %d, state %d) of no connection of the storm", (unsigned long long)storm_seed, evs[e].kind, evs[e].state);
      if (!c) continue;
      c->id = evs[e].id;
      storm_answer(l, c, &evs[e], &hole);
    }
    int before = ended;
    ended = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < STORM_H; i++) ended += count_of(storm_h[i].id) > 0;
    for (int i = 0; i < STORM_S; i++) ended += storm_s[i].id != 0 && count_of(storm_s[i].id) > 0;
    pthread_mutex_unlock(&lock);
    if (ended > before) last_end = sl_monotonic_us();
    usleep(1000);
  }
  usleep(100 * 1000); // a second outcome would come within this
  for (int i = 0; i < STORM_H + STORM_S; i++) {
    storm_conn *c = i < STORM_H ? &storm_h[i] : &storm_s[i - STORM_H];
    pthread_mutex_lock(&lock);
    int count = c->id ? count_of(c->id) : 0;
    pthread_mutex_unlock(&lock);
    sl_outcome o;
    CHECK(count == 1, "seed %llu: %s %llu (kind %d): %d outcomes", (unsigned long long)storm_seed, i < STORM_H ? "handed over" : "set up",
          (unsigned long long)c->id, c->kind, count);
    if (count != 1 || !wait_outcome(c->id, 0, &o)) continue;
    if (i < STORM_H) storm_check_h(c, &o, outcome_time(c->id));
    else storm_check_s(c, &o, outcome_time(c->id));
  }
  CHECK(sl_loop_size(l) == 0, "seed %llu: %u connections left", (unsigned long long)storm_seed, sl_loop_size(l));
  sl_loop_stop(l);
  for (int i = 0; i < STORM_H + STORM_S; i++) {
    storm_conn *c = i < STORM_H ? &storm_h[i] : &storm_s[i - STORM_H];
    if (c->client >= 0) close(c->client);
    if (c->upstream >= 0) close(c->upstream);
  }
  blackhole_close(&bh);
  // The spliced ones' upstreams, left in the test's listener's queue.
  for (struct pollfd p = {.fd = listener, .events = POLLIN}; poll(&p, 1, 0) == 1;) close(accept4(listener, NULL, NULL, SOCK_CLOEXEC));
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); // as Node does
  signal(SIGTERM, on_sigterm);
  setvbuf(stdout, NULL, _IOLBF, 0);
  listen_once();
  // SL_STORM_SEED=n with SL_STORM_ONLY=1: the timer storm alone, to repeat a failed run.
  if (getenv("SL_STORM_ONLY")) {
    test_timer_storm();
    printf("splice_loop_test: timer storm (seed %llu): %d failure(s)\n", (unsigned long long)storm_seed, failures);
    if (failures) print_failed_places();
    return failures ? 1 : 0;
  }
  int err = 0;
  sl_loop *l = sl_loop_start(report, NULL, &err);
  if (!l) {
    fprintf(stderr, "sl_loop_start: %s\n", strerror(err));
    return 2;
  }
  sl_loop_on_turn(l, on_turn);
  RUN(test_bulk_both_ways_with_initial_bytes(l));
  RUN(test_half_close_each_way(l));
  RUN(test_reset_is_passed_on(l, 3, true));
  RUN(test_reset_is_passed_on(l, 4, false));
  RUN(test_idle_timeout_closes_both(l));
  RUN(test_many_timers_each_in_its_time(l));
  RUN(test_abort_closes_both(l));
  RUN(test_many_connections_reuse_pipes(l));
  RUN(test_timer_room_shrinks_after_a_burst(l));
  RUN(test_slow_reader_blocks_then_drains(l));
  RUN(test_pipe_with_bytes_is_never_reused(l));
  RUN(test_answer_and_fin_in_one_event(l));
  RUN(test_answer_then_reset(l));
  RUN(test_reset_after_fin_is_a_close(l));
  RUN(test_gone_side_leaves_nothing_unread(l));
  RUN(test_bytes_up_while_writes_down_block(l));
  RUN(test_blocked_direction_sleeps_until_drained(l));
  RUN(test_reset_behind_unread_bytes_at_idle(l));
  RUN(test_copy_overflow_keeps_order(l));
  RUN(test_urgent_byte_mid_bulk_is_not_an_end(l));
  RUN(test_urgent_byte_with_bytes_behind_it(l));
  RUN(test_urgent_byte_and_fin_while_paused(l));
  RUN(test_every_command_wakes_the_loop(l));
  sl_loop_stop(l);
  pthread_mutex_lock(&lock);
  CHECK(turns > 0 && reported_since_turn == 0 && !pthread_equal(loop_thread_seen, pthread_self()),
        "%d turns, %d reports after the last, on the loop's thread: %d", turns, reported_since_turn, !pthread_equal(loop_thread_seen, pthread_self()));
  pthread_mutex_unlock(&lock);
  RUN(test_stop_reports_every_connection());
  RUN(test_sync_waits_for_the_aborts());
  RUN(test_setup());
  RUN(test_out_of_descriptors());
  RUN(test_first_flight());
  RUN(test_hosted_turn_runs_its_answers());
  RUN(test_hosted_answer_between_turns());
  RUN(test_hosted_sync_runs_commands_on_time());
  RUN(test_reset_with_bytes_in_one_wakeup());
  RUN(test_dial_attempts_in_one_wakeup());
  RUN(test_timer_storm());
  pthread_mutex_lock(&lock);
  for (uint64_t id = 1; id < 7; id++) CHECK(count_of(id) == 1, "connection %llu reported %d times", (unsigned long long)id, count_of(id));
  pthread_mutex_unlock(&lock);
  if (failures) {
    print_failed_places();
    return 1;
  }
  printf("splice_loop_test: all checks passed\n");
  return 0;
}
