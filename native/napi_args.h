// Small helpers the Node-API addons share (header only: each addon is its own shared object,
// and these are a few lines each). Used by data_plane.c and original_dst.c.

#ifndef EGRESSD_NAPI_ARGS_H
#define EGRESSD_NAPI_ARGS_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <node_api.h>

/** The call's arguments into argv[0..n): true when exactly n were passed. */
static inline bool args_exactly(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  return napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == n;
}

/**
 * An IPv4 or IPv6 socket address as text (inet_ntop) and host-order port; false, with `text`
 * empty and the port 0, for any other family.
 */
static inline bool sockaddr_text(const struct sockaddr_storage *ss, char text[INET6_ADDRSTRLEN], int *port) {
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
    return true;
  }
  return false;
}

#endif
