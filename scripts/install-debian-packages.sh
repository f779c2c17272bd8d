#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to (real clients and servers we did not write).
# Used by `make test` and so by CI; does nothing when they are all there.
set -euo pipefail
packages=(swaks dovecot-imapd isync chromium systemd)
need=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests need these Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
# The tests start their own private Dovecot on free loopback ports; the system service the package may
# have started is not wanted on ports 143/993.
if [[ " ${need[*]} " == *" dovecot-imapd "* ]]; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
  else
    invoke-rc.d dovecot stop >/dev/null 2>&1 || true
    update-rc.d dovecot disable >/dev/null 2>&1 || true
  fi
fi
