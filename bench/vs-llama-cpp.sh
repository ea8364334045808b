#!/usr/bin/env bash
# troupe vs llama.cpp, side by side on the same weights (issue #10's speed goals as ratios).
#
# 1. `troupe export-hf` writes MODEL (default graphs/ds-v3-mini.toml, random bf16 weights) as an
#    HF folder; llama.cpp's converter turns that folder into GGUF bf16 and Q8_0 (and f32 for the
#    check), so both engines run exactly the same weights. troupe runs the folder (mmap).
# 2. CHECK=1 (default): llama.cpp's logits at every position of three prompts (bench/llama_logits.cpp,
#    built here with g++ against the checkout's libllama), on the f32 and the bf16 GGUF, against
#    `troupe logits` on the same token ids (and llama.cpp's token ids against troupe's tokenizer). A routing or rope mismatch would show as a large difference; the
#    f32 GGUF isolates the model's semantics from bf16 activation rounding.
# 3. ROUNDS rounds; in each, every test runs once per engine, alternating (A B, then B A in the
#    next round) so both see the same machine load. Prints each test's medians over the rounds,
#    min-max, and the ratio troupe / llama.cpp (of the medians, and the median per-round ratio).
#
# Getting llama.cpp (any recent checkout works; this is how it was done here):
#     git clone https://github.com/ggml-org/llama.cpp "$LLAMA_CPP_DIR"     # or a local mirror:
#     git clone --shared /path/to/mirror/llama.cpp.git "$LLAMA_CPP_DIR"
#     python3 -m venv venv && venv/bin/pip install cmake numpy sentencepiece torch transformers \
#         --extra-index-url https://download.pytorch.org/whl/cpu && \
#         venv/bin/pip install -e "$LLAMA_CPP_DIR/gguf-py"
#     (where download.pytorch.org does not resolve: `pip download torch --no-deps` from PyPI,
#     `pip install --no-deps` that wheel, then filelock typing-extensions sympy networkx jinja2
#     fsspec; the converter runs on CPU and needs none of torch's CUDA packages. torch 2.15
#     refuses to import without them: there, `pip install torch` with its dependencies, which
#     brings the nvidia-* wheels from PyPI: the venv grew to 5.7 GB here)
#     cd "$LLAMA_CPP_DIR" && cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
#         -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF && \
#         nice cmake --build build -j2 --target llama-bench
#
# The tokenizer troupe exports is built (byte-level BPE of exactly vocab_size ids, GPT-2's split),
# so the converter's table of known tokenizer hashes does not list it; bench/llama_cpp_convert.py
# runs the converter with that one case answered as "gpt-2" (see its docstring).
#
# Usage: LLAMA_CPP_DIR=... CONVERT_PYTHON=venv/bin/python bash bench/vs-llama-cpp.sh
# Environment (defaults in brackets):
#   MODEL [graphs/ds-v3-mini.toml]  WORK [target/vs-llama-cpp]  ROUNDS [3]  THREADS ["2 1"]
#   TESTS ["pp128 tg64 tg64@d4096 pp4000 tg64-q8"]: ppN / tgN, optional @dD (depth), optional -q8
#     (llama.cpp runs the Q8_0 GGUF; troupe runs TROUPE_Q8_MODEL with TROUPE_Q8_FLAGS)
#   REPS [1]: repetitions inside each engine's own run (each engine also does its own warm-up)
#   TROUPE [target/release/troupe, built if missing]  TROUPE_FLAGS []: added to every troupe row
#   TROUPE_Q8_MODEL [$WORK/hf]  TROUPE_Q8_FLAGS []: the troupe side of -q8 rows,
#     e.g. `--quantize int8 --quantize-keep none`, which quantises what Q8_0 does
#   CHECK [1]  CONVERT_PYTHON [python3]  FORCE [0]: 1 re-exports and re-converts
#   LLAMA_BIN [$LLAMA_CPP_DIR/build/bin]: where llama-bench is (another build of the checkout)
#   LLAMA_LINK_EXTRA []: extra g++ link flags for bench/llama_logits.cpp
#   RESULTS [$WORK/results.tsv]: one line per run (threads, test, engine, round, tok/s)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp checkout built as described at the top}"
MODEL=${MODEL:-graphs/ds-v3-mini.toml}
WORK=${WORK:-target/vs-llama-cpp}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"2 1"}
TESTS=${TESTS:-"pp128 tg64 tg64@d4096 pp4000 tg64-q8"}
REPS=${REPS:-1}
TROUPE=${TROUPE:-target/release/troupe}
TROUPE_FLAGS=${TROUPE_FLAGS:-}
TROUPE_Q8_MODEL=${TROUPE_Q8_MODEL:-$WORK/hf}
TROUPE_Q8_FLAGS=${TROUPE_Q8_FLAGS:-}
CHECK=${CHECK:-1}
PY=${CONVERT_PYTHON:-python3}
FORCE=${FORCE:-0}
BIN=${LLAMA_BIN:-$LLAMA_CPP_DIR/build/bin}
HF=$WORK/hf
mkdir -p "$WORK"

say() { printf '== %s\n' "$*" >&2; }

if [[ ! -x $TROUPE ]]; then
    say "building troupe (release)"
    cargo build --release --bin troupe
fi
[[ -x $BIN/llama-bench ]] || { echo "missing $BIN/llama-bench: build llama.cpp first (see the top of $0)" >&2; exit 2; }

# 1. Export and convert.
if [[ $FORCE == 1 || ! -f $HF/config.json ]]; then
    say "troupe export-hf -m $MODEL --out $HF"
    "$TROUPE" export-hf -m "$MODEL" --out "$HF"
fi
gguf() { echo "$WORK/model-$1.gguf"; }
OUTTYPES="bf16 q8_0"
[[ $CHECK == 1 ]] && OUTTYPES="f32 $OUTTYPES"
for t in $OUTTYPES; do
    if [[ $FORCE == 1 || ! -f $(gguf "$t") ]]; then
        say "convert_hf_to_gguf.py --outtype $t"
        LLAMA_CPP_DIR=$LLAMA_CPP_DIR nice "$PY" bench/llama_cpp_convert.py "$HF" \
            --outtype "$t" --outfile "$(gguf "$t")" >"$WORK/convert-$t.log" 2>&1 ||
            { tail -20 "$WORK/convert-$t.log" >&2; exit 1; }
    fi
done

# 2. Are both engines running the same model? bench/llama_logits.cpp (llama.h only) gives
# llama.cpp's token ids and logits at every position; troupe runs the same ids.
if [[ $CHECK == 1 ]]; then
    tool=$WORK/llama-logits
    if [[ ! -x $tool || bench/llama_logits.cpp -nt $tool ]]; then
        # shellcheck disable=SC2086 # LLAMA_LINK_EXTRA is words
        g++ -O2 -std=c++17 -I"$LLAMA_CPP_DIR/include" -I"$LLAMA_CPP_DIR/ggml/include" \
            bench/llama_logits.cpp -L"$BIN" ${LLAMA_LINK_EXTRA:-} -lllama -Wl,-rpath,"$BIN" -o "$tool"
    fi
    PROMPTS=(
        "The quick brown fox"
        "In 1879, the committee met at the old mill to decide, once and for all, who owned the river."
        "$(printf 'Line %d: numbers like 3.14 and 2718, words like apple, Apfel, pomme; ' {1..8})"
    )
    dir=$WORK/check
    mkdir -p "$dir"
    for i in "${!PROMPTS[@]}"; do
        p=${PROMPTS[$i]}
        ours=$("$TROUPE" generate -m "$HF" --prompt "$p" --max-new-tokens 1 --json -t 2 | tail -1 |
            jq -c '.prompt_ids')
        for t in f32 bf16; do
            ids=$("$tool" "$(gguf "$t")" 2 "$p" "$dir/llama-$t-$i.bin" 2>"$dir/llama-$t-$i.log" |
                sed -n 's/^ids: //p')
            [[ "[$ids]" == "$ours" ]] || echo "prompt $i: token ids differ: llama.cpp [$ids], troupe $ours"
            [[ -f $dir/troupe-$i.safetensors ]] ||
                "$TROUPE" logits -m "$HF" --runtime reference -t 2 --prompt-ids "$ids" --out "$dir/troupe-$i.safetensors"
            python3 bench/compare_logits.py "prompt $i ($(tr ',' '\n' <<<"$ids" | wc -l) tokens), GGUF $t" \
                "$dir/llama-$t-$i.bin" "$dir/troupe-$i.safetensors"
        done
        rm -f "$dir/troupe-$i.safetensors"
    done
fi

# 3. Alternating rounds.
RESULTS=${RESULTS:-$WORK/results.tsv}
: >"$RESULTS"
run_llama() { # threads test args...
    local t=$1 gg=$2
    shift 2
    "$BIN/llama-bench" -m "$gg" -t "$t" -r "$REPS" -o json "$@" 2>/dev/null | jq '.[0].avg_ts'
}
run_troupe() { # threads model flags args...
    local t=$1 m=$2 flags=$3
    shift 3
    # shellcheck disable=SC2086 # flags are words
    "$TROUPE" bench -m "$m" -t "$t" -r "$REPS" --runtime reference --json $flags "$@" | tail -1 |
        jq '.tests[0].tok_s'
}
for round in $(seq 1 "$ROUNDS"); do
    for t in $THREADS; do
        for test in $TESTS; do
            [[ $test =~ ^(pp|tg)([0-9]+)(@d([0-9]+))?(-q8)?$ ]] || { echo "bad test name $test" >&2; exit 2; }
            n=${BASH_REMATCH[2]} depth=${BASH_REMATCH[4]:-0} q8=${BASH_REMATCH[5]}
            if [[ ${BASH_REMATCH[1]} == pp ]]; then args=(-p "$n" -n 0); else args=(-p 0 -n "$n"); fi
            args+=(-d "$depth")
            gg=$(gguf bf16) tm=$HF tf=$TROUPE_FLAGS
            [[ -n $q8 ]] && gg=$(gguf q8_0) tm=$TROUPE_Q8_MODEL tf=$TROUPE_Q8_FLAGS
            order="llama troupe"
            ((round % 2 == 0)) && order="troupe llama"
            for side in $order; do
                if [[ $side == llama ]]; then v=$(run_llama "$t" "$gg" "${args[@]}")
                else v=$(run_troupe "$t" "$tm" "$tf" "${args[@]}"); fi
                printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$test" "$side" "$round" "$v" >>"$RESULTS"
                say "round $round  -t $t  $test  $side: $v tok/s"
            done
        done
    done
done

# 4. Medians and ratios.
python3 - "$RESULTS" "$TROUPE_FLAGS" "$TROUPE_Q8_MODEL" "$TROUPE_Q8_FLAGS" <<'EOF'
import statistics, sys
from collections import defaultdict
path, flags, q8_model, q8_flags = sys.argv[1:5]
runs = defaultdict(dict)
for line in open(path):
    t, test, side, rnd, v = line.rstrip("\n").split("\t")
    runs[(int(t), test)].setdefault(side, {})[int(rnd)] = float(v)
print(f"troupe flags: '{flags}'; -q8 rows: troupe runs {q8_model} '{q8_flags}' vs llama.cpp Q8_0")
print("| threads | test | llama.cpp tok/s (min-max) | troupe tok/s (min-max) | ratio of medians | median per-round ratio | rounds |")
print("|---|---|---|---|---|---|---|")
for (t, test), sides in sorted(runs.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
    l, r = sides.get("llama", {}), sides.get("troupe", {})
    if not l or not r:
        continue
    ml, mr = statistics.median(l.values()), statistics.median(r.values())
    per = [r[k] / l[k] for k in l if k in r]
    print(f"| {t} | {test} | {ml:.1f} ({min(l.values()):.1f}-{max(l.values()):.1f}) | "
          f"{mr:.1f} ({min(r.values()):.1f}-{max(r.values()):.1f}) | {mr / ml:.2f}x | "
          f"{statistics.median(per):.2f}x | {len(per)} |")
EOF
