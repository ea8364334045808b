#!/usr/bin/env bash
# file-length.sh LIMIT -- fails when a tracked (or new, not ignored) *.rs file exceeds LIMIT lines,
# listing every offender with its length.
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${1:-600}"
over=0
while IFS= read -r -d '' f; do
    n=$(wc -l < "$f")
    if (( n > limit )); then
        echo "file-length: $f has $n lines (limit $limit)" >&2
        over=1
    fi
done < <(git ls-files -z --cached --others --exclude-standard -- '*.rs')
if (( over )); then
    echo "file-length: split the files above along their jobs" >&2
    exit 1
fi
echo "file-length: every *.rs file is at most $limit lines"
