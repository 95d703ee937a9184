// The native data phase (see splice_loop.h). One thread, one epoll instance, edge-triggered:
// an event on either socket of a connection pumps both directions until each would block, so no
// readiness is ever left unconsumed. Pipes are taken from a small pool when a direction has
// bytes to move and returned as soon as they are empty again: an idle connection holds no pipe
// (HAProxy releases its pipes the same way), only its two sockets and this struct.

#include "splice_loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// The most one splice(2) asks for; a pipe holds 64 KiB by default, so the kernel moves less.
#define SL_SPLICE_MAX (1u << 20)
// Empty pipes kept for the next connection; beyond this they are closed.
#define SL_PIPE_POOL 64
#define SL_EVENTS 256

enum { CLIENT = 0, UPSTREAM = 1 };

typedef struct {
  int pipe[2];       // -1 when none is held
  size_t in_pipe;    // bytes read from `from` and not yet written to `to`
  char *pending;     // initial bytes, written before anything is spliced
  size_t pending_len, pending_off;
  bool eof;          // `from` sent its FIN
  bool shut;         // the FIN was passed on: shutdown(to, SHUT_WR)
  uint64_t bytes;
} sl_dir;

typedef struct sl_conn {
  uint64_t id;
  int fd[2];
  sl_dir dir[2]; // dir[CLIENT]: client → upstream; dir[UPSTREAM]: upstream → client
  uint64_t last_ms;
  uint32_t idle_ms;
  bool dead;
  struct sl_conn *prev, *next;
} sl_conn;

typedef enum { CMD_ADD, CMD_ABORT } cmd_kind;

typedef struct sl_cmd {
  cmd_kind kind;
  uint64_t id;
  sl_conn *conn;
  struct sl_cmd *next;
} sl_cmd;

struct sl_loop {
  int epfd, wakefd;
  pthread_t thread;
  sl_report_fn report;
  void *ctx;
  pthread_mutex_t lock; // guards cmds and stopping
  sl_cmd *cmds, *cmds_tail;
  bool stopping;
  sl_conn *conns;  // live connections (loop thread only)
  sl_conn *graves; // closed during this batch of events, freed after it
  unsigned count;
  int pool[SL_PIPE_POOL][2];
  int pooled;
  uint64_t now_ms;
  uint64_t next_idle_check; // no connection can be idle before this (ms); UINT64_MAX: none
};

static uint64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

// ---- pipes ---------------------------------------------------------------------------------

static int pipe_take(sl_loop *l, int p[2]) {
  if (l->pooled > 0) {
    l->pooled--;
    p[0] = l->pool[l->pooled][0];
    p[1] = l->pool[l->pooled][1];
    return 0;
  }
  return pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0 ? 0 : errno;
}

// Only an empty pipe goes back to the pool: stale bytes must never reach another connection.
static void pipe_give(sl_loop *l, sl_dir *d) {
  if (d->pipe[0] < 0) return;
  if (d->in_pipe == 0 && l->pooled < SL_PIPE_POOL) {
    l->pool[l->pooled][0] = d->pipe[0];
    l->pool[l->pooled][1] = d->pipe[1];
    l->pooled++;
  } else {
    close(d->pipe[0]);
    close(d->pipe[1]);
  }
  d->pipe[0] = d->pipe[1] = -1;
  d->in_pipe = 0;
}

// ---- closing ---------------------------------------------------------------------------------

static void reset_fd(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static void conn_close(sl_loop *l, sl_conn *c, sl_end end, int err, int reset_side) {
  if (c->dead) return;
  c->dead = true;
  // reset_side: -1 none, 0 or 1 that side, 2 both.
  if (reset_side == 2) {
    reset_fd(c->fd[0]);
    reset_fd(c->fd[1]);
  } else if (reset_side >= 0) {
    reset_fd(c->fd[reset_side]);
  }
  for (int s = 0; s < 2; s++) {
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd[s], NULL);
    close(c->fd[s]);
    pipe_give(l, &c->dir[s]);
    free(c->dir[s].pending);
    c->dir[s].pending = NULL;
  }
  if (c->prev) c->prev->next = c->next;
  else l->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  l->count--;
  c->next = l->graves;
  l->graves = c;
  sl_outcome o = {.id = c->id, .bytes_up = c->dir[CLIENT].bytes, .bytes_down = c->dir[UPSTREAM].bytes, .end = end, .err = err};
  l->report(l->ctx, &o);
}

// The socket `side` failed with `err`: the other side is reset, never sent a FIN that would pass
// for a clean end.
static void conn_fail(sl_loop *l, sl_conn *c, int side, int err) {
  sl_end end = SL_END_ERROR;
  if (err == ECONNRESET || err == EPIPE) end = side == CLIENT ? SL_END_CLIENT_RESET : SL_END_UPSTREAM_RESET;
  conn_close(l, c, end, err, 1 - side);
}

// ---- the data phase --------------------------------------------------------------------------

// Moves what it can from dir->from to dir->to until either would block. Returns false when the
// connection was closed.
static bool pump(sl_loop *l, sl_conn *c, int from) {
  sl_dir *d = &c->dir[from];
  int in = c->fd[from], out = c->fd[1 - from];
  for (;;) {
    if (d->pending_off < d->pending_len) {
      ssize_t n = send(out, d->pending + d->pending_off, d->pending_len - d->pending_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        conn_fail(l, c, 1 - from, errno);
        return false;
      }
      d->pending_off += (size_t)n;
      c->last_ms = l->now_ms;
      if (d->pending_off == d->pending_len) {
        free(d->pending);
        d->pending = NULL;
        d->pending_len = d->pending_off = 0;
      }
      continue;
    }
    if (d->in_pipe > 0) {
      ssize_t n = splice(d->pipe[0], NULL, out, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        conn_fail(l, c, 1 - from, errno);
        return false;
      }
      d->in_pipe -= (size_t)n;
      c->last_ms = l->now_ms;
      continue;
    }
    if (d->eof) {
      pipe_give(l, d);
      if (!d->shut) {
        d->shut = true;
        // ENOTCONN: the other side is already gone; its own event reports that.
        shutdown(out, SHUT_WR);
      }
      return true;
    }
    if (d->pipe[0] < 0) {
      int e = pipe_take(l, d->pipe);
      if (e != 0) {
        d->pipe[0] = d->pipe[1] = -1;
        conn_close(l, c, SL_END_ERROR, e, 2);
        return false;
      }
    }
    ssize_t n = splice(in, NULL, d->pipe[1], NULL, SL_SPLICE_MAX, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n == 0) {
      d->eof = true;
      continue;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        pipe_give(l, d); // empty here: nothing was read into it
        return true;
      }
      conn_fail(l, c, from, errno);
      return false;
    }
    d->in_pipe += (size_t)n;
    d->bytes += (uint64_t)n;
    c->last_ms = l->now_ms;
  }
}

static void conn_run(sl_loop *l, sl_conn *c) {
  if (c->dead) return;
  if (!pump(l, c, CLIENT) || !pump(l, c, UPSTREAM)) return;
  if (c->dir[CLIENT].shut && c->dir[UPSTREAM].shut) conn_close(l, c, SL_END_CLOSED, 0, -1);
}

// A socket's pending error (a reset that arrived while nothing was being read or written).
static bool check_error(sl_loop *l, sl_conn *c, int side) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return true;
  conn_fail(l, c, side, err);
  return false;
}

// ---- commands and the loop -------------------------------------------------------------------

static void wake(sl_loop *l) {
  uint64_t one = 1;
  ssize_t n = write(l->wakefd, &one, sizeof one);
  (void)n; // EAGAIN: the counter is already non-zero, the loop wakes anyway
}

static void push(sl_loop *l, sl_cmd *cmd) {
  pthread_mutex_lock(&l->lock);
  if (l->cmds_tail) l->cmds_tail->next = cmd;
  else l->cmds = cmd;
  l->cmds_tail = cmd;
  pthread_mutex_unlock(&l->lock);
  wake(l);
}

static void add_conn(sl_loop *l, sl_conn *c) {
  c->last_ms = l->now_ms;
  c->next = l->conns;
  if (l->conns) l->conns->prev = c;
  l->conns = c;
  l->count++;
  uint64_t due = l->now_ms + c->idle_ms;
  if (due < l->next_idle_check) l->next_idle_check = due;
  for (int s = 0; s < 2; s++) {
    // Tagged with the side in the low bit: the struct is at least 8-aligned.
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)s};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd[s], &ev) != 0) {
      conn_close(l, c, SL_END_ERROR, errno, -1);
      return;
    }
  }
  conn_run(l, c);
}

static void run_commands(sl_loop *l, bool *stop) {
  pthread_mutex_lock(&l->lock);
  sl_cmd *cmd = l->cmds;
  l->cmds = l->cmds_tail = NULL;
  *stop = l->stopping;
  pthread_mutex_unlock(&l->lock);
  while (cmd) {
    sl_cmd *next = cmd->next;
    if (cmd->kind == CMD_ADD) {
      add_conn(l, cmd->conn);
    } else {
      for (sl_conn *c = l->conns; c; c = c->next) {
        if (c->id == cmd->id) {
          conn_close(l, c, SL_END_ABORTED, 0, -1);
          break;
        }
      }
    }
    free(cmd);
    cmd = next;
  }
}

static void check_idle(sl_loop *l) {
  if (l->now_ms < l->next_idle_check) return;
  uint64_t next = UINT64_MAX;
  for (sl_conn *c = l->conns, *n; c; c = n) {
    n = c->next;
    uint64_t due = c->last_ms + c->idle_ms;
    if (due <= l->now_ms) conn_close(l, c, SL_END_IDLE_TIMEOUT, 0, -1);
    else if (due < next) next = due;
  }
  l->next_idle_check = next;
}

static void bury(sl_loop *l) {
  while (l->graves) {
    sl_conn *c = l->graves;
    l->graves = c->next;
    free(c);
  }
}

static void *loop_main(void *arg) {
  sl_loop *l = arg;
  struct epoll_event events[SL_EVENTS];
  for (;;) {
    int timeout = -1;
    if (l->next_idle_check != UINT64_MAX) {
      uint64_t now = monotonic_ms();
      timeout = l->next_idle_check <= now ? 0 : (int)(l->next_idle_check - now > 60000 ? 60000 : l->next_idle_check - now);
    }
    int n = epoll_wait(l->epfd, events, SL_EVENTS, timeout);
    l->now_ms = monotonic_ms();
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == 0) {
        uint64_t count;
        ssize_t r = read(l->wakefd, &count, sizeof count);
        (void)r;
        continue;
      }
      sl_conn *c = (sl_conn *)(uintptr_t)(events[i].data.u64 & ~(uint64_t)1);
      int side = (int)(events[i].data.u64 & 1);
      if (c->dead) continue;
      if ((events[i].events & EPOLLERR) && !check_error(l, c, side)) continue;
      conn_run(l, c);
    }
    bool stop = false;
    run_commands(l, &stop);
    check_idle(l);
    bury(l);
    if (stop) break;
  }
  while (l->conns) conn_close(l, l->conns, SL_END_ABORTED, 0, -1);
  bury(l);
  return NULL;
}

// ---- the public functions --------------------------------------------------------------------

sl_loop *sl_loop_start(sl_report_fn report, void *ctx, int *err) {
  sl_loop *l = calloc(1, sizeof *l);
  if (!l) {
    *err = ENOMEM;
    return NULL;
  }
  l->report = report;
  l->ctx = ctx;
  l->next_idle_check = UINT64_MAX;
  l->now_ms = monotonic_ms();
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
  if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) {
    *err = errno;
    goto fail;
  }
  pthread_mutex_init(&l->lock, NULL);
  int e = pthread_create(&l->thread, NULL, loop_main, l);
  if (e != 0) {
    *err = e;
    pthread_mutex_destroy(&l->lock);
    goto fail;
  }
  return l;
fail:
  if (l->epfd >= 0) close(l->epfd);
  if (l->wakefd >= 0) close(l->wakefd);
  free(l);
  return NULL;
}

static char *copy(const void *p, size_t n) {
  if (n == 0) return NULL;
  char *c = malloc(n);
  if (c) memcpy(c, p, n);
  return c;
}

int sl_loop_add(sl_loop *l, uint64_t id, int client_fd, int upstream_fd, const void *up, size_t up_len,
                const void *down, size_t down_len, uint32_t idle_ms) {
  sl_conn *c = calloc(1, sizeof *c);
  sl_cmd *cmd = calloc(1, sizeof *cmd);
  char *up_copy = copy(up, up_len), *down_copy = copy(down, down_len);
  if (!c || !cmd || (up_len && !up_copy) || (down_len && !down_copy)) {
    free(c);
    free(cmd);
    free(up_copy);
    free(down_copy);
    close(client_fd);
    close(upstream_fd);
    return ENOMEM;
  }
  c->id = id;
  c->fd[CLIENT] = client_fd;
  c->fd[UPSTREAM] = upstream_fd;
  c->idle_ms = idle_ms == 0 ? 1 : idle_ms;
  for (int s = 0; s < 2; s++) c->dir[s].pipe[0] = c->dir[s].pipe[1] = -1;
  c->dir[CLIENT].pending = up_copy;
  c->dir[CLIENT].pending_len = up_len;
  c->dir[CLIENT].bytes = up_len;
  c->dir[UPSTREAM].pending = down_copy;
  c->dir[UPSTREAM].pending_len = down_len;
  c->dir[UPSTREAM].bytes = down_len;
  cmd->kind = CMD_ADD;
  cmd->id = id;
  cmd->conn = c;
  push(l, cmd);
  return 0;
}

int sl_loop_abort(sl_loop *l, uint64_t id) {
  sl_cmd *cmd = calloc(1, sizeof *cmd);
  if (!cmd) return ENOMEM;
  cmd->kind = CMD_ABORT;
  cmd->id = id;
  push(l, cmd);
  return 0;
}

void sl_loop_stop(sl_loop *l) {
  pthread_mutex_lock(&l->lock);
  l->stopping = true;
  pthread_mutex_unlock(&l->lock);
  wake(l);
  pthread_join(l->thread, NULL);
  // Connections handed over after the loop's last look at its queue never ran; they are closed
  // and still reported, so every hand-off gets exactly one outcome.
  for (sl_cmd *cmd = l->cmds, *next; cmd; cmd = next) {
    next = cmd->next;
    if (cmd->kind == CMD_ADD) {
      sl_conn *c = cmd->conn;
      close(c->fd[0]);
      close(c->fd[1]);
      sl_outcome o = {.id = c->id, .bytes_up = 0, .bytes_down = 0, .end = SL_END_ABORTED, .err = 0};
      free(c->dir[0].pending);
      free(c->dir[1].pending);
      free(c);
      l->report(l->ctx, &o);
    }
    free(cmd);
  }
  for (int i = 0; i < l->pooled; i++) {
    close(l->pool[i][0]);
    close(l->pool[i][1]);
  }
  close(l->epfd);
  close(l->wakefd);
  pthread_mutex_destroy(&l->lock);
  free(l);
}

unsigned sl_loop_size(const sl_loop *l) {
  return l->count;
}
