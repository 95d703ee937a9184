// The benchmark's floor for a proxy (bench/proxy/run.ts builds it with cc at start and runs it as
// the "splice floor" column): the least a userspace TCP proxy can do on this rig. Behind the same
// iptables REDIRECT as the proxies, it reads the original destination (SO_ORIGINAL_DST), dials it
// and moves each direction with blocking splice(2) through a 1 MiB pipe, one thread per direction:
// no event loop, no peek, no policy, no log, no timers. What it pays is what every proxy pays
// here and Direct does not: a second TCP connection in the router namespace (a receive and a
// send through the stack per byte), two more wake-ups per transfer and two threads scheduled on
// the cores the client and the origin use. Bench-only: no limits, no error reports, no reset
// passing (a failed side just closes), not for anything but this measurement.
//
//   splice-floor PORT

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (1 << 20)

struct way {
  int from, to;
};

// One direction until its EOF (or an error), then the FIN passed on.
static void *pump(void *arg) {
  struct way *w = arg;
  int p[2];
  if (pipe2(p, O_CLOEXEC) == 0) {
    fcntl(p[1], F_SETPIPE_SZ, CHUNK);
    for (;;) {
      ssize_t n = splice(w->from, NULL, p[1], NULL, CHUNK, SPLICE_F_MOVE);
      if (n <= 0) break;
      while (n > 0) {
        ssize_t m = splice(p[0], NULL, w->to, NULL, (size_t)n, SPLICE_F_MOVE);
        if (m <= 0) goto out;
        n -= m;
      }
    }
  out:
    close(p[0]);
    close(p[1]);
  }
  shutdown(w->to, SHUT_WR);
  return NULL;
}

static void *conn(void *arg) {
  int client = (int)(intptr_t)arg;
  struct sockaddr_in dst;
  socklen_t len = sizeof dst;
  int up = -1;
  if (getsockopt(client, SOL_IP, SO_ORIGINAL_DST, &dst, &len) == 0 && (up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0 &&
      connect(up, (struct sockaddr *)&dst, sizeof dst) == 0) {
    struct way back = {up, client}, forth = {client, up};
    pthread_t t;
    if (pthread_create(&t, NULL, pump, &back) == 0) {
      pump(&forth);
      pthread_join(t, NULL);
    }
  }
  if (up >= 0) close(up);
  close(client);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: splice-floor PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_ANY)};
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 4096) != 0) {
    perror("splice-floor: listen");
    return 1;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 << 10);
  for (;;) {
    int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    pthread_t t;
    if (pthread_create(&t, &attr, conn, (void *)(intptr_t)c) != 0) close(c);
  }
}
