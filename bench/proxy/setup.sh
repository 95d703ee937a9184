#!/usr/bin/env bash
# Installs what the side-by-side proxy benchmark (bench/proxy/run.ts) runs, from Debian's
# packages: nginx with its stream module, HAProxy, dnsmasq (the rig's resolver), curl, iptables,
# iproute2. Not part of CI: the test suite never needs nginx or HAProxy. Run as root.
set -euo pipefail
need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v curl >/dev/null || need+=(curl)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# Debian's packages start their services where an init system runs; the benchmark starts its
# own instances with their own configurations, so the stock ones only take ports and CPU.
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc"; fi
done
echo "bench/proxy/setup.sh: nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(haproxy -v | head -1)"
