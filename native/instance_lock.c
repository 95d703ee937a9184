// Whether another egressd process on the state runs still, seen from any PID namespace. Each
// process holds a write lock on one byte of a file beside the state (state-writer.ts picks the
// byte from its instance id) for as long as it runs; the kernel drops the lock when the process
// dies, however (SIGKILL, a crash, the OOM killer), and a lock is a property of the file's inode,
// so a process in another PID namespace, container or pod that opens the same file sees it, as
// SQLite's own locks on the database are seen. A pid and start time are not: they name another
// process, or none, in another PID namespace.
//
// Open file description locks (fcntl(2) F_OFD_SETLK, Linux 3.15), not POSIX record locks: a
// POSIX lock belongs to the process and is dropped when it closes any descriptor of the file,
// which any other code in the process might do.
//
// hold(path: string, mode: number, offset: number): number   opens (creating with `mode`) and
//   locks byte `offset` for writing (waiting 1 s at most); returns the descriptor, kept open
//   until the process exits or release(). Throws an Error whose `errno` is the errno's number (EAGAIN:
//   another open file description holds that byte).
// held(fd: number, offset: number): boolean   whether another open file description holds a
//   lock on byte `offset` (F_OFD_GETLK); its own lock does not count. Throws as hold.
// release(fd: number, path: string): undefined   closes the descriptor, which drops its lock,
//   and unlinks the file at `path` first when no other process holds a byte of it.

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>
#include "napi_args.h"

// The errno as a number (`errno`): the caller names it (os.constants.errno), the list is long.
static napi_value throw_errno(napi_env env, int e) {
  napi_value msg, err, num;
  napi_create_string_utf8(env, strerror(e), NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &err);
  napi_create_int32(env, e, &num);
  napi_set_named_property(env, err, "errno", num);
  napi_throw(env, err);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *what) {
  napi_throw_type_error(env, NULL, what);
  return NULL;
}

static struct flock one_byte(short type, int64_t offset) {
  struct flock l;
  memset(&l, 0, sizeof l);
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = (off_t)offset;
  l.l_len = 1;
  return l;
}

// Whether the descriptor's file is still the one at `path` (a closer may have unlinked it).
static bool still_at(int fd, const char *path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static napi_value hold(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char path[4096];
  size_t len = 0;
  uint32_t mode = 0;
  int64_t offset = 0;
  if (!args_exactly(env, info, 3, argv) || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok ||
      len >= sizeof path - 1 || napi_get_value_uint32(env, argv[1], &mode) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok || offset < 0) {
    return throw_type(env, "hold(path, mode, offset): a path, a file mode and an offset >= 0");
  }
  // The last process to close unlinks the file while it holds all of it (release): a lock
  // taken on the file it unlinked is seen by nobody, so the lock counts only once the path
  // still names the file locked; a byte held for an instant is that closer's whole-file lock.
  int e = EAGAIN;
  for (int attempt = 0; attempt < 1000; attempt++) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, (mode_t)(mode & 0777));
    if (fd < 0) return throw_errno(env, errno);
    struct flock l = one_byte(F_WRLCK, offset);
    if (fcntl(fd, F_OFD_SETLK, &l) == 0) {
      if (still_at(fd, path)) {
        napi_value out;
        napi_create_int32(env, fd, &out);
        return out;
      }
      close(fd);
      continue;
    }
    e = errno == EACCES ? EAGAIN : errno;
    close(fd);
    if (e != EAGAIN) break;
    usleep(1000);
  }
  return throw_errno(env, e);
}

static napi_value held(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd = -1;
  int64_t offset = 0;
  if (!args_exactly(env, info, 2, argv) || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok || offset < 0) {
    return throw_type(env, "held(fd, offset): a descriptor and an offset >= 0");
  }
  struct flock l = one_byte(F_WRLCK, offset);
  if (fcntl(fd, F_OFD_GETLK, &l) != 0) return throw_errno(env, errno);
  napi_value out;
  napi_get_boolean(env, l.l_type != F_UNLCK, &out);
  return out;
}

static napi_value release(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd = -1;
  char path[4096];
  size_t len = 0;
  if (!args_exactly(env, info, 2, argv) || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], path, sizeof path, &len) != napi_ok || len >= sizeof path - 1) {
    return throw_type(env, "release(fd, path): a descriptor and the file's path");
  }
  if (fd < 0) return NULL;
  // No other process holds a byte (the whole file is ours), and none can unlink it meanwhile
  // (that takes the whole file too): the file is needed by nobody, and goes, as SQLite's -wal and
  // -shm go when the last connection closes.
  struct flock all = one_byte(F_WRLCK, 0);
  all.l_len = 0;
  if (fcntl(fd, F_OFD_SETLK, &all) == 0 && still_at(fd, path)) unlink(path);
  close(fd);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "hold", NAPI_AUTO_LENGTH, hold, NULL, &fn);
  napi_set_named_property(env, exports, "hold", fn);
  napi_create_function(env, "held", NAPI_AUTO_LENGTH, held, NULL, &fn);
  napi_set_named_property(env, exports, "held", fn);
  napi_create_function(env, "release", NAPI_AUTO_LENGTH, release, NULL, &fn);
  napi_set_named_property(env, exports, "release", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
