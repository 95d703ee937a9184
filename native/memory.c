// Memory the process has freed but the C allocator still holds, handed back to the kernel: the
// second half of the memory guard's shrink action (src/limits/overload.ts), as Envoy's
// shrink_heap calls tcmalloc's ReleaseFreeMemory. Node's Buffers, libuv's handles and V8's
// off-heap data come from glibc malloc, which keeps freed chunks in its arenas: after a flood
// of short-lived connections the cgroup's working set stayed 26 MiB above idle with the V8
// heap back at its idle size, and the guard kept shedding long after the flood was gone.
//
// releaseFreeMemory(): boolean  malloc_trim(3) with pad 0: every arena's free pages are
//   returned (madvise MADV_DONTNEED since glibc 2.8, not only the top of the heap). True when
//   some memory was released; false when none was, or on a C library without malloc_trim.

#include <node_api.h>
#include <stdbool.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value release_free_memory(napi_env env, napi_callback_info info) {
  (void)info;
  bool released = false;
#ifdef __GLIBC__
  released = malloc_trim(0) == 1;
#endif
  napi_value result;
  napi_get_boolean(env, released, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "releaseFreeMemory", NAPI_AUTO_LENGTH, release_free_memory, NULL, &fn);
  napi_set_named_property(env, exports, "releaseFreeMemory", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
