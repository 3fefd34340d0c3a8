#!/usr/bin/env bash
# End-to-end throughput of one stage instance against a real broker, as a ratio against a
# pass-through stage (same transport, no parsing) measured in the same run.
#
#   load/run.sh [EVENTS]        (default 200000; broker from KAFKA_BROKERS, default 127.0.0.1:9092)
#
# Method: produce EVENTS generated records (with attacks and ~0.2% malformed) to a fresh
# topic; then, in turn, run the pass-through stage and normalize on it with their own
# consumer groups, each from a cold start (group join included), and read progress from the
# binary's own /metrics (threatpipe_stage_records_in_total) until every record was read.
# Each lane runs twice, interleaved, so drift on a shared machine shows.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200000}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/threatpipe/target}"
cargo build --release --locked -q
B="$CARGO_TARGET_DIR/release/threatpipe"
S="load$(date +%s)"
PORT="${THREATPIPE_LOAD_PORT:-8092}"
if curl -s "127.0.0.1:$PORT/metrics" >/dev/null 2>&1; then
  echo "port $PORT is already serving; stop that process or set THREATPIPE_LOAD_PORT" >&2; exit 1
fi
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
common=(THREATPIPE_TOPICS__PARTITIONS=4 "THREATPIPE_TOPICS__DLQ=$S.dlq" "THREATPIPE_TOPICS__CORRELATED=$S.c"
        "THREATPIPE_TOPICS__SCORED=$S.sc" "THREATPIPE_TOPICS__ALERTS=$S.a" "THREATPIPE_TOPICS__SCANNED=$S.s")

# Create the topics (a short run with create_topics on), then fill the input.
env "${common[@]}" "THREATPIPE_TOPICS__RAW=$S.raw" "THREATPIPE_TOPICS__NORMALIZED=$S.norm" \
  "$B" run --brokers "$BROKERS" --stages normalize --no-generator --quiet --no-http >/dev/null 2>&1 &
pid=$!; sleep 3; kill -TERM "$pid"; wait "$pid" || true
"$B" generate --brokers "$BROKERS" --topic "$S.raw" --rate 0 --count "$N"

measure() { # lane stage env...
  local lane=$1 stage=$2; shift 2
  local t0 t1 n=0
  t0=$(date +%s.%N)
  env "${common[@]}" "$@" "THREATPIPE_KAFKA__GROUP_PREFIX=$S-$lane" \
    "$B" run --brokers "$BROKERS" --stages "$stage" --no-generator --quiet --http-listen "127.0.0.1:$PORT" >"/tmp/$S-$lane.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 1500); do
    kill -0 "$pid" 2>/dev/null || { echo "stage exited early; log: /tmp/$S-$lane.log" >&2; tail -5 "/tmp/$S-$lane.log" >&2; exit 1; }
    n=$(curl -s "127.0.0.1:$PORT/metrics" | awk -v s="$stage" '$1 == "threatpipe_stage_records_in_total{stage=\"" s "\"}" {print $2}' || true)
    [ "${n:-0}" -ge "$N" ] && break
    sleep 0.2
  done
  t1=$(date +%s.%N)
  kill -TERM "$pid" 2>/dev/null || true; wait "$pid" || true
  python3 -c "print('%-12s %8d records %6.2f s %8.0f ev/s' % ('$lane', ${n:-0}, $t1-$t0, ${n:-0}/($t1-$t0)))"
}

for round in 1 2; do
  measure "pass-$round" normalize THREATPIPE_PIPELINE__PASSTHROUGH=true "THREATPIPE_TOPICS__RAW=$S.raw" "THREATPIPE_TOPICS__NORMALIZED=$S.unused$round"
  measure "normalize-$round" normalize "THREATPIPE_TOPICS__RAW=$S.raw" "THREATPIPE_TOPICS__NORMALIZED=$S.norm$round"
done
