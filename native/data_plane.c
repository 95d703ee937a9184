// Binds the native loops (splice_loop.c) to JavaScript. Two uses share them:
//  - the data phase alone: src/net/native-splice.ts hands an allowed connection's two sockets to
//    one of N loops (one per core);
//  - the whole connection (EGRESSD_DATA_PLANE=native-setup): src/net/native-setup.ts has each
//    loop accept on its own SO_REUSEPORT socket, and answers the loop's set-up reports with
//    commands (peek, dial, splice, refuse).
// Reports come back on the JavaScript thread through one thread-safe function, in batches: a
// loop queues each report and signals only when the queue was empty, and the JavaScript side
// takes the whole queue at once.
//
// start(threads, onOutcome, onSetup?, peekCap?, hosted?): void
//     hosted: loop 0 runs on Node's own event loop (the JavaScript thread), the other loops on
//     threads of their own; throws where the addon was built without libuv's header
//     (hostedAvailable() says which)
//     onOutcome(id, bytesUp, bytesDown, end, errno, dialed, connectUs, attemptErrnos[], firstFin, sinceEndMs)
//     sinceEndMs: how long before this call the loop ended the connection (the queue's wait)
//     onSetup(kind, id, loop, tag, err, state, connectUs, peer, peerPort, orig, origPort, bytes, sinceAcceptMs)
//     sinceAcceptMs (ACCEPTED): how long before this call the loop accepted the connection (its
//     first report waits for the first flight, and the queue to this thread adds its own wait)
// handoff(loop, id, clientFd, upstreamFd, up: Buffer | null, down: Buffer | null, idleMs): void
//     dup(2)s both descriptors (the caller then closes its own handles); throws an Error whose
//     `code` is the errno name on failure, with nothing handed over.
// listen(host, port, ipv6Only, backlog, tag): number   one socket per loop, SO_REUSEPORT; the port
// unlisten(tag): void
// peekRules(tag, deadlineMs, firstByteMs, stallMs): void   the loops read each accepted
//     connection's first flight by themselves and report it once (sl_loop_rules); 0: off
// peek(loop, id, deadlineMs, firstByteMs, stallMs, reportAt): void
// dial(loop, id, addresses: string[], port, connectMs, attemptDelayMs, idleMs, version, tell, validMs, finEnds): void
//     validMs: how long from now the verdict holds by itself (a remembered DNS name expiring);
//     negative: no deadline. finEnds: the client's FIN ends it before an upstream connected
// finEnds(loop, id): void   the same while the connection waits for its command (sl_loop_fin_ends)
// splice(loop, id, idleMs): void
// refuse(loop, id, how, bytes: Buffer | null, lingerMs, lingerMaxBytes): void
// setPolicyVersion(version): void
// sync(timeoutMs): number   blocks until every loop ran the commands posted before (aborts
//     included), at most timeoutMs; how many loops had not answered (0: all did)
// abort(loop, id): void
// active(): number   connections whose outcome has not yet been delivered
// undelivered(): number   connections the loops accepted whose SL_EV_ACCEPTED report has not yet been delivered
// hostedAvailable(): boolean
// idleTimeMetrics(): boolean | null   whether libuv's idle-time metrics are on for Node's event
//     loop (null: not known here); starting a hosted loop turns them off (idle_time_flags)
//
// A hosted loop (sl_loop_start_hosted) is a libuv poll handle on its epoll descriptor and a
// timer: Node's event loop runs its turns, and its reports reach JavaScript in the same turn,
// with no thread-safe function, no lock and no wake-up; the commands JavaScript answers with run
// before the turn ends. A connection costs no cross-thread hand-off (a wake-up of the other
// thread each way, and on a busy host the wait for a core: about a quarter of the CPU per TLS
// connection at 50 clients, bench/RESULTS.md), as in nginx's single-threaded worker. The
// thread-safe function is referenced only while connections are in the loops, so idle loops never
// keep the process alive; the hosted loop's handles never do. One data plane per process
// (Node-API instance data would allow more; egressd runs one daemon per process).

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <node_api.h>
#ifdef EGRESSD_HAVE_UV
#include <uv.h> // the building Node's own (scripts/build-native.ts): the loop the addon runs on
#endif

#include "napi_args.h"
#include "splice_loop.h"

#define MAX_LOOPS 64

static sl_loop *loops[MAX_LOOPS];
static int loop_count;
static napi_threadsafe_function tsfn;
static napi_ref on_setup_ref;
static int64_t active;
// SL_EV_ACCEPTED reports delivered to onSetup (the JavaScript thread only): undelivered().
static uint64_t accepts_delivered;
// Set when Node tears the environment down: reports are dropped from then on, never sent to a
// thread-safe function that is about to be freed.
static volatile int closing;

// ---- the report queue -----------------------------------------------------------------------

typedef struct item {
  int loop;
  bool is_outcome;
  sl_outcome o;
  sl_event e;
  char *bytes;
  struct item *next;
} item;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static item *queue_head, *queue_tail;
static bool signalled;

// The hosted loop's index (-1: none), and its reports not yet delivered (JavaScript thread only).
static int hosted = -1;
static item *host_head, *host_tail;

// A loop's reports of its current turn, passed on together at its end (turn_over): one lock and
// at most one wake-up of the JavaScript thread per turn, however many connections it served.
static __thread item *turn_head, *turn_tail;
static __thread bool on_loop_thread;

static void publish(item *head, item *tail) {
  pthread_mutex_lock(&queue_lock);
  if (queue_tail) queue_tail->next = head;
  else queue_head = head;
  queue_tail = tail;
  bool signal = !signalled;
  signalled = true;
  pthread_mutex_unlock(&queue_lock);
  if (signal && napi_call_threadsafe_function(tsfn, NULL, napi_tsfn_blocking) != napi_ok) {
    pthread_mutex_lock(&queue_lock);
    signalled = false;
    pthread_mutex_unlock(&queue_lock);
  }
}

static void host_deliver(void);

static void enqueue(item *it) {
  if (it->loop == hosted) {
    if (host_tail) host_tail->next = it;
    else host_head = it;
    host_tail = it;
    return;
  }
  if (!on_loop_thread) return publish(it, it);
  if (turn_tail) turn_tail->next = it;
  else turn_head = it;
  turn_tail = it;
}

static void free_items(item *it) {
  while (it) {
    item *next = it->next;
    free(it->bytes);
    free(it);
    it = next;
  }
}

// Runs on a loop's thread at the end of each of its turns (sl_loop_on_turn).
static void turn_over(void *ctx) {
  if ((int)(intptr_t)ctx == hosted) return host_deliver();
  on_loop_thread = true;
  if (!turn_head) return;
  item *head = turn_head, *tail = turn_tail;
  turn_head = turn_tail = NULL;
  if (__atomic_load_n(&closing, __ATOMIC_ACQUIRE)) return free_items(head);
  publish(head, tail);
}

// Runs on a loop's thread: the report is copied and queued for the JavaScript thread.
static void report(void *ctx, const sl_outcome *o) {
  if (__atomic_load_n(&closing, __ATOMIC_ACQUIRE)) return;
  item *it = calloc(1, sizeof *it);
  if (!it) abort(); // an outcome must never be lost; out of memory here is out of memory everywhere
  it->loop = (int)(intptr_t)ctx;
  it->is_outcome = true;
  it->o = *o;
  enqueue(it);
}

static void on_event(void *ctx, const sl_event *e) {
  if (__atomic_load_n(&closing, __ATOMIC_ACQUIRE)) return;
  item *it = calloc(1, sizeof *it);
  if (!it) abort();
  it->loop = (int)(intptr_t)ctx;
  it->e = *e;
  if (e->len > 0) {
    it->bytes = malloc(e->len);
    if (!it->bytes) abort();
    memcpy(it->bytes, e->bytes, e->len);
  }
  it->e.bytes = NULL;
  enqueue(it);
}

// ---- to JavaScript ----------------------------------------------------------------------------

static napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static napi_value address(napi_env env, const struct sockaddr_storage *ss, int *port) {
  char text[SOCKADDR_TEXT_LEN];
  if (!sockaddr_text(ss, text, port)) {
    napi_value n;
    napi_get_null(env, &n);
    return n;
  }
  napi_value s;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &s);
  return s;
}

static void deliver(napi_env env, napi_value js_cb, item *it) {
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  if (it->is_outcome) {
    const sl_outcome *o = &it->o;
    napi_value attempts;
    napi_create_array_with_length(env, (size_t)o->attempts, &attempts);
    for (int i = 0; i < o->attempts && i < SL_MAX_ADDRS; i++) napi_set_element(env, attempts, (uint32_t)i, num(env, o->attempt_err[i]));
    // Read here, on the thread that runs the callback, so the wait in the queue is counted too.
    uint64_t now_us = sl_monotonic_us();
    double since_end_ms = now_us > o->ended_us ? (double)(now_us - o->ended_us) / 1000.0 : 0;
    napi_value argv[10] = {num(env, (double)o->id),  num(env, (double)o->bytes_up), num(env, (double)o->bytes_down),
                           num(env, o->end),         num(env, o->err),              num(env, o->dialed),
                           num(env, o->connect_us), attempts,                       num(env, o->first_fin),
                           num(env, since_end_ms)};
    napi_call_function(env, undefined, js_cb, 10, argv, NULL);
    if (--active == 0) napi_unref_threadsafe_function(env, tsfn);
    return;
  }
  napi_value fn;
  if (on_setup_ref == NULL || napi_get_reference_value(env, on_setup_ref, &fn) != napi_ok || fn == NULL) return;
  const sl_event *e = &it->e;
  if (e->kind == SL_EV_ACCEPTED) accepts_delivered++;
  if (e->kind == SL_EV_ACCEPTED && active++ == 0) napi_ref_threadsafe_function(env, tsfn);
  int peer_port, orig_port;
  napi_value bytes;
  if (it->bytes) {
    napi_create_buffer_copy(env, e->len, it->bytes, NULL, &bytes);
  } else {
    napi_get_null(env, &bytes);
  }
  // Read here, on the thread that runs the callback, so the wait in the queue is counted too.
  // In µs against the accept's whole ms (never later than the accept): the age is never short.
  double since = 0;
  if (e->kind == SL_EV_ACCEPTED) {
    double now_ms = (double)sl_monotonic_us() / 1000.0;
    since = now_ms > (double)e->accepted_ms ? now_ms - (double)e->accepted_ms : 0;
  }
  napi_value argv[13] = {num(env, e->kind), num(env, (double)e->id), num(env, it->loop), num(env, e->tag),
                         num(env, e->err),  num(env, e->state),      num(env, e->connect_us), address(env, &e->peer, &peer_port),
                         num(env, 0),       address(env, &e->orig, &orig_port), num(env, 0), bytes, num(env, since)};
  argv[8] = num(env, peer_port);
  argv[10] = num(env, orig_port);
  napi_call_function(env, undefined, fn, 13, argv, NULL);
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  (void)data;
  pthread_mutex_lock(&queue_lock);
  item *it = queue_head;
  queue_head = queue_tail = NULL;
  signalled = false;
  pthread_mutex_unlock(&queue_lock);
  while (it) {
    item *next = it->next;
    if (env != NULL && js_cb != NULL) {
      napi_handle_scope scope;
      napi_open_handle_scope(env, &scope);
      deliver(env, js_cb, it);
      napi_close_handle_scope(env, scope);
    }
    free(it->bytes);
    free(it);
    it = next;
  }
}

// ---- the hosted loop ---------------------------------------------------------------------------

#ifdef EGRESSD_HAVE_UV
static napi_env host_env;
static napi_ref host_outcome, host_resource;
static napi_async_context host_async;
static uv_poll_t host_poll;
static uv_timer_t host_timer;

// Delivers the hosted loop's reports: on the JavaScript thread, from a libuv callback, so in a
// callback scope of its own (the microtasks the handlers queue run when it closes, as after any
// I/O callback); a handler's exception is the process's uncaught exception, as from a
// thread-safe function's call.
static void host_deliver(void) {
  if (!host_head) return;
  if (__atomic_load_n(&closing, __ATOMIC_ACQUIRE)) {
    free_items(host_head);
    host_head = host_tail = NULL;
    return;
  }
  napi_env env = host_env;
  napi_handle_scope outer;
  napi_open_handle_scope(env, &outer);
  napi_value resource, cb;
  napi_get_reference_value(env, host_resource, &resource);
  napi_get_reference_value(env, host_outcome, &cb);
  napi_callback_scope scope;
  napi_open_callback_scope(env, resource, host_async, &scope);
  // Reports made while these are delivered (an abort run by sync()) come in the same call.
  while (host_head) {
    item *it = host_head;
    host_head = host_tail = NULL;
    while (it) {
      item *next = it->next;
      napi_handle_scope inner;
      napi_open_handle_scope(env, &inner);
      deliver(env, cb, it);
      bool pending = false;
      napi_is_exception_pending(env, &pending);
      if (pending) {
        napi_value err;
        napi_get_and_clear_last_exception(env, &err);
        napi_fatal_exception(env, err);
      }
      napi_close_handle_scope(env, inner);
      free(it->bytes);
      free(it);
      it = next;
    }
  }
  napi_close_callback_scope(env, scope);
  napi_close_handle_scope(env, outer);
}

static void on_host_timer(uv_timer_t *t);

// One turn, and the timer set to its next due time.
static void host_run(void) {
  int due = sl_loop_turn(loops[hosted]);
  if (due >= 0) uv_timer_start(&host_timer, on_host_timer, (uint64_t)due, 0);
  else uv_timer_stop(&host_timer);
}

static void on_host_poll(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)status;
  (void)events;
  host_run();
}

static void on_host_timer(uv_timer_t *t) {
  (void)t;
  host_run();
}

// Node turns on libuv's idle-time metrics (UV_METRICS_IDLE_TIME, for
// performance.eventLoopUtilization), and with them on, each poll of the event loop first calls
// epoll_pwait with a zero timeout and only then waits: a wake-up of a hosted loop costs Node's two
// epoll calls and the loop's own, where nginx makes one. egressd reads no event-loop utilization,
// so the hosted loop turns them off: 12-13% less CPU per raw connection at 50 clients
// (bench/RESULTS.md). libuv has no call to turn them off, so the flag is cleared in the loop's
// internal fields (`flags`, their first word, bit 0 in libuv 1.39 to 1.52), and only where a
// private loop has shown that uv_loop_configure sets exactly that bit in this process's libuv.
// Returns the flags word of `uvl`, or NULL where that is not shown.
static unsigned *idle_time_flags(uv_loop_t *uvl) {
  static int known = -1;
  if (known < 0) {
    uv_loop_t probe;
    known = 0;
    if (uv_loop_init(&probe) == 0) {
      unsigned *flags = probe.internal_fields;
      known = flags != NULL && *flags == 0 && uv_loop_configure(&probe, UV_METRICS_IDLE_TIME) == 0 && *flags == 1u;
      uv_loop_close(&probe);
    }
  }
  return known ? uvl->internal_fields : NULL;
}

// Loop 0 as a hosted loop on Node's event loop; an errno, or 0.
static int host_start(napi_env env, napi_value on_outcome) {
  uv_loop_t *uvl;
  if (napi_get_uv_event_loop(env, &uvl) != napi_ok) return EINVAL;
  int err = 0;
  sl_loop *l = sl_loop_start_hosted(report, (void *)(intptr_t)0, &err);
  if (!l) return err;
  napi_value resource, name;
  napi_create_object(env, &resource);
  napi_create_string_utf8(env, "egressd data plane", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, resource, 1, &host_resource) != napi_ok || napi_create_reference(env, on_outcome, 1, &host_outcome) != napi_ok ||
      napi_async_init(env, resource, name, &host_async) != napi_ok || uv_poll_init(uvl, &host_poll, sl_loop_fd(l)) != 0) {
    sl_loop_stop(l);
    return ENOMEM;
  }
  uv_timer_init(uvl, &host_timer);
  unsigned *flags = idle_time_flags(uvl);
  if (flags) *flags &= ~1u;
  uv_poll_start(&host_poll, UV_READABLE, on_host_poll);
  // The connections keep the process alive (the thread-safe function's reference), not these.
  uv_unref((uv_handle_t *)&host_poll);
  uv_unref((uv_handle_t *)&host_timer);
  host_env = env;
  loops[0] = l;
  hosted = 0;
  return 0;
}

// Before the loop closes its epoll descriptor: libuv must not poll a closed one.
static void host_stop(void) {
  uv_poll_stop(&host_poll);
  uv_timer_stop(&host_timer);
  uv_close((uv_handle_t *)&host_poll, NULL);
  uv_close((uv_handle_t *)&host_timer, NULL);
}
#else
static void host_deliver(void) {
  free_items(host_head);
  host_head = host_tail = NULL;
}
static int host_start(napi_env env, napi_value on_outcome) {
  (void)env;
  (void)on_outcome;
  return ENOTSUP;
}
static void host_stop(void) {}
#endif

// ---- errors -----------------------------------------------------------------------------------

static const char *errno_name(int e) {
  switch (e) {
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EBADF: return "EBADF";
    case ENOMEM: return "ENOMEM";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    default: return "EUNKNOWN";
  }
}

static napi_value throw_code(napi_env env, int e, const char *what) {
  char msg[200];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  napi_value code, text, err;
  napi_create_string_utf8(env, errno_name(e), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &err);
  napi_throw(env, err);
  return NULL;
}

static napi_value bad_args(napi_env env, const char *usage) {
  napi_throw_type_error(env, NULL, usage);
  return NULL;
}

// ---- start and stop -----------------------------------------------------------------------------

// Registered after the thread-safe function, so it runs before the function's own clean-up
// (Node runs cleanup hooks in reverse order): the loops stop, and their threads are joined, while
// the function is still valid.
static void cleanup(void *arg) {
  (void)arg;
  __atomic_store_n(&closing, 1, __ATOMIC_RELEASE);
  if (hosted >= 0) host_stop();
  for (int i = 0; i < loop_count; i++) sl_loop_stop(loops[i]);
  free_items(host_head);
  host_head = host_tail = NULL;
  loop_count = 0;
  pthread_mutex_lock(&queue_lock);
  item *it = queue_head;
  queue_head = queue_tail = NULL;
  pthread_mutex_unlock(&queue_lock);
  free_items(it);
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t n = 0;
  uint32_t cap = 0;
  napi_valuetype t, t2 = napi_undefined;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1 || n > MAX_LOOPS ||
      napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function)
    return bad_args(env, "start(threads, onOutcome, onSetup?, peekCap?, hosted?): threads must be 1 to 64 and onOutcome a function");
  if (argc >= 3) napi_typeof(env, argv[2], &t2);
  bool setup = t2 == napi_function;
  if (setup && (argc < 4 || napi_get_value_uint32(env, argv[3], &cap) != napi_ok || cap < 16 || cap > (1u << 20)))
    return bad_args(env, "start: with onSetup, peekCap must be 16 to 1 MiB");
  bool want_hosted = false;
  if (argc >= 5 && napi_get_value_bool(env, argv[4], &want_hosted) != napi_ok) return bad_args(env, "start: hosted must be a boolean");
  if (loop_count > 0) {
    napi_throw_error(env, NULL, "start: the data plane is already running");
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "egressd data plane", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &tsfn) != napi_ok) {
    napi_throw_error(env, NULL, "start: napi_create_threadsafe_function failed");
    return NULL;
  }
  napi_unref_threadsafe_function(env, tsfn);
  if (setup) napi_create_reference(env, argv[2], 1, &on_setup_ref);
  for (int i = 0; i < n; i++) {
    int err = 0;
    if (i == 0 && want_hosted) err = host_start(env, argv[1]);
    else loops[i] = sl_loop_start(report, (void *)(intptr_t)i, &err);
    if (err == 0 && loops[i]) {
      sl_loop_on_turn(loops[i], turn_over);
      if (setup) sl_loop_setup(loops[i], on_event, cap);
      continue;
    }
    if (hosted >= 0) host_stop();
    for (int j = 0; j < i; j++) sl_loop_stop(loops[j]);
    hosted = -1;
    napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
    return throw_code(env, err ? err : ENOMEM, i == 0 && want_hosted ? "start: loop 0 could not be hosted on Node's event loop" : "start: a data-plane thread could not start");
  }
  loop_count = n;
  napi_add_env_cleanup_hook(env, cleanup, NULL);
  return NULL;
}

// ---- the data phase alone ---------------------------------------------------------------------

static int arg_buffer(napi_env env, napi_value v, void **data, size_t *len) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  *data = NULL;
  *len = 0;
  if (t == napi_null || t == napi_undefined) return 0;
  bool is;
  if (napi_is_buffer(env, v, &is) != napi_ok || !is) return -1;
  return napi_get_buffer_info(env, v, data, len) == napi_ok ? 0 : -1;
}

static bool arg_loop(napi_env env, napi_value v, int32_t *loop) {
  return napi_get_value_int32(env, v, loop) == napi_ok && *loop >= 0 && *loop < loop_count;
}

static bool arg_id(napi_env env, napi_value v, uint64_t *id) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0) || d > 9007199254740991.0) return false;
  *id = (uint64_t)d;
  return true;
}

static napi_value handoff(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  int32_t loop, cfd, ufd;
  uint64_t id;
  uint32_t idle;
  void *up, *down;
  size_t up_len, down_len;
  if (!args_exactly(env, info, 7, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id) || napi_get_value_int32(env, argv[2], &cfd) != napi_ok ||
      napi_get_value_int32(env, argv[3], &ufd) != napi_ok || arg_buffer(env, argv[4], &up, &up_len) != 0 ||
      arg_buffer(env, argv[5], &down, &down_len) != 0 || napi_get_value_uint32(env, argv[6], &idle) != napi_ok || cfd < 0 || ufd < 0)
    return bad_args(env, "handoff(loop, id, clientFd, upstreamFd, up, down, idleMs): bad arguments, or start() not called");
  // Duplicates, so that Node can close its own descriptors (and libuv drop them from its epoll
  // set) without ending the connection.
  int c = fcntl(cfd, F_DUPFD_CLOEXEC, 0);
  if (c < 0) return throw_code(env, errno, "handoff: dup of the client socket");
  int u = fcntl(ufd, F_DUPFD_CLOEXEC, 0);
  if (u < 0) {
    int e = errno;
    close(c);
    return throw_code(env, e, "handoff: dup of the upstream socket");
  }
  int e = sl_loop_add(loops[loop], id, c, u, up, up_len, down, down_len, idle);
  if (e != 0) return throw_code(env, e, "handoff");
  if (active++ == 0) napi_ref_threadsafe_function(env, tsfn);
  return NULL;
}

static napi_value abort_conn(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t loop;
  uint64_t id;
  if (!args_exactly(env, info, 2, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id)) return bad_args(env, "abort(loop, id): bad arguments");
  int e = sl_loop_abort(loops[loop], id);
  if (e != 0) return throw_code(env, e, "abort");
  return NULL;
}

static napi_value answered(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t loop;
  uint64_t id;
  if (!args_exactly(env, info, 2, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id)) return bad_args(env, "answered(loop, id): bad arguments");
  int e = sl_loop_answered(loops[loop], id);
  return e ? throw_code(env, e, "answered") : NULL;
}

static napi_value fin_ends(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t loop;
  uint64_t id;
  if (!args_exactly(env, info, 2, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id)) return bad_args(env, "finEnds(loop, id): bad arguments");
  int e = sl_loop_fin_ends(loops[loop], id);
  return e ? throw_code(env, e, "finEnds") : NULL;
}

// Every loop's cap of unanswered connections (splice_loop.h sl_loop_accept_cap).
static napi_value accept_cap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint32_t cap;
  if (!args_exactly(env, info, 1, argv) || napi_get_value_uint32(env, argv[0], &cap) != napi_ok || cap < 1)
    return bad_args(env, "acceptCap(perLoop): a whole number from 1");
  for (int i = 0; i < loop_count; i++) {
    int e = sl_loop_accept_cap(loops[i], cap);
    if (e) return throw_code(env, e, "acceptCap");
  }
  return NULL;
}

// [at the cap, out of descriptors]: the listeners' pauses, all loops together.
static napi_value accept_pauses(napi_env env, napi_callback_info info) {
  (void)info;
  uint64_t capped = 0, out = 0;
  for (int i = 0; i < loop_count; i++) {
    uint64_t c, o;
    sl_loop_accept_pauses(loops[i], &c, &o);
    capped += c;
    out += o;
  }
  napi_value r;
  napi_create_array_with_length(env, 2, &r);
  napi_set_element(env, r, 0, num(env, (double)capped));
  napi_set_element(env, r, 1, num(env, (double)out));
  return r;
}

static napi_value active_count(napi_env env, napi_callback_info info) {
  (void)info;
  return num(env, (double)active);
}

static napi_value undelivered(napi_env env, napi_callback_info info) {
  (void)info;
  uint64_t accepted = 0;
  for (int i = 0; i < loop_count; i++) accepted += sl_loop_accepted(loops[i]);
  return num(env, accepted > accepts_delivered ? (double)(accepted - accepts_delivered) : 0);
}

static napi_value hosted_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
#ifdef EGRESSD_HAVE_UV
  napi_get_boolean(env, true, &r);
#else
  napi_get_boolean(env, false, &r);
#endif
  return r;
}

// Whether the idle-time metrics are on for Node's event loop, read from libuv's flags; null where
// their place is not known (idle_time_flags) or the addon was built without libuv's header.
static napi_value idle_metrics(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
  napi_get_null(env, &r);
#ifdef EGRESSD_HAVE_UV
  uv_loop_t *uvl;
  unsigned *flags = napi_get_uv_event_loop(env, &uvl) == napi_ok ? idle_time_flags(uvl) : NULL;
  if (flags) napi_get_boolean(env, (*flags & 1u) != 0, &r);
#endif
  return r;
}

// ---- connection set-up --------------------------------------------------------------------------

static napi_value listen_on(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  char host[SOCKADDR_TEXT_LEN + 1];
  uint32_t port, backlog;
  int32_t tag;
  bool v6only;
  if (!args_exactly(env, info, 5, argv) || napi_get_value_string_utf8(env, argv[0], host, sizeof host, NULL) != napi_ok ||
      napi_get_value_uint32(env, argv[1], &port) != napi_ok || port > 65535 || napi_get_value_bool(env, argv[2], &v6only) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &backlog) != napi_ok || napi_get_value_int32(env, argv[4], &tag) != napi_ok || loop_count == 0 ||
      on_setup_ref == NULL)
    return bad_args(env, "listen(host, port, ipv6Only, backlog, tag): bad arguments, or start() not called with onSetup");
  struct sockaddr_storage ss;
  if (!sockaddr_parse(host, port, &ss)) return throw_code(env, EINVAL, "listen: not an IP address");
  int fds[MAX_LOOPS];
  int made = 0, e = 0;
  // One socket per loop in one SO_REUSEPORT group: the kernel spreads new connections over the
  // loops (and over another egressd during a restart's hand-over).
  for (; made < loop_count; made++) {
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, v6 = v6only ? 1 : 0;
    if (fd < 0) {
      e = errno;
      break;
    }
    socklen_t len = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) != 0) ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, (int)backlog) != 0) {
      e = errno;
      close(fd);
      break;
    }
    if (made == 0 && port == 0) {
      // The kernel chose the port: the other loops' sockets join it.
      struct sockaddr_storage bound;
      socklen_t blen = sizeof bound;
      getsockname(fd, (struct sockaddr *)&bound, &blen);
      port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port : ((struct sockaddr_in6 *)&bound)->sin6_port);
      if (ss.ss_family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
      else ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    }
    fds[made] = fd;
  }
  if (made < loop_count) {
    for (int i = 0; i < made; i++) close(fds[i]);
    return throw_code(env, e, "listen");
  }
  for (int i = 0; i < loop_count; i++) {
    int r = sl_loop_listen(loops[i], fds[i], tag);
    if (r != 0) {
      for (int j = i; j < loop_count; j++) close(fds[j]);
      for (int j = 0; j < i; j++) sl_loop_unlisten(loops[j], tag);
      return throw_code(env, r, "listen");
    }
  }
  return num(env, port);
}

static napi_value unlisten(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t tag;
  if (!args_exactly(env, info, 1, argv) || napi_get_value_int32(env, argv[0], &tag) != napi_ok) return bad_args(env, "unlisten(tag)");
  for (int i = 0; i < loop_count; i++) sl_loop_unlisten(loops[i], tag);
  return NULL;
}

static napi_value peek_rules(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t tag;
  uint32_t deadline, first, stall;
  if (!args_exactly(env, info, 4, argv) || napi_get_value_int32(env, argv[0], &tag) != napi_ok || napi_get_value_uint32(env, argv[1], &deadline) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &first) != napi_ok || napi_get_value_uint32(env, argv[3], &stall) != napi_ok)
    return bad_args(env, "peekRules(tag, deadlineMs, firstByteMs, stallMs): bad arguments");
  for (int i = 0; i < loop_count; i++) {
    int e = sl_loop_rules(loops[i], tag, deadline, first, stall);
    if (e) return throw_code(env, e, "peekRules");
  }
  return NULL;
}

static napi_value peek(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int32_t loop;
  uint64_t id;
  uint32_t deadline, first, stall, at;
  if (!args_exactly(env, info, 6, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id) || napi_get_value_uint32(env, argv[2], &deadline) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &first) != napi_ok || napi_get_value_uint32(env, argv[4], &stall) != napi_ok ||
      napi_get_value_uint32(env, argv[5], &at) != napi_ok)
    return bad_args(env, "peek(loop, id, deadlineMs, firstByteMs, stallMs, reportAt): bad arguments");
  int e = sl_loop_peek(loops[loop], id, deadline, first, stall, at);
  return e ? throw_code(env, e, "peek") : NULL;
}

static napi_value dial(napi_env env, napi_callback_info info) {
  napi_value argv[12];
  int32_t loop;
  uint64_t id, version;
  bool tell = false, fin_ends = false;
  double valid_ms = -1;
  uint32_t port, connect_ms, delay_ms, parallel, idle_ms, n = 0;
  bool is_array = false;
  if (!args_exactly(env, info, 12, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id) || napi_is_array(env, argv[2], &is_array) != napi_ok ||
      !is_array || napi_get_array_length(env, argv[2], &n) != napi_ok || n < 1 || n > SL_MAX_ADDRS ||
      napi_get_value_uint32(env, argv[3], &port) != napi_ok || port > 65535 || napi_get_value_uint32(env, argv[4], &connect_ms) != napi_ok ||
      napi_get_value_uint32(env, argv[5], &delay_ms) != napi_ok || napi_get_value_uint32(env, argv[6], &parallel) != napi_ok || parallel < 1 ||
      parallel > SL_MAX_ADDRS || napi_get_value_uint32(env, argv[7], &idle_ms) != napi_ok || !arg_id(env, argv[8], &version) ||
      napi_get_value_bool(env, argv[9], &tell) != napi_ok || napi_get_value_double(env, argv[10], &valid_ms) != napi_ok || valid_ms != valid_ms ||
      napi_get_value_bool(env, argv[11], &fin_ends) != napi_ok)
    return bad_args(env,
                    "dial(loop, id, addresses (1 to 16), port, connectMs, attemptDelayMs, parallel (1 to 16), idleMs, version, tell, validMs, finEnds): bad arguments");
  struct sockaddr_storage addrs[SL_MAX_ADDRS];
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    char text[SOCKADDR_TEXT_LEN + 1];
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_string_utf8(env, v, text, sizeof text, NULL) != napi_ok ||
        !sockaddr_parse(text, port, &addrs[i]))
      return bad_args(env, "dial: every address must be an IP address literal");
  }
  // Counted from this call, which comes after the caller read its clock: never later than the
  // caller's deadline. At least 1: 0 means none.
  uint64_t valid_until = 0;
  if (valid_ms >= 0) {
    valid_until = sl_monotonic_us() + (uint64_t)(valid_ms > 1e12 ? 1e15 : valid_ms * 1000.0);
    if (valid_until == 0) valid_until = 1;
  }
  int e = sl_loop_dial(loops[loop], id, addrs, (int)n, connect_ms, delay_ms, (int)parallel, idle_ms, version, tell, valid_until, fin_ends);
  return e ? throw_code(env, e, "dial") : NULL;
}

static napi_value splice_conn(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t loop;
  uint64_t id;
  uint32_t idle;
  if (!args_exactly(env, info, 3, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id) || napi_get_value_uint32(env, argv[2], &idle) != napi_ok)
    return bad_args(env, "splice(loop, id, idleMs): bad arguments");
  int e = sl_loop_splice(loops[loop], id, idle);
  return e ? throw_code(env, e, "splice") : NULL;
}

static napi_value refuse(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int32_t loop, how;
  uint64_t id;
  uint32_t linger_ms;
  double linger_max;
  void *bytes;
  size_t len;
  if (!args_exactly(env, info, 6, argv) || !arg_loop(env, argv[0], &loop) || !arg_id(env, argv[1], &id) || napi_get_value_int32(env, argv[2], &how) != napi_ok ||
      how < SL_REFUSE_RESET || how > SL_REFUSE_ANSWER || arg_buffer(env, argv[3], &bytes, &len) != 0 ||
      napi_get_value_uint32(env, argv[4], &linger_ms) != napi_ok || napi_get_value_double(env, argv[5], &linger_max) != napi_ok ||
      !(linger_max >= 0))
    return bad_args(env, "refuse(loop, id, how, bytes, lingerMs, lingerMaxBytes): bad arguments");
  int e = sl_loop_refuse(loops[loop], id, (sl_refusal)how, bytes, len, linger_ms, (uint64_t)linger_max);
  return e ? throw_code(env, e, "refuse") : NULL;
}

static napi_value set_policy_version(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t v;
  if (!args_exactly(env, info, 1, argv) || !arg_id(env, argv[0], &v)) return bad_args(env, "setPolicyVersion(version)");
  sl_set_policy_version(v);
  return NULL;
}

static napi_value sync_loops(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint32_t timeout_ms;
  if (!args_exactly(env, info, 1, argv) || napi_get_value_uint32(env, argv[0], &timeout_ms) != napi_ok) return bad_args(env, "sync(timeoutMs)");
  return num(env, sl_loops_sync(loops, loop_count, timeout_ms));
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"handoff", NULL, handoff, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, abort_conn, NULL, NULL, NULL, napi_default, NULL},
      {"answered", NULL, answered, NULL, NULL, NULL, napi_default, NULL},
      {"finEnds", NULL, fin_ends, NULL, NULL, NULL, napi_default, NULL},
      {"acceptCap", NULL, accept_cap, NULL, NULL, NULL, napi_default, NULL},
      {"acceptPauses", NULL, accept_pauses, NULL, NULL, NULL, napi_default, NULL},
      {"hostedAvailable", NULL, hosted_available, NULL, NULL, NULL, napi_default, NULL},
      {"idleTimeMetrics", NULL, idle_metrics, NULL, NULL, NULL, napi_default, NULL},
      {"active", NULL, active_count, NULL, NULL, NULL, napi_default, NULL},
      {"undelivered", NULL, undelivered, NULL, NULL, NULL, napi_default, NULL},
      {"listen", NULL, listen_on, NULL, NULL, NULL, napi_default, NULL},
      {"unlisten", NULL, unlisten, NULL, NULL, NULL, napi_default, NULL},
      {"peek", NULL, peek, NULL, NULL, NULL, napi_default, NULL},
      {"peekRules", NULL, peek_rules, NULL, NULL, NULL, napi_default, NULL},
      {"dial", NULL, dial, NULL, NULL, NULL, napi_default, NULL},
      {"splice", NULL, splice_conn, NULL, NULL, NULL, napi_default, NULL},
      {"refuse", NULL, refuse, NULL, NULL, NULL, napi_default, NULL},
      {"setPolicyVersion", NULL, set_policy_version, NULL, NULL, NULL, napi_default, NULL},
      {"sync", NULL, sync_loops, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
