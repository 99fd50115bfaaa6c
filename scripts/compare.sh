#!/bin/bash
# Runs the guest checks (tests/guest) in real QEMU guests against govirtiofsd,
# QEMU's C virtiofsd and the Rust virtiofsd, and prints one table, check x
# daemon, with each daemon's fds and RSS right after a 20k-file walk.
# The logic is in tests/guest/cmd/compare; this only builds and runs it.
#
#   scripts/compare.sh [compare flags...]   e.g. -v, -daemons c,rust, -checks walk
#
# Needs root and the assets of scripts/guest/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/compare" ./tests/guest/cmd/compare
# compare marks govirtiofsd n/a if it does not build or its --help lacks
# --socket-path.
gv=$out/govirtiofsd
if ! go build -o "$gv" ./cmd/govirtiofsd; then
	echo "compare.sh: ./cmd/govirtiofsd does not build; govirtiofsd is n/a" >&2
	gv=
fi
"$out/compare" -govirtiofsd "$gv" "$@"
