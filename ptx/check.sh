#!/usr/bin/env bash
# check.sh -- Check A: assemble every hand-written PTX kernel with NVIDIA's ptxas.
#
# * Installs ptxas unattended from PyPI (package nvidia-cuda-nvcc-cu12) into a cached venv
#   (${TROUPE_PTXAS_VENV:-$HOME/.cache/troupe/ptxas-venv}); reuses it on later runs.
#   TROUPE_PTXAS=/path/to/ptxas skips the install and uses that binary instead.
# * Assembles ptx/kernels/*.ptx for sm_80, sm_89 and sm_90 with `-v --warn-on-spills`, skipping a
#   file whose `.target` is newer than the arch being assembled for.
# * Fails on any ptxas error or warning, and on register spills / stack frames in kernels listed on a
#   `// troupe:hot name...` line of their file (a spill in a cold kernel is reported in the table only).
# * Writes the registers / shared memory / spill table into ptx/README.md between the
#   `ptxas-table` markers. Output is deterministic, so running it twice changes nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KERNELS="$HERE/kernels"
README="$HERE/README.md"
VENV="${TROUPE_PTXAS_VENV:-$HOME/.cache/troupe/ptxas-venv}"
PKG="${TROUPE_PTXAS_PKG:-nvidia-cuda-nvcc-cu12==12.9.86}"
ARCHS=(80 89 90)

find_ptxas() {
    if [[ -n "${TROUPE_PTXAS:-}" ]]; then
        echo "$TROUPE_PTXAS"
        return
    fi
    local found
    found="$(find "$VENV" -path '*nvidia/cuda_nvcc/bin/ptxas' -type f 2>/dev/null | head -n 1 || true)"
    echo "$found"
}

PTXAS="$(find_ptxas)"
if [[ -z "$PTXAS" || ! -x "$PTXAS" ]]; then
    echo "check.sh: installing ptxas ($PKG) into $VENV" >&2
    PY="$(command -v python3 || command -v python)"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PKG"
    PTXAS="$(find_ptxas)"
    if [[ -z "$PTXAS" || ! -x "$PTXAS" ]]; then
        echo "check.sh: ptxas not found inside $VENV after installing $PKG" >&2
        exit 2
    fi
fi
VERSION="$("$PTXAS" --version | grep -o 'release [0-9.]*, V[0-9.]*' || echo unknown)"
echo "check.sh: using $PTXAS ($VERSION)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows.tsv"
: >"$ROWS"
failed=0

shopt -s nullglob
files=("$KERNELS"/*.ptx)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "check.sh: no kernels in $KERNELS" >&2
    exit 2
fi

for file in "${files[@]}"; do
    name="$(basename "$file")"
    target="$(grep -m1 -oE '^\s*\.target\s+sm_[0-9]+' "$file" | grep -oE '[0-9]+$' || true)"
    if [[ -z "$target" ]]; then
        echo "FAIL $name: no .target line" >&2
        failed=1
        continue
    fi
    hot=" $( (grep -E '^//\s*troupe:hot' "$file" || true) | sed -E 's#^//\s*troupe:hot##' | tr '\n' ' ') "
    for arch in "${ARCHS[@]}"; do
        if ((target > arch)); then
            continue
        fi
        log="$WORK/$name.sm_$arch.log"
        if ! "$PTXAS" -arch="sm_$arch" -v --warn-on-spills "$file" -o "$WORK/out.cubin" >"$log" 2>&1; then
            echo "FAIL $name sm_$arch: ptxas error" >&2
            grep -v '^ptxas info' "$log" >&2 || true
            failed=1
            continue
        fi
        # Any warning other than a spill warning fails outright; spill warnings are judged per kernel.
        if grep -i 'warning' "$log" | grep -vi 'spill' >&2; then
            echo "FAIL $name sm_$arch: ptxas warning" >&2
            failed=1
        fi
        # Parse the per-entry properties ptxas -v prints.
        awk -v file="$name" -v arch="sm_$arch" -v hot="$hot" '
            /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); fn = substr($0, RSTART + 1, RLENGTH - 2); stack = 0; st = 0; ld = 0 }
            /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
            /Used [0-9]+ registers/ {
                regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                smem = 0
                if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
                h = (index(hot, " " fn " ") > 0) ? "hot" : ""
                print file "\t" fn "\t" arch "\t" regs "\t" smem "\t" stack "\t" st "\t" ld "\t" h
            }' "$log" >>"$ROWS"
    done
done

# Hot kernels must not spill or use a stack frame.
while IFS=$'\t' read -r file fn arch regs smem stack st ld h; do
    if [[ "$h" == "hot" && ("$stack" != "0" || "$st" != "0" || "$ld" != "0") ]]; then
        echo "FAIL $file:$fn $arch: hot kernel spills (stack $stack, stores $st, loads $ld)" >&2
        failed=1
    fi
done <"$ROWS"

# Every name on a troupe:hot line must be an entry that was assembled.
for file in "${files[@]}"; do
    name="$(basename "$file")"
    for fn in $( (grep -E '^//\s*troupe:hot' "$file" || true) | sed -E 's#^//\s*troupe:hot##'); do
        if ! awk -F'\t' -v f="$name" -v k="$fn" '$1 == f && $2 == k { ok = 1 } END { exit !ok }' "$ROWS"; then
            echo "FAIL $name: troupe:hot names unknown entry '$fn'" >&2
            failed=1
        fi
    done
done

TABLE="$WORK/table.md"
{
    echo "<!-- ptxas-table:begin (generated by ptx/check.sh; do not edit by hand) -->"
    echo "ptxas $VERSION, \`-v --warn-on-spills\`. Shared memory is static \`.shared\` only (dynamic shared memory is sized at launch, see the kernel list)."
    echo
    echo "| file | kernel | arch | registers | static smem (B) | stack (B) | spill st/ld (B) | hot |"
    echo "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
    sort -t$'\t' -k1,1 -k2,2 -k3,3 "$ROWS" | awk -F'\t' '{ printf "| %s | `%s` | %s | %s | %s | %s | %s/%s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
    echo "<!-- ptxas-table:end -->"
} >"$TABLE"

if [[ ! -f "$README" ]]; then
    printf '# troupe-ptx\n\n' >"$README"
fi
if ! grep -q '<!-- ptxas-table:begin' "$README"; then
    printf '\n## ptxas report\n\n<!-- ptxas-table:begin -->\n<!-- ptxas-table:end -->\n' >>"$README"
fi
awk -v table="$TABLE" '
    /<!-- ptxas-table:begin/ { while ((getline line < table) > 0) print line; skip = 1; next }
    /<!-- ptxas-table:end/ { skip = 0; next }
    !skip { print }' "$README" >"$WORK/README.new"
if ! cmp -s "$WORK/README.new" "$README"; then
    cp "$WORK/README.new" "$README"
    echo "check.sh: updated the ptxas table in $README"
fi

n=$(wc -l <"$ROWS")
if ((failed)); then
    echo "check.sh: FAILED ($n kernel builds assembled)" >&2
    exit 1
fi
echo "check.sh: OK, $n kernel builds (${#files[@]} files x applicable archs), no errors, no warnings, no spills in hot kernels"
