#!/usr/bin/env python3
"""Prefix-cache effect on time to first token, against an OpenAI-compatible server with the
prefix cache on (--url) and the same model with it off (--url-cold, `troupe serve
--no-prefix-cache`). Standard library only; loopback only.

Each round draws a random PREFIX-token prefix P and two SUFFIX-token tails S1, S2 (token ids):
  1. P+S1 on --url: a cold request (nothing of P is cached yet); it leaves P's full pages cached;
  2. P+S2 on --url: a warm request (P's full pages come from the cache);
  3. P+S2 on --url-cold: the same request computed whole, whose tokens step 2 must equal.
All greedy, streamed, MAX_TOKENS tokens. Prints a line per round and one JSON line at the end:
TTFT medians cold/warm, their ratio, and how many warm outputs were identical to the cold ones.

    python3 bench/prefix_ttft.py --url http://127.0.0.1:8080 --url-cold http://127.0.0.1:8081 \
        --model ds-v3-mini --prefix 1000 --suffix 16 --rounds 5
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse


def stream(url, model, prompt, max_tokens):
    """(seconds to the first token, the generated token ids)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "return_token_ids": True,
    })
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        sys.exit(f"{url}: HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, ids = None, []
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            sys.exit(f"{url}: stream error {event['error']}")
        for choice in event.get("choices", []):
            got = choice.get("token_ids") or []
            if got and ttft is None:
                ttft = time.perf_counter() - start
            ids.extend(got)
    conn.close()
    return ttft, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server with the prefix cache on")
    ap.add_argument("--url-cold", required=True, help="the same model with it off")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--suffix", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1000, help="ids are drawn from 2..VOCAB")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ids = lambda n: [rng.randrange(2, a.vocab) for _ in range(n)]
    cold, warm, same = [], [], 0
    for r in range(a.rounds):
        p, s1, s2 = ids(a.prefix), ids(a.suffix), ids(a.suffix)
        t_cold, _ = stream(a.url, a.model, p + s1, a.max_tokens)
        t_warm, out_warm = stream(a.url, a.model, p + s2, a.max_tokens)
        _, out_whole = stream(a.url_cold, a.model, p + s2, a.max_tokens)
        cold.append(t_cold)
        warm.append(t_warm)
        same += out_warm == out_whole
        print(f"round {r}: TTFT cold {t_cold * 1e3:.0f} ms, warm {t_warm * 1e3:.0f} ms, "
              f"output identical to the uncached run: {out_warm == out_whole}", file=sys.stderr)
    mc, mw = statistics.median(cold), statistics.median(warm)
    print(json.dumps({
        "prefix_tokens": a.prefix, "suffix_tokens": a.suffix, "rounds": a.rounds,
        "ttft_cold_ms_median": round(mc * 1e3, 1), "ttft_warm_ms_median": round(mw * 1e3, 1),
        "cold_over_warm": round(mc / mw, 2), "identical_outputs": same,
    }))
    if same != a.rounds:
        sys.exit("a warm output differed from the uncached run")


if __name__ == "__main__":
    main()
