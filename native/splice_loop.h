// The native data phase: an epoll loop on its own thread that carries allowed connections'
// bytes both ways with splice(2) through pipes, so the bytes stay in the kernel once the verdict
// is made (HAProxy's kernel splicing; issue 12). Plain C, no Node-API: data_plane.c binds it to
// JavaScript, native/test/splice_loop_test.c tests it on its own.
//
// A connection is two connected, non-blocking TCP sockets the loop owns from sl_loop_add on: it
// writes the bytes given with them first (what JavaScript already read: the peeked first flight,
// anything the upstream sent before the hand-off), then splices. A FIN ends only the other side's
// write half (RFC 9293 §3.6); a reset or an error on one side resets the other (SO_LINGER 0), so
// neither peer mistakes an aborted exchange for a complete one. No byte either way for idle_ms
// closes both; so does sl_loop_abort. Each connection is reported exactly once, on the loop's
// thread, after both sockets are closed.
//
// SIGPIPE must be ignored by the process (Node does so at start-up): a splice into a socket whose
// peer has gone would otherwise kill it instead of failing with EPIPE.

#ifndef EGRESSD_SPLICE_LOOP_H
#define EGRESSD_SPLICE_LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  SL_END_CLOSED = 0,         // both sides sent their FIN and every byte was delivered
  SL_END_CLIENT_RESET = 1,   // the client reset (or a write to it failed with EPIPE)
  SL_END_UPSTREAM_RESET = 2, // the same, upstream
  SL_END_IDLE_TIMEOUT = 3,   // no byte either way for idle_ms
  SL_END_ABORTED = 4,        // sl_loop_abort or sl_loop_stop
  SL_END_ERROR = 5           // any other failure; `err` says which errno
} sl_end;

typedef struct {
  uint64_t id;
  uint64_t bytes_up;   // client → upstream, including the initial bytes
  uint64_t bytes_down; // upstream → client, including the initial bytes
  sl_end end;
  int err; // the errno behind a reset or an error, else 0
} sl_outcome;

typedef void (*sl_report_fn)(void *ctx, const sl_outcome *outcome);

typedef struct sl_loop sl_loop;

/** Starts a loop and its thread. NULL with *err set (an errno) when it cannot. */
sl_loop *sl_loop_start(sl_report_fn report, void *ctx, int *err);

/**
 * Hands a connection to the loop, which owns both descriptors from then on (also when this
 * fails: it closes them). `up`/`down` (may be NULL when their length is 0) are copied. Returns 0
 * or an errno. Thread-safe.
 */
int sl_loop_add(sl_loop *loop, uint64_t id, int client_fd, int upstream_fd, const void *up, size_t up_len,
                const void *down, size_t down_len, uint32_t idle_ms);

/** Closes the connection `id` (reported as SL_END_ABORTED) if it is still open. Thread-safe. */
int sl_loop_abort(sl_loop *loop, uint64_t id);

/** Closes every connection (each reported as SL_END_ABORTED), joins the thread, frees the loop. */
void sl_loop_stop(sl_loop *loop);

/** How many connections the loop holds now (approximate when read from another thread). */
unsigned sl_loop_size(const sl_loop *loop);

#endif
