#!/bin/bash
# Installs everything the test suite needs on a fresh Debian bookworm
# machine of this project's kind (root, Go at /usr/local/go): the guest
# kernel, QEMU, busybox and the peer daemons for the guest tests, and the
# tools the mount tests call. Idempotent, and quick when everything is in
# place: cmd/govirtiofsd-bench runs it when fio or strace is missing.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-test-deps.sh: run as root" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in e2fsprogs attr findutils psmisc util-linux fio strace; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
bash "$here/guest/install.sh"
