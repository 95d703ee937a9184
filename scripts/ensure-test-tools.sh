#!/usr/bin/env bash
# Makes sure the system tools the end-to-end suite drives are present: iptables, ip6tables,
# nft, ip (iproute2), dnsmasq, curl, openssl, python3, dig (bind9-dnsutils), promtool
# (prometheus: checks the metrics and alert rules), systemd-analyze (systemd: checks the units), nginx
# (an origin that closes first: test/e2e/connection-ends.test.ts). Installs the
# missing ones with apt-get when run as root on Debian (CI, a fresh sandbox host); otherwise
# says what is missing and leaves it to the e2e tests to skip with that reason.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have iptables || need+=(iptables)
have nft || need+=(nftables)
have ip || need+=(iproute2)
have dnsmasq || need+=(dnsmasq-base)
have curl || need+=(curl)
have openssl || need+=(openssl)
have python3 || need+=(python3)
have dig || need+=(bind9-dnsutils)
have promtool || need+=(prometheus)
have systemd-analyze || need+=(systemd)
have nginx || need+=(nginx)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-tools: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "ensure-test-tools: missing ${need[*]} (not root or no apt-get): the e2e tests will be skipped" >&2
fi
