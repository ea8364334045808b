#!/usr/bin/env python3
"""Rewrites an exported byte-level BPE tokenizer.json so that every vocabulary entry decodes to
valid UTF-8 on its own (bench only: serving comparisons on random weights).

Why: a model with random weights (ds-v3-mini) emits arbitrary ids; in a byte-level BPE vocabulary
many ids are lone bytes >= 0x80 or pieces of multibyte sequences. llama.cpp's `llama-server`
parses every partial result as a chat message and ends the stream with HTTP 500 ("does not match
the expected Content-only format") when the text so far is not valid UTF-8. Renaming those entries
changes no id and no weight, so both engines still run the same model on the same ids.

What: each vocabulary entry whose bytes (GPT-2's byte-to-unicode alphabet, decoded) are not valid
UTF-8 on their own is renamed to the ASCII placeholder `<0xHH..>` (its bytes in hex; printable
ASCII maps to itself in GPT-2's alphabet, so the placeholder decodes to exactly that text). A merge
that names a renamed entry (either side, or the entry it makes) is dropped: the rewritten tokenizer
can still encode ASCII text, but not text that needs a renamed byte (prompts are token ids here).
The vocabulary size and every id stay as they were; added tokens are left alone.

Usage: python3 bench/utf8_safe_tokenizer.py SRC_DIR/tokenizer.json DST_DIR/tokenizer.json
Prints how many entries were renamed and merges dropped; then, if the `tokenizers` package is
installed, loads the written file and fails unless every id decodes to text without U+FFFD.
"""

import json
import sys


def bytes_to_unicode():
    """GPT-2's table: byte value -> the printable character that stands for it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def is_valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8", "strict")
        return True
    except UnicodeDecodeError:
        return False


def rewrite(tok: dict) -> tuple[int, int]:
    model = tok["model"]
    if model.get("type") != "BPE" or (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise SystemExit("utf8_safe_tokenizer.py: expected a ByteLevel BPE tokenizer.json")
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = model["vocab"]
    added = {a["content"] for a in tok.get("added_tokens", [])}
    renamed = {}
    for piece in vocab:
        if piece in added:
            continue
        try:
            raw = bytes(char_to_byte[c] for c in piece)
        except KeyError as e:
            raise SystemExit(f"utf8_safe_tokenizer.py: entry {piece!r} has a character outside "
                             f"GPT-2's byte alphabet: {e}")
        if not is_valid_utf8(raw):
            renamed[piece] = "<0x" + raw.hex().upper() + ">"
    clashes = set(renamed.values()) & (set(vocab) - set(renamed))
    if clashes:
        raise SystemExit(f"utf8_safe_tokenizer.py: placeholders already in the vocabulary: {sorted(clashes)[:5]}")
    model["vocab"] = {renamed.get(p, p): i for p, i in vocab.items()}
    kept = []
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        if left in renamed or right in renamed or left + right in renamed:
            continue
        kept.append(merge)
    dropped = len(model["merges"]) - len(kept)
    model["merges"] = kept
    return len(renamed), dropped


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1:]
    with open(src, encoding="utf-8") as f:
        tok = json.load(f)
    n_vocab = len(tok["model"]["vocab"])
    renamed, dropped = rewrite(tok)
    assert len(tok["model"]["vocab"]) == n_vocab
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    print(f"renamed {renamed} of {n_vocab} entries to <0x..> placeholders, dropped {dropped} merges")
    check(dst)


def check(path: str) -> None:
    """Every id of the written tokenizer decodes, alone, to valid UTF-8 (no U+FFFD)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizers is not installed: the written file was not checked")
        return
    tok = Tokenizer.from_file(path)
    n = tok.get_vocab_size(with_added_tokens=True)
    broken = [i for i in range(n) if "\ufffd" in tok.decode([i], skip_special_tokens=False)]
    if broken:
        raise SystemExit(f"utf8_safe_tokenizer.py: {len(broken)} ids still decode to U+FFFD, "
                         f"e.g. {broken[:5]}")
    print(f"checked with tokenizers {__import__('tokenizers').__version__}: all {n} ids decode to valid UTF-8")


if __name__ == "__main__":
    main()
