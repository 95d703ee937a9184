// The native data phase: an epoll loop on its own thread that carries allowed connections'
// bytes both ways with splice(2) through pipes, so the bytes stay in the kernel once the verdict
// is made (HAProxy's kernel splicing; issue 12). Plain C, no Node-API: data_plane.c binds it to
// JavaScript, native/test/splice_loop_test.c tests it on its own.
//
// A connection is two connected, non-blocking TCP sockets the loop owns from sl_loop_add on: it
// writes the bytes given with them first (what JavaScript already read: the peeked first flight,
// anything the upstream sent before the hand-off), then splices. A FIN ends only the other side's
// write half (RFC 9293 §3.6); a reset or an error on one side resets the other (SO_LINGER 0), so
// neither peer mistakes an aborted exchange for a complete one — after the bytes the side sent
// before its reset (its kernel acknowledged them, and Linux keeps them readable) are passed on
// and acknowledged by the other's peer, within idle_ms. No byte either way for idle_ms
// closes both; so does sl_loop_abort. Each connection is reported exactly once, on the loop's
// thread, after both sockets are closed. A direction that needs a pipe when no descriptor is
// left goes through the loop's buffer instead, and asks for a pipe again after each read: a
// connection already carried is never cut for want of descriptors.
//
// SIGPIPE must be ignored by the process (Node does so at start-up): a splice into a socket whose
// peer has gone would otherwise kill it instead of failing with EPIPE.

#ifndef EGRESSD_SPLICE_LOOP_H
#define EGRESSD_SPLICE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  // Both sides sent their FIN and every byte was delivered; or a side reset after its own FIN,
  // its bytes were delivered, and the other's were dropped, as its kernel would have (conn_gone).
  SL_END_CLOSED = 0,
  SL_END_CLIENT_RESET = 1,   // the client reset (or a write to it failed with EPIPE)
  SL_END_UPSTREAM_RESET = 2, // the same, upstream
  SL_END_IDLE_TIMEOUT = 3,   // no byte either way for idle_ms
  SL_END_ABORTED = 4,        // sl_loop_abort or sl_loop_stop
  SL_END_ERROR = 5,          // any other failure; `err` says which errno
  // The client sent its FIN while a connection told so (sl_loop_fin_ends, sl_loop_dial's
  // fin_ends) waited for its upstream: it is going, as a reset is (the client is reset).
  SL_END_CLIENT_FIN = 6
} sl_end;

// The most addresses one dial tries (sl_loop_dial), and so the size of an outcome's attempts.
#define SL_MAX_ADDRS 16
// An attempt still in flight when another one connected (RFC 8305 §5: abandoned).
#define SL_ATTEMPT_CANCELLED (-1)

typedef struct {
  uint64_t id;
  uint64_t bytes_up;   // client → upstream, including the initial bytes
  uint64_t bytes_down; // upstream → client, including the initial bytes
  sl_end end;
  int err; // the errno behind a reset or an error, else 0
  // The side whose FIN was passed on first (0 client, 1 upstream), -1 when neither's was: who
  // ended a connection that closed.
  int first_fin;
  // Connections the loop set up itself (sl_loop_listen), once sl_loop_dial was asked:
  int dialed;        // index of the address that connected, -1 when none did
  uint32_t connect_us; // from the dial command to the connection
  int attempts;      // how many addresses were tried
  int attempt_err[SL_MAX_ADDRS]; // 0 connected, an errno, or SL_ATTEMPT_CANCELLED
  uint64_t ended_us; // CLOCK_MONOTONIC, in µs, when the loop ended it (sl_monotonic_us; the report may come later)
} sl_outcome;

typedef void (*sl_report_fn)(void *ctx, const sl_outcome *outcome);

typedef struct sl_loop sl_loop;

/** Starts a loop and its thread. NULL with *err set (an errno) when it cannot. */
sl_loop *sl_loop_start(sl_report_fn report, void *ctx, int *err);

/**
 * Starts a loop with no thread of its own: the calling thread hosts it, running a turn
 * (sl_loop_turn) whenever sl_loop_fd is readable or the time it returned has passed. Its reports
 * and on_turn then come on that thread, and the commands posted while they run are run in the
 * same turn, with no wake-up: the hand-off between a loop's thread and the caller's (a wake-up
 * each way per connection, a context switch apiece) is gone. A loop thread's work then runs
 * on the host's thread, so a host that blocks stalls the loop's connections (nginx's worker
 * does the same). The other functions work as for a threaded loop; sl_loop_stop and
 * sl_loops_sync must then be called on the host's thread. NULL with *err set when it cannot.
 */
sl_loop *sl_loop_start_hosted(sl_report_fn report, void *ctx, int *err);

/** A hosted loop's epoll descriptor: readable when a turn has work (an event, a command). */
int sl_loop_fd(const sl_loop *loop);

/**
 * Runs one turn of a hosted loop without blocking: the ready events, the queued commands, the
 * due timers, on_turn, then the commands posted meanwhile. Returns the milliseconds until the
 * next timer is due (the host runs a turn then at the latest), or -1 when none is set.
 */
int sl_loop_turn(sl_loop *loop);

/**
 * Hands a connection to the loop, which owns both descriptors from then on (also when this
 * fails: it closes them). `up`/`down` (may be NULL when their length is 0) are copied. Returns 0
 * or an errno. Thread-safe.
 */
int sl_loop_add(sl_loop *loop, uint64_t id, int client_fd, int upstream_fd, const void *up, size_t up_len,
                const void *down, size_t down_len, uint32_t idle_ms);

/** Closes the connection `id` (reported as SL_END_ABORTED) if it is still open. Thread-safe. */
int sl_loop_abort(sl_loop *loop, uint64_t id);

/**
 * The caller took the set-up connection `id` on (admitted it) and will command it later: it no
 * longer counts among the loop's unanswered connections (see sl_loop_accept_cap). Any command
 * does the same. Thread-safe; on a hosted loop's host between its turns, done at once, with no
 * wake-up.
 */
int sl_loop_answered(sl_loop *loop, uint64_t id);

/**
 * The most unanswered set-up connections the loop holds before it stops accepting (1 to
 * SL_MAX_UNANSWERED, clamped; SL_MAX_UNANSWERED until called): the caller's descriptor budget
 * for connections it has not admitted yet. Thread-safe.
 */
int sl_loop_accept_cap(sl_loop *loop, unsigned cap);

/**
 * How many times the loop's listeners stopped accepting: at the cap of unanswered connections,
 * and out of descriptors (SL_ACCEPT_PAUSE_MS). Thread-safe (approximate while they change).
 */
void sl_loop_accept_pauses(const sl_loop *loop, uint64_t *capped, uint64_t *out_of_descriptors);

typedef void (*sl_turn_fn)(void *ctx);

/**
 * `fn(ctx)` runs on the loop's thread at the end of each turn (the events, commands and timers
 * it ran), and once more after stop closed the last connections: the reports of one turn can be
 * held and passed on together, one wake-up of their reader for many (data_plane.c). Set it
 * before handing the loop anything. Thread-safe.
 */
void sl_loop_on_turn(sl_loop *loop, sl_turn_fn fn);

/** Closes every connection (each reported as SL_END_ABORTED), joins the thread (if any), frees the loop. */
void sl_loop_stop(sl_loop *loop);

/** How many connections the loop holds now (approximate when read from another thread). */
unsigned sl_loop_size(const sl_loop *loop);

/**
 * How many connections the loop's listeners have accepted so far, each reported once as
 * SL_EV_ACCEPTED (at once, or once its first flight is read); read from any thread. Less the
 * reports the caller has taken, what is still on its way: a stop's drain waits for those.
 */
uint64_t sl_loop_accepted(const sl_loop *loop);

#ifdef SL_TIMER_AUDIT
/** (The C test's build only) the room the loop's timer heap has: it grows with the connections and shrinks after them. */
unsigned sl_loop_timer_room(const sl_loop *loop);
#endif

// ---- connection set-up (issue 12): the loop accepts, peeks, dials and refuses ----------------
//
// A listening socket given to sl_loop_listen is accepted from on the loop's thread. For each
// connection the loop reads SO_ORIGINAL_DST and whatever first bytes are already there, and
// reports SL_EV_ACCEPTED; from then on the connection waits, doing nothing, for a command:
//   sl_loop_peek    read more first bytes, under the deadlines given; report SL_EV_PEEK when
//                   `report_at` bytes are in, the cap is full, the client closed, or a deadline
//                   passed. Waits again after each report.
//   sl_loop_dial    connect to the addresses in order, the next one on failure or after
//                   `attempt_delay_ms` without an answer (RFC 8305 §5), within `connect_ms` in
//                   all, at most `parallel` attempts at once (each is a descriptor): at that cap
//                   the next waits for one to fail, or for the oldest to have had its share of
//                   the time left (split evenly between it and the addresses not yet tried)
//                   and no sooner than `attempt_delay_ms` after the last start, when
//                   it is given up (ETIMEDOUT). Connected: when the policy version is still the one given and the
//                   verdict's deadline (`valid_until_us`) has not passed, the bytes read so far
//                   are written upstream and the bytes spliced both ways; otherwise it reports
//                   SL_EV_CONNECTED and waits for sl_loop_splice or sl_loop_refuse.
//   sl_loop_refuse  answer and close: a reset, a silent close, or `bytes` then a half-close,
//                   reading and discarding until the client closes, `linger_ms` passes or more
//                   than `linger_max` bytes arrived (nginx's lingering close).
//   sl_loop_abort   reset the connection whatever it is doing.
// Every accepted connection ends with exactly one outcome (sl_report_fn).
//
// accept(2) failing with EMFILE or ENFILE (descriptors exhausted): the pipes the loop keeps pooled
// are closed first, and the accept tried again (a cache gives way to a connection; a dial's
// socket(2) does the same); then a
// reserve descriptor is closed, the waiting connection accepted and reset, the reserve taken again, and the refusal
// reported (SL_EV_SHED), one by one; when even that fails the listener pauses for
// SL_ACCEPT_PAUSE_MS (nginx pauses accepting; libuv's uv__emfile_trick uses the reserve). Never
// a busy loop (counted: sl_loop_accept_pauses).
//
// Unanswered connections: accepted, and not yet taken on by the caller (no command yet, nor
// sl_loop_answered). Each holds a descriptor the caller's budget does not count yet, and takes
// another when it is dialed. While a loop holds its cap of them (SL_MAX_UNANSWERED, or lower by
// sl_loop_accept_cap) it accepts nothing: the kernel's queue holds the rest (and drops SYNs past
// its backlog), and the first answer lets the loop accept again (HAProxy pauses a listener at
// maxconn the same way; nginx stops at worker_connections). A slot is held from the accept until
// the caller answers the report: at most SL_FLIGHT_GRACE_MS (a flight still incomplete) or
// SL_EMPTY_GRACE_MS (nothing yet) before the report, plus the caller's time to answer it, so a
// flood of silent or dripping clients holds the slots only while it keeps coming, each slot for
// that long, and another client waits in the kernel's queue behind at most the backlog.
// While the loop holds more than half its cap, the graces are 0: a connection not yet reported
// is reported at once (SL_PEEK_WAITING, with what it sent; one accepted then is read at once, so
// a flight already there is reported whole), and those in their grace when the loop crosses the
// half line (an accept, a lower cap) in the same turn. The graces save the caller a second report
// of a client a moment late; under pressure they would let one sandbox's silent connections hold
// the shared slots, each for the grace, out of reach of the caller's admission, which is per
// sandbox, while no sandbox's next connection is accepted. Below half, they return. Only the
// first report: the deadlines (sl_loop_rules) are unchanged, and bytes after it keep their grace
// (the caller answers a connection once reported, whatever follows).

#include <sys/socket.h>

#define SL_ACCEPT_PAUSE_MS 100
// Unanswered connections a loop holds at most (see above): a flood costs the process no more
// than this, and the caller's own event loop (the admin listener on it) is never buried under
// reports. sl_loop_accept_cap lowers it to fit the caller's descriptor budget.
#define SL_MAX_UNANSWERED 512
// An accepted connection whose first flight is still incomplete is reported after this long
// anyway, and read on (sl_loop_rules): admission, per sandbox in the caller, never waits on a
// slow client for longer, and neither does a slot of the unanswered connections' cap (at once
// past half that cap, see above).
#define SL_FLIGHT_GRACE_MS 50
// An accepted connection with no byte yet is reported (SL_PEEK_WAITING, no bytes) only after this
// long: most clients send their first flight a moment after the handshake, and waiting for it makes
// one report of the connection instead of an empty one and then the flight (two hand-offs to the
// caller, and a wake-up of its own for the empty one). A busy client is late by more than a moment:
// 50 TLS clients in one Node process send their ClientHello over 10 ms after the handshake for
// 73-91% of connections, which cost egressd 50-70 µs more each (bench/conn-js.ts --workload tls).
// So the same wait as for an incomplete flight: a slot of the unanswered connections' cap is held
// no longer than a dripping client already holds one (at once past half the cap, see above). A
// protocol where the server speaks first is dialed this much later; HAProxy's `tcp-request
// inspect-delay` and nginx's `preread_timeout` wait for the client's bytes in the same way, for
// seconds.
#define SL_EMPTY_GRACE_MS SL_FLIGHT_GRACE_MS

typedef enum { SL_EV_ACCEPTED = 1, SL_EV_PEEK = 2, SL_EV_CONNECTED = 3, SL_EV_SHED = 4 } sl_event_kind;

// Why a peek report was made.
typedef enum {
  SL_PEEK_MORE = 0,     // report_at bytes are in (or, at accept, whatever was there)
  SL_PEEK_FULL = 1,     // the cap is full
  SL_PEEK_TIMEOUT = 2,  // the deadline passed
  SL_PEEK_SILENT = 3,   // no byte within first_byte_ms
  SL_PEEK_STALLED = 4,  // no new byte for stall_ms
  SL_PEEK_CLOSED = 5,   // the client closed or reset (after a reset too, with the bytes read before it)
  SL_PEEK_WAITING = 6   // (listeners with rules) not whole yet: the loop reads on and reports again
} sl_peek_state;

typedef struct {
  sl_event_kind kind;
  uint64_t id;
  int tag;     // ACCEPTED, SHED: the listener's tag
  int err;     // ACCEPTED: 0, or SO_ORIGINAL_DST's errno (-1: the original destination is the listener
               // itself); SHED: accept(2)'s errno
  int state;   // ACCEPTED, PEEK: sl_peek_state; CONNECTED: the dialed index (err 1: already splicing)
  uint32_t connect_us; // CONNECTED
  uint64_t accepted_ms; // ACCEPTED: the loop's CLOCK_MONOTONIC, in ms, at the accept (the report may come later)
  struct sockaddr_storage peer, orig; // ACCEPTED (both), SHED (peer)
  const void *bytes; // ACCEPTED, PEEK: the bytes read since the last report (valid during the call)
  size_t len;
} sl_event;

typedef void (*sl_event_fn)(void *ctx, const sl_event *event);

/** Sets the set-up callback (called on the loop's thread) and the peek's byte cap. Call before sl_loop_listen. */
void sl_loop_setup(sl_loop *loop, sl_event_fn on_event, size_t peek_cap);

/** The loop accepts on `fd` (listening, non-blocking) from now on and owns it. Thread-safe. */
int sl_loop_listen(sl_loop *loop, int fd, int tag);
/**
 * Closes the loop's listening sockets of `tag`, first taking the connections their queues hold
 * (up to the cap of unanswered ones: close(2) would reset them, connected clients). Thread-safe.
 */
int sl_loop_unlisten(sl_loop *loop, int tag);

/**
 * The first flight read by the loop itself (issue 12: one report per connection), for the
 * listeners of `tag`, from their next accept on. With rules, an accepted connection is read
 * until its first flight is whole enough to judge (first_flight.h: a ClientHello, however many
 * records it spans; an HTTP request head; bytes neither could open), the cap is full or the
 * client closes, and then reported once, as SL_EV_ACCEPTED with every byte. Until then:
 *   - nothing at all after SL_EMPTY_GRACE_MS: SL_EV_ACCEPTED with state SL_PEEK_WAITING (the
 *     caller may splice a protocol where the server speaks first without waiting longer);
 *   - some bytes, still incomplete after SL_FLIGHT_GRACE_MS: the same, with the bytes;
 * and after such a report the loop reads on: bytes it has not reported for SL_FLIGHT_GRACE_MS
 * are reported as SL_EV_PEEK with SL_PEEK_WAITING (the parser may answer on any chunk, as
 * src/net/peek-socket.ts's PeekBuffer asks it: a bad line refused early, not at the deadline),
 * and the end once: the flight whole
 * (SL_PEEK_MORE), FULL, CLOSED, SILENT (no byte within first_byte_ms, when it is shorter than
 * deadline_ms), STALLED (no new byte for stall_ms while ff_may_stall holds), TIMEOUT
 * (deadline_ms from the accept). Any command (sl_loop_dial, sl_loop_refuse, sl_loop_peek,
 * sl_loop_abort) stops the loop's own reading; the bytes read stay the connection's, written
 * upstream first. deadline_ms 0: no rules (each accept reported at once, as sl_loop_peek needs).
 * Thread-safe.
 */
int sl_loop_rules(sl_loop *loop, int tag, uint32_t deadline_ms, uint32_t first_byte_ms, uint32_t stall_ms);

/** Times in ms from the accept; 0 turns first_byte_ms / stall_ms off. Thread-safe. */
int sl_loop_peek(sl_loop *loop, uint64_t id, uint32_t deadline_ms, uint32_t first_byte_ms, uint32_t stall_ms, uint32_t report_at);
// `tell`: report SL_EV_CONNECTED (err 1) even when the loop goes on to splice by itself.
// `valid_until_us`: CLOCK_MONOTONIC µs (sl_monotonic_us) past which the verdict no longer holds
// by itself (a remembered DNS name it rested on expired); 0: none.
// `fin_ends`: as sl_loop_fin_ends, from this command on.
int sl_loop_dial(sl_loop *loop, uint64_t id, const struct sockaddr_storage *addrs, int n, uint32_t connect_ms, uint32_t attempt_delay_ms,
                 int parallel, uint32_t idle_ms, uint64_t version, bool tell, uint64_t valid_until_us, bool fin_ends);

/**
 * The client's FIN ends the set-up connection `id` while it waits for a command or its dial
 * (before an upstream connected), as its reset does: reported as SL_END_CLIENT_FIN, every
 * attempt cancelled, the client reset. The caller says so when the client's first flight was a
 * TLS ClientHello: such a client cannot finish its handshake once it has sent its FIN
 * (RFC 8446 §2, RFC 5246 §7.3), while another may have half-closed and still read its answer. A
 * FIN already read ends it at once. Once an upstream connected, a FIN is the splice's to carry.
 * A command: the connection counts as answered. Thread-safe.
 */
int sl_loop_fin_ends(sl_loop *loop, uint64_t id);

/** CLOCK_MONOTONIC in µs: the clock of sl_loop_dial's valid_until_us. */
uint64_t sl_monotonic_us(void);
int sl_loop_splice(sl_loop *loop, uint64_t id, uint32_t idle_ms);

typedef enum { SL_REFUSE_RESET = 0, SL_REFUSE_DROP = 1, SL_REFUSE_ANSWER = 2 } sl_refusal;
int sl_loop_refuse(sl_loop *loop, uint64_t id, sl_refusal how, const void *bytes, size_t len, uint32_t linger_ms, uint64_t linger_max);

/** The policy version in force (every loop reads it when a dial connects). Thread-safe. */
void sl_set_policy_version(uint64_t version);

/**
 * The hand-off of a policy change (issue 12: a change reaches every loop before the API answers):
 * blocks the calling thread until each of the `n` loops has run every command posted to it
 * before this call (an sl_loop_abort has closed its sockets; sl_set_policy_version was already
 * read-visible), or until `timeout_ms` passed. Returns how many loops had not answered by then:
 * 0 when all did. A loop answers within one turn of its event loop (microseconds); the bound is
 * for a loop stuck in a system call, which must not stop the caller for long. Thread-safe.
 */
int sl_loops_sync(sl_loop *const *loops, int n, uint32_t timeout_ms);

#endif
