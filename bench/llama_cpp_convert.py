#!/usr/bin/env python3
"""Runs llama.cpp's convert_hf_to_gguf.py on a folder written by `troupe export-hf`.

Usage: LLAMA_CPP_DIR=... python bench/llama_cpp_convert.py HF_DIR --outtype bf16 --outfile X.gguf

The converter identifies a BPE tokenizer's pre-tokenizer by hashing the token ids it gives for a
fixed text and refuses hashes it does not know. The tokenizer troupe exports is built, not taken
from a published model, so its hash is in no table. It splits text exactly as GPT-2 does: a
`ByteLevel` pre-tokenizer with GPT-2's regex, no normalizer. This wrapper therefore answers
"gpt-2" (llama.cpp's name for that split) when, and only when, the converter does not recognise
the hash AND the folder's tokenizer.json has exactly that pre-tokenizer and no normalizer; any
other tokenizer still fails as before. It patches the converter in memory (the checkout is left
untouched) and then runs it unchanged with the remaining arguments.
"""

import json
import os
import runpy
import sys
from pathlib import Path

GPT2_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def splits_like_gpt2(model_dir: Path) -> bool:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    tok = json.loads(path.read_text(encoding="utf-8"))
    pre = tok.get("pre_tokenizer") or {}
    same = all(pre.get(k) == v for k, v in GPT2_SPLIT.items())
    return same and tok.get("normalizer") is None and tok.get("model", {}).get("type") == "BPE"


def main() -> None:
    llama = Path(os.environ["LLAMA_CPP_DIR"]).resolve()
    sys.path.insert(0, str(llama / "gguf-py"))
    sys.path.insert(0, str(llama))
    from conversion import base  # the converter's own package

    owner = next(c for c in base.TextModel.__mro__ if "get_vocab_base_pre" in c.__dict__)
    original = owner.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if splits_like_gpt2(Path(self.dir_model)):
                print("troupe: unknown tokenizer hash; tokenizer.json splits like GPT-2 "
                      "(ByteLevel + GPT-2 regex, no normalizer): using pre-tokenizer 'gpt-2'",
                      file=sys.stderr)
                return "gpt-2"
            raise

    owner.get_vocab_base_pre = get_vocab_base_pre
    script = llama / "convert_hf_to_gguf.py"
    sys.argv = [str(script)] + sys.argv[1:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
