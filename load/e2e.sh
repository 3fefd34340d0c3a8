#!/usr/bin/env bash
# The whole pipeline against the real broker, measured from the far end by `threatpipe
# load`, next to a pass-through deployment (same stages, same hops, same broker, records
# forwarded unchanged) in the same run: the ratio says what detection costs on this
# machine beyond what the broker alone allows.
#
#   load/e2e.sh [RATE] [SECONDS] [ROUNDS]   (default 0 = as fast as possible, 20 s, 1 round;
#                                            or e.g. 5000 30 3)
#
# With several rounds the lanes alternate (baseline, pipeline, baseline, ...), so a noisy
# neighbour slows both alike; each round's ratio is printed, then their median and range.
# One instance runs all five stages and serves the live feed; topics are fresh per lane.
# `threatpipe load` reads the alerts topic and, as a person watching would, the feed (a
# token for all tenants). FETCH_WAIT_MS sets the stages' fetch.wait.max.ms (librdkafka's
# default otherwise). THREATPIPE_BIN runs that binary instead of building this checkout.
# E2E_EVENTS sets how many events a flat-out run sends (100,000: a few seconds on a quick
# host, so startup weighs on the ratio; 300,000 or more gives steadier figures).
# E2E_PARTITIONS sets the partitions of every topic (4). librdkafka sends one produce
# request per partition and Tansu's cost is per request, so on Tansu fewer partitions mean
# fewer, larger requests: with 1 (one instance reads each topic here) the broker used 1.75x
# less CPU at 5,000 events/s and the p99 fell by about a third (load/README.md, session 19).
# Each round also prints the CPU each lane spent per 1,000 events (the instance, the load
# tool, and Tansu and Redis where they run on this machine) and the ratio of the two: on
# shared cores the throughput ratio follows it, and it moves less from run to run.
# Results: the tables, and JSON in /tmp/threatpipe-e2e-*.json (CPU in *.cpu.json).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-0}"
SECONDS_="${2:-20}"
ROUNDS="${3:-1}"
BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/threatpipe/target}"
if [ -n "${THREATPIPE_BIN:-}" ]; then
  B="$THREATPIPE_BIN"   # another build (say, last release's) on the same broker, for a before/after
else
  cargo build --release --locked -q
  B="$CARGO_TARGET_DIR/release/threatpipe"
fi
PORT="${THREATPIPE_LOAD_PORT:-8093}"
COUNT=$(( RATE > 0 ? RATE * SECONDS_ : ${E2E_EVENTS:-100000} ))
PARTITIONS="${E2E_PARTITIONS:-4}"
[[ "$PARTITIONS" =~ ^[1-9][0-9]*$ ]] || { echo "E2E_PARTITIONS must be a positive integer, not '$PARTITIONS'" >&2; exit 2; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "${TIMES_FILE:-}"' EXIT
TICKS="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# CPU seconds process $1 has used so far (user + system; 0 for no such process). The
# command name is cut off first: it is in parentheses and may hold spaces.
cpu_seconds() {
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
  sed 's/.*) //' "/proc/$1/stat" | awk -v t="$TICKS" '{ printf "%.2f", ($12 + $13) / t }'
}
# CPU seconds of this shell's finished children, into the variable named $1. `times` (its
# second line) must run in this shell: in a subshell, as `$(times)` would be, it is 0.
TIMES_FILE="$(mktemp)"
children_cpu_seconds() {
  times >"$TIMES_FILE"
  printf -v "$1" '%s' "$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TIMES_FILE")"
}

lane() { # name passthrough(true|false)
  local name=$1 pass=$2 S="e2e$(date +%s%N | cut -c1-13)-$1"
  env THREATPIPE_TOPICS__RAW="$S.raw" THREATPIPE_TOPICS__NORMALIZED="$S.n" THREATPIPE_TOPICS__SCANNED="$S.s" \
      THREATPIPE_TOPICS__CORRELATED="$S.c" THREATPIPE_TOPICS__SCORED="$S.sc" THREATPIPE_TOPICS__ALERTS="$S.a" \
      THREATPIPE_TOPICS__ALERTS_JSON="$S.aj" THREATPIPE_TOPICS__DLQ="$S.dlq" THREATPIPE_TOPICS__PARTITIONS="$PARTITIONS" \
      THREATPIPE_KAFKA__GROUP_PREFIX="$S" ${FETCH_WAIT_MS:+THREATPIPE_KAFKA__CONSUMER__FETCH_WAIT_MAX_MS=$FETCH_WAIT_MS} \
      THREATPIPE_FEED__TOKENS__e2e-load-token='*' \
      THREATPIPE_CORRELATE__CHECKPOINT=memory THREATPIPE_ML__CHECKPOINT=memory \
      THREATPIPE_ALERT__DEDUPE_PREFIX="$S" THREATPIPE_ALERT__CHANNEL="$S:alerts" THREATPIPE_ALERT__STREAM="$S:stream" \
      THREATPIPE_PIPELINE__PASSTHROUGH="$pass" \
      "$B" run --config pipelines/kafka.toml --brokers "$BROKERS" --quiet --http-listen "127.0.0.1:$PORT" >"/tmp/$S.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 120); do
    [ "$(grep -c 'Partitions assigned' "/tmp/$S.log" || true)" -ge 5 ] && break
    sleep 0.5
  done
  sleep 2
  local measure="$S.aj" extra=()
  if [ "$pass" = true ]; then measure="$S.a"; extra=(--passthrough)
  else extra=(--feed "ws://127.0.0.1:$PORT" --feed-token e2e-load-token); fi
  echo "== $name ($( [ "$pass" = true ] && echo 'pass-through, the baseline' || echo 'full pipeline'))"
  # CPU of the processes sharing this machine's cores during the run: the instance, the
  # load tool, and the local broker and Redis where they run here (0 where not).
  local broker redis i0 b0 r0 l0 l1
  broker="$(pgrep -f 'tansu broker' | head -n 1 || true)"
  redis="$(pgrep -x redis-server | head -n 1 || true)"
  i0=$(cpu_seconds "${pids[-1]}"); b0=$(cpu_seconds "$broker"); r0=$(cpu_seconds "$redis"); children_cpu_seconds l0
  "$B" load --brokers "$BROKERS" --raw-topic "$S.raw" --measure-topic "$measure" "${extra[@]}" \
    --rate "$RATE" --count "$COUNT" --metrics "http://127.0.0.1:$PORT/metrics" --json "/tmp/threatpipe-e2e-$name.json"
  children_cpu_seconds l1
  python3 -c 'import json, sys; i, b, r, l = (float(sys.argv[k + 1]) - float(sys.argv[k]) for k in (1, 3, 5, 7)); json.dump({"instance": round(i, 2), "broker": round(b, 2), "redis": round(r, 2), "load_tool": round(l, 2), "events": int(sys.argv[9])}, open(sys.argv[10], "w"))' \
    "$i0" "$(cpu_seconds "${pids[-1]}")" "$b0" "$(cpu_seconds "$broker")" "$r0" "$(cpu_seconds "$redis")" "$l0" "$l1" \
    "$COUNT" "/tmp/threatpipe-e2e-$name.cpu.json"
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" || true
}

for round in $(seq 1 "$ROUNDS"); do
  lane "baseline-$round" true
  lane "pipeline-$round" false
done
ROUNDS="$ROUNDS" python3 - <<'PY'
import json, os, statistics
print()
rates, cpu_ratios = [], []
for r in range(1, int(os.environ["ROUNDS"]) + 1):
    b = json.load(open(f"/tmp/threatpipe-e2e-baseline-{r}.json")); p = json.load(open(f"/tmp/threatpipe-e2e-pipeline-{r}.json"))
    tb, tp = b.get("pipeline_events_per_second"), p.get("pipeline_events_per_second")
    if tb and tp:
        print(f"round {r}: throughput through all five hops: pipeline {tp:.0f} events/s, pass-through {tb:.0f} events/s, ratio {tp / tb:.2f}")
        rates.append((tp, tb))
    # On shared cores the throughput ratio follows the CPU each lane spends per event.
    try:
        cb, cp = (json.load(open(f"/tmp/threatpipe-e2e-{lane}-{r}.cpu.json")) for lane in ("baseline", "pipeline"))
        def per_k(c):
            return {k: 1e6 * c[k] / c["events"] for k in ("instance", "broker", "redis", "load_tool")}
        kb, kp = per_k(cb), per_k(cp)
        parts = lambda k: f"instance {k['instance']:.1f}, broker {k['broker']:.1f}, Redis {k['redis']:.1f}, load tool {k['load_tool']:.1f}"
        print(f"round {r}: CPU ms per 1,000 events: pipeline {sum(kp.values()):.1f} ({parts(kp)}); pass-through {sum(kb.values()):.1f} ({parts(kb)}); ratio {sum(kb.values()) / sum(kp.values()):.2f}")
        cpu_ratios.append(sum(kb.values()) / sum(kp.values()))
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        pass
    lp, lb, lf = p["latency_ms"], b["latency_ms"], (p.get("feed") or {}).get("latency_ms")
    if lp and lb:
        feed = f", to a feed client {lf['p99']:.1f} ms" if lf else ""
        print(f"round {r}: end-to-end p99: pipeline {lp['p99']:.1f} ms (events that raised alerts){feed}, pass-through {lb['p99']:.1f} ms")
# On shared cores one round's ratio moves by ±0.05 with the neighbours, so over several
# rounds the median is the figure to quote.
if len(rates) > 1:
    median = statistics.median
    ratios = [tp / tb for tp, tb in rates]
    print(f"over {len(ratios)} rounds: throughput ratio median {median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
          f"0.8 or more in {sum(r >= 0.8 for r in ratios)}); pipeline {median(t for t, _ in rates):.0f} events/s, "
          f"pass-through {median(b for _, b in rates):.0f} events/s (medians)"
          + (f"; CPU ratio median {median(cpu_ratios):.3f}" if cpu_ratios else ""))
PY
