// Binds the native data phase (splice_loop.c) to JavaScript: src/net/native-splice.ts hands an
// allowed connection's two sockets to one of N loops (one per core), and each connection's
// outcome comes back once, on the JavaScript thread, through a thread-safe function.
//
// start(threads: number, onOutcome: (id, bytesUp, bytesDown, end, errno) => void): void
// handoff(loop: number, id: number, clientFd: number, upstreamFd: number,
//         up: Buffer | null, down: Buffer | null, idleMs: number): void
//     dup(2)s both descriptors (the caller then closes its own handles); throws an Error whose
//     `code` is the errno name on failure, with nothing handed over.
// abort(loop: number, id: number): void
// active(): number   connections handed over whose outcome has not yet been delivered
//
// The thread-safe function is referenced only while connections are in the loops, so idle loops
// never keep the process alive. One data plane per process (Node-API instance data would allow
// more; egressd runs one daemon per process).

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

#include "splice_loop.h"

#define MAX_LOOPS 64

static sl_loop *loops[MAX_LOOPS];
static int loop_count;
static napi_threadsafe_function tsfn;
static int64_t active;
// Set when Node tears the environment down: outcomes are dropped from then on, never sent to a
// thread-safe function that is about to be freed.
static volatile int closing;

static napi_value throw_code(napi_env env, int e, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  napi_value code, text, err;
  napi_create_string_utf8(env, e == EMFILE ? "EMFILE" : e == ENFILE ? "ENFILE" : e == EBADF ? "EBADF" : e == ENOMEM ? "ENOMEM" : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &err);
  napi_throw(env, err);
  return NULL;
}

// Runs on a loop's thread: the outcome is copied and queued for the JavaScript thread.
static void report(void *ctx, const sl_outcome *o) {
  (void)ctx;
  if (__atomic_load_n(&closing, __ATOMIC_ACQUIRE)) return;
  sl_outcome *copy = malloc(sizeof *copy);
  if (!copy) abort(); // an outcome must never be lost; out of memory here is out of memory everywhere
  *copy = *o;
  if (napi_call_threadsafe_function(tsfn, copy, napi_tsfn_blocking) != napi_ok) free(copy);
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  sl_outcome *o = data;
  if (env != NULL && js_cb != NULL) {
    napi_value argv[5], undefined;
    napi_create_double(env, (double)o->id, &argv[0]);
    napi_create_double(env, (double)o->bytes_up, &argv[1]);
    napi_create_double(env, (double)o->bytes_down, &argv[2]);
    napi_create_int32(env, (int32_t)o->end, &argv[3]);
    napi_create_int32(env, o->err, &argv[4]);
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, js_cb, 5, argv, NULL);
    if (--active == 0) napi_unref_threadsafe_function(env, tsfn);
  }
  free(o);
}

// Registered after the thread-safe function, so it runs before the function's own clean-up
// (Node runs cleanup hooks in reverse order): the loops stop, and their threads are joined, while
// the function is still valid.
static void cleanup(void *arg) {
  (void)arg;
  __atomic_store_n(&closing, 1, __ATOMIC_RELEASE);
  for (int i = 0; i < loop_count; i++) sl_loop_stop(loops[i]);
  loop_count = 0;
}

static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t n = 0;
  napi_valuetype t;
  if (argc != 2 || napi_get_value_int32(env, argv[0], &n) != napi_ok || n < 1 || n > MAX_LOOPS ||
      napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, NULL, "start(threads, onOutcome): threads must be 1 to 64 and onOutcome a function");
    return NULL;
  }
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
  for (int i = 0; i < n; i++) {
    int err = 0;
    loops[i] = sl_loop_start(report, NULL, &err);
    if (!loops[i]) {
      for (int j = 0; j < i; j++) sl_loop_stop(loops[j]);
      napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
      return throw_code(env, err, "start: a data-plane thread could not start");
    }
  }
  loop_count = n;
  napi_add_env_cleanup_hook(env, cleanup, NULL);
  return NULL;
}

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

static napi_value handoff(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t loop, cfd, ufd;
  int64_t id;
  uint32_t idle;
  void *up, *down;
  size_t up_len, down_len;
  if (argc != 7 || napi_get_value_int32(env, argv[0], &loop) != napi_ok || napi_get_value_int64(env, argv[1], &id) != napi_ok ||
      napi_get_value_int32(env, argv[2], &cfd) != napi_ok || napi_get_value_int32(env, argv[3], &ufd) != napi_ok ||
      arg_buffer(env, argv[4], &up, &up_len) != 0 || arg_buffer(env, argv[5], &down, &down_len) != 0 ||
      napi_get_value_uint32(env, argv[6], &idle) != napi_ok || loop < 0 || loop >= loop_count || cfd < 0 || ufd < 0 || id < 0) {
    napi_throw_type_error(env, NULL, "handoff(loop, id, clientFd, upstreamFd, up, down, idleMs): bad arguments, or start() not called");
    return NULL;
  }
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
  int e = sl_loop_add(loops[loop], (uint64_t)id, c, u, up, up_len, down, down_len, idle);
  if (e != 0) return throw_code(env, e, "handoff");
  if (active++ == 0) napi_ref_threadsafe_function(env, tsfn);
  return NULL;
}

static napi_value abort_conn(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t loop;
  int64_t id;
  if (argc != 2 || napi_get_value_int32(env, argv[0], &loop) != napi_ok || napi_get_value_int64(env, argv[1], &id) != napi_ok ||
      loop < 0 || loop >= loop_count) {
    napi_throw_type_error(env, NULL, "abort(loop, id): bad arguments");
    return NULL;
  }
  int e = sl_loop_abort(loops[loop], (uint64_t)id);
  if (e != 0) return throw_code(env, e, "abort");
  return NULL;
}

static napi_value active_count(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_double(env, (double)active, &v);
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"start", NULL, start, NULL, NULL, NULL, napi_default, NULL},
      {"handoff", NULL, handoff, NULL, NULL, NULL, napi_default, NULL},
      {"abort", NULL, abort_conn, NULL, NULL, NULL, napi_default, NULL},
      {"active", NULL, active_count, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
