#!/usr/bin/env bash
# The whole test suite against real services: starts them (installing what is missing),
# then builds and runs every test. This is what README.md and .ci/run call.
#
#   THREATPIPE_CACHE   where Tansu, service state and the cargo target dir live (~/.cache/threatpipe)
#   THREATPIPE_DATA    shared public test data (default: ../shared/data next to the clone)
#   PROPTEST_CASES     cases per property test (default 2000; the fuzz budget)
set -euo pipefail
cd "$(dirname "$0")/.."

export THREATPIPE_CACHE="${THREATPIPE_CACHE:-$HOME/.cache/threatpipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$THREATPIPE_CACHE/target}"
export THREATPIPE_DATA="${THREATPIPE_DATA:-$(cd .. && pwd)/shared/data}"
export PROPTEST_CASES="${PROPTEST_CASES:-2000}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export CLICKHOUSE_URL="${CLICKHOUSE_URL:-http://127.0.0.1:8123}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

scripts/services.sh

echo "[test] building (target dir: $CARGO_TARGET_DIR)" >&2
cargo build --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --locked --no-fail-fast
  cargo test --doc --locked
else
  cargo test --all-targets --locked --no-fail-fast
fi
