// Small helpers the Node-API addons share (header only: each addon is its own shared object,
// and these are a few lines each). Used by data_plane.c and original_dst.c.

#ifndef EGRESSD_NAPI_ARGS_H
#define EGRESSD_NAPI_ARGS_H

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <node_api.h>

/** The call's arguments into argv[0..n): true when exactly n were passed. */
static inline bool args_exactly(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  return napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == n;
}

/** Room for an address as sockaddr_text writes it: inet_ntop's, then `%` and a zone (a name or an index). */
#define SOCKADDR_TEXT_LEN (INET6_ADDRSTRLEN + 1 + IF_NAMESIZE)

/**
 * An IPv4 or IPv6 socket address as text (inet_ntop) and host-order port; false, with `text`
 * empty and the port 0, for any other family. A link-local IPv6 address with a scope carries its
 * zone, `fe80::1%eth0` (RFC 4007 §11.2), as Node's remoteAddress, localAddress and a datagram's
 * rinfo.address do (src/tcp_wrap.cc AddressToJS: IN6_IS_ADDR_LINKLOCAL and sin6_scope_id > 0):
 * the same address on two links is two hosts. An index with no interface name (it went away) is
 * written as the number, as getnameinfo(3) NI_NUMERICSCOPE and libuv on Windows write it.
 */
static inline bool sockaddr_text(const struct sockaddr_storage *ss, char text[SOCKADDR_TEXT_LEN], int *port) {
  text[0] = '\0';
  *port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, text, INET6_ADDRSTRLEN);
    *port = ntohs(a->sin_port);
    return true;
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, text, INET6_ADDRSTRLEN);
    *port = ntohs(a->sin6_port);
    if (IN6_IS_ADDR_LINKLOCAL(&a->sin6_addr) && a->sin6_scope_id > 0) {
      size_t n = strlen(text);
      text[n++] = '%';
      if (if_indextoname(a->sin6_scope_id, text + n) == NULL) snprintf(text + n, SOCKADDR_TEXT_LEN - n, "%u", (unsigned)a->sin6_scope_id);
    }
    return true;
  }
  return false;
}

/**
 * An IPv4 or IPv6 address literal, an IPv6 one optionally with a zone (`fe80::1%eth0`), into `ss`
 * with `port`; false when `text` is neither. The zone is an interface name, as libuv's
 * uv_ip6_addr reads it for Node's connect and listen: a name no interface has gives scope 0,
 * so that a link-local dial then fails as Node's does (EINVAL), and the two data paths agree.
 */
static inline bool sockaddr_parse(const char *text, uint32_t port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return true;
  }
  char plain[INET6_ADDRSTRLEN];
  const char *zone = strchr(text, '%');
  size_t n = zone == NULL ? strlen(text) : (size_t)(zone - text);
  if (n >= sizeof plain) return false;
  memcpy(plain, text, n);
  plain[n] = '\0';
  if (inet_pton(AF_INET6, plain, &a6->sin6_addr) != 1) return false;
  a6->sin6_family = AF_INET6;
  a6->sin6_port = htons((uint16_t)port);
  if (zone != NULL) a6->sin6_scope_id = if_nametoindex(zone + 1);
  return true;
}

#endif
