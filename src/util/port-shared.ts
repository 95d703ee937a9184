// Whether another socket already listens on a TCP endpoint that egressd is about to bind.
//
// egressd binds every listener and the admin port with SO_REUSEPORT, so that a replacement can
// start beside a process that drains (docs/deployment.md). The price: a second egressd started by
// mistake, by the same user, binds the same ports without an error, and the kernel then spreads
// new connections — and admin API calls — across both processes, each with its own sandboxes.
// A plain bind (no SO_REUSEPORT) of the same endpoint fails with EADDRINUSE exactly when some
// socket listens there, so trying one first tells the two cases apart; it is closed at once,
// before egressd's own bind.

const { createServer } = process.getBuiltinModule('node:net');

/**
 * True when a socket already listens on `host`:`port` (TCP), false when none does, when the port is
 * 0 (the kernel picks a free one), or when the trial bind fails for another reason (egressd's own
 * bind then reports it). An IPv6 host is tried IPv6-only, as egressd binds it.
 */
export function listenedOnElsewhere(host: string, port: number): Promise<boolean> {
  if (port === 0) return Promise.resolve(false);
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE'));
    probe.listen({ host, port, exclusive: true, ipv6Only: host.includes(':') }, () => probe.close(() => resolve(false)));
  });
}

/**
 * True when this process could bind `host`:`port` beside its holder: the holder set SO_REUSEPORT
 * and runs as the same user (Linux socket(7)), as another egressd does. False when the bind fails
 * (a holder that does not share: egressd's own bind then fails with EADDRINUSE and says so).
 * The trial socket listens for the moment between its bind and its close, so the kernel may hand
 * it a connection meant for the holder, which is then reset: the fallback for when the addon's
 * bind-only trial (net/original-dst.ts reusePortBindable) cannot be had, and only to decide a
 * start-up that will not go on, never on a rollout's path.
 */
export function portShareable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen({ host, port, reusePort: true, ipv6Only: host.includes(':'), backlog: 1 }, () => probe.close(() => resolve(true)));
  });
}
