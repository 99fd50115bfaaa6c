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
# Every fuzz target, briefly (hostile guests and front-ends: FUSE requests,
# vhost-user messages, descriptor chains, node table records and streams).
# Each runs a fixed number of inputs (about 10 s here) rather than for a
# time: a -fuzztime duration can fail with "context deadline exceeded" and
# no failing input when the deadline passes while a worker is mid-input on
# a loaded machine (golang/go#51484, #75804); CI hit that once.
# FUZZTIME (e.g. 30s or 1000000x) overrides the count for every target.
fuzzrc=0
for target in \
	./internal/passthrough:FuzzRequest:15000x \
	./internal/engine:FuzzFastPath:200000x \
	./internal/vhostuser/wire:FuzzReadMessage:350000x \
	./internal/vhostuser:FuzzMessages:150000x \
	./internal/virtqueue:FuzzReadChain:250000x \
	./internal/nodestore:FuzzDecodeSlot:350000x \
	./internal/nodestore:FuzzDecodeMounts:350000x \
	./internal/nodestore:FuzzDecodeHeader:450000x \
	./internal/nodestore:FuzzImport:250000x \
	./internal/nodestore:FuzzWriteBehind:700x; do
	IFS=: read -r pkg fn count <<<"$target"
	fuzztime=${FUZZTIME:-$count}
	echo "=== FUZZ $fn ($pkg, $fuzztime)"
	out=$(mktemp)
	if go test "$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime "$fuzztime" >"$out" 2>&1; then
		tail -3 "$out"
		echo "--- PASS: $fn (fuzz)" | tee -a "$log"
	else
		# The whole output and any failing input, so that a CI log alone
		# is enough to reproduce the failure.
		cat "$out"
		for crasher in $(sed -n 's/.*Failing input written to \(testdata[^ ]*\).*/\1/p' "$out"); do
			echo "--- failing input $pkg/$crasher:"
			cat "$pkg/$crasher"
		done
		echo "--- FAIL: $fn (fuzz)" | tee -a "$log"
		fuzzrc=1
	fi
	rm -f "$out"
done
set -e
[ "$rc" = 0 ] && rc=$fuzzrc
passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
skipped=$(grep -c -E '^\s*--- SKIP' "$log" || true)
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
