#!/usr/bin/env bash
# soak.sh -- mixed load with random client disconnects against `troupe serve`, then the checks:
# resident memory flat within 5% after warm-up (the RSS peak of the last half of the judged run
# against the peak of its first half; RSS is sampled every 2 s), the KV page pool back to idle and nothing in
# flight, no 5xx other than the documented 503, no panic in the server's log.
#
#   bash bench/soak.sh                       # 10 minutes on fortune-tiny
#   DURATION=60 bash bench/soak.sh           # what CI runs (tests/it/serve/soak.rs)
#
# Environment (defaults in brackets): TROUPE [target/release/troupe], MODEL
# [tests/fixtures/fortune-tiny], MODEL_ID [the folder's name or the graph file's stem],
# DURATION seconds [600], CONCURRENCY [32], DISCONNECT_RATE [0.2], PROMPT_TOKENS [16],
# MAX_TOKENS [64], VOCAB [4000], WARMUP fraction of the run whose RSS is not judged [0.3].
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
TROUPE="${TROUPE:-$ROOT/target/release/troupe}"
MODEL="${MODEL:-$ROOT/tests/fixtures/fortune-tiny}"
MODEL_ID="${MODEL_ID:-$(basename "${MODEL%.toml}")}"
DURATION="${DURATION:-600}"
CONCURRENCY="${CONCURRENCY:-32}"
DISCONNECT_RATE="${DISCONNECT_RATE:-0.2}"
PROMPT_TOKENS="${PROMPT_TOKENS:-16}"
MAX_TOKENS="${MAX_TOKENS:-64}"
VOCAB="${VOCAB:-4000}"
WARMUP="${WARMUP:-0.3}"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$TROUPE" serve --model "$MODEL" --addr 127.0.0.1:0 >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
for _ in $(seq 600); do
    [[ -s "$WORK/stdout" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/stderr" >&2; echo "soak.sh: server exited" >&2; exit 1; }
    sleep 0.1
done
URL="$(head -n 1 "$WORK/stdout" | sed -n 's#^listening on ##p')"
[[ -n "$URL" ]] || { echo "soak.sh: no 'listening on' line" >&2; exit 1; }
metric() { curl -s "$URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

echo "soak.sh: $MODEL_ID at $URL for ${DURATION}s, $CONCURRENCY streams, disconnect rate $DISCONNECT_RATE"
python3 "$HERE/serve_load.py" --url "$URL" --model "$MODEL_ID" --concurrency "$CONCURRENCY" \
    --requests 1000000000 --duration "$DURATION" --prompt-tokens "$PROMPT_TOKENS" \
    --max-tokens "$MAX_TOKENS" --vocab "$VOCAB" --disconnect-rate "$DISCONNECT_RATE" >"$WORK/load.json" &
LOAD_PID=$!
: >"$WORK/rss"
while kill -0 "$LOAD_PID" 2>/dev/null; do
    awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status" >>"$WORK/rss"
    sleep 2
done
wait "$LOAD_PID"
cat "$WORK/load.json"

failed=0
# Back to idle: no request in flight, no KV page held (disconnected requests included).
for _ in $(seq 300); do
    [[ "$(metric troupe_serve_requests_in_flight)" == "0" && "$(metric troupe_kv_pages_in_use)" == "0" ]] && break
    sleep 0.1
done
pages="$(metric troupe_kv_pages_in_use)"; inflight="$(metric troupe_serve_requests_in_flight)"
echo "soak.sh: after the load: kv pages in use $pages, requests in flight $inflight"
[[ "$pages" == "0" && "$inflight" == "0" ]] || { echo "soak.sh: FAIL: not back to idle" >&2; failed=1; }

python3 - "$WORK/load.json" "$WORK/rss" "$WARMUP" <<'PY' || failed=1
import json, sys
load = json.load(open(sys.argv[1]))
bad = {k: v for k, v in load["errors"].items() if k != "503"}
if bad:
    sys.exit(f"soak.sh: FAIL: errors other than the documented 503: {bad}")
if load["requests_done"] == 0:
    sys.exit("soak.sh: FAIL: no request completed")
rss = [int(x) for x in open(sys.argv[2]) if x.strip()]
judged = rss[int(len(rss) * float(sys.argv[3])):]
if len(judged) < 4:
    sys.exit("soak.sh: FAIL: too few RSS samples")
# Flat: the peak of the second half of the judged run is within 5% of the first half's (peaks,
# because the allocator hands memory back and takes it again, so single samples dip).
half = len(judged) // 2
base, top = max(judged[:half]), max(judged[half:])
growth = (top - base) / base
step = max(1, len(rss) // 10)
print("soak.sh: RSS (kB) every", 2 * step, "s:", " ".join(str(x) for x in rss[::step]))
print(f"soak.sh: RSS peak after warm-up {base} kB, in the last half {top} kB ({growth:+.1%}); "
      f"{load['requests_done']} requests done, {load['disconnected']} disconnected")
if growth > 0.05:
    sys.exit("soak.sh: FAIL: resident memory grew more than 5% after warm-up")
PY
if grep -q "panicked" "$WORK/stderr"; then
    echo "soak.sh: FAIL: panic in the server log" >&2; grep -m 5 "panicked" "$WORK/stderr" >&2; failed=1
fi
if ((failed)); then exit 1; fi
echo "soak.sh: OK"
