#!/usr/bin/env bash
# Validates `troupe simulate` against real runs on this machine (issue #12): calibrates once
# (`troupe calibrate`), then for each configuration below (schedule × placement × batch × link)
# runs the real actor runtime and the simulator on the calibrated machine file
# (`troupe simulate --measure --json`) and prints a Markdown table of measured vs simulated
# decode step time (the fastest of STEPS real steps, 15 by default, as calibration measures), with the median
# and worst absolute error.
#   bash bench/sim-validate.sh [OUT_DIR]     (needs a release build: cargo build --release)
# Each row loads the model (random weights) and runs real decode steps: ~25 s a row.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TROUPE:-target/release/troupe}   # TROUPE=path validates another build
OUT=${1:-target/sim-validate}
MODEL=graphs/ds-v3-mini.toml
P=bench/sim-validate
CONTEXT=16
STEPS=${STEPS:-15}
mkdir -p "$OUT"
"$T" calibrate --out "$OUT/machine.toml" --model "$MODEL" --context "$CONTEXT" --steps "$STEPS"
# placement schedule seqs
CONFIGS=(
  "one-stream sequential 1"
  "one-stream sequential 4"
  "one-stream sequential 8"
  "one-stream two-microbatch 4"
  "two-streams sequential 4"
  "two-streams two-microbatch 4"
  "two-streams two-microbatch 8"
  "two-stages pipeline 4"
  "two-stages pipeline 8"
  "link-10g sequential 4"
  "link-10g two-microbatch 4"
  "link-2g sequential 4"
  "link-2g two-microbatch 4"
  "link-2g two-microbatch 8"
)
: > "$OUT/rows.jsonl"
for c in "${CONFIGS[@]}"; do
  read -r place sched seqs <<< "$c"
  line=$("$T" simulate -m "$MODEL" --placement "$P/$place.toml" --schedule "$sched" \
    --hardware "$OUT/machine.toml" --seqs "$seqs" --context "$CONTEXT" --steps "$STEPS" \
    --measure --json | tail -1)
  echo "{\"placement\":\"$place\",\"schedule\":\"$sched\",\"seqs\":$seqs,\"sim\":$line}" >> "$OUT/rows.jsonl"
  echo "$place $sched $seqs done" >&2
done
python3 - "$OUT/rows.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| placement | schedule | seqs | measured ms | simulated ms | error |")
print("|---|---|---:|---:|---:|---:|")
errs = []
for r in rows:
    s = r["sim"]
    errs.append(abs(s["error"]))
    print(f"| {r['placement']} | {r['schedule']} | {r['seqs']} | {s['measured_step_ms']:.1f} | {s['step_ms']:.1f} | {100*s['error']:+.1f}% |")
print(f"\n{len(rows)} configurations: median |error| {100*statistics.median(errs):.1f}%, worst {100*max(errs):.1f}%")
PY
