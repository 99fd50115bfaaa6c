# Convenience targets; the README's commands are the reference.
.PHONY: test compare bench fuzz build

build:
	go build -o bin/govirtiofsd ./cmd/govirtiofsd

test:
	./scripts/test.sh

compare:
	./scripts/compare.sh

bench:
	go run ./cmd/govirtiofsd-bench

fuzz:
	FUZZTIME=60s ./scripts/test.sh
