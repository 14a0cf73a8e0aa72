# walletd — see README.md.
.PHONY: run test bench fmt lint migrate

## Run the service on 127.0.0.1:8080 (starts or installs Postgres and Redis if needed).
run:
	scripts/run.sh

## Everything CI runs: fmt check, clippy -D warnings, all tests against real Postgres and Redis.
test:
	scripts/test.sh

## Benchmark (issue 9): pgbench raw-SQL debit vs walletd under wrk, interleaved, uniform/hot/replay
## workloads, 16 connections, 10 s x 3 rounds, 1,000 wallets, then a fixed-rate run (knobs: scripts/bench.sh).
bench:
	scripts/bench.sh

fmt:
	cargo fmt --all

lint:
	cargo clippy --all-targets -- -D warnings

migrate:
	scripts/ensure-services.sh && cargo run --release -- migrate
