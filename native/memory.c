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
//
// dropExecutablePages(): number  once start-up is over (src/limits/overload.ts
//   releaseStartupMemory): the pages of the node executable mapped into this process are
//   unmapped from it (madvise MADV_DONTNEED), and only what runs afterwards maps back, on a minor
//   fault from the page cache. Node's binary is 150 MB; start-up (the module loader, the parser
//   and bytecode generator over every module, ICU, the compilers' first tiers) touches about
//   50 MB of it, and the kernel's fault-around maps 16 pages around each touch: 53 MB of RSS,
//   of which about 4 MB is used again while egressd serves. The pages stay in the page cache,
//   shared with every other node process; only this process's mappings of them go.
//   Only mappings that are safe to drop: the executable's own file, not writable, and with no
//   private copy of any page (smaps Anonymous: 0 kB; a relocated RELRO segment has some, and
//   dropping it would bring back the unrelocated bytes). Returns the bytes of RSS unmapped (0
//   where /proc is absent).

#include <limits.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
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

#ifdef __linux__
// One mapping of /proc/self/smaps being read: its range, whether it may be dropped, its Rss.
struct mapping {
  unsigned long start, end;
  bool candidate;
  unsigned long rss_kib;
};

static double drop_if_clean(const struct mapping *m, unsigned long anonymous_kib) {
  if (!m->candidate || anonymous_kib != 0) return 0;
  if (madvise((void *)m->start, m->end - m->start, MADV_DONTNEED) != 0) return 0;
  return (double)m->rss_kib * 1024;
}

static double drop_executable_mappings(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 0;
  exe[n] = 0;
  FILE *f = fopen("/proc/self/smaps", "re");
  if (f == NULL) return 0;
  double dropped = 0;
  struct mapping m = {0};
  char line[PATH_MAX + 128];
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long start, end, value;
    char perms[5];
    int path_at = -1;
    // A mapping's header: "start-end perms offset dev inode   path".
    if (sscanf(line, "%lx-%lx %4s %*x %*s %*u %n", &start, &end, perms, &path_at) >= 3 && path_at > 0) {
      char *path = line + path_at;
      path[strcspn(path, "\n")] = 0;
      m = (struct mapping){.start = start, .end = end, .candidate = perms[1] != 'w' && strcmp(path, exe) == 0};
    } else if (sscanf(line, "Rss: %lu kB", &value) == 1) {
      m.rss_kib = value;
    } else if (sscanf(line, "Anonymous: %lu kB", &value) == 1) {
      // Anonymous follows Rss in every mapping's block: the mapping is judged here.
      dropped += drop_if_clean(&m, value);
      m.candidate = false;
    }
  }
  fclose(f);
  return dropped;
}
#endif

static napi_value drop_executable_pages(napi_env env, napi_callback_info info) {
  (void)info;
  double dropped = 0;
#ifdef __linux__
  dropped = drop_executable_mappings();
#endif
  napi_value result;
  napi_create_double(env, dropped, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "releaseFreeMemory", NAPI_AUTO_LENGTH, release_free_memory, NULL, &fn);
  napi_set_named_property(env, exports, "releaseFreeMemory", fn);
  napi_create_function(env, "dropExecutablePages", NAPI_AUTO_LENGTH, drop_executable_pages, NULL, &fn);
  napi_set_named_property(env, exports, "dropExecutablePages", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
