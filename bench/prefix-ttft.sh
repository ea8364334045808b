#!/usr/bin/env bash
# The prefix cache's effect on TTFT (issue #11): starts `troupe serve` twice on free loopback
# ports — with the prefix cache (the default) and with --no-prefix-cache — and runs
# bench/prefix_ttft.py against them (a 1000-token shared prefix; warm outputs checked against
# the uncached server's). Prints the server's prefix-cache metrics after the run.
#
#   bash bench/prefix-ttft.sh                   # graphs/ds-v3-mini.toml, release build
#   TROUPE=path/to/troupe MODEL=graph.toml ROUNDS=5 PREFIX=1000 bash bench/prefix-ttft.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TROUPE=${TROUPE:-target/release/troupe}
MODEL=${MODEL:-graphs/ds-v3-mini.toml}
ROUNDS=${ROUNDS:-5}
PREFIX=${PREFIX:-1000}
THREADS=${THREADS:-2}
[ -x "$TROUPE" ] || cargo build --release --bin troupe
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

start() { # name, extra flags...
    local name=$1; shift
    "$TROUPE" serve -m "$MODEL" --threads "$THREADS" --addr 127.0.0.1:0 "$@" \
        >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
    for _ in $(seq 600); do
        if grep -q "^listening on " "$work/$name.out" 2>/dev/null; then
            sed -n 's/^listening on //p' "$work/$name.out" | head -1
            return
        fi
        sleep 0.5
    done
    echo "$name server did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}
warm_url=$(start cached)
cold_url=$(start uncached --no-prefix-cache)
model_id=$(basename "${MODEL%.*}")
python3 bench/prefix_ttft.py --url "$warm_url" --url-cold "$cold_url" --model "$model_id" \
    --prefix "$PREFIX" --rounds "$ROUNDS"
curl -s "$warm_url/metrics" | grep '^troupe_prefix_cache' || true
