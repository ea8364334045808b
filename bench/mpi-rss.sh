#!/usr/bin/env bash
# mpi-rss.sh -- peak resident memory per rank: `generate` on MODEL in one process, then under
# `mpirun -n N` for each placement given, every rank wrapped in /usr/bin/time (its "maximum
# resident set size", VmHWM). Ranks load only the weights their actors use, so a rank's peak
# should follow `troupe inspect MODEL --placement P`'s bytes for it.
# Usage: bench/mpi-rss.sh [PLACEMENT...]   (default: graphs/ep2.toml graphs/ep4.toml graphs/ep4-dp.toml)
# Env: MODEL (graphs/ds-v3-mini.toml), BIN (target/release/troupe), NEW (new tokens, 8),
# THREADS (1 per rank).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-graphs/ds-v3-mini.toml}
BIN=${BIN:-target/release/troupe}
NEW=${NEW:-8}
THREADS=${THREADS:-1}
PLACEMENTS=("$@")
[ ${#PLACEMENTS[@]} -gt 0 ] || PLACEMENTS=(graphs/ep2.toml graphs/ep4.toml graphs/ep4-dp.toml)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# One rank: its peak RSS in kB, written to $WORK/rss.<rank>.
cat > "$WORK/rank.sh" <<'RANK'
#!/usr/bin/env bash
r=${OMPI_COMM_WORLD_RANK:-0}
exec /usr/bin/time -f "%M" -o "$RSS_DIR/rss.$r" "$@"
RANK
chmod +x "$WORK/rank.sh"
export RSS_DIR=$WORK
ARGS=(generate --model "$MODEL" --prompt-ids 0,5,9,13,200,7 -n "$NEW" -t "$THREADS")
mb() { awk '{printf "%.0f", $1 / 1024}' "$1"; }

"$WORK/rank.sh" "$BIN" "${ARGS[@]}" --runtime actors > "$WORK/single.out"
echo "single process: peak RSS $(mb "$WORK/rss.0") MB"
for p in "${PLACEMENTS[@]}"; do
  n=$(awk -F= '/^nodes/ {gsub(/ /, "", $2); print $2}' "$p")
  rm -f "$WORK"/rss.*
  mpirun -n "$n" --oversubscribe --bind-to none --mca btl tcp,self -x RSS_DIR \
    "$WORK/rank.sh" "$BIN" "${ARGS[@]}" --placement "$p" > "$WORK/mpi.out"
  cmp -s "$WORK/single.out" "$WORK/mpi.out" || { echo "$p: tokens differ from the single process" >&2; exit 1; }
  line="$p (mpirun -n $n): peak RSS per rank MB:"
  for r in $(seq 0 $((n - 1))); do line="$line $(mb "$WORK/rss.$r")"; done
  echo "$line"
  "$BIN" inspect "$MODEL" --placement "$p" | awk '/^rank / {printf "  inspect %s %s %s\n", $1, $2, $5}'
done
