#!/usr/bin/env bash
# Quick-scan against the rsigma CLI 0.23 (crates.io, default flags) on the same events, in
# the same run, each pinned to one core.
#
#   load/quick_scan_vs_rsigma.sh [EVENTS]     (default 50000 events)
#
# Load: the whole SigmaHQ collection plus our rules, every pattern pack, the shipped feeds
# plus 1,000,000 synthetic IoCs. Events: SigmaHQ's regression samples (Sysmon and Windows
# evtx JSON, compacted) and generator traffic (web, DNS, LLM prompts, logins, firewall, with
# attacks) in equal numbers, repeated to EVENTS lines.
#
# Lanes:
#   threatpipe ingest   raw line → normalize → full scan (Sigma routed by logsource + IoC + packs)
#   threatpipe scan     full scan of normalized events
#   rsigma eval         the same events as the flat documents our Sigma rules see, through
#                       `rsigma engine eval -r RULES -e @docs.ndjson` (parse + evaluate every rule +
#                       print each match); its time is the wall time of that run minus the
#                       wall time of the same command on one document (start-up and rule load)
# Hits: per-rule counts from rsigma must equal ours when every rule runs on every document
# (`unrouted`, rsigma's semantics); our routed counts are a subset: rules whose logsource
# does not fit the event (cross-fires) do not run.
#
# Needs THREATPIPE_DATA (default ../shared/data). The rsigma CLI is taken from RSIGMA_BIN or
# $THREATPIPE_CACHE/rsigma, and built there once when missing (~15 min on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-50000}"
DATA="$(cd "${THREATPIPE_DATA:-../shared/data}" && pwd)"
CACHE="${THREATPIPE_CACHE:-$HOME/.cache/threatpipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
[ -d "$DATA/sigma/rules" ] || { echo "no SigmaHQ rules under $DATA (set THREATPIPE_DATA)" >&2; exit 1; }

RSIGMA="${RSIGMA_BIN:-$CACHE/rsigma/bin/rsigma}"
if [ ! -x "$RSIGMA" ]; then
  echo "building the rsigma CLI 0.23 into $CACHE/rsigma (once, ~15 min)" >&2
  cargo install rsigma --version =0.23.0 --locked --root "$CACHE/rsigma" >"$CACHE/rsigma-install.log" 2>&1 \
    || { tail -n 30 "$CACHE/rsigma-install.log" >&2; exit 1; }
fi
cargo build --release --locked -q
B="$CARGO_TARGET_DIR/release/threatpipe"
PIN=(); command -v taskset >/dev/null && PIN=(taskset -c "$(( $(nproc) - 1 ))")

W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
python3 - "$DATA/sigma/regression_data" >"$W/evtx.ndjson" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.json")):
    text, dec, i = path.read_text(encoding="utf-8"), json.JSONDecoder(), 0
    while i < len(text):
        while i < len(text) and text[i].isspace(): i += 1
        if i == len(text): break
        value, i = dec.raw_decode(text, i)
        print(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
PY
EVTX=$(wc -l <"$W/evtx.ndjson")
"$B" generate --stdout --rate 0 --count "$EVTX" >"$W/gen.ndjson" 2>/dev/null
python3 - "$W/evtx.ndjson" "$W/gen.ndjson" "$N" >"$W/corpus.ndjson" <<'PY'
import sys, itertools
evtx = open(sys.argv[1], encoding="utf-8").read().splitlines()
gen = open(sys.argv[2], encoding="utf-8").read().splitlines()
mixed = [x for pair in zip(evtx, gen) for x in pair]
for line in itertools.islice(itertools.cycle(mixed), int(sys.argv[3])):
    print(line)
PY
mkdir -p "$W/rules"
ln -s "$DATA/sigma/rules" "$W/rules/sigmahq"
ln -s "$PWD/pipelines/rules" "$W/rules/threatpipe"

echo "== threatpipe rules bench ($N events, ${PIN[*]:-no pinning})" >&2
"${PIN[@]}" "$B" rules bench pipelines "$DATA/sigma/rules" --events "$W/corpus.ndjson" --repeat 3 \
  --synthetic-iocs 1000000 --documents "$W/docs.ndjson" --hits "$W/ours.tsv" >"$W/ours.json"
cat "$W/ours.json"

echo "== rsigma eval (same documents)" >&2
head -n 1 "$W/docs.ndjson" >"$W/one.ndjson"
t0=$(date +%s.%N)
"${PIN[@]}" "$RSIGMA" engine eval -r "$W/rules" -e "@$W/one.ndjson" >/dev/null 2>"$W/rsigma-one.err"
t1=$(date +%s.%N)
"${PIN[@]}" "$RSIGMA" engine eval -r "$W/rules" -e "@$W/docs.ndjson" >"$W/rsigma.out" 2>"$W/rsigma.err"
t2=$(date +%s.%N)
tail -n 2 "$W/rsigma.err" >&2

python3 - "$W/ours.json" "$W/ours.tsv" "$W/rsigma.out" "$t0" "$t1" "$t2" "$N" <<'PY'
import json, sys, collections
ours = json.load(open(sys.argv[1]))
mine = {}
for row in open(sys.argv[2]).read().splitlines()[1:]:
    rule, unrouted, routed = row.split("\t")
    mine[rule] = (int(unrouted), int(routed))
theirs = collections.Counter()
for line in open(sys.argv[3]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    theirs[m.get("rule_id") or m.get("rule_title")] += 1
t0, t1, t2, n = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
rsigma_eps = n / max((t2 - t1) - (t1 - t0), 1e-9)
diff = {r for r in set(mine) | set(theirs) if mine.get(r, (0, 0))[0] != theirs.get(r, 0)}
cross = {r: c for r, c in mine.items() if c[0] != c[1]}
print(f"events {n}, mean {ours['mean_event_bytes']} bytes; load: ours {ours['load_seconds']} s "
      f"({ours['rules_loaded']} rules, {ours['indicators']} indicators), rsigma {t1 - t0:.2f} s")
print(f"{'lane':<34}{'events/s (1 core)':>18}{'vs rsigma':>11}")
for name, eps in [("threatpipe ingest (normalize+scan)", ours["ingest_events_per_sec"]),
                  ("threatpipe scan", ours["scan_events_per_sec"]),
                  ("threatpipe Sigma only, unrouted", ours["sigma_unrouted_events_per_sec"]),
                  ("rsigma eval CLI", rsigma_eps)]:
    print(f"{name:<34}{eps:>18,.0f}{eps / rsigma_eps:>10.2f}x")
print(f"sigma hits: rsigma {sum(theirs.values())}, ours unrouted {ours['sigma_hits_unrouted']}, "
      f"ours routed {ours['sigma_hits_routed']}; rules whose counts differ from rsigma: {len(diff)}")
for r in sorted(diff)[:20]:
    print(f"  DIFF {r}: rsigma {theirs.get(r, 0)}, ours unrouted {mine.get(r, (0, 0))[0]}")
print(f"cross-fires (run unrouted, not routed): {sum(c[0] - c[1] for c in cross.values())} hits of {len(cross)} rules")
for r, c in sorted(cross.items(), key=lambda x: -(x[1][0] - x[1][1]))[:10]:
    print(f"  {r}: unrouted {c[0]}, routed {c[1]}")
sys.exit(1 if diff else 0)
PY
