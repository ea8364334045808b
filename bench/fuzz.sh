#!/usr/bin/env bash
# A long fuzz campaign: rounds of the fuzz harness (tests/it/fuzz) with a new seed each round,
# until FUZZ_DURATION seconds have passed (0: one round). Prints the counts per outcome (ok,
# exit-2 one line, multi-line error, panic, abort, over-memory, timeout, other exit code,
# internal error) summed over the rounds, in process and through the binary, and the failing
# cases (with their inputs) into $FUZZ_LOG.
#
#   FUZZ_CASES=2000 FUZZ_BINARY_CASES=200 FUZZ_DURATION=600 FUZZ_SEED=1 bash bench/fuzz.sh
#
# CI runs one bounded round through `cargo test` (seed fixed); this script is for longer hunts.
set -u
cd "$(dirname "$0")/.."
CASES=${FUZZ_CASES:-2000}
BINARY_CASES=${FUZZ_BINARY_CASES:-200}
DURATION=${FUZZ_DURATION:-0}
SEED=${FUZZ_SEED:-$(date +%s)}
LOG=${FUZZ_LOG:-$(mktemp -t troupe-fuzz.XXXXXX)}
: >"$LOG"

cargo test -q -p troupe --test it --no-run 2>>"$LOG" || { echo "build failed, see $LOG"; exit 1; }
start=$(date +%s)
round=0
while :; do
  seed=$((SEED + round))
  echo "round $round: seed $seed, $CASES in-process cases, $BINARY_CASES binary runs"
  TROUPE_FUZZ_SEED=$seed TROUPE_FUZZ_CASES=$CASES TROUPE_FUZZ_BINARY_CASES=$BINARY_CASES \
    cargo test -q -p troupe --test it fuzz:: -- --nocapture --test-threads 2 >>"$LOG" 2>&1
  round=$((round + 1))
  if [ "$DURATION" -le 0 ] || [ $(($(date +%s) - start)) -ge "$DURATION" ]; then
    break
  fi
done

echo "fuzz campaign: $round round(s), $(($(date +%s) - start)) s, seeds $SEED..$((SEED + round - 1))"
awk '/@@TALLY / {
       sub(/.*@@TALLY /, "")
       kind = $1
       for (i = 2; i <= NF; i++) {
         split($i, kv, "=")
         key = kind SUBSEP kv[1]
         if (!(key in sum)) order[++n] = key
         sum[key] += kv[2]
       }
     }
     END {
       for (i = 1; i <= n; i++) {
         split(order[i], k, SUBSEP)
         printf "  %-10s %-18s %d\n", k[1], k[2], sum[order[i]]
       }
     }' "$LOG"
failing=$(grep -ac "^    case " "$LOG" || true)
echo "failing cases listed (up to 3 per class and round): $failing; inputs in $LOG"
