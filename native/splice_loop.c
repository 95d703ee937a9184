// The native data phase (see splice_loop.h). One thread, one epoll instance, edge-triggered:
// an event on either socket of a connection pumps both directions until each would block, so no
// readiness is ever left unconsumed. Pipes are taken from a small pool when a direction has
// bytes to move and returned as soon as they are empty again: an idle connection holds no pipe
// (HAProxy releases its pipes the same way), only its two sockets and this struct.

#include "splice_loop.h"

#include "first_flight.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

// The most one splice(2) asks for; a pipe holds 64 KiB by default, so the kernel moves less.
#define SL_SPLICE_MAX (1u << 20)
// A bulk direction's pipe size (F_SETPIPE_SZ; 0: never grown). Each splice(2) moves at most a
// pipe's worth, so the data phase's syscalls and wake-ups per GB fall with it: 1 MiB took the
// proxy's CPU per GB from 1.07-1.37 s to 0.53-0.57 (bench/proxy raw-bulk and tls-bulk, busy
// machine), 256 KiB to 0.82-0.90. Pipes are made at the kernel's size (64 KiB) and one grows
// when a splice fills half of it, at most SL_BIG_PIPES per loop: fs/pipe-user-pages-soft (64 MiB
// of pipes per user by default, for a process without CAP_SYS_RESOURCE, as egressd.service runs)
// counts a pipe's size, used or not, and past it the kernel makes new pipes of 2 buffers. Where
// it refuses to grow one, the loop stops asking for a second.
#ifndef SL_PIPE_SIZE
#define SL_PIPE_SIZE (1 << 20)
#endif
#define SL_BIG_PIPES 16
// A new pipe's size; 0: the kernel's. The C test sets 8192 (2 buffers, what the kernel gives
// past fs/pipe-user-pages-soft) to run the loop on the smallest pipes.
#ifndef SL_NEW_PIPE_SIZE
#define SL_NEW_PIPE_SIZE 0
#endif
#define SL_GROW_RETRY_MS 1000
// A connection ending with a reset looks this often whether the last bytes it wrote to the
// other side were acknowledged (conn_end): no event says so.
#define SL_DRAIN_POLL_MS 5
// After a side failed, the other side is given what it sent before as long as it takes some of it
// within this long (or idle_ms, if shorter), and is reset then: a peer that reads nothing cannot
// hold a failed connection. The JavaScript path's RESET_LINGER_MS (src/net/splice.ts); Envoy's
// delayed_close_timeout bounds the same flush before a close by 1 s.
#define SL_RESET_LINGER_MS 1000
// A direction's bytes go through the loop's own buffer (recv, send) until it has carried
// SL_COPY_LIMIT bytes or a read filled the buffer, and are spliced from then on. A small exchange
// (a TLS handshake, a short answer) costs two copies of a few hundred bytes, cheaper than two
// splices through a pipe; and a read that returns less than the buffer proves the socket empty,
// where a splice's count says nothing about whether the pipe filled (any number of segments, one
// buffer each), so a splice that moved more bytes than the pipe has buffers had to be followed by
// one that found EAGAIN. HAProxy likewise splices only a channel it has seen stream fast
// (splice-auto: consecutive reads that filled its buffer), and not under 4 KiB to forward.
#define SL_COPY_BUF (64u << 10)
#define SL_COPY_LIMIT (64u << 10)
// Empty pipes kept for the next connection; beyond this they are closed.
#define SL_PIPE_POOL 64
#define SL_EVENTS 256
// A hosted loop's turn runs the commands posted during it at most this many times (sl_loop_turn).
#define SL_HOSTED_ROUNDS 4
// Connections found by id (commands): chained buckets.
#define SL_BUCKETS 4096
// Accepts per listener event, so one busy listener cannot starve the connections.
#define SL_ACCEPT_BATCH 64
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
// Set-up connections get ids from here up; ids below are the caller's (sl_loop_add).
#define SL_SETUP_ID_BASE (1ull << 48)

static uint64_t policy_version;
static uint64_t next_setup_id = SL_SETUP_ID_BASE;

enum { CLIENT = 0, UPSTREAM = 1 };

typedef struct {
  int pipe[2];       // -1 when none is held
  unsigned slots;    // the pipe's buffers: a splice into it that moved fewer bytes did not fill it
  size_t in_pipe;    // bytes read from `from` and not yet written to `to`
  // Bytes read and not yet written, written before anything else: the initial bytes, and what a
  // write from the loop's buffer left (allocated only then, freed once written).
  char *pending;
  size_t pending_len, pending_off;
  bool bulk;         // spliced from now on (see SL_COPY_BUF)
  bool eof;          // `from` sent its FIN
  bool shut;         // the FIN was passed on: shutdown(to, SHUT_WR)
  uint64_t bytes;
} sl_dir;

// What a connection is doing. Handed-over connections (sl_loop_add) start in SPLICE.
typedef enum { ST_WAIT, ST_PEEK, ST_DIAL, ST_REFUSE, ST_SPLICE } sl_stage;

typedef struct {
  struct sockaddr_storage addr[SL_MAX_ADDRS];
  int fd[SL_MAX_ADDRS]; // -1: not started or over
  int n, next;          // how many addresses; the next to start
  int parallel;         // the most attempts in flight at once (sl_loop_dial)
  int last_err;         // the errno of the attempt that failed last, in time (0: none yet)
  uint64_t start_ms[SL_MAX_ADDRS];
  uint64_t started_ms, deadline_ms, next_start_ms;
  uint32_t delay_ms;
  uint64_t started_us;
  uint64_t version;
  uint64_t valid_until_us; // 0: the verdict has no deadline of its own
  bool tell;
} sl_dial;

typedef struct sl_conn {
  uint64_t id;
  int fd[2]; // fd[UPSTREAM] is -1 until a dial connects
  sl_dir dir[2]; // dir[CLIENT]: client → upstream; dir[UPSTREAM]: upstream → client
  uint64_t last_ms;
  uint32_t idle_ms;
  // What each socket may do without a probe (nginx's ready flags): `rd` is set by an event that
  // can mean bytes, an EOF or an error, and cleared when a read would block; `wr` likewise for
  // writes. With edge-triggered epoll a flag is only cleared by EAGAIN, so no readiness is lost,
  // and no read or write is tried that must fail with EAGAIN. `out` says EPOLLOUT is in the
  // socket's interest set: it is added only once a write has blocked, so a short connection is
  // never woken for a writability it does not need.
  bool rd[2], wr[2], out[2];
  // EPOLLIN is out of the socket's interest set: the direction reading from it filled its pipe
  // with bytes the other socket could not take (a bulk transfer outrunning its reader). Every
  // segment arriving meanwhile would wake the loop for nothing, as the pipe is not read into
  // until the writer drains it; the socket's receive buffer and TCP's window hold the sender
  // back instead, as they do a proxy blocked in write(2). When the pipe is empty the socket is
  // read without an event (`rd` set), and EPOLLIN comes back only once a read finds it empty:
  // while the source stays ahead of the reader, a transfer costs no epoll_ctl after the first.
  // EPOLLRDHUP, EPOLLHUP and EPOLLERR are reported throughout.
  bool paused[2];
  // An event said the peer closed or failed (EPOLLRDHUP, EPOLLHUP, EPOLLERR). Until then a read
  // that returned less than asked (and was not limited by the pipe) emptied the socket, and the
  // next byte brings a new edge: `rd` is cleared without a probe that must find EAGAIN. After it,
  // the EOF or the error is still to be read, and its edge is already spent.
  bool hup[2];
  // The peer's FIN came (EPOLLRDHUP without EPOLLERR). The kernel sets it only once every byte
  // before the FIN is in the socket's receive queue (tcp_fin runs in sequence), so a read that
  // emptied the socket has taken them all: the FIN is the end, with no read to find the 0.
  bool fin[2];
  // EPOLLPRI came: the peer sent TCP urgent data (MSG_OOB, as telnet's and FTP's Synch, RFC 854).
  // A read stops at its mark with bytes still queued behind it (recv returns short, splice
  // short and then 0 or EAGAIN: tcp_recvmsg and tcp_read_sock in net/ipv4/tcp.c), so until a
  // read finds EAGAIN a short read is not taken to have emptied the socket: the bytes behind the
  // mark would wait for an edge that never comes. Not set while paused (EPOLLPRI is out of the
  // interest set then): read_emptied asks the kernel where that matters.
  bool urg[2];
  // The peer's FIN was seen before anything failed (an EPOLLRDHUP without EPOLLERR, or the read
  // of the EOF): `fin` is cleared by an error event, this is not. What conn_fail asks.
  bool said_fin[2];
  // The side reset after its FIN (conn_gone); `again`: the directions are to be pumped again.
  bool gone[2], again;
  // The side that reset (or failed) before its FIN, -1 while none has, and its errno: what it
  // sent before is still passed on (conn_broken), then the other side is reset (conn_end).
  int failed, fail_err;
  // The other side is reset once its peer has acknowledged what the loop wrote to it (conn_end):
  // its socket's unacknowledged bytes (SIOCOUTQ) when last looked at, and when to look again.
  bool ending;
  int unacked;
  uint64_t drain_at;
  // The side whose FIN was passed on first, -1 until one was: who ended a connection that closed.
  int first_fin;
  bool dead;
  bool setup; // accepted by the loop: its outcome carries the dial's fields
  // The client's FIN before an upstream connected ends the connection (sl_loop_fin_ends).
  bool fin_ends;
  bool unanswered; // reported as accepted, no command yet
  sl_stage stage;
  // Set-up: the first bytes (kept to be written upstream), how many were reported.
  char *peek;
  size_t peek_len, reported;
  // The room `peek` has: it grows by doubling (up to the cap), so a flight read one byte at a
  // time is copied O(log n) times, not once per read.
  size_t peek_room;
  uint64_t accepted_ms, peek_deadline, first_byte_at, last_byte_ms;
  uint32_t stall_ms, report_at;
  // The loop reads the first flight by itself under its listener's rules (sl_loop_rules) until
  // ff_complete, a deadline, the cap or the client's close: no command from the caller.
  bool auto_peek;
  uint32_t auto_stall_ms; // the stall wait while ff_may_stall holds
  ff_progress ff;         // how far ff_next has read `peek` (each byte once, however it drips)
  sl_event *accept_ev;    // the ACCEPTED report not yet made (the flight still incomplete)
  // While accept_ev is: its place in the loop's list of such connections (sl_loop.waiting).
  struct sl_conn *wait_prev, *wait_next;
  // When the first byte not yet reported was read: such bytes wait at most SL_FLIGHT_GRACE_MS
  // (auto_peek), wherever in the flight they come, as the parser sees each chunk on the
  // JavaScript path (peek-socket.ts PeekBuffer) and may answer before the flight is whole.
  uint64_t unreported_ms;
  sl_dial *dial;
  int dialed, attempts, attempt_err[SL_MAX_ADDRS];
  uint32_t connect_us;
  // Refusal: the answer still to write, then the linger.
  char *answer;
  size_t answer_len, answer_off;
  uint64_t linger_until, linger_left;
  struct sl_conn *prev, *next, *hnext;
  // Its place in the timer heap (arm; SL_NO_TIMER: not in it), whose key says when the
  // connection is next looked at. The key may be earlier than conn_due, never later: a due that
  // moves later (bytes came, the idle timeout restarts) is found when the key comes, not re-keyed.
  unsigned timer_at;
  struct sl_conn *due_next; // check_timers' list of the connections due in this turn
} sl_conn;

// A timer heap entry: the key beside the connection, so that sifting reads no connection.
struct sl_timer {
  uint64_t due;
  struct sl_conn *c;
};

typedef struct sl_listener {
  int fd, tag;
  // The bound address: an accepted socket's local address when `exact` (a specific address),
  // so telling a connection to the listener itself from a redirected one needs no getsockname.
  struct sockaddr_storage bound;
  bool exact;
  uint32_t deadline_ms, first_byte_ms, stall_ms; // sl_loop_rules; deadline 0: none
  uint64_t paused_until; // 0: accepting
  bool capped;           // not accepting while the loop holds its cap of unanswered connections
  // The last wake-up's batch, and the turn it was taken in when it took all it was allowed
  // (on_accept): only then may more be waiting.
  unsigned batch;
  uint64_t full_turn;
  struct sl_listener *next;
} sl_listener;

typedef enum { CMD_ADD, CMD_ABORT, CMD_LISTEN, CMD_UNLISTEN, CMD_PEEK, CMD_DIAL, CMD_SPLICE, CMD_REFUSE, CMD_SYNC, CMD_RULES, CMD_ANSWERED, CMD_CAP, CMD_FIN_ENDS } cmd_kind;

// One sl_loops_sync call: each loop's CMD_SYNC counts itself off once every command queued
// before it has run. Freed by whichever of the caller and the loops lets go of it last, so a
// caller that gave up waiting never leaves a loop writing to freed memory.
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t done;
  int waiting; // loops that have not reached their CMD_SYNC yet
  int refs;    // the caller, and each CMD_SYNC not yet freed
} sl_barrier;

typedef struct sl_cmd {
  cmd_kind kind;
  uint64_t id;
  sl_conn *conn;
  int fd, tag;
  uint32_t a, b, c, d; // PEEK: deadline, first byte, stall, report_at; DIAL: connect, delay, idle, fin_ends; SPLICE: idle; REFUSE: how, linger
  uint64_t big;        // DIAL: version; REFUSE: linger_max
  sl_dial *dial;
  char *bytes;
  size_t len;
  sl_barrier *barrier; // SYNC
  struct sl_cmd *next;
} sl_cmd;

struct sl_loop {
  int epfd, wakefd;
  pthread_t thread;
  // Hosted (sl_loop_start_hosted): no thread of its own; the caller runs each turn (sl_loop_turn)
  // on its thread, `host` (the last to run one). `in_turn` (under `lock`): a turn is running, and
  // looks at the queue again before it ends, so a command posted meanwhile needs no wake-up.
  bool hosted, in_turn;
  pthread_t host;
  sl_report_fn report;
  void *ctx;
  pthread_mutex_t lock; // guards cmds and stopping
  sl_cmd *cmds, *cmds_tail;
  bool stopping;
  sl_conn *conns;  // live connections (loop thread only)
  sl_conn *graves; // closed during this batch of events, freed after it
  unsigned count;
  int pool[SL_PIPE_POOL][3]; // read end, write end, buffers
  int big;                   // pipes grown to SL_PIPE_SIZE, held or pooled
  uint64_t grow_refused_until;
  long page;
  int pooled;
  uint64_t now_ms;
  // The connections' timers: a min-heap on the key (4-ary, timer_up), room for every live connection
  // (made when one is created, so arming never fails). A check looks at the due ones only: with a
  // scan of every connection, each due time that passed (an accept's grace, a dial's deadline)
  // cost a walk over all the held ones, 1.3% of the CPU at 4,000 held and growing with them.
  struct sl_timer *timers;
  unsigned n_timers, timers_room;
  uint64_t next_listener_check; // a paused listener's resumption (ms); UINT64_MAX: none
  sl_conn *buckets[SL_BUCKETS];
  sl_listener *listeners;
  int reserve; // a spare descriptor, given up to accept-and-reset at EMFILE; -1 when none
  sl_event_fn on_event;
  sl_turn_fn on_turn; // atomic: set once, from another thread
  size_t peek_cap;
  char *scratch; // peek_cap bytes
  char *copy;    // SL_COPY_BUF bytes: a small exchange's bytes between read and write
  unsigned unanswered;
  unsigned max_unanswered; // sl_loop_accept_cap
  // The connections whose first report is still to be made (sl_conn.accept_ev): when the loop is
  // pressed their grace ends (see grace), and their timers are brought forward (press), with no
  // walk over the others.
  sl_conn *waiting;
  bool capped;             // some listener is capped (sl_listener.capped)
  uint64_t pauses[2];      // sl_loop_accept_pauses: at the cap, out of descriptors (read from other threads)
  uint64_t accepted;       // sl_loop_accepted: connections accepted, each reported once (read from other threads)
  uint64_t turn; // epoll_wait calls so far
};

static uint64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

// ---- pipes ---------------------------------------------------------------------------------

// A pipe has size / page-size buffers (fs/pipe.c).
static unsigned slots_of(const sl_loop *l, int size) {
  return size > 0 && l->page > 0 ? (unsigned)(size / l->page) : 1u;
}

static int pipe_take(sl_loop *l, sl_dir *d) {
  if (l->pooled > 0) {
    l->pooled--;
    d->pipe[0] = l->pool[l->pooled][0];
    d->pipe[1] = l->pool[l->pooled][1];
    d->slots = (unsigned)l->pool[l->pooled][2];
    return 0;
  }
  if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) != 0) return errno;
  if (SL_NEW_PIPE_SIZE > 0) fcntl(d->pipe[1], F_SETPIPE_SZ, SL_NEW_PIPE_SIZE);
  // Usually 16 buffers; 2 when the user is past fs/pipe-user-pages-soft.
  d->slots = slots_of(l, fcntl(d->pipe[1], F_GETPIPE_SZ));
  return 0;
}

// The splice into `d`'s pipe just filled half of it: a bulk direction, given a bigger pipe if
// the budget allows (see SL_PIPE_SIZE). Bytes in the pipe stay.
static void pipe_grow(sl_loop *l, sl_dir *d) {
  if (SL_PIPE_SIZE <= 0 || l->big >= SL_BIG_PIPES || d->slots >= slots_of(l, SL_PIPE_SIZE) || l->now_ms < l->grow_refused_until) return;
  int size = fcntl(d->pipe[1], F_SETPIPE_SZ, SL_PIPE_SIZE);
  if (size <= 0) {
    l->grow_refused_until = l->now_ms + SL_GROW_RETRY_MS;
    return;
  }
  d->slots = slots_of(l, size);
  l->big++;
}

// Only an empty pipe goes back to the pool: stale bytes must never reach another connection.
static void pipe_give(sl_loop *l, sl_dir *d) {
  if (d->pipe[0] < 0) return;
  if (d->in_pipe == 0 && l->pooled < SL_PIPE_POOL) {
    l->pool[l->pooled][0] = d->pipe[0];
    l->pool[l->pooled][1] = d->pipe[1];
    l->pool[l->pooled][2] = (int)d->slots;
    l->pooled++;
  } else {
    close(d->pipe[0]);
    close(d->pipe[1]);
    if (d->slots > 16) l->big--;
  }
  d->pipe[0] = d->pipe[1] = -1;
  d->in_pipe = 0;
}

// Out of descriptors: the pooled pipes are a cache, and their descriptors go first (an accept or
// a pipe for a connection already carried matters more). Returns whether any was closed.
static bool pool_drain(sl_loop *l) {
  if (l->pooled == 0) return false;
  while (l->pooled > 0) {
    l->pooled--;
    close(l->pool[l->pooled][0]);
    close(l->pool[l->pooled][1]);
    if (l->pool[l->pooled][2] > 16) l->big--;
  }
  return true;
}

// ---- connections by id, and timers ------------------------------------------------------------

static unsigned bucket_of(uint64_t id) {
  return (unsigned)((id * 0x9E3779B97F4A7C15ull) >> 40) & (SL_BUCKETS - 1);
}

static void index_add(sl_loop *l, sl_conn *c) {
  unsigned b = bucket_of(c->id);
  c->hnext = l->buckets[b];
  l->buckets[b] = c;
}

static void index_del(sl_loop *l, sl_conn *c) {
  for (sl_conn **p = &l->buckets[bucket_of(c->id)]; *p; p = &(*p)->hnext) {
    if (*p == c) {
      *p = c->hnext;
      return;
    }
  }
}

static sl_conn *find(sl_loop *l, uint64_t id) {
  for (sl_conn *c = l->buckets[bucket_of(id)]; c; c = c->hnext)
    if (c->id == id && !c->dead) return c;
  return NULL;
}

#define SL_NO_TIMER UINT_MAX

static void timer_swap(sl_loop *l, unsigned i, unsigned j) {
  struct sl_timer t = l->timers[i];
  l->timers[i] = l->timers[j];
  l->timers[j] = t;
  l->timers[i].c->timer_at = i;
  l->timers[j].c->timer_at = j;
}

// A 4-ary heap: half the levels of a binary one, so a connection's key moves through half as many
// places (each a write to the connection it displaces), and the four keys compared at a level
// sit side by side in the array.
#define SL_TIMER_ARITY 4u

static void timer_up(sl_loop *l, unsigned i) {
  while (i > 0) {
    unsigned parent = (i - 1) / SL_TIMER_ARITY;
    if (l->timers[parent].due <= l->timers[i].due) return;
    timer_swap(l, i, parent);
    i = parent;
  }
}

static void timer_down(sl_loop *l, unsigned i) {
  for (;;) {
    unsigned least = i, first = SL_TIMER_ARITY * i + 1;
    for (unsigned k = first; k < first + SL_TIMER_ARITY && k < l->n_timers; k++)
      if (l->timers[k].due < l->timers[least].due) least = k;
    if (least == i) return;
    timer_swap(l, i, least);
    i = least;
  }
}

static void timer_remove(sl_loop *l, sl_conn *c) {
  unsigned i = c->timer_at;
  if (i == SL_NO_TIMER) return;
  c->timer_at = SL_NO_TIMER;
  unsigned last = --l->n_timers;
  if (i == last) return;
  sl_conn *moved = l->timers[last].c;
  l->timers[i] = l->timers[last];
  moved->timer_at = i;
  timer_up(l, i);
  timer_down(l, moved->timer_at);
}

// Room in the heap for one more connection: false when none could be made (the connection is
// then not created, as when its own allocation fails).
static bool timer_room(sl_loop *l) {
  if (l->count < l->timers_room) return true;
  unsigned room = l->timers_room ? l->timers_room * 2 : 64;
  struct sl_timer *t = realloc(l->timers, room * sizeof *t);
  if (!t) return false;
  l->timers = t;
  l->timers_room = room;
  return true;
}

// A connection has gone: the heap gives back half its room when under a quarter of it is used
// (never below the first 64), so a burst of held connections does not keep its array for the
// loop's life. Halving at a quarter leaves the room twice the connections, which must double
// again before it grows: a count that moves back and forth around a line never reallocates at
// each step (the rule of Python's list, and of CLRS §17.4's table contraction). A realloc
// that fails keeps the bigger array, which still holds every timer.
static void timer_shrink(sl_loop *l) {
  if (l->timers_room <= 64 || l->count >= l->timers_room / 4) return;
  unsigned room = l->timers_room / 2;
  struct sl_timer *t = realloc(l->timers, room * sizeof *t);
  if (!t) return;
  l->timers = t;
  l->timers_room = room;
}

#ifdef SL_TIMER_AUDIT
unsigned sl_loop_timer_room(const sl_loop *l) {
  return l->timers_room;
}
#endif

// The connection is looked at no later than `due` (ms): put in the heap, or its key lowered.
static void arm(sl_loop *l, sl_conn *c, uint64_t due) {
  if (due == UINT64_MAX || c->dead) return;
  unsigned i = c->timer_at;
  if (i == SL_NO_TIMER) {
    i = c->timer_at = l->n_timers++;
    l->timers[i] = (struct sl_timer){.due = due, .c = c};
    timer_up(l, i);
  } else if (due < l->timers[i].due) {
    l->timers[i].due = due;
    timer_up(l, i);
  }
}

// When the loop next needs the clock (ms): the first connection's timer or a listener's
// resumption; UINT64_MAX: never.
static uint64_t next_check(const sl_loop *l) {
  uint64_t due = l->n_timers ? l->timers[0].due : UINT64_MAX;
  return due < l->next_listener_check ? due : l->next_listener_check;
}

// A connection socket's key in the epoll set (epoll_event.data): the connection's id, the side,
// and on the upstream side the index of the dial's attempt the socket is (0 for a connection
// handed over), never an address; bit 1 is clear (listeners and the wake-up descriptor set it).
// close(2) takes a socket out of the set only when no other descriptor refers to its file: a
// duplicate the caller still holds (sl_loop_add's sockets are dup(2)s of Node's), or a fork(2)'s
// child before its exec, keeps it there. Its late events then find no connection by that id, where
// an address would be freed memory or a connection allocated in its place. An attempt's events
// name the attempt, so one that ended while its event waited in the same batch (it lost the
// race, failed, gave way at the cap) is never taken for another attempt's, nor for the winner's.
// Ids are below 2^53 (data_plane.c's arg_id; set-up ids from 2^48).
static uint64_t sock_key(uint64_t id, int side, int attempt) {
  return id << 6 | (uint64_t)attempt << 2 | (uint64_t)side;
}
_Static_assert(SL_MAX_ADDRS <= 16, "an attempt's index has 4 bits of the key");

// The attempt whose socket is the connection's upstream: the winner keeps its key.
static int up_attempt(const sl_conn *c) {
  return c->dialed > 0 ? c->dialed : 0;
}

static uint64_t conn_key(const sl_conn *c, int side) {
  return sock_key(c->id, side, side == UPSTREAM ? up_attempt(c) : 0);
}

static uint64_t min64(uint64_t a, uint64_t b) {
  return a < b ? a : b;
}

// More than half the cap of unanswered connections is held (sl_loop.max_unanswered).
static bool pressed(const sl_loop *l) {
  return l->unanswered * 2 > l->max_unanswered;
}

// The wait before a connection's first report (SL_FLIGHT_GRACE_MS, SL_EMPTY_GRACE_MS): `ms`, or 0
// while the loop is pressed. The grace saves the caller a second report of a client a moment late;
// under pressure it would let one sandbox's silent or dripping connections hold the shared slots,
// each for the grace, out of reach of the caller's admission (per sandbox), while no sandbox's
// next connection is accepted. Only the first report: the caller answers a connection once it is
// reported, whatever bytes follow (native-setup.ts answerIfSilent), so later ones keep the grace.
static uint64_t grace(const sl_loop *l, const sl_conn *c, uint64_t ms) {
  return c->accept_ev && pressed(l) ? 0 : ms;
}

static void waiting_add(sl_loop *l, sl_conn *c) {
  c->wait_prev = NULL;
  c->wait_next = l->waiting;
  if (l->waiting) l->waiting->wait_prev = c;
  l->waiting = c;
}

static void waiting_del(sl_loop *l, sl_conn *c) {
  if (c->wait_prev) c->wait_prev->wait_next = c->wait_next;
  else l->waiting = c->wait_next;
  if (c->wait_next) c->wait_next->wait_prev = c->wait_prev;
  c->wait_prev = c->wait_next = NULL;
}

// When the connection's current stage next needs the clock; UINT64_MAX: never.
static uint64_t conn_due(const sl_loop *l, const sl_conn *c) {
  switch (c->stage) {
    case ST_SPLICE:
      if (c->ending) return c->drain_at;
      return c->last_ms + (c->failed >= 0 && c->idle_ms > SL_RESET_LINGER_MS ? SL_RESET_LINGER_MS : c->idle_ms);
    case ST_PEEK: {
      uint64_t due = c->peek_deadline;
      if (c->auto_peek && c->peek_len > c->reported) due = min64(due, c->unreported_ms + grace(l, c, SL_FLIGHT_GRACE_MS));
      if (c->accept_ev && c->peek_len == 0) due = min64(due, c->accepted_ms + grace(l, c, SL_EMPTY_GRACE_MS));
      if (c->peek_len == 0 && c->first_byte_at != 0) due = min64(due, c->first_byte_at);
      if (c->peek_len > 0 && c->stall_ms != 0) due = min64(due, c->last_byte_ms + c->stall_ms);
      return due;
    }
    case ST_DIAL: return c->dial->next < c->dial->n ? min64(c->dial->deadline_ms, c->dial->next_start_ms) : c->dial->deadline_ms;
    case ST_REFUSE: return c->linger_until;
    default: return UINT64_MAX;
  }
}

// The loop has just become pressed (an accept, a lower cap): the connections in their grace are
// due at once (see grace), and reported in this turn (check_timers). A key may be early, never
// late (arm), so their keys are brought forward; connections armed while pressed are keyed
// without a grace already, and those reported leave the list, so each is walked over at most
// once a crossing.
static void press(sl_loop *l) {
  for (sl_conn *c = l->waiting; c; c = c->wait_next) arm(l, c, conn_due(l, c));
}

// ---- closing ---------------------------------------------------------------------------------

static void reset_fd(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static void close_attempts(sl_conn *c, int why) {
  if (!c->dial) return;
  for (int i = 0; i < c->dial->n; i++) {
    if (c->dial->fd[i] < 0) continue;
    // No EPOLL_CTL_DEL: a late event names this attempt, which is over (conn_key).
    close(c->dial->fd[i]);
    c->dial->fd[i] = -1;
    c->attempt_err[i] = why;
  }
}

static void listener_events(sl_loop *l, sl_listener *ls, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(uintptr_t)ls | 2u};
  epoll_ctl(l->epfd, EPOLL_CTL_MOD, ls->fd, &ev);
}

static void uncap(sl_loop *l);

static void answered(sl_loop *l, sl_conn *c) {
  if (!c->unanswered) return;
  c->unanswered = false;
  l->unanswered--;
  uncap(l);
}

// A slot is free (an answer, a higher cap): the capped listeners accept again. They are
// level-triggered: a connection already waiting wakes the loop at once.
static void uncap(sl_loop *l) {
  if (!l->capped || l->unanswered >= l->max_unanswered) return;
  l->capped = false;
  for (sl_listener *ls = l->listeners; ls; ls = ls->next) {
    if (!ls->capped) continue;
    ls->capped = false;
    listener_events(l, ls, EPOLLIN);
  }
}

static void emit(sl_loop *l, sl_event *e);

static sl_end end_of(int side, int err);

static void conn_close(sl_loop *l, sl_conn *c, sl_end end, int err, int reset_side) {
  if (c->dead) return;
  c->dead = true;
  if (c->failed >= 0 && end == SL_END_ABORTED) {
    // Aborted (a policy change, the loop's stop) while a failed side's bytes were still being
    // passed on: reset, never a FIN after that side's failure, and still named by it.
    end = end_of(c->failed, c->fail_err);
    err = c->fail_err;
    reset_side = 2;
  }
  if (c->accept_ev) {
    // Closed before its flight was reported (the loop stopped): the caller hears of the
    // connection before its outcome, as of every other.
    sl_event *acc = c->accept_ev;
    c->accept_ev = NULL;
    waiting_del(l, c);
    acc->state = SL_PEEK_CLOSED;
    acc->bytes = c->peek;
    acc->len = c->peek_len;
    emit(l, acc);
    free(acc);
  }
  answered(l, c);
  // reset_side: -1 none, 0 or 1 that side, 2 both.
  for (int s = 0; s < 2; s++)
    if (c->fd[s] >= 0 && (reset_side == 2 || reset_side == s)) reset_fd(c->fd[s]);
  for (int s = 0; s < 2; s++) {
    // No EPOLL_CTL_DEL: close(2) takes the socket out of the set (see conn_key for when not).
    if (c->fd[s] >= 0) close(c->fd[s]);
    pipe_give(l, &c->dir[s]);
    free(c->dir[s].pending);
    c->dir[s].pending = NULL;
  }
  close_attempts(c, end == SL_END_ABORTED || end == SL_END_CLIENT_RESET || end == SL_END_CLIENT_FIN ? SL_ATTEMPT_CANCELLED : ETIMEDOUT);
  free(c->dial);
  free(c->peek);
  free(c->answer);
  free(c->accept_ev);
  c->accept_ev = NULL;
  c->dial = NULL;
  c->peek = c->answer = NULL;
  if (c->prev) c->prev->next = c->next;
  else l->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  index_del(l, c);
  timer_remove(l, c);
  l->count--;
  timer_shrink(l);
  c->next = l->graves;
  l->graves = c;
  sl_outcome o = {.id = c->id,
                  .bytes_up = c->dir[CLIENT].bytes,
                  .bytes_down = c->dir[UPSTREAM].bytes,
                  .end = end,
                  .err = err,
                  .first_fin = c->first_fin,
                  .dialed = c->dialed,
                  .connect_us = c->connect_us,
                  .attempts = c->attempts,
                  .ended_us = sl_monotonic_us()};
  memcpy(o.attempt_err, c->attempt_err, sizeof o.attempt_err);
  l->report(l->ctx, &o);
}

// The direction toward a side that went or failed is over: what it held is dropped, as that
// side's own kernel would have dropped it.
static void drop_toward(sl_loop *l, sl_dir *d) {
  free(d->pending);
  d->pending = NULL;
  d->pending_len = d->pending_off = 0;
  pipe_give(l, d); // a pipe with bytes in it is closed, never pooled
  d->eof = d->shut = true;
}

// `side` reset after its own FIN: it had finished, and the reset only refused bytes that reached
// its closed socket (Linux resets a close(2) that leaves bytes unread or gets more, RFC 1122
// §4.2.2.13) — a TLS client's close_notify after the origin closed, an origin's after the client
// did. That ends no exchange: the connection closes as it would have, and the side whose FIN came
// first ended it (HAProxy names a session by the first event that ended it). What the side sent
// is delivered to the other, its FIN last; what the other sends it is dropped, as the side's own
// kernel would have, and closing the other's socket at the end resets it if bytes are left.
static void conn_gone(sl_loop *l, sl_conn *c, int side) {
  drop_toward(l, &c->dir[1 - side]);
  c->gone[side] = c->said_fin[side] = true;
  c->rd[side] = true; // what it sent before its FIN may still be in its socket, then the EOF
  c->again = true;
}

// Reads off and drops what the other side of one that went (conn_gone) sent after it: close(2)
// on a socket with bytes unread sends a reset at once and drops what it had still to send
// (tcp_close), which would be the last bytes of the side that went. Bounded: a socket's buffer.
// None when the socket is known empty (`rd` clear: a read emptied it, and no event came since
// while EPOLLIN was in its interest set), as after a TLS client's close_notify, which drew the
// origin's reset: the read found EAGAIN.
static void drop_unread(sl_loop *l, sl_conn *c, int side) {
  if (!c->rd[side] && !c->paused[side]) return;
  int fd = c->fd[side];
  for (int i = 0; i < 64; i++) {
    ssize_t n = recv(fd, l->copy, SL_COPY_BUF, MSG_DONTWAIT);
    if (n > 0 || (n < 0 && errno == EINTR)) continue;
    return;
  }
}

static sl_end end_of(int side, int err) {
  if (err != ECONNRESET) return SL_END_ERROR;
  return side == CLIENT ? SL_END_CLIENT_RESET : SL_END_UPSTREAM_RESET;
}

// The failed side's bytes are all passed on (conn_broken): the other side is reset, never sent a
// FIN that would pass for a clean end. A reset drops what its socket still holds unacknowledged
// (tcp_disconnect purges the write queue), so the loop waits for the other side's peer to
// acknowledge the last bytes first, as long as it acknowledges some within SL_RESET_LINGER_MS;
// the timer looks again every SL_DRAIN_POLL_MS (conn_timer), any event at once.
static void conn_end(sl_loop *l, sl_conn *c) {
  int other = 1 - c->failed, unacked = 0;
  if (!c->ending) {
    c->ending = true;
    c->unacked = INT32_MAX;
  }
  uint64_t linger = c->idle_ms > SL_RESET_LINGER_MS ? SL_RESET_LINGER_MS : c->idle_ms;
  // POLLHUP: the other side is gone too (a reset keeps its count of unacknowledged bytes).
  struct pollfd p = {.fd = c->fd[other]};
  if (ioctl(c->fd[other], SIOCOUTQ, &unacked) != 0 || unacked <= 0 || l->now_ms >= c->last_ms + linger || poll(&p, 1, 0) != 0)
    return conn_close(l, c, end_of(c->failed, c->fail_err), c->fail_err, other);
  if (unacked < c->unacked) c->last_ms = l->now_ms;
  c->unacked = unacked;
  c->drain_at = l->now_ms + SL_DRAIN_POLL_MS;
  arm(l, c, c->drain_at);
}

// The socket `side` failed with `err` before its FIN, learnt from a read, a write or SO_ERROR.
// Linux keeps a reset socket's queued bytes readable (tcp_recvmsg and tcp_splice_read copy them
// before they report sk_err, and read 0 once it was taken), and the peer was told they arrived:
// they are passed on first (its direction reads on to that 0), and only then is the other side
// reset (conn_end), within SL_RESET_LINGER_MS of the last byte it took. What the other side
// sends it is dropped: no write reaches it any more.
static void conn_broken(sl_loop *l, sl_conn *c, int side, int err) {
  drop_toward(l, &c->dir[1 - side]);
  c->failed = side;
  c->fail_err = err;
  c->last_ms = l->now_ms; // SL_RESET_LINGER_MS from now, unless the other side takes bytes
  // Sooner than the idle timeout armed before: should the other side take nothing, nothing else
  // would wake the connection until then.
  arm(l, c, conn_due(l, c));
  c->rd[side] = c->hup[side] = true;
  c->fin[side] = false;
  c->again = true;
}

// The socket `side` failed with `err`. A reset after its FIN goes (conn_gone). A reset or a
// timeout before it (the socket is closed: a read gets its queued bytes, then 0) passes on what
// the side sent, then resets the other side (conn_broken); any other failure resets it at once.
// Never a FIN that would pass for a clean end. False when the connection was closed, or is ending.
static bool conn_fail(sl_loop *l, sl_conn *c, int side, int err) {
  if (c->failed == side) {
    // Its read failed again (an error that a read does not consume): nothing more is coming.
    conn_end(l, c);
    return false;
  }
  if (c->failed >= 0) {
    // Both failed: nothing can be passed on either way.
    conn_close(l, c, end_of(c->failed, c->fail_err), c->fail_err, 2);
    return false;
  }
  // EPIPE is the reset of a socket in CLOSE_WAIT: its FIN had come (tcp_reset), even when the
  // same wake-up brought the reset and no read has seen the EOF yet.
  if ((err == ECONNRESET || err == EPIPE) && (c->said_fin[side] || c->dir[side].eof || err == EPIPE)) {
    conn_gone(l, c, side);
    return true;
  }
  if (err == ECONNRESET || err == ETIMEDOUT) {
    conn_broken(l, c, side, err);
    return true;
  }
  conn_close(l, c, SL_END_ERROR, err, 1 - side);
  return false;
}

// ---- the data phase --------------------------------------------------------------------------

// The socket's interest set from its flags (sl_conn.out, sl_conn.paused).
static bool rearm(sl_loop *l, sl_conn *c, int side, bool out, bool paused) {
  struct epoll_event ev = {.events = (paused ? 0 : EPOLLIN | EPOLLPRI) | (out ? EPOLLOUT : 0) | EPOLLRDHUP | EPOLLET,
                           .data.u64 = conn_key(c, side)};
  if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd[side], &ev) != 0) return false;
  c->out[side] = out;
  c->paused[side] = paused;
  return true;
}

// Adds EPOLLOUT to the socket's interest set once a write to it has blocked (see sl_conn.out).
static bool want_out(sl_loop *l, sl_conn *c, int side) {
  return c->out[side] || rearm(l, c, side, true, c->paused[side]);
}

// A write to `to` would block: wait for EPOLLOUT. False when the connection was closed.
static bool blocked(sl_loop *l, sl_conn *c, int to) {
  c->wr[to] = false;
  if (want_out(l, c, to)) return true;
  conn_close(l, c, SL_END_ERROR, errno, 2);
  return false;
}

// The pipe of `from`'s direction holds bytes its writer cannot take: EPOLLIN off (sl_conn.paused).
// False when the connection was closed.
static bool pause_from(sl_loop *l, sl_conn *c, int from) {
  if (c->paused[from] || rearm(l, c, from, c->out[from], true)) return true;
  conn_close(l, c, SL_END_ERROR, errno, 2);
  return false;
}

// A read found the paused socket empty: EPOLLIN back, for the next bytes' edge. A byte that came
// after the read is not lost: EPOLL_CTL_MOD reports a socket already readable.
static bool resume_from(sl_loop *l, sl_conn *c, int from) {
  if (rearm(l, c, from, c->out[from], false)) return true;
  conn_close(l, c, SL_END_ERROR, errno, 2);
  return false;
}

// Whether a read of `from` that returned less than it could (`short_read`) emptied its socket
// (see sl_conn.hup, .fin and .urg). Not where it stopped at TCP urgent data's mark. The loop
// learns of urgent data from EPOLLPRI, which leaves the interest set with EPOLLIN while the
// direction is paused (sl_conn.paused), where EPOLLRDHUP stays: urgent data, bytes behind it and
// the FIN may all come then, and the FIN alone be seen. Taken for empty, the short read at the
// mark was the last, and the bytes behind it were dropped. So where a paused direction's read
// would end it, the kernel is asked (SIOCATMARK: the next byte is the urgent one, tcp_ioctl in
// net/ipv4/tcp.c): one ioctl, at the end of a direction that was paused. Anywhere else a short
// read stopped at the mark is not the last: EPOLL_CTL_MOD of a socket with urgent data pending
// reports EPOLLPRI at once (resume_from), and so does the next event of an unpaused one.
static bool read_emptied(sl_conn *c, int from, bool short_read) {
  if (!short_read || c->urg[from]) return false;
  if (!c->paused[from] || !c->fin[from]) return true;
  int at_mark = 0;
  // Where the kernel does not answer, read on: the next read finds the end, or the bytes.
  if (ioctl(c->fd[from], SIOCATMARK, &at_mark) == 0 && !at_mark) return true;
  c->urg[from] = true;
  return false;
}

// Moves what it can from dir->from to dir->to until either would block, trying only what the
// ready flags allow. Returns false when the connection was closed.
static bool pump(sl_loop *l, sl_conn *c, int from) {
  sl_dir *d = &c->dir[from];
  int to = 1 - from;
  int in = c->fd[from], out = c->fd[to];
  for (;;) {
    if (d->pending_off < d->pending_len) {
      if (!c->wr[to]) return true;
      ssize_t n = send(out, d->pending + d->pending_off, d->pending_len - d->pending_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return blocked(l, c, to) && pause_from(l, c, from);
        if (!conn_fail(l, c, to, errno)) return false;
        continue;
      }
      d->pending_off += (size_t)n;
      c->last_ms = l->now_ms;
      // Less than asked: the socket's buffer is full (nginx clears its ready flag the same way),
      // no write that must find EAGAIN.
      if (d->pending_off < d->pending_len) return blocked(l, c, to) && pause_from(l, c, from);
      free(d->pending);
      d->pending = NULL;
      d->pending_len = d->pending_off = 0;
      // Bytes that came while paused brought no event: the socket is read to find out.
      if (c->paused[from]) c->rd[from] = true;
      continue;
    }
    if (d->in_pipe > 0) {
      if (!c->wr[to]) return true;
      ssize_t n = splice(d->pipe[0], NULL, out, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return blocked(l, c, to) && pause_from(l, c, from);
        if (!conn_fail(l, c, to, errno)) return false;
        continue;
      }
      d->in_pipe -= (size_t)n;
      c->last_ms = l->now_ms;
      // A splice to a socket stops short only where the socket's buffer filled (splice_to_socket
      // sends until its sendmsg would block), and that sendmsg set SOCK_NOSPACE, so the room
      // it waits for brings EPOLLOUT: no second splice to find EAGAIN (nginx's ngx_unix_send
      // clears `ready` on a short send alike).
      if (d->in_pipe > 0) return blocked(l, c, to) && pause_from(l, c, from);
      // Bytes that came while paused brought no event: the socket is read to find out.
      if (c->paused[from]) c->rd[from] = true;
      continue;
    }
    if (d->eof) {
      pipe_give(l, d);
      if (c->failed == from) {
        // Every byte it sent before it failed is passed on: no FIN follows them, a reset does.
        conn_end(l, c);
        return false;
      }
      if (!d->shut) {
        d->shut = true;
        c->said_fin[from] = true;
        if (c->first_fin < 0) c->first_fin = from;
        // The other way is over too: close(2) sends this FIN with nothing left to read, so a
        // shutdown would only cost a syscall. ENOTCONN: the other side is already gone; its own
        // event reports that.
        if (!c->dir[to].shut) shutdown(out, SHUT_WR);
      }
      return true;
    }
    if (!c->rd[from]) {
      pipe_give(l, d); // empty here
      return true;
    }
    if (!d->bulk) {
      // Nothing is read that cannot be written now: its bytes wait in the socket.
      if (!c->wr[to]) return true;
      ssize_t n = recv(in, l->copy, SL_COPY_BUF, 0);
      if (n == 0) {
        d->eof = true;
        continue;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          c->rd[from] = c->urg[from] = false;
          return !c->paused[from] || resume_from(l, c, from);
        }
        if (!conn_fail(l, c, from, errno)) return false;
        continue;
      }
      d->bytes += (uint64_t)n;
      c->last_ms = l->now_ms;
      // Less than the buffer: the socket is empty (read_emptied).
      bool emptied = read_emptied(c, from, (size_t)n < SL_COPY_BUF);
      if (!emptied || d->bytes >= SL_COPY_LIMIT) d->bulk = true;
      if (emptied && c->fin[from]) d->eof = true;
      else if (emptied && !c->hup[from]) {
        c->rd[from] = false;
        if (c->paused[from] && !resume_from(l, c, from)) return false;
      }
      ssize_t w;
      do w = send(out, l->copy, (size_t)n, MSG_NOSIGNAL);
      while (w < 0 && errno == EINTR);
      if (w < 0 && errno != EAGAIN) {
        // The bytes read go nowhere: `to` went after its FIN (conn_gone), or the connection ends.
        if (!conn_fail(l, c, to, errno)) return false;
        continue;
      }
      if (w < 0) w = 0;
      if (w < n) {
        // The rest is the connection's to keep, in order, before anything else it reads.
        d->pending = malloc((size_t)(n - w));
        if (!d->pending) {
          conn_close(l, c, SL_END_ERROR, ENOMEM, 2);
          return false;
        }
        memcpy(d->pending, l->copy + w, (size_t)(n - w));
        d->pending_len = (size_t)(n - w);
        d->pending_off = 0;
        return blocked(l, c, to) && pause_from(l, c, from);
      }
      continue;
    }
    if (d->pipe[0] < 0) {
      int e = pipe_take(l, d);
      if (e == EMFILE || e == ENFILE) {
        // Out of descriptors: the connection is carried on through the loop's buffer, a read at
        // a time, and asks for a pipe again after each; never cut for want of one.
        d->pipe[0] = d->pipe[1] = -1;
        d->bulk = false;
        continue;
      }
      if (e != 0) {
        d->pipe[0] = d->pipe[1] = -1;
        conn_close(l, c, SL_END_ERROR, e, 2);
        return false;
      }
    }
    ssize_t n = splice(in, NULL, d->pipe[1], NULL, SL_SPLICE_MAX, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n == 0 || (n < 0 && errno == EAGAIN && c->urg[from])) {
      // Not always the end, nor an empty socket: tcp_splice_read never reads past TCP urgent
      // data's mark (sl_conn.urg; its loop there was CVE-2017-6214) and answers there 0 once
      // the FIN is in, else EAGAIN, with the bytes behind the mark still queued. recv(2) steps
      // over the mark, so the copy path reads on, and its 0 is the end; past SL_COPY_LIMIT it
      // turns back to splicing after one read.
      d->bulk = false;
      continue;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        c->rd[from] = false;
        pipe_give(l, d); // empty here: nothing was read into it
        return !c->paused[from] || resume_from(l, c, from);
      }
      if (!conn_fail(l, c, from, errno)) return false;
      continue;
    }
    d->in_pipe += (size_t)n;
    d->bytes += (uint64_t)n;
    c->last_ms = l->now_ms;
    // Each buffer holds at least a byte: fewer bytes than buffers did not fill the pipe, so the
    // socket was emptied (read_emptied).
    bool emptied = read_emptied(c, from, (size_t)n < d->slots);
    if (emptied && c->fin[from]) d->eof = true;
    else if (emptied && !c->hup[from]) {
      c->rd[from] = false;
      if (c->paused[from] && !resume_from(l, c, from)) return false;
    } else if ((size_t)n * 2 >= (size_t)d->slots * (size_t)l->page) pipe_grow(l, d);
  }
}

static void conn_run(sl_loop *l, sl_conn *c) {
  do {
    if (c->dead || c->ending) return;
    // A side that went during one direction's pump may leave the other direction bytes to move.
    c->again = false;
    if (!pump(l, c, CLIENT) || !pump(l, c, UPSTREAM)) return;
  } while (c->again);
  if (!c->dir[CLIENT].shut || !c->dir[UPSTREAM].shut) return;
  for (int s = 0; s < 2; s++)
    if (c->gone[s] && !c->gone[1 - s]) drop_unread(l, c, 1 - s);
  conn_close(l, c, SL_END_CLOSED, 0, -1);
}

// A socket's pending error (a reset that arrived while nothing was being read or written).
static bool check_error(sl_loop *l, sl_conn *c, int side) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return true;
  return conn_fail(l, c, side, err);
}

// The bytes read so far go upstream first, then both directions are spliced.
static void start_splice(sl_loop *l, sl_conn *c, uint32_t idle_ms) {
  c->stage = ST_SPLICE;
  c->idle_ms = idle_ms == 0 ? 1 : idle_ms;
  c->dir[CLIENT].pending = c->peek;
  c->dir[CLIENT].pending_len = c->peek_len;
  c->dir[CLIENT].bytes = c->peek_len;
  c->peek = NULL;
  c->peek_room = 0;
  c->last_ms = l->now_ms;
  arm(l, c, c->last_ms + c->idle_ms);
  conn_run(l, c);
}

// ---- set-up: accept ----------------------------------------------------------------------------

static void emit(sl_loop *l, sl_event *e) {
#ifdef SL_TIMER_AUDIT
  // A report runs the caller's code: the connection it names must be in a state its timer and
  // events can read (a dial stage holds its dial).
  const sl_conn *c = find(l, e->id);
  if (c && c->stage == ST_DIAL && !c->dial) {
    fprintf(stderr, "SL_TIMER_AUDIT: connection %llu reported (kind %d) in the dial stage without its dial\n", (unsigned long long)c->id, (int)e->kind);
    abort();
  }
#endif
  if (l->on_event) l->on_event(l->ctx, e);
}

// Where peek_fill stops reading before the socket is empty (the flight is whole, the report is
// due, the cap is full): an edge that said the socket failed (EPOLLHUP/EPOLLERR, `hup`) was spent
// on the bytes before the error, and no event will show that error again. Taken here, it ends the
// connection as a reset (client_left), where it would otherwise wait for a command and hold a
// dial to the connect timeout for a client already gone: a client that sends its request and
// resets before the loop accepts it (at the cap of unanswered connections) had its dial held
// 30 s. -errno, or 0 (a FIN alone sets `hup` too, and leaves no error).
static int unread_error(const sl_conn *c) {
  if (!c->hup[CLIENT]) return 0;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[CLIENT], SOL_SOCKET, SO_ERROR, &err, &len) != 0) return 0;
  return -err;
}

// Reads what the client has sent, up to the cap. Returns 0 when it would block (or the cap is
// full), 1 when the client closed (its FIN), -errno when its socket failed (a reset: the read took
// the error, or unread_error did, and no event will show it again).
static int peek_fill(sl_loop *l, sl_conn *c) {
  // Known empty (a read found it so, and no event came since): a read would only find EAGAIN.
  if (!c->rd[CLIENT]) return 0;
  while (c->peek_len < l->peek_cap) {
    size_t want = l->peek_cap - c->peek_len;
    ssize_t n = recv(c->fd[CLIENT], l->scratch, want, 0);
    if (n > 0) {
      size_t need = c->peek_len + (size_t)n;
      if (need > c->peek_room) {
        // The first read takes what it needs (most flights come whole); later ones double.
        size_t room = c->peek_room == 0 ? need : c->peek_room * 2;
        if (room > l->peek_cap) room = l->peek_cap;
        if (room < need) room = need;
        char *p = realloc(c->peek, room);
        if (!p) return 1;
        c->peek = p;
        c->peek_room = room;
      }
      memcpy(c->peek + c->peek_len, l->scratch, (size_t)n);
      if (c->peek_len == c->reported) c->unreported_ms = l->now_ms;
      c->peek_len += (size_t)n;
      c->last_byte_ms = l->now_ms;
      // Less than asked: the socket is empty (see sl_conn.hup), no read that must find EAGAIN.
      if ((size_t)n < want && !c->hup[CLIENT] && !c->urg[CLIENT]) {
        c->rd[CLIENT] = false;
        return 0;
      }
      // Enough to report: no read that would only find EAGAIN (the ready flag stays set).
      if (c->auto_peek ? ff_next(&c->ff, (const uint8_t *)c->peek, c->peek_len, l->peek_cap) : c->stage == ST_PEEK && c->peek_len >= c->report_at)
        return unread_error(c);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c->rd[CLIENT] = c->urg[CLIENT] = false;
      return 0;
    }
    // The EOF read is the client's FIN, even where no EPOLLRDHUP was seen (read at the accept).
    if (n == 0) c->said_fin[CLIENT] = true;
    return n < 0 ? -errno : 1;
  }
  return unread_error(c);
}

static void client_left(sl_loop *l, sl_conn *c, int err);
static bool client_finished(sl_loop *l, sl_conn *c);

static void answered(sl_loop *l, sl_conn *c);

// Reports the bytes read since the last report: as the ACCEPTED report when it is still to be
// made, else as SL_EV_PEEK. Any state but SL_PEEK_WAITING ends the peek: the connection waits
// for a command.
static void report_peek(sl_loop *l, sl_conn *c, sl_peek_state state) {
  sl_event e = {.kind = SL_EV_PEEK, .id = c->id, .state = state, .bytes = c->peek + c->reported, .len = c->peek_len - c->reported};
  sl_event *acc = c->accept_ev;
  if (acc) {
    acc->state = state;
    acc->bytes = e.bytes;
    acc->len = e.len;
    c->accept_ev = NULL;
    waiting_del(l, c);
  }
  c->reported = c->peek_len;
  if (state == SL_PEEK_WAITING) {
    // Reported, and still read by the loop. It stays unanswered (its descriptor uncounted by the
    // caller) until a command or sl_loop_answered says the caller took it on: the reports it
    // has not yet read must not free the slots they hold, or a silent flood, reported after
    // SL_EMPTY_GRACE_MS each, would be accepted as fast as it comes.
    arm(l, c, conn_due(l, c));
  } else {
    c->stage = ST_WAIT;
    c->auto_peek = false;
  }
  emit(l, acc ? acc : &e);
  free(acc);
}

// The first flight read by the loop itself (auto_peek): reported once it is whole enough, the
// client closed, or the cap is full; an empty one after SL_EMPTY_GRACE_MS (the caller may splice
// a server-first protocol without waiting for a byte), and the rest by the timers (conn_timer).
static void flight_run(sl_loop *l, sl_conn *c) {
  int r = peek_fill(l, c);
  if (r < 0) return client_left(l, c, -r);
  if (r) return report_peek(l, c, SL_PEEK_CLOSED);
  if (c->peek_len >= l->peek_cap) return report_peek(l, c, SL_PEEK_FULL);
  if (ff_next(&c->ff, (const uint8_t *)c->peek, c->peek_len, l->peek_cap)) return report_peek(l, c, SL_PEEK_MORE);
  c->stall_ms = ff_next_may_stall(&c->ff, (const uint8_t *)c->peek, c->peek_len) ? c->auto_stall_ms : 0;
  if (c->accept_ev && c->peek_len == 0 && l->now_ms >= c->accepted_ms + grace(l, c, SL_EMPTY_GRACE_MS)) return report_peek(l, c, SL_PEEK_WAITING);
  arm(l, c, conn_due(l, c));
}

static void peek_run(sl_loop *l, sl_conn *c) {
  if (c->auto_peek) return flight_run(l, c);
  int r = peek_fill(l, c);
  if (r < 0) return client_left(l, c, -r);
  if (r) return report_peek(l, c, SL_PEEK_CLOSED);
  if (c->peek_len >= l->peek_cap) return report_peek(l, c, SL_PEEK_FULL);
  if (c->peek_len >= c->report_at) return report_peek(l, c, SL_PEEK_MORE);
  arm(l, c, conn_due(l, c));
}

// SO_ORIGINAL_DST: 0, an errno, or -1 when the "original" destination is the listener itself
// (conntrack keeps a tuple for un-NATed connections too: a direct connection, a loop or a probe).
// The family comes from the peer (an IPv4 client on a dual-stack socket has an IPv4 conntrack
// entry); the local address from the listener's, asked of the socket only when the listener is
// bound to a wildcard and the original port is the listener's own.
static int original_dst(int fd, const sl_listener *ls, const struct sockaddr_storage *peer, struct sockaddr_storage *orig) {
  memset(orig, 0, sizeof *orig);
  const struct sockaddr_in6 *p6 = (const struct sockaddr_in6 *)peer;
  bool v4 = peer->ss_family == AF_INET || (peer->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&p6->sin6_addr));
  socklen_t olen = sizeof *orig;
  if (getsockopt(fd, v4 ? SOL_IP : SOL_IPV6, SO_ORIGINAL_DST, orig, &olen) != 0) return errno;
  in_port_t port = v4 ? ((struct sockaddr_in *)orig)->sin_port : ((struct sockaddr_in6 *)orig)->sin6_port;
  in_port_t mine = ls->bound.ss_family == AF_INET ? ((const struct sockaddr_in *)&ls->bound)->sin_port
                                                  : ((const struct sockaddr_in6 *)&ls->bound)->sin6_port;
  if (port != mine) return 0;
  struct sockaddr_storage local = ls->bound;
  socklen_t llen = sizeof local;
  if (!ls->exact && getsockname(fd, (struct sockaddr *)&local, &llen) != 0) return errno;
  struct sockaddr_in6 *l6 = (struct sockaddr_in6 *)&local;
  if (v4) {
    struct sockaddr_in *o4 = (struct sockaddr_in *)orig;
    if (local.ss_family == AF_INET) {
      struct sockaddr_in *l4 = (struct sockaddr_in *)&local;
      if (o4->sin_addr.s_addr == l4->sin_addr.s_addr) return -1;
    } else if (memcmp(&l6->sin6_addr.s6_addr[12], &o4->sin_addr, 4) == 0) {
      return -1;
    }
  } else {
    struct sockaddr_in6 *o6 = (struct sockaddr_in6 *)orig;
    // A link-local address is the listener's only on the listener's link (RFC 4007 §6).
    if (memcmp(&o6->sin6_addr, &l6->sin6_addr, 16) == 0 && (!IN6_IS_ADDR_LINKLOCAL(&o6->sin6_addr) || o6->sin6_scope_id == l6->sin6_scope_id)) return -1;
  }
  return 0;
}

// TCP_NODELAY comes from the listener (Linux copies it to every accepted socket).
static void setup_conn(sl_loop *l, sl_listener *ls, int fd, const struct sockaddr_storage *peer) {
  sl_conn *c = timer_room(l) ? calloc(1, sizeof *c) : NULL;
  if (!c) {
    reset_fd(fd);
    close(fd);
    return;
  }
  c->id = __atomic_fetch_add(&next_setup_id, 1, __ATOMIC_RELAXED);
  c->timer_at = SL_NO_TIMER;
  c->fd[CLIENT] = fd;
  c->fd[UPSTREAM] = -1;
  c->first_fin = c->failed = -1;
  for (int s = 0; s < 2; s++) c->dir[s].pipe[0] = c->dir[s].pipe[1] = -1;
  c->setup = true;
  c->dialed = -1;
  c->stage = ST_WAIT;
  c->accepted_ms = c->last_ms = l->now_ms;
  c->idle_ms = 1;
  c->rd[CLIENT] = c->wr[CLIENT] = true;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLET, .data.u64 = conn_key(c, CLIENT)};
  if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    reset_fd(fd);
    close(fd);
    free(c);
    return;
  }
  c->next = l->conns;
  if (l->conns) l->conns->prev = c;
  l->conns = c;
  index_add(l, c);
  l->count++;
  c->unanswered = true;
  bool was_pressed = pressed(l);
  l->unanswered++;
  if (!was_pressed && pressed(l)) press(l);
  sl_event e = {.kind = SL_EV_ACCEPTED, .id = c->id, .tag = ls->tag, .accepted_ms = c->accepted_ms, .peer = *peer};
  // Counted before any report of it can be made: the count never lags what was reported.
  __atomic_add_fetch(&l->accepted, 1, __ATOMIC_RELEASE);
  e.err = original_dst(fd, ls, peer, &e.orig);
  if (ls->deadline_ms > 0) {
    // The loop reads the first flight itself and reports it once (flight_run).
    c->accept_ev = malloc(sizeof *c->accept_ev);
    if (c->accept_ev) {
      *c->accept_ev = e;
      waiting_add(l, c);
      c->stage = ST_PEEK;
      c->auto_peek = true;
      c->peek_deadline = c->accepted_ms + ls->deadline_ms;
      c->first_byte_at = ls->first_byte_ms != 0 && ls->first_byte_ms < ls->deadline_ms ? c->accepted_ms + ls->first_byte_ms : 0;
      c->auto_stall_ms = ls->stall_ms;
      // Not read now: a client sends its first flight a moment after the handshake that made
      // the accept, so a read here found EAGAIN for 64% of raw and nearly all TLS connections
      // at 50 clients (bench/proxy). Its bytes bring an event, and EPOLL_CTL_ADD above queued
      // one already if they are there (ep_insert polls the socket), as nginx waits for it. Under
      // pressure it is reported now (see grace), so whatever is there is read into that report.
      c->rd[CLIENT] = pressed(l);
      return flight_run(l, c);
    }
  }
  // Whatever the client sent with its handshake is read now, so that most connections are
  // judged on this one report.
  int closed = peek_fill(l, c);
  e.state = closed ? SL_PEEK_CLOSED : c->peek_len >= l->peek_cap ? SL_PEEK_FULL : SL_PEEK_MORE;
  e.bytes = c->peek;
  e.len = c->peek_len;
  c->reported = c->peek_len;
  emit(l, &e);
  // Reset already: reported, then ended at once (the read took its error; see client_left).
  if (closed < 0) client_left(l, c, -closed);
}

static void pause_listener(sl_loop *l, sl_listener *ls, uint32_t ms) {
  listener_events(l, ls, 0);
  ls->paused_until = l->now_ms + ms;
  if (ls->paused_until < l->next_listener_check) l->next_listener_check = ls->paused_until;
  __atomic_fetch_add(&l->pauses[1], 1, __ATOMIC_RELAXED);
}

// The loop holds its cap of unanswered connections: the listener waits, with no timer, for an
// answer to free a slot (answered), as HAProxy's listener waits at maxconn.
static void cap_listener(sl_loop *l, sl_listener *ls) {
  listener_events(l, ls, 0);
  ls->capped = true;
  l->capped = true;
  __atomic_fetch_add(&l->pauses[0], 1, __ATOMIC_RELAXED);
}

// Out of descriptors: the reserve makes room for one accept, whose connection is reset and
// reported. 1: one was shed; 0: none was waiting; -1: no reserve, or accept failed anyway.
static int shed_one(sl_loop *l, sl_listener *ls, int why) {
  if (l->reserve < 0) return -1;
  close(l->reserve);
  l->reserve = -1;
  struct sockaddr_storage peer;
  socklen_t plen = sizeof peer;
  int fd = accept4(ls->fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
  int e = errno;
  if (fd >= 0) {
    reset_fd(fd);
    close(fd);
  }
  l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return e == EAGAIN || e == EWOULDBLOCK ? 0 : -1;
  sl_event ev = {.kind = SL_EV_SHED, .tag = ls->tag, .err = why, .peer = peer};
  emit(l, &ev);
  return 1;
}

// The listener is level-triggered: one left waiting makes the next epoll_wait return at once, so
// a batch that stops early loses nothing, and only one that runs into EAGAIN pays an accept(2)
// for nothing. A wake-up takes one (nginx's multi_accept off), unless the last wake-up was the
// turn before and took all it was allowed: then the queue is not keeping up, and the batch
// doubles, up to SL_ACCEPT_BATCH (one busy listener never starves the connections). So a
// connection that comes alone costs one accept(2), and a flood is taken 64 at a time within a
// few turns.
static void on_accept(sl_loop *l, sl_listener *ls) {
  bool behind = ls->full_turn != 0 && ls->full_turn + 1 == l->turn;
  unsigned batch = !behind ? 1 : ls->batch * 2 < SL_ACCEPT_BATCH ? ls->batch * 2 : SL_ACCEPT_BATCH;
  ls->batch = batch;
  ls->full_turn = 0;
  for (unsigned i = 0; i < batch; i++) {
    if (l->unanswered >= l->max_unanswered) return cap_listener(l, ls);
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(ls->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      setup_conn(l, ls, fd, &peer);
      continue;
    }
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) return; // emptied
    if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
    if (e == EMFILE || e == ENFILE) {
      if (pool_drain(l)) continue; // the pooled pipes' descriptors make room: accepted after all
      int r = shed_one(l, ls, e);
      if (r == 1) continue;
      if (r == 0) return;
    }
    // No reserve, or ENOBUFS/ENOMEM: stop accepting for a moment rather than spin.
    pause_listener(l, ls, SL_ACCEPT_PAUSE_MS);
    return;
  }
  ls->full_turn = l->turn; // took all it was allowed: more may be waiting
}

// A listener about to close: the connections the kernel already completed for it wait in its
// queue, their clients connected and sending, and close(2) resets every one. They are taken and
// set up as any other (a stop's drain carries them), up to the cap of unanswered connections;
// what comes between the last accept and the close is still reset, a moment's worth.
static void take_queued(sl_loop *l, sl_listener *ls) {
  while (l->unanswered < l->max_unanswered) {
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(ls->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      setup_conn(l, ls, fd, &peer);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
    return; // emptied (EAGAIN), or out of descriptors: the rest are reset with the listener
  }
}

// ---- set-up: dial ------------------------------------------------------------------------------

static uint64_t monotonic_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t sl_monotonic_us(void) {
  return monotonic_us();
}

static bool in_flight(const sl_dial *d) {
  for (int i = 0; i < d->n; i++)
    if (d->fd[i] >= 0) return true;
  return false;
}

// `err`: why the dial ended, as dial-first.ts says it: ETIMEDOUT at the deadline (whatever
// failed before), else the last attempt's own failure, the last in time.
static void dial_fail(sl_loop *l, sl_conn *c, int err) {
  close_attempts(c, err);
  conn_close(l, c, SL_END_ERROR, err, CLIENT);
}

// The attempt in flight started first, or -1.
static int oldest_attempt(const sl_dial *d) {
  int o = -1;
  for (int i = 0; i < d->n; i++)
    if (d->fd[i] >= 0 && (o < 0 || d->start_ms[i] < d->start_ms[o])) o = i;
  return o;
}

// When the next address starts: after the attempt delay below the cap; at it, once the oldest
// attempt has had its share of the time left (sl_loop_dial), and never before the attempt delay
// (the cap makes fewer attempts run at once, never more start).
static void dial_schedule(sl_loop *l, sl_dial *d) {
  int live = 0;
  for (int i = 0; i < d->n; i++) live += d->fd[i] >= 0;
  int o = oldest_attempt(d);
  if (live < d->parallel || o < 0) {
    d->next_start_ms = l->now_ms + d->delay_ms;
    return;
  }
  uint64_t t0 = d->start_ms[o], left = d->deadline_ms > t0 ? d->deadline_ms - t0 : 0;
  d->next_start_ms = t0 + left / (uint64_t)(1 + d->n - d->next);
  if (d->next_start_ms < l->now_ms + d->delay_ms) d->next_start_ms = l->now_ms + d->delay_ms;
}

// Starts the next address (skipping those that fail at once); fails the dial when none is left
// and none is in flight. `due`: the time to start it came (dial_schedule), so at the cap the
// oldest attempt gives way.
static void dial_next(sl_loop *l, sl_conn *c, bool due) {
  sl_dial *d = c->dial;
  if (due && d->next < d->n) {
    int live = 0;
    for (int i = 0; i < d->n; i++) live += d->fd[i] >= 0;
    int o = oldest_attempt(d);
    if (live >= d->parallel && o >= 0) {
      close(d->fd[o]);
      d->fd[o] = -1;
      c->attempt_err[o] = d->last_err = ETIMEDOUT;
    }
  }
  while (d->next < d->n) {
    int i = d->next++;
    c->attempts = d->next;
    struct sockaddr_storage *a = &d->addr[i];
    int fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    // Out of descriptors: the pooled pipes give way to an admitted connection's upstream.
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && pool_drain(l)) fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      c->attempt_err[i] = d->last_err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    socklen_t len = a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (connect(fd, (struct sockaddr *)a, len) != 0 && errno != EINPROGRESS) {
      c->attempt_err[i] = d->last_err = errno;
      close(fd);
      continue;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = sock_key(c->id, UPSTREAM, i)};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      c->attempt_err[i] = d->last_err = errno;
      close(fd);
      continue;
    }
    d->fd[i] = fd;
    d->start_ms[i] = l->now_ms;
    c->attempt_err[i] = EINPROGRESS;
    dial_schedule(l, d);
    arm(l, c, conn_due(l, c));
    return;
  }
  if (!in_flight(d)) dial_fail(l, c, d->last_err > 0 ? d->last_err : ETIMEDOUT);
}

static void dial_won(sl_loop *l, sl_conn *c, int i) {
  sl_dial *d = c->dial;
  c->fd[UPSTREAM] = d->fd[i];
  // Registered with EPOLLOUT for the connect; a fresh socket has room to write.
  c->out[UPSTREAM] = c->wr[UPSTREAM] = true;
  d->fd[i] = -1;
  c->attempt_err[i] = 0;
  c->dialed = i;
  close_attempts(c, SL_ATTEMPT_CANCELLED);
  uint64_t version = d->version, valid_until = d->valid_until_us;
  bool tell = d->tell;
  uint64_t now_us = monotonic_us();
  c->connect_us = (uint32_t)(now_us - d->started_us);
  free(d);
  c->dial = NULL;
  // Out of the dial stage with its dial: ST_DIAL's timer and events read c->dial (conn_due,
  // on_conn_event), and the report below runs the caller's code while the connection is in
  // whatever stage it was left in. Waiting for a command, until start_splice moves it on.
  c->stage = ST_WAIT;
  sl_event e = {.kind = SL_EV_CONNECTED, .id = c->id, .state = i, .connect_us = c->connect_us};
  // A policy change since the verdict, or the verdict's own deadline passed (a remembered DNS
  // name it rested on expired): the caller judges the dialed address again first.
  if (__atomic_load_n(&policy_version, __ATOMIC_ACQUIRE) == version && (valid_until == 0 || now_us < valid_until)) {
    if (tell) {
      e.err = 1;
      emit(l, &e);
    }
    return start_splice(l, c, c->idle_ms);
  }
  emit(l, &e);
}

// An event of the attempt `i`, still in flight (its own key: conn_key): EPOLLOUT alone is a
// connection (tcp_poll reports no writability before ESTABLISHED), EPOLLERR or EPOLLHUP a failure
// whose errno SO_ERROR gives.
static void dial_check(sl_loop *l, sl_conn *c, int i, uint32_t events) {
  sl_dial *d = c->dial;
  if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
  if (!(events & (EPOLLERR | EPOLLHUP))) {
    // Bytes may have come with the connection (a server that speaks first).
    c->rd[UPSTREAM] = (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP)) != 0;
    c->urg[UPSTREAM] = (events & EPOLLPRI) != 0;
    c->hup[UPSTREAM] = c->fin[UPSTREAM] = (events & EPOLLRDHUP) != 0;
    return dial_won(l, c, i);
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(d->fd[i], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  close(d->fd[i]);
  d->fd[i] = -1;
  c->attempt_err[i] = d->last_err = err != 0 ? err : ECONNREFUSED;
  // RFC 8305 §5: a failed attempt starts the next one at once.
  dial_next(l, c, false);
}

// ---- set-up: refuse ----------------------------------------------------------------------------

// Writes the answer, half-closes, then reads and discards until the client closes (or the
// linger's bytes run out, or its time: the timer).
static void refuse_run(sl_loop *l, sl_conn *c) {
  int fd = c->fd[CLIENT];
  while (c->answer && c->answer_off < c->answer_len) {
    ssize_t n = send(fd, c->answer + c->answer_off, c->answer_len - c->answer_off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c->wr[CLIENT] = false;
      if (!want_out(l, c, CLIENT)) conn_close(l, c, SL_END_CLOSED, errno, CLIENT);
      return;
    }
    if (n < 0) return conn_close(l, c, SL_END_CLOSED, errno, -1);
    c->answer_off += (size_t)n;
  }
  if (c->answer) {
    free(c->answer);
    c->answer = NULL;
    shutdown(fd, SHUT_WR);
  }
  // Only what an event says is there: the flight's last read emptied the socket.
  while (c->rd[CLIENT]) {
    ssize_t n = recv(fd, l->scratch, l->peek_cap, 0);
    if (n > 0) {
      if ((uint64_t)n > c->linger_left) return conn_close(l, c, SL_END_CLOSED, 0, -1);
      c->linger_left -= (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      c->rd[CLIENT] = false;
      return;
    }
    return conn_close(l, c, SL_END_CLOSED, n < 0 ? errno : 0, -1);
  }
}

// ---- commands and the loop -------------------------------------------------------------------

static void wake(sl_loop *l) {
  uint64_t one = 1;
  ssize_t n = write(l->wakefd, &one, sizeof one);
  (void)n; // EAGAIN only when the counter would pass 2^64 - 2: never, at one write per batch
}

static void push(sl_loop *l, sl_cmd *cmd) {
  pthread_mutex_lock(&l->lock);
  // One wake-up for a batch: the loop takes the whole queue at once. None for a hosted loop's
  // turn that is running (the commands its reports' reader posts in reply): it runs them before
  // it ends.
  bool first = l->cmds == NULL && !l->in_turn;
  if (l->cmds_tail) l->cmds_tail->next = cmd;
  else l->cmds = cmd;
  l->cmds_tail = cmd;
  pthread_mutex_unlock(&l->lock);
  if (first) wake(l);
}

static void add_conn(sl_loop *l, sl_conn *c) {
  c->last_ms = l->now_ms;
  c->timer_at = SL_NO_TIMER;
  bool room = timer_room(l);
  c->next = l->conns;
  if (l->conns) l->conns->prev = c;
  l->conns = c;
  index_add(l, c);
  l->count++;
  if (!room) return conn_close(l, c, SL_END_ERROR, ENOMEM, -1);
  arm(l, c, l->now_ms + c->idle_ms);
  for (int s = 0; s < 2; s++) {
    c->rd[s] = c->wr[s] = true;
    // Tagged with the side in the low bit: the struct is at least 8-aligned.
    struct epoll_event ev = {.events = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLET, .data.u64 = conn_key(c, s)};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd[s], &ev) != 0) {
      conn_close(l, c, SL_END_ERROR, errno, -1);
      return;
    }
  }
  conn_run(l, c);
}

static void refuse(sl_loop *l, sl_conn *c, sl_cmd *cmd) {
  // A refusal after the dial (the policy changed while it connected): the upstream is closed
  // without a byte.
  if (c->fd[UPSTREAM] >= 0) {
    close(c->fd[UPSTREAM]);
    c->fd[UPSTREAM] = -1;
  }
  if (cmd->a == SL_REFUSE_RESET) return conn_close(l, c, SL_END_CLOSED, 0, CLIENT);
  if (cmd->a == SL_REFUSE_DROP) return conn_close(l, c, SL_END_CLOSED, 0, -1);
  c->stage = ST_REFUSE;
  c->answer = cmd->bytes;
  c->answer_len = cmd->len;
  c->answer_off = 0;
  cmd->bytes = NULL;
  c->linger_until = l->now_ms + cmd->b;
  c->linger_left = cmd->big;
  arm(l, c, c->linger_until);
  refuse_run(l, c);
}

// `reached`: the loop ran every command before the barrier's (or holds no connection any more).
static void barrier_release(sl_barrier *b, bool reached) {
  pthread_mutex_lock(&b->lock);
  if (reached && --b->waiting == 0) pthread_cond_signal(&b->done);
  bool last = --b->refs == 0;
  pthread_mutex_unlock(&b->lock);
  if (!last) return;
  pthread_cond_destroy(&b->done);
  pthread_mutex_destroy(&b->lock);
  free(b);
}

static void run_command(sl_loop *l, sl_cmd *cmd) {
  sl_conn *c;
  if (cmd->kind != CMD_ADD && cmd->kind != CMD_LISTEN && cmd->kind != CMD_UNLISTEN && cmd->kind != CMD_SYNC && cmd->kind != CMD_RULES &&
      cmd->kind != CMD_CAP && (c = find(l, cmd->id)))
    answered(l, c);
  switch (cmd->kind) {
    case CMD_SYNC: return; // released by free_cmd, right after, in queue order
    case CMD_ANSWERED: return; // answered above
    case CMD_CAP: {
      bool was_pressed = pressed(l);
      l->max_unanswered = cmd->a;
      if (!was_pressed && pressed(l)) press(l);
      return uncap(l);
    }
    case CMD_ADD: add_conn(l, cmd->conn); return;
    case CMD_ABORT:
      if ((c = find(l, cmd->id))) conn_close(l, c, SL_END_ABORTED, 0, c->stage == ST_SPLICE ? -1 : CLIENT);
      return;
    case CMD_LISTEN: {
      sl_listener *ls = calloc(1, sizeof *ls);
      struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)ls | 2u};
      if (!ls || epoll_ctl(l->epfd, EPOLL_CTL_ADD, cmd->fd, &ev) != 0) {
        close(cmd->fd);
        free(ls);
        return;
      }
      ls->fd = cmd->fd;
      ls->tag = cmd->tag;
      socklen_t blen = sizeof ls->bound;
      getsockname(ls->fd, (struct sockaddr *)&ls->bound, &blen);
      if (ls->bound.ss_family == AF_INET) ls->exact = ((struct sockaddr_in *)&ls->bound)->sin_addr.s_addr != htonl(INADDR_ANY);
      else ls->exact = !IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ls->bound)->sin6_addr);
      // Inherited by every accepted socket: one setsockopt per listener, not per connection.
      int one = 1;
      setsockopt(ls->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ls->next = l->listeners;
      l->listeners = ls;
      if (l->reserve < 0) l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
      return;
    }
    case CMD_UNLISTEN:
      for (sl_listener **p = &l->listeners; *p;) {
        sl_listener *ls = *p;
        if (ls->tag != cmd->tag) {
          p = &ls->next;
          continue;
        }
        *p = ls->next;
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, ls->fd, NULL);
        take_queued(l, ls);
        close(ls->fd);
        free(ls);
      }
      return;
    case CMD_PEEK:
      if (!(c = find(l, cmd->id)) || !(c->stage == ST_WAIT || c->auto_peek) || c->fd[UPSTREAM] >= 0) return;
      c->auto_peek = false;
      c->stage = ST_PEEK;
      c->peek_deadline = c->accepted_ms + cmd->a;
      c->first_byte_at = cmd->b ? c->accepted_ms + cmd->b : 0;
      c->stall_ms = cmd->c;
      c->report_at = cmd->d;
      return peek_run(l, c);
    case CMD_DIAL:
      // While the loop still reads the first flight (auto_peek), too: the caller judged without it.
      if (!(c = find(l, cmd->id)) || !(c->stage == ST_WAIT || c->auto_peek) || c->fd[UPSTREAM] >= 0) return;
      c->auto_peek = false;
      c->stage = ST_DIAL;
      if (cmd->d) c->fin_ends = true;
      // Its FIN came already: nothing to dial for (no attempt made: the outcome names none).
      if (client_finished(l, c)) return;
      c->dial = cmd->dial;
      cmd->dial = NULL;
      c->idle_ms = cmd->c;
      c->dial->started_ms = l->now_ms;
      c->dial->started_us = monotonic_us();
      c->dial->deadline_ms = l->now_ms + cmd->a;
      c->dial->delay_ms = cmd->b;
      c->dial->version = cmd->big;
      arm(l, c, c->dial->deadline_ms);
      return dial_next(l, c, false);
    case CMD_FIN_ENDS:
      if (!(c = find(l, cmd->id)) || !(c->stage == ST_WAIT || c->stage == ST_DIAL || c->auto_peek) || c->fd[UPSTREAM] >= 0) return;
      // The caller judged on what was reported (its parser had the hello): the loop's own
      // reading stops, as for any command, and the rest stays in the socket for the upstream.
      if (c->auto_peek) {
        c->auto_peek = false;
        c->stage = ST_WAIT;
      }
      c->fin_ends = true;
      client_finished(l, c);
      return;
    case CMD_SPLICE:
      if (!(c = find(l, cmd->id)) || c->stage != ST_WAIT || c->fd[UPSTREAM] < 0) return;
      return start_splice(l, c, cmd->a);
    case CMD_REFUSE:
      if (!(c = find(l, cmd->id)) || !(c->stage == ST_WAIT || c->auto_peek)) return;
      c->auto_peek = false;
      return refuse(l, c, cmd);
    case CMD_RULES:
      for (sl_listener *ls = l->listeners; ls; ls = ls->next) {
        if (ls->tag != cmd->tag) continue;
        ls->deadline_ms = cmd->a;
        ls->first_byte_ms = cmd->b;
        ls->stall_ms = cmd->c;
      }
      return;
  }
}

static void free_cmd(sl_cmd *cmd) {
  // A loop that stopped first closed every connection it had: its barrier is reached too.
  if (cmd->barrier) barrier_release(cmd->barrier, true);
  free(cmd->dial);
  free(cmd->bytes);
  free(cmd);
}

// Runs the queued commands. `enter_turn`: a hosted loop's turn begins (see push).
static void run_commands(sl_loop *l, bool *stop, bool enter_turn) {
  pthread_mutex_lock(&l->lock);
  sl_cmd *cmd = l->cmds;
  l->cmds = l->cmds_tail = NULL;
  *stop = l->stopping;
  if (enter_turn) l->in_turn = true;
  pthread_mutex_unlock(&l->lock);
  // The times a command sets (an idle timeout's start, a linger's, a dial's deadline) count from
  // when it runs. The turn's clock was read before its events, and a hosted loop's host runs the
  // queue between turns too (sl_loops_sync), up to a minute after the last: a hand-over run there
  // was idle from the last turn on, and closed at the next one, before its idle timeout.
  if (cmd) l->now_ms = monotonic_ms();
  while (cmd) {
    sl_cmd *next = cmd->next;
    run_command(l, cmd);
    free_cmd(cmd);
    cmd = next;
  }
}

// A connection's timer is due: what its stage does then.
static void conn_timer(sl_loop *l, sl_conn *c) {
  uint64_t now = l->now_ms;
  switch (c->stage) {
    case ST_SPLICE:
      if (c->ending) return conn_end(l, c);
      // A side failed (maybe unread yet, behind its bytes), and the other did not take what it
      // sent before within idle_ms: still its failure, and still a reset, never a FIN.
      for (int s = 0; s < 2 && c->failed < 0; s++) {
        int err = 0;
        socklen_t len = sizeof err;
        if (!c->said_fin[s] && getsockopt(c->fd[s], SOL_SOCKET, SO_ERROR, &err, &len) == 0 && (err == ECONNRESET || err == ETIMEDOUT)) {
          c->failed = s;
          c->fail_err = err;
        }
      }
      if (c->failed >= 0) return conn_close(l, c, end_of(c->failed, c->fail_err), c->fail_err, 1 - c->failed);
      return conn_close(l, c, SL_END_IDLE_TIMEOUT, 0, -1);
    case ST_PEEK:
      if (now >= c->peek_deadline) return report_peek(l, c, SL_PEEK_TIMEOUT);
      if (c->peek_len == 0 && c->first_byte_at != 0 && now >= c->first_byte_at) return report_peek(l, c, SL_PEEK_SILENT);
      // Nothing yet after SL_EMPTY_GRACE_MS (see grace): reported empty, and read on (server-first
      // protocols).
      if (c->accept_ev && c->peek_len == 0 && now >= c->accepted_ms + grace(l, c, SL_EMPTY_GRACE_MS)) return report_peek(l, c, SL_PEEK_WAITING);
      if (c->peek_len > 0 && c->stall_ms != 0 && now >= c->last_byte_ms + c->stall_ms) return report_peek(l, c, SL_PEEK_STALLED);
      // The grace for an incomplete flight (auto_peek, see grace): what is unreported is reported
      // as it is, and read on.
      if (c->auto_peek && c->peek_len > c->reported && now >= c->unreported_ms + grace(l, c, SL_FLIGHT_GRACE_MS))
        return report_peek(l, c, SL_PEEK_WAITING);
      return;
    case ST_DIAL:
      if (now >= c->dial->deadline_ms) return dial_fail(l, c, ETIMEDOUT);
      return dial_next(l, c, true);
    case ST_REFUSE: return conn_close(l, c, SL_END_CLOSED, 0, -1);
    default: return;
  }
}

// The heap's promise, checked against a scan of every connection at the start and the end of
// each turn's check (the C test builds with SL_TIMER_AUDIT): the heap is in order, and no live
// connection has a due earlier than its key, nor a due and no key. A place that makes a due earlier without arm()
// would leave that timer to fire late, or never.
static void timer_audit(const sl_loop *l) {
#ifdef SL_TIMER_AUDIT
  for (unsigned i = 0; i < l->n_timers; i++) {
    if (l->timers[i].c->timer_at != i || (i > 0 && l->timers[(i - 1) / SL_TIMER_ARITY].due > l->timers[i].due)) {
      fprintf(stderr, "SL_TIMER_AUDIT: the heap is out of order at %u of %u\n", i, l->n_timers);
      abort();
    }
  }
  for (const sl_conn *c = l->conns; c; c = c->next) {
    uint64_t due = conn_due(l, c);
    if (due == UINT64_MAX) continue;
    if (c->timer_at == SL_NO_TIMER || l->timers[c->timer_at].due > due) {
      fprintf(stderr, "SL_TIMER_AUDIT: connection %llu (stage %d) is due at %llu, its key is %s%llu\n", (unsigned long long)c->id, (int)c->stage,
              (unsigned long long)due, c->timer_at == SL_NO_TIMER ? "absent " : "", c->timer_at == SL_NO_TIMER ? 0ull : (unsigned long long)l->timers[c->timer_at].due);
      abort();
    }
  }
#else
  (void)l;
#endif
}

// The connections whose key has come, each looked at once: its timer run if conn_due says it is
// due (a key may be early, never late), and put back in the heap at its next due. One armed again
// for now while it ran (or still due) is looked at in the next turn, which does not wait.
static void check_timers(sl_loop *l) {
  timer_audit(l);
  if (l->now_ms < next_check(l)) return;
  sl_conn *due_now = NULL;
  while (l->n_timers && l->timers[0].due <= l->now_ms) {
    sl_conn *c = l->timers[0].c;
    timer_remove(l, c);
    c->due_next = due_now;
    due_now = c;
  }
  for (sl_conn *c = due_now; c; c = c->due_next) {
    // Closed by another's timer in this turn: still allocated (freed by bury), out of the heap.
    if (c->dead) continue;
    if (conn_due(l, c) <= l->now_ms) conn_timer(l, c);
    if (!c->dead) arm(l, c, conn_due(l, c));
  }
  if (l->now_ms >= l->next_listener_check) {
    uint64_t next = UINT64_MAX;
    for (sl_listener *ls = l->listeners; ls; ls = ls->next) {
      if (ls->paused_until == 0) continue;
      if (ls->paused_until <= l->now_ms) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)ls | 2u};
        epoll_ctl(l->epfd, EPOLL_CTL_MOD, ls->fd, &ev);
        ls->paused_until = 0;
        if (l->reserve < 0) l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
      } else if (ls->paused_until < next) {
        next = ls->paused_until;
      }
    }
    l->next_listener_check = next;
  }
  timer_audit(l);
}

static void bury(sl_loop *l) {
  while (l->graves) {
    sl_conn *c = l->graves;
    l->graves = c->next;
    free(c);
  }
}

// The client reset (or its socket failed) before its connection was spliced: while it waited for
// a command (its name being resolved, its verdict judged again), its upstream was dialed, or its
// first flight was read. No one is left to carry anything for, so the connection ends at once,
// whatever command is on its way: a dial is cancelled, every attempt's descriptor closed, and the
// connection reported as the client's reset, rather than held for up to the connect timeout (a
// sandbox resetting in a loop toward an address that never answers would hold a dial each time).
// A read that met the reset took its error, so no later event would show it: a dial command
// already sent for the flight read must not find the connection waiting. Nothing the client
// sent goes upstream: without egressd between them, its connection would have ended before the
// upstream's handshake. A FIN is not that (EPOLLRDHUP alone, or a read of 0: the client
// half-closed and still reads its answer); EPOLLHUP or EPOLLERR is a socket closed. `err`: the
// error a read took, or 0 to ask the socket.
// While its first flight is read, what the client sent before its reset is reported first
// (SL_PEEK_CLOSED, as for its FIN): those bytes decide where they alone decide (a malformed flight,
// a refused name, a whole flight), and its going only what they left open; the caller judges them
// as the JavaScript path does (peek-socket.ts). Bytes read and not yet reported (in their grace,
// or behind a report of none) were dropped here, and a bad request reset at once was peek-closed.
static void client_left(sl_loop *l, sl_conn *c, int err) {
  socklen_t len = sizeof err;
  if (err == 0 && getsockopt(c->fd[CLIENT], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (c->stage == ST_PEEK) report_peek(l, c, SL_PEEK_CLOSED);
  conn_close(l, c, SL_END_CLIENT_RESET, err != 0 ? err : ECONNRESET, 2);
}

// The client's FIN, under fin_ends, before an upstream connected (waiting for a command, or its
// dial): the client can make no use of anything the upstream would send (its first flight was a
// TLS ClientHello, sl_loop_fin_ends), so it ends as client_left does, every attempt cancelled,
// nothing sent upstream. The client is reset: a FIN back would pass for an answer that ended.
// True when it ended the connection.
static bool client_finished(sl_loop *l, sl_conn *c) {
  if (!c->fin_ends || !c->said_fin[CLIENT] || c->fd[UPSTREAM] >= 0 || !(c->stage == ST_WAIT || c->stage == ST_DIAL)) return false;
  conn_close(l, c, SL_END_CLIENT_FIN, 0, 2);
  return true;
}

// `attempt`: the dial's attempt the upstream socket was (conn_key).
static void on_conn_event(sl_loop *l, sl_conn *c, int side, int attempt, uint32_t events) {
  if (side == UPSTREAM) {
    // An attempt that ended while its event waited in this batch: the event is its own, and
    // nothing else's (conn_key).
    if (c->stage == ST_DIAL) {
      if (c->dial->fd[attempt] >= 0) dial_check(l, c, attempt, events);
      return;
    }
    if (c->fd[UPSTREAM] < 0 || attempt != up_attempt(c)) return;
  }
  // EPOLLHUP while the socket's write half is still open is a closed socket (a reset, a timeout),
  // though EPOLLERR may be missing: a splice into it that moved some bytes and then met the reset
  // consumed sk_err and reported the count (splice_to_socket), and a read would find an EOF
  // where the peer sent no FIN.
  bool lost = c->stage == ST_SPLICE && (events & (EPOLLHUP | EPOLLERR)) == EPOLLHUP && !c->dir[1 - side].shut;
  if (lost) events |= EPOLLERR;
  if (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->rd[side] = true;
  if (events & EPOLLPRI) c->urg[side] = true;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->hup[side] = true;
  // An error to read first: the end is whatever the read says.
  c->fin[side] = (events & EPOLLERR) ? false : c->fin[side] || (events & EPOLLRDHUP) != 0;
  if (c->fin[side]) c->said_fin[side] = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->wr[side] = true;
  switch (c->stage) {
    case ST_SPLICE:
      if (c->ending) return conn_end(l, c);
      // The error is taken at once (which side failed, how, when: the linger's clock), and never
      // ends the connection by itself: what the side sent before it is still read (conn_fail).
      if (lost && c->failed < 0 && !conn_fail(l, c, side, ECONNRESET)) return;
      if ((events & EPOLLERR) && !lost && c->failed != side && !check_error(l, c, side)) return;
      return conn_run(l, c);
    case ST_PEEK:
      if (side == CLIENT) peek_run(l, c);
      return;
    case ST_REFUSE:
      if (side == CLIENT) refuse_run(l, c);
      return;
    case ST_WAIT:
    case ST_DIAL:
      if (side == CLIENT && (events & (EPOLLHUP | EPOLLERR))) client_left(l, c, 0);
      else if (side == CLIENT) client_finished(l, c);
      return; // else waiting for a command, or the dial; the command looks at the socket itself
    default: return;
  }
}

static void turn_over(sl_loop *l) {
  sl_turn_fn fn = __atomic_load_n(&l->on_turn, __ATOMIC_ACQUIRE);
  if (fn) fn(l->ctx);
}

// One turn: the ready events (waiting up to `timeout` ms for one; -1: until one comes), the
// queued commands, the due timers, then the turn's reports passed on. True once stopped.
static bool loop_turn(sl_loop *l, int timeout) {
  struct epoll_event events[SL_EVENTS];
  int n = epoll_wait(l->epfd, events, SL_EVENTS, timeout);
  l->now_ms = monotonic_ms();
  l->turn++;
  for (int i = 0; i < n; i++) {
    uint64_t data = events[i].data.u64;
    if (data & 2u) {
      sl_listener *ls = (sl_listener *)(uintptr_t)(data & ~(uint64_t)7);
      // NULL: the wake-up descriptor, whose counter is never read (see loop_init).
      if (ls) on_accept(l, ls);
      continue;
    }
    // NULL: closed (the event came from a socket whose file outlived the descriptor, conn_key).
    sl_conn *c = find(l, data >> 6);
    if (c) on_conn_event(l, c, (int)(data & 1u), (int)(data >> 2 & 15u), events[i].events);
  }
  bool stop = false;
  run_commands(l, &stop, l->hosted);
  check_timers(l);
  bury(l);
  turn_over(l);
  return stop;
}

// Milliseconds until the loop's next timer is due; -1: none.
static int next_timeout(const sl_loop *l) {
  uint64_t due = next_check(l);
  if (due == UINT64_MAX) return -1;
  uint64_t now = monotonic_ms();
  return due <= now ? 0 : (int)(due - now > 60000 ? 60000 : due - now);
}

// The end of a loop: every connection closed and reported.
static void loop_close_all(sl_loop *l) {
  while (l->conns) conn_close(l, l->conns, SL_END_ABORTED, 0, -1);
  bury(l);
  turn_over(l);
}

static void *loop_main(void *arg) {
  sl_loop *l = arg;
  while (!loop_turn(l, next_timeout(l))) {
  }
  loop_close_all(l);
  return NULL;
}

// ---- the public functions --------------------------------------------------------------------

static sl_loop *loop_init(sl_report_fn report, void *ctx, int *err) {
  sl_loop *l = calloc(1, sizeof *l);
  if (!l) {
    *err = ENOMEM;
    return NULL;
  }
  l->report = report;
  l->ctx = ctx;
  l->reserve = -1;
  l->max_unanswered = SL_MAX_UNANSWERED;
  l->page = sysconf(_SC_PAGESIZE);
  l->next_listener_check = UINT64_MAX;
  l->now_ms = monotonic_ms();
  l->copy = malloc(SL_COPY_BUF);
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (!l->copy) {
    *err = ENOMEM;
    goto fail;
  }
  // Edge-triggered, and never read: every write(2) to an eventfd wakes its waiters (eventfd_write),
  // so each is an edge of its own, and the read(2) that would reset the counter for a
  // level-triggered registration is one syscall per wake-up saved (the counter, one per batch
  // of commands, cannot reach 2^64 - 2). Its key is a listener's tag with no listener.
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = 2u};
  if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) != 0) {
    *err = errno;
    goto fail;
  }
  pthread_mutex_init(&l->lock, NULL);
  return l;
fail:
  if (l->epfd >= 0) close(l->epfd);
  if (l->wakefd >= 0) close(l->wakefd);
  free(l->copy);
  free(l);
  return NULL;
}

static void loop_free(sl_loop *l) {
  close(l->epfd);
  close(l->wakefd);
  pthread_mutex_destroy(&l->lock);
  free(l->scratch);
  free(l->copy);
  free(l->timers);
  free(l);
}

sl_loop *sl_loop_start(sl_report_fn report, void *ctx, int *err) {
  sl_loop *l = loop_init(report, ctx, err);
  if (!l) return NULL;
  int e = pthread_create(&l->thread, NULL, loop_main, l);
  if (e != 0) {
    *err = e;
    loop_free(l);
    return NULL;
  }
  return l;
}

sl_loop *sl_loop_start_hosted(sl_report_fn report, void *ctx, int *err) {
  sl_loop *l = loop_init(report, ctx, err);
  if (l) {
    l->hosted = true;
    l->host = pthread_self();
  }
  return l;
}

int sl_loop_fd(const sl_loop *l) {
  return l->epfd;
}

int sl_loop_turn(sl_loop *l) {
  __atomic_store_n(&l->host, pthread_self(), __ATOMIC_RELAXED);
  loop_turn(l, 0);
  // The commands the turn's reports were answered with run now, in the same turn, and so do the
  // answers to those reports (a dial that connected at once, a refusal): a few rounds, then a
  // wake-up leaves the rest to the next turn, so a caller that always answers cannot hold the
  // host's thread.
  for (int round = 0;; round++) {
    pthread_mutex_lock(&l->lock);
    bool more = l->cmds != NULL;
    if (!more || round == SL_HOSTED_ROUNDS) l->in_turn = false;
    pthread_mutex_unlock(&l->lock);
    if (!more) break;
    if (round == SL_HOSTED_ROUNDS) {
      wake(l);
      break;
    }
    bool stop;
    l->now_ms = monotonic_ms();
    run_commands(l, &stop, false);
    check_timers(l);
    bury(l);
    turn_over(l);
  }
  return next_timeout(l);
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
  c->first_fin = c->failed = -1;
  c->stage = ST_SPLICE;
  c->dialed = -1;
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

static sl_cmd *new_cmd(cmd_kind kind, uint64_t id) {
  sl_cmd *cmd = calloc(1, sizeof *cmd);
  if (cmd) {
    cmd->kind = kind;
    cmd->id = id;
  }
  return cmd;
}

int sl_loop_abort(sl_loop *l, uint64_t id) {
  sl_cmd *cmd = new_cmd(CMD_ABORT, id);
  if (!cmd) return ENOMEM;
  push(l, cmd);
  return 0;
}

int sl_loop_answered(sl_loop *l, uint64_t id) {
  // A hosted loop's host between turns, with nothing queued before it, frees the slot itself:
  // the answer makes no report and needs no order, and a queued one cost an eventfd write, a
  // wake-up of the host's event loop and a turn (libuv's epoll_pwait and the loop's epoll_wait)
  // for each connection admitted before its command (75% of TLS connections at 50 clients).
  if (l->hosted && pthread_equal(__atomic_load_n(&l->host, __ATOMIC_RELAXED), pthread_self())) {
    pthread_mutex_lock(&l->lock);
    bool between_turns = !l->in_turn && l->cmds == NULL && !l->stopping;
    pthread_mutex_unlock(&l->lock);
    if (between_turns) {
      sl_conn *c = find(l, id);
      if (c) answered(l, c);
      return 0;
    }
  }
  sl_cmd *cmd = new_cmd(CMD_ANSWERED, id);
  if (!cmd) return ENOMEM;
  push(l, cmd);
  return 0;
}

int sl_loop_accept_cap(sl_loop *l, unsigned cap) {
  sl_cmd *cmd = new_cmd(CMD_CAP, 0);
  if (!cmd) return ENOMEM;
  cmd->a = cap < 1 ? 1 : cap > SL_MAX_UNANSWERED ? SL_MAX_UNANSWERED : cap;
  push(l, cmd);
  return 0;
}

void sl_loop_accept_pauses(const sl_loop *l, uint64_t *capped, uint64_t *out_of_descriptors) {
  *capped = __atomic_load_n(&l->pauses[0], __ATOMIC_RELAXED);
  *out_of_descriptors = __atomic_load_n(&l->pauses[1], __ATOMIC_RELAXED);
}

void sl_loop_on_turn(sl_loop *l, sl_turn_fn fn) {
  __atomic_store_n(&l->on_turn, fn, __ATOMIC_RELEASE);
}

void sl_loop_setup(sl_loop *l, sl_event_fn on_event, size_t peek_cap) {
  l->on_event = on_event;
  l->peek_cap = peek_cap;
  l->scratch = malloc(peek_cap);
}

int sl_loop_listen(sl_loop *l, int fd, int tag) {
  sl_cmd *cmd = new_cmd(CMD_LISTEN, 0);
  if (!cmd || !l->scratch) {
    free(cmd);
    return ENOMEM;
  }
  cmd->fd = fd;
  cmd->tag = tag;
  push(l, cmd);
  return 0;
}

int sl_loop_unlisten(sl_loop *l, int tag) {
  sl_cmd *cmd = new_cmd(CMD_UNLISTEN, 0);
  if (!cmd) return ENOMEM;
  cmd->tag = tag;
  push(l, cmd);
  return 0;
}

int sl_loop_rules(sl_loop *l, int tag, uint32_t deadline_ms, uint32_t first_byte_ms, uint32_t stall_ms) {
  sl_cmd *cmd = new_cmd(CMD_RULES, 0);
  if (!cmd) return ENOMEM;
  cmd->tag = tag;
  cmd->a = deadline_ms;
  cmd->b = first_byte_ms;
  cmd->c = stall_ms;
  push(l, cmd);
  return 0;
}

int sl_loop_peek(sl_loop *l, uint64_t id, uint32_t deadline_ms, uint32_t first_byte_ms, uint32_t stall_ms, uint32_t report_at) {
  sl_cmd *cmd = new_cmd(CMD_PEEK, id);
  if (!cmd) return ENOMEM;
  cmd->a = deadline_ms;
  cmd->b = first_byte_ms;
  cmd->c = stall_ms;
  cmd->d = report_at;
  push(l, cmd);
  return 0;
}

int sl_loop_dial(sl_loop *l, uint64_t id, const struct sockaddr_storage *addrs, int n, uint32_t connect_ms, uint32_t attempt_delay_ms,
                 int parallel, uint32_t idle_ms, uint64_t version, bool tell, uint64_t valid_until_us, bool fin_ends) {
  if (n < 1 || n > SL_MAX_ADDRS || parallel < 1) return EINVAL;
  sl_cmd *cmd = new_cmd(CMD_DIAL, id);
  sl_dial *d = calloc(1, sizeof *d);
  if (!cmd || !d) {
    free(cmd);
    free(d);
    return ENOMEM;
  }
  memcpy(d->addr, addrs, sizeof *addrs * (size_t)n);
  d->n = n;
  d->parallel = parallel;
  d->tell = tell;
  d->valid_until_us = valid_until_us;
  for (int i = 0; i < SL_MAX_ADDRS; i++) d->fd[i] = -1;
  cmd->dial = d;
  cmd->a = connect_ms;
  cmd->b = attempt_delay_ms;
  cmd->c = idle_ms;
  cmd->d = fin_ends;
  cmd->big = version;
  push(l, cmd);
  return 0;
}

int sl_loop_fin_ends(sl_loop *l, uint64_t id) {
  sl_cmd *cmd = new_cmd(CMD_FIN_ENDS, id);
  if (!cmd) return ENOMEM;
  push(l, cmd);
  return 0;
}

int sl_loop_splice(sl_loop *l, uint64_t id, uint32_t idle_ms) {
  sl_cmd *cmd = new_cmd(CMD_SPLICE, id);
  if (!cmd) return ENOMEM;
  cmd->a = idle_ms;
  push(l, cmd);
  return 0;
}

int sl_loop_refuse(sl_loop *l, uint64_t id, sl_refusal how, const void *bytes, size_t len, uint32_t linger_ms, uint64_t linger_max) {
  sl_cmd *cmd = new_cmd(CMD_REFUSE, id);
  char *b = how == SL_REFUSE_ANSWER ? copy(bytes, len) : NULL;
  if (!cmd || (how == SL_REFUSE_ANSWER && len > 0 && !b)) {
    free(cmd);
    free(b);
    return ENOMEM;
  }
  cmd->a = how;
  cmd->b = linger_ms;
  cmd->big = linger_max;
  cmd->bytes = b;
  cmd->len = len;
  push(l, cmd);
  return 0;
}

void sl_set_policy_version(uint64_t version) {
  __atomic_store_n(&policy_version, version, __ATOMIC_RELEASE);
}

int sl_loops_sync(sl_loop *const *loops, int n, uint32_t timeout_ms) {
  if (n <= 0) return 0;
  sl_barrier *b = calloc(1, sizeof *b);
  if (!b) return n;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&b->done, &attr);
  pthread_condattr_destroy(&attr);
  pthread_mutex_init(&b->lock, NULL);
  b->waiting = n;
  b->refs = n + 1;
  int unposted = 0;
  for (int i = 0; i < n; i++) {
    sl_loop *l = loops[i];
    if (l->hosted && pthread_equal(__atomic_load_n(&l->host, __ATOMIC_RELAXED), pthread_self())) {
      // A hosted loop on the calling thread runs its queue here: no turn can run while its
      // host waits. Its reports and timers wait for the next turn, which the wake-up brings.
      bool stop;
      run_commands(l, &stop, false);
      bury(l);
      wake(l);
      pthread_mutex_lock(&b->lock);
      b->waiting--;
      b->refs--;
      pthread_mutex_unlock(&b->lock);
      continue;
    }
    sl_cmd *cmd = new_cmd(CMD_SYNC, 0);
    if (!cmd) {
      // Not confirmed: counted as a loop that did not answer.
      unposted++;
      pthread_mutex_lock(&b->lock);
      b->waiting--;
      b->refs--;
      pthread_mutex_unlock(&b->lock);
      continue;
    }
    cmd->barrier = b;
    push(loops[i], cmd);
  }
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&b->lock);
  int r = 0;
  while (b->waiting > 0 && r == 0) r = pthread_cond_timedwait(&b->done, &b->lock, &deadline);
  int late = b->waiting;
  pthread_mutex_unlock(&b->lock);
  barrier_release(b, false);
  return late + unposted;
}

void sl_loop_stop(sl_loop *l) {
  pthread_mutex_lock(&l->lock);
  l->stopping = true;
  pthread_mutex_unlock(&l->lock);
  if (l->hosted) {
    // On the host's thread: what was posted runs, then every connection is closed and reported.
    bool stop;
    l->now_ms = monotonic_ms();
    run_commands(l, &stop, false);
    loop_close_all(l);
  } else {
    wake(l);
    pthread_join(l->thread, NULL);
  }
  // Connections handed over after the loop's last look at its queue never ran; they are closed
  // and still reported, so every hand-off gets exactly one outcome.
  for (sl_cmd *cmd = l->cmds, *next; cmd; cmd = next) {
    next = cmd->next;
    if (cmd->kind == CMD_ADD) {
      sl_conn *c = cmd->conn;
      close(c->fd[0]);
      close(c->fd[1]);
      sl_outcome o = {.id = c->id, .end = SL_END_ABORTED, .dialed = -1, .ended_us = sl_monotonic_us()};
      free(c->dir[0].pending);
      free(c->dir[1].pending);
      free(c);
      l->report(l->ctx, &o);
    } else if (cmd->kind == CMD_LISTEN) {
      close(cmd->fd);
    }
    free_cmd(cmd);
  }
  while (l->listeners) {
    sl_listener *ls = l->listeners;
    l->listeners = ls->next;
    close(ls->fd);
    free(ls);
  }
  if (l->reserve >= 0) close(l->reserve);
  for (int i = 0; i < l->pooled; i++) {
    close(l->pool[i][0]);
    close(l->pool[i][1]);
  }
  loop_free(l);
}

unsigned sl_loop_size(const sl_loop *l) {
  return l->count;
}

uint64_t sl_loop_accepted(const sl_loop *l) {
  return __atomic_load_n(&l->accepted, __ATOMIC_ACQUIRE);
}
