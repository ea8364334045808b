#!/usr/bin/env bash
# `troupe serve` vs llama.cpp's `llama-server` under load on the same weights (issue #11's goal:
# output tokens/s >= 1.2x llama-server at 64 concurrent streams, p99 inter-token latency no worse).
#
# 1. `troupe export-hf` writes MODEL (default graphs/ds-v3-mini.toml, random bf16 weights) as an
#    HF folder ($WORK/hf; or HF=DIR to reuse one).
# 2. $WORK/hf-utf8: the same folder (symlinks) with a bench-only tokenizer.json from
#    bench/utf8_safe_tokenizer.py: every byte-level entry that is not valid UTF-8 on its own is
#    renamed to an ASCII placeholder "<0xHH..>", same ids, same vocabulary size. Random weights emit
#    arbitrary ids, and llama-server ends a stream with HTTP 500 ("does not match the expected
#    Content-only format") once its text is not valid UTF-8; with this tokenizer every id decodes
#    to valid UTF-8 in both engines. CONVERT_PYTHON (with `tokenizers`) checks every id.
# 3. llama.cpp's converter (bench/llama_cpp_convert.py) turns $WORK/hf-utf8 into a bf16 GGUF.
# 4. ROUNDS rounds; in each, both servers run in turn (llama first in odd rounds, troupe first in
#    even ones), each started fresh on a free loopback port with THREADS threads, warmed up with a
#    few short requests, then loaded with bench/serve_load.py: CONCURRENCY streams, REQUESTS
#    requests of PROMPT_TOKENS token ids (same seed, so the same prompts for both), MAX_TOKENS
#    tokens each, temperature 0 (greedy) and ignore_eos. Each server+load run is wrapped in
#    QUIET (e.g. QUIET=/tmp/quiet.sh, a command prefix that keeps the machine quiet while it runs).
#    llama-server: -t THREADS -np CONCURRENCY -c CONCURRENCY*(PROMPT_TOKENS+MAX_TOKENS+64)
#    --cont-batching --reasoning-format none; troupe: serve -t THREADS TROUPE_FLAGS.
#    Each run also records the CPU the server used and the CPU everything else used meanwhile
#    (load generator included), in cores, from /proc/stat: the second says how quiet it was.
# 5. Prints a markdown table (every run, then medians and the ratio troupe / llama-server).
#
# Usage: LLAMA_CPP_DIR=... CONVERT_PYTHON=venv/bin/python bash bench/serve-vs-llama-server.sh
# Environment (defaults in brackets):
#   MODEL [graphs/ds-v3-mini.toml]  WORK [target/serve-vs-llama-server]  HF [$WORK/hf]
#   ROUNDS [2]  THREADS [2]  CONCURRENCY [64]  REQUESTS [256]  PROMPT_TOKENS [128]
#   MAX_TOKENS [64]  DURATION [600] (seconds, serve_load.py's bound per run)
#   QUIET []  TROUPE [target/release/troupe, built if missing]  LLAMA_FLAGS []
#   TROUPE_FLAGS [--compute bf16]: activations rounded to bf16 before each linear layer, as
#     llama.cpp's bf16 path does
#   QUIET_WAIT [600]: with QUIET, seconds to wait for another quiet.sh run to end before each run
#   FIRST_ROUND [1]  ENGINES ["llama troupe"]  APPEND [0]: 1 adds to RESULTS (to redo one run)
#   CONVERT_PYTHON [python3]  FORCE [0]: 1 re-exports, rewrites and re-converts
#   RESULTS [$WORK/results.jsonl]: one line per run (engine, round, serve_load.py's JSON)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp checkout with build/bin/llama-server (see bench/vs-llama-cpp.sh)}"
MODEL=${MODEL:-graphs/ds-v3-mini.toml}
WORK=${WORK:-target/serve-vs-llama-server}
HF=${HF:-$WORK/hf}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
CONCURRENCY=${CONCURRENCY:-64}
REQUESTS=${REQUESTS:-256}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
MAX_TOKENS=${MAX_TOKENS:-64}
DURATION=${DURATION:-600}
QUIET=${QUIET:-}
TROUPE=${TROUPE:-target/release/troupe}
TROUPE_FLAGS=${TROUPE_FLAGS---compute bf16}
LLAMA_FLAGS=${LLAMA_FLAGS:-}
PY=${CONVERT_PYTHON:-python3}
FORCE=${FORCE:-0}
QUIET_WAIT=${QUIET_WAIT:-600}
FIRST_ROUND=${FIRST_ROUND:-1}
ENGINES=${ENGINES:-"llama troupe"}
APPEND=${APPEND:-0}
RESULTS=${RESULTS:-$WORK/results.jsonl}
SERVER=$LLAMA_CPP_DIR/build/bin/llama-server
SAFE=$WORK/hf-utf8
GGUF=$WORK/model-bf16.gguf
export TROUPE TROUPE_FLAGS LLAMA_FLAGS SERVER SAFE GGUF THREADS CONCURRENCY REQUESTS \
    PROMPT_TOKENS MAX_TOKENS DURATION WORK

say() { printf '== %s\n' "$*" >&2; }

# One server + load run (called through QUIET as `$0 __one ENGINE`); prints serve_load.py's JSON.
if [[ ${1:-} == __one ]]; then
    engine=$2
    log=$WORK/server-$engine.log
    if [[ $engine == troupe ]]; then
        # shellcheck disable=SC2086 # flags are words
        "$TROUPE" serve --model "$SAFE" --addr 127.0.0.1:0 -t "$THREADS" $TROUPE_FLAGS \
            >"$log" 2>&1 &
        pid=$!
        model=$(basename "$SAFE")
    else
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        ctx=$((CONCURRENCY * (PROMPT_TOKENS + MAX_TOKENS + 64)))
        # shellcheck disable=SC2086 # flags are words
        "$SERVER" -m "$GGUF" --host 127.0.0.1 --port "$port" -t "$THREADS" -np "$CONCURRENCY" \
            -c "$ctx" --cont-batching --reasoning-format none $LLAMA_FLAGS >"$log" 2>&1 &
        pid=$!
        model=$(basename "$GGUF" .gguf)
    fi
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
    url=
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; exit 1; }
        if [[ $engine == troupe ]]; then
            url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
        elif curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
            url=http://127.0.0.1:$port
        fi
        [[ -n $url ]] && break
        sleep 0.5
    done
    [[ -n $url ]] || { echo "$engine did not come up" >&2; exit 1; }
    python3 bench/serve_load.py --url "$url" --model "$model" --concurrency 4 --requests 4 \
        --prompt-tokens "$PROMPT_TOKENS" --max-tokens 8 --seed 99 >/dev/null
    # CPU time over the measured run, from /proc: the server's own, and everything else on the
    # machine (the load generator included), in cores; the second says how quiet the run was.
    read -r busy0 all0 < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    server0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    load=$(python3 bench/serve_load.py --url "$url" --model "$model" --concurrency "$CONCURRENCY" \
        --requests "$REQUESTS" --duration "$DURATION" --prompt-tokens "$PROMPT_TOKENS" \
        --max-tokens "$MAX_TOKENS" --seed 1)
    read -r busy1 all1 < <(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    server1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    python3 -c 'import json, os, sys
load = json.loads(sys.argv[1])
b0, a0, s0, b1, a1, s1 = map(int, sys.argv[2:8])
cores = os.cpu_count() / max(a1 - a0, 1)
load["server_cpu_cores"] = round((s1 - s0) * cores, 2)
load["other_cpu_cores"] = max(0.0, round((b1 - b0 - (s1 - s0)) * cores, 2))
print(json.dumps(load))' "$load" "$busy0" "$all0" "$server0" "$busy1" "$all1" "$server1"
    exit 0
fi

[[ -x $SERVER ]] || { echo "missing $SERVER: build llama.cpp's llama-server" >&2; exit 2; }
if [[ ! -x $TROUPE ]]; then
    say "building troupe (release)"
    cargo build --release --bin troupe
fi

# 1-3. Export, rewrite the tokenizer, convert.
if [[ $FORCE == 1 || ! -f $HF/config.json ]]; then
    say "troupe export-hf -m $MODEL --out $HF"
    "$TROUPE" export-hf -m "$MODEL" --out "$HF"
fi
if [[ $FORCE == 1 || ! -f $SAFE/tokenizer.json || $HF/tokenizer.json -nt $SAFE/tokenizer.json ]]; then
    rm -rf "$SAFE"
    mkdir -p "$SAFE"
    for f in "$HF"/*; do
        [[ $(basename "$f") == tokenizer.json ]] || ln -s "$(realpath "$f")" "$SAFE/"
    done
    say "bench/utf8_safe_tokenizer.py: $HF/tokenizer.json -> $SAFE/tokenizer.json"
    "$PY" bench/utf8_safe_tokenizer.py "$HF/tokenizer.json" "$SAFE/tokenizer.json" >&2
    rm -f "$GGUF"
fi
if [[ $FORCE == 1 || ! -f $GGUF ]]; then
    say "convert_hf_to_gguf.py --outtype bf16 ($SAFE -> $GGUF)"
    LLAMA_CPP_DIR=$LLAMA_CPP_DIR nice "$PY" bench/llama_cpp_convert.py "$SAFE" \
        --outtype bf16 --outfile "$GGUF" >"$WORK/convert-bf16.log" 2>&1 ||
        { tail -20 "$WORK/convert-bf16.log" >&2; exit 1; }
fi

# 4. Alternating rounds.
# Before each run, wait (up to QUIET_WAIT seconds) until no other `quiet.sh` run is going on: two
# overlapping ones resume each other's paused processes. (Builds need no waiting: QUIET pauses
# what runs when it starts. What starts later is not paused; the per-run CPU figures show it.)
wait_for_quiet() {
    local t0=$SECONDS
    while ((SECONDS - t0 < QUIET_WAIT)); do
        pgrep -f 'quiet\.sh' >/dev/null || return 0
        sleep 2
    done
    say "another quiet.sh run was still going after ${QUIET_WAIT}s; running anyway"
}
[[ $APPEND == 1 ]] || : >"$RESULTS"
for round in $(seq "$FIRST_ROUND" "$ROUNDS"); do
    order="llama troupe"
    ((round % 2 == 0)) && order="troupe llama"
    for engine in $order; do
        [[ " $ENGINES " == *" $engine "* ]] || continue
        [[ -n $QUIET ]] && wait_for_quiet
        say "round $round: $engine"
        # shellcheck disable=SC2086 # QUIET is a command prefix
        out=$($QUIET bash bench/serve-vs-llama-server.sh __one "$engine" | tail -1)
        [[ $out == "{"* ]] || { echo "round $round, $engine: no result from the run (see $WORK/server-$engine.log)" >&2; exit 1; }
        say "$out"
        printf '{"engine": "%s", "round": %d, "load": %s}\n' "$engine" "$round" "$out" >>"$RESULTS"
    done
done

# 5. Table.
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
runs = sorted((json.loads(line) for line in open(sys.argv[1])), key=lambda r: r["round"])
name = {"troupe": "troupe serve", "llama": "llama-server"}
keys = ["output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99"]
print("| round | server | requests done | output tokens | seconds | output tok/s | TTFT p50 / p99 ms | inter-token p50 / p99 ms | errors | CPU cores: server / others |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
for r in runs:
    l = r["load"]
    print(f"| {r['round']} | {name[r['engine']]} | {l['requests_done']} | {l['output_tokens']} | "
          f"{l['seconds']} | {l['output_tokens_per_s']:.1f} | {l['ttft_ms_p50']} / {l['ttft_ms_p99']} | "
          f"{l['itl_ms_p50']} / {l['itl_ms_p99']} | {sum(l['errors'].values())} {l['errors'] or ''} | "
          f"{l['server_cpu_cores']} / {l['other_cpu_cores']} |")
med = {e: {k: statistics.median(r["load"][k] for r in runs if r["engine"] == e) for k in keys}
       for e in ("troupe", "llama") if any(r["engine"] == e for r in runs)}
if len(med) == 2:
    print()
    print("| medians | output tok/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for e in ("troupe", "llama"):
        print(f"| {name[e]} | " + " | ".join(f"{med[e][k]:.1f}" for k in keys) + " |")
    print("| troupe / llama-server | " + " | ".join(f"{med['troupe'][k] / med['llama'][k]:.2f}x" for k in keys) + " |")
EOF
