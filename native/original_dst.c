// The one syscall egressd needs that Node does not expose: getsockopt(SO_ORIGINAL_DST), which
// reads the destination a connection had before iptables REDIRECTed it (netfilter's conntrack
// keeps the original tuple). IPv4 asks SOL_IP/SO_ORIGINAL_DST, IPv6 asks
// SOL_IPV6/IP6T_SO_ORIGINAL_DST; both share the option number 80 (linux/netfilter_ipv4.h,
// linux/netfilter_ipv6/ip6_tables.h).
//
// originalDst(fd: number, family: 4 | 6): { address: string, port: number }
// throws an Error whose `code` is the errno name (ENOENT: no NAT entry for this socket).

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <node_api.h>

#include "napi_args.h"

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static const char *errno_name(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EBADF: return "EBADF";
    case ENOTSOCK: return "ENOTSOCK";
    case EINVAL: return "EINVAL";
    case ENOTCONN: return "ENOTCONN";
    case EFAULT: return "EFAULT";
    default: return "EUNKNOWN";
  }
}

static napi_value throw_errno(napi_env env, int e) {
  napi_value code, msg, err;
  const char *name = errno_name(e);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, strerror(e), NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &err);
  napi_value errnum;
  napi_create_int32(env, e, &errnum);
  napi_set_named_property(env, err, "errno", errnum);
  napi_throw(env, err);
  return NULL;
}

static napi_value original_dst(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args_exactly(env, info, 2, argv)) {
    napi_throw_type_error(env, NULL, "originalDst(fd, family) takes two arguments");
    return NULL;
  }
  int32_t fd, family;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int32(env, argv[1], &family) != napi_ok ||
      fd < 0 || (family != 4 && family != 6)) {
    napi_throw_type_error(env, NULL, "originalDst: fd must be a non-negative integer and family 4 or 6");
    return NULL;
  }
  // The kernel fills a sockaddr_in (IPv4) or sockaddr_in6 (IPv6); the length asked is that
  // family's, as before, and the storage holds either.
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  socklen_t len = family == 4 ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  int r = family == 4 ? getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &sa, &len) : getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &sa, &len);
  if (r != 0) return throw_errno(env, errno);
  // The kernel gives a link-local original destination the scope of the interface the connection
  // came in on (nf_conntrack_proto.c ipv6_getorigdst): written as its zone, as Node writes the
  // socket's own addresses, so the dial goes back out on that link.
  char text[SOCKADDR_TEXT_LEN];
  int port;
  sockaddr_text(&sa, text, &port);
  napi_value result, address, portValue;
  napi_create_object(env, &result);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &address);
  napi_create_int32(env, port, &portValue);
  napi_set_named_property(env, result, "address", address);
  napi_set_named_property(env, result, "port", portValue);
  return result;
}

// The one argument of socketError and peerFinished: a descriptor. False (a TypeError thrown,
// naming `fn`) when it is not a non-negative integer.
static bool fd_arg(napi_env env, napi_callback_info info, const char *fn, int32_t *fd) {
  napi_value argv[1];
  if (args_exactly(env, info, 1, argv) && napi_get_value_int32(env, argv[0], fd) == napi_ok && *fd >= 0) return true;
  char msg[64];
  snprintf(msg, sizeof msg, "%s(fd) takes a non-negative integer", fn);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

// socketError(fd): the error a TCP socket failed with (SO_ERROR: a reset, a timeout), 0 while it
// has not failed, or -errno when it cannot be asked. Taking it clears it, as the native loop's
// check_error does: the caller acts on it (splice.ts probe: a socket whose write half is ended, so
// no write can ask). Only a connection that is over (TCP_CLOSE) has failed: SO_ERROR also hands
// out a live socket's soft error (an ICMP unreachable, kept in sk_err_soft, which Linux's
// tcp_v4_err leaves the connection open after), and a caller told of that would end a healthy
// connection. A live socket's soft error is left untaken.
static napi_value socket_error(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "socketError", &fd)) return NULL;
  int err = 0;
  socklen_t len = sizeof err;
  struct tcp_info ti;
  socklen_t tl = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 && ti.tcpi_state != TCP_CLOSE) err = 0;
  else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = -errno;
  napi_value result;
  napi_create_int32(env, err, &result);
  return result;
}

// peerFinished(fd): 1 when the peer's FIN came and nothing failed since (TCP_CLOSE_WAIT: Linux's
// tcp_fin moves the socket there as the FIN is taken in sequence, whether or not the bytes before
// it were read), 0 otherwise, -errno when it cannot be asked. What Node cannot say of a socket it
// stopped reading (its buffer full) before the EOF: client-side.ts watchGone, a TLS client's FIN.
static napi_value peer_finished(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "peerFinished", &fd)) return NULL;
  struct tcp_info ti;
  socklen_t tl = sizeof ti;
  int r = getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0 ? -errno : ti.tcpi_state == TCP_CLOSE_WAIT;
  napi_value result;
  napi_create_int32(env, r, &result);
  return result;
}

// interfaceAddresses(): every IPv4 and IPv6 address on the host's interfaces, as text, whatever
// the interface's state. os.networkInterfaces() (libuv's uv_interface_addresses) leaves out an
// interface that is not both IFF_UP and IFF_RUNNING, but Linux delivers to an address of an
// interface that is up without carrier (a veth whose peer is not up yet, a bridge with no port up)
// as to any other local address (its `local` route is in place). An address on an interface that is
// down is listed too: refusing it costs nothing. Throws an Error with the errno name when
// getifaddrs(3) fails.
static napi_value interface_addresses(napi_env env, napi_callback_info info) {
  (void)info;
  struct ifaddrs *all = NULL;
  if (getifaddrs(&all) != 0) return throw_errno(env, errno);
  napi_value out;
  napi_create_array(env, &out);
  uint32_t n = 0;
  for (struct ifaddrs *i = all; i != NULL; i = i->ifa_next) {
    if (i->ifa_addr == NULL) continue;
    // A link-local address with its zone, as os.networkInterfaces() and sockaddr_text write it.
    struct sockaddr_storage ss;
    if (i->ifa_addr->sa_family == AF_INET) memcpy(&ss, i->ifa_addr, sizeof(struct sockaddr_in));
    else if (i->ifa_addr->sa_family == AF_INET6) memcpy(&ss, i->ifa_addr, sizeof(struct sockaddr_in6));
    else continue;
    char text[SOCKADDR_TEXT_LEN];
    int port;
    sockaddr_text(&ss, text, &port);
    napi_value v;
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, out, n++, v);
  }
  freeifaddrs(all);
  return out;
}

// reusePortBindable(host, port, ipv6Only): 0 when a TCP socket with SO_REUSEADDR and SO_REUSEPORT
// could bind host:port now, else the errno (EADDRINUSE: a holder that did not set SO_REUSEPORT,
// or another user's; socket(7)). bind(2) alone makes that check (inet_csk_get_port), and the
// socket is closed without ever listening: a listening one would join the holder's SO_REUSEPORT
// group, and the kernel would hand it connections meant for the holder, reset as it closes.
static napi_value reuseport_bindable(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char host[SOCKADDR_TEXT_LEN + 1];
  uint32_t port;
  bool v6only;
  struct sockaddr_storage ss;
  if (!args_exactly(env, info, 3, argv) || napi_get_value_string_utf8(env, argv[0], host, sizeof host, NULL) != napi_ok ||
      napi_get_value_uint32(env, argv[1], &port) != napi_ok || napi_get_value_bool(env, argv[2], &v6only) != napi_ok || port > 65535 ||
      !sockaddr_parse(host, port, &ss)) {
    napi_throw_type_error(env, NULL, "reusePortBindable(host, port, ipv6Only): an IP address literal, a port and a boolean");
    return NULL;
  }
  int e = 0;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) e = errno;
  else {
    int one = 1, v6 = v6only ? 1 : 0;
    socklen_t len = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) != 0) || bind(fd, (struct sockaddr *)&ss, len) != 0)
      e = errno;
    close(fd);
  }
  napi_value result;
  napi_create_int32(env, e, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "originalDst", NAPI_AUTO_LENGTH, original_dst, NULL, &fn);
  napi_set_named_property(env, exports, "originalDst", fn);
  napi_create_function(env, "socketError", NAPI_AUTO_LENGTH, socket_error, NULL, &fn);
  napi_set_named_property(env, exports, "socketError", fn);
  napi_create_function(env, "peerFinished", NAPI_AUTO_LENGTH, peer_finished, NULL, &fn);
  napi_set_named_property(env, exports, "peerFinished", fn);
  napi_create_function(env, "interfaceAddresses", NAPI_AUTO_LENGTH, interface_addresses, NULL, &fn);
  napi_set_named_property(env, exports, "interfaceAddresses", fn);
  napi_create_function(env, "reusePortBindable", NAPI_AUTO_LENGTH, reuseport_bindable, NULL, &fn);
  napi_set_named_property(env, exports, "reusePortBindable", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
