#!/bin/bash
# The whole test suite: installs the test dependencies, then runs every Go
# test (real /dev/fuse mounts and QEMU guests; needs root) and prints one
# closing line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
bash scripts/install-test-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go vet ./...
set +e
go test -count=1 -v -timeout 60m ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
skipped=$(grep -c -E '^\s*--- SKIP' "$log" || true)
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
