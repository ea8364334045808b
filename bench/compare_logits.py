#!/usr/bin/env python3
"""Compares llama.cpp's logits for every position (bench/llama_logits.cpp: raw f32, T x V) with
`troupe logits --out` (safetensors, F32 tensor `logits` [T, V]). Standard library only.

Usage: compare_logits.py LABEL LLAMA.bin TROUPE.safetensors
Prints one line over all positions: max |diff|, max |logit|, their ratio, positions whose max
|diff| is within 1% of their max |logit|, positions whose top-1 token agrees, mean top-10
overlap, and the lowest per-position Pearson correlation.
"""

import array
import json
import math
import struct
import sys


def read_llama(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return list(a)


def read_troupe(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    t = header["logits"]
    assert t["dtype"] == "F32", t
    rows, vocab = t["shape"]
    start, end = t["data_offsets"]
    body = data[8 + n + start:8 + n + end]
    a = array.array("f")
    a.frombytes(body)
    return [list(a[r * vocab:(r + 1) * vocab]) for r in range(rows)]


def top(v, k):
    return sorted(range(len(v)), key=lambda i: -v[i])[:k]


def corr(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def main():
    label, llama_path, troupe_path = sys.argv[1:4]
    rows = read_troupe(troupe_path)
    flat = read_llama(llama_path)
    vocab = len(rows[0])
    if len(flat) != len(rows) * vocab:
        sys.exit(f"{label}: shapes differ: llama.cpp {len(flat)} values, troupe {len(rows)} x {vocab}")
    diff = scale = 0.0
    same_top1 = overlap = close = 0
    worst_corr = 1.0
    for r, b in enumerate(rows):
        a = flat[r * vocab:(r + 1) * vocab]
        row_diff = max(abs(x - y) for x, y in zip(a, b))
        row_scale = max(abs(y) for y in b)
        close += row_diff <= 1e-2 * row_scale
        diff, scale = max(diff, row_diff), max(scale, row_scale)
        same_top1 += top(a, 1) == top(b, 1)
        overlap += len(set(top(a, 10)) & set(top(b, 10)))
        worst_corr = min(worst_corr, corr(a, b))
    n = len(rows)
    print(f"{label}: max|diff| {diff:.3g}  max|logit| {scale:.3g}  rel {diff / scale:.2e}  "
          f"within 1% at {close}/{n} positions  top-1 same at {same_top1}/{n}  top-10 overlap {overlap / n:.1f}/10  "
          f"min corr {worst_corr:.6f}")


if __name__ == "__main__":
    main()
