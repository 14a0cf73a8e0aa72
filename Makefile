# walletd — see README.md.
.PHONY: run test bench fmt lint migrate

## Run the service on 127.0.0.1:8080 (starts or installs Postgres and Redis if needed).
run:
	scripts/run.sh

## Everything CI runs: fmt check, clippy -D warnings, all tests against real Postgres and Redis.
test:
	scripts/test.sh

## Throughput benchmark: debits/s with 16 concurrent clients on distinct wallets.
bench:
	scripts/bench.sh

fmt:
	cargo fmt --all

lint:
	cargo clippy --all-targets -- -D warnings

migrate:
	scripts/ensure-services.sh && cargo run --release -- migrate
