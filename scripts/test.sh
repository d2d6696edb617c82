#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages and Python packages),
# then run it. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nsd knot knot-dnsutils bind9-dnsutils dnsperf dnsdist unbound knot-resolver gdnsd
              pdns-server pdns-backend-lua2 zonemaster-cli)
# kubectl: the second, independent client of the fake API server. Some images
# ship one (a cloud SDK's); Debian's package would collide with it, so only when absent.
command -v kubectl >/dev/null 2>&1 || APT_PACKAGES+=(kubernetes-client)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Package scripts try to start the daemons; on a machine without an init
  # system that fails harmlessly, and the tests start their own instances.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for d in nsd knotd unbound kresd dnsdist gdnsd pdns_server; do
  pkill -x "$d" 2>/dev/null || true   # package post-install may have started a system instance
done

echo "== installing fedns with its test extras"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== lint"
python3 -m ruff check resolver tests benchmarks

echo "== types"
python3 -m mypy resolver

echo "== layers (import-linter contracts in pyproject.toml)"
lint-imports

echo "== tests"
python3 -m pytest -q -p no:cacheprovider "$@"
