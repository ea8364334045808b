#!/usr/bin/env bash
# venv.sh -- the Python venv the serving tests drive `troupe serve` with: the official `openai`
# client from PyPI, installed unattended into a cached venv
# (${TROUPE_OPENAI_VENV:-$HOME/.cache/troupe/openai-venv}) and reused on later runs, as
# ptx/check.sh does for ptxas. `.ci/run` calls it before the tests; the tests call it too (a
# no-op once cached). Prints the venv's python on stdout.
set -euo pipefail

VENV="${TROUPE_OPENAI_VENV:-$HOME/.cache/troupe/openai-venv}"
PKG="${TROUPE_OPENAI_PKG:-openai==3.57.0}"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
    echo "venv.sh: installing $PKG into $VENV" >&2
    PY="$(command -v python3 || command -v python)"
    mkdir -p "$(dirname "$VENV")"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PKG" >&2
    "$VENV/bin/python" -c 'import openai' || {
        echo "venv.sh: openai does not import inside $VENV after installing $PKG" >&2
        exit 2
    }
fi
echo "$VENV/bin/python"
