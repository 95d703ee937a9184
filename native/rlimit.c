// RLIMIT_NOFILE, which Node cannot read or set: egressd raises its soft limit to the hard limit
// at start (as nginx's worker_rlimit_nofile and sniproxy do), and sizes its connection budget
// from the result (two descriptors per proxied connection).
//
// nofile(): { soft: number, hard: number }       getrlimit(2); RLIM_INFINITY reads as -1
// raiseNofile(): { soft: number, hard: number }  setrlimit(2) with soft = hard; a hard limit of
//   RLIM_INFINITY is capped at /proc/sys/fs/nr_open (the kernel refuses more). Returns the
//   limits in force afterwards.
// Both throw an Error whose `code` is the errno name (EPERM, EINVAL).

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, int e) {
  napi_value code, msg, err;
  const char *name = e == EPERM ? "EPERM" : e == EINVAL ? "EINVAL" : e == EFAULT ? "EFAULT" : "EUNKNOWN";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, strerror(e), NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &err);
  napi_throw(env, err);
  return NULL;
}

static double as_number(rlim_t v) {
  return v == RLIM_INFINITY ? -1.0 : (double)v;
}

static napi_value limits_object(napi_env env, const struct rlimit *r) {
  napi_value o, soft, hard;
  napi_create_object(env, &o);
  napi_create_double(env, as_number(r->rlim_cur), &soft);
  napi_create_double(env, as_number(r->rlim_max), &hard);
  napi_set_named_property(env, o, "soft", soft);
  napi_set_named_property(env, o, "hard", hard);
  return o;
}

static napi_value nofile(napi_env env, napi_callback_info info) {
  (void)info;
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return throw_errno(env, errno);
  return limits_object(env, &r);
}

// fs.nr_open is the most RLIMIT_NOFILE may be (setrlimit answers EPERM above it).
static rlim_t nr_open(void) {
  FILE *f = fopen("/proc/sys/fs/nr_open", "r");
  unsigned long long v = 0;
  if (f != NULL) {
    if (fscanf(f, "%llu", &v) != 1) v = 0;
    fclose(f);
  }
  return v > 0 ? (rlim_t)v : (rlim_t)1048576;
}

static napi_value raise_nofile(napi_env env, napi_callback_info info) {
  (void)info;
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return throw_errno(env, errno);
  rlim_t target = r.rlim_max == RLIM_INFINITY ? nr_open() : r.rlim_max;
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < target) {
    struct rlimit next = {.rlim_cur = target, .rlim_max = r.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &next) != 0) return throw_errno(env, errno);
  }
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return throw_errno(env, errno);
  return limits_object(env, &r);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "nofile", NAPI_AUTO_LENGTH, nofile, NULL, &fn);
  napi_set_named_property(env, exports, "nofile", fn);
  napi_create_function(env, "raiseNofile", NAPI_AUTO_LENGTH, raise_nofile, NULL, &fn);
  napi_set_named_property(env, exports, "raiseNofile", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
