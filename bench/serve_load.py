#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server (`troupe serve`, llama.cpp's `llama-server`):
CONCURRENCY streams at once, each a streamed /v1/completions request of PROMPT_TOKENS token ids
and MAX_TOKENS tokens (`ignore_eos`, so every request has the same length), until REQUESTS
requests are done or DURATION seconds pass. Standard library only; loopback only.

Reports (one JSON line on stdout): requests done, output tokens/s over the run, time to first
token p50/p99, inter-token latency p50/p99 (gaps between a request's consecutive chunks, each
gap counted once per token it carried), and errors by HTTP status / kind. With
--disconnect-rate P a request hangs up after a random number of chunks with probability P
(the soak test); those count as `disconnected`, not errors.

    python3 bench/serve_load.py --url http://127.0.0.1:8080 --model ds-v3-mini \
        --concurrency 64 --requests 256 --prompt-tokens 128 --max-tokens 64
"""
import argparse
import asyncio
import json
import random
import sys
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class Stats:
    def __init__(self):
        self.ttft, self.itl, self.errors = [], [], {}
        self.done = self.tokens = self.disconnected = 0

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def read_chunked_events(reader):
    """Yields SSE `data:` payloads from a chunked HTTP body."""
    buf = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            return
        buf += await reader.readexactly(size)
        await reader.readexactly(2)
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if event.startswith(b"data: "):
                yield event[6:].decode("utf-8", "replace")


async def one_request(args, host, port, rng, stats):
    prompt = [rng.randrange(2, args.vocab) for _ in range(args.prompt_tokens)]
    body = json.dumps({
        "model": args.model, "prompt": prompt, "max_tokens": args.max_tokens,
        "temperature": 0, "ignore_eos": True, "stream": True, "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }).encode()
    hang_up_after = None
    if rng.random() < args.disconnect_rate:
        hang_up_after = rng.randrange(1, max(2, args.max_tokens))
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        stats.error(f"connect:{type(e).__name__}")
        return
    try:
        writer.write(
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1]) if status_line else 0
        while (await reader.readline()).strip():
            pass
        if status != 200:
            stats.error(str(status))
            return
        last, chunks = None, 0
        async for data in read_chunked_events(reader):
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                stats.error("stream:" + str(event["error"].get("code")))
                return
            if not event.get("choices"):
                continue
            choice = event["choices"][0]
            # troupe sends the chunk's ids (`return_token_ids`); a server without them, one per chunk,
            # except a closing chunk with no text (llama-server ends with `"text": ""` and the
            # finish reason), which carries no token.
            if "token_ids" in choice:
                n = len(choice["token_ids"])
            else:
                n = 0 if choice.get("finish_reason") and not choice.get("text") else 1
            if n == 0:
                continue
            now = time.perf_counter()
            if last is None:
                stats.ttft.append(now - start)
            else:
                stats.itl.extend([(now - last) / max(n, 1)] * max(n, 1))
            last = now
            stats.tokens += n
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                stats.disconnected += 1
                return
        stats.done += 1
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        stats.error(f"io:{type(e).__name__}")
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256, help="stop after this many requests")
    ap.add_argument("--duration", type=float, default=600, help="and after this many seconds")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000, help="prompt ids are drawn below this")
    ap.add_argument("--disconnect-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    url = urllib.parse.urlparse(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("serve_load.py: loopback only (the --url host must be 127.0.0.1, ::1 or localhost)")
    rng = random.Random(args.seed)
    stats = Stats()
    started = time.perf_counter()
    deadline = started + args.duration
    issued = 0

    async def worker():
        nonlocal issued
        while issued < args.requests and time.perf_counter() < deadline:
            issued += 1
            await one_request(args, url.hostname, url.port or 80, rng, stats)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    ms = lambda x: None if x is None else round(x * 1000, 2)
    print(json.dumps({
        "concurrency": args.concurrency, "requests_done": stats.done,
        "disconnected": stats.disconnected, "output_tokens": stats.tokens,
        "seconds": round(elapsed, 2), "output_tokens_per_s": round(stats.tokens / elapsed, 2),
        "ttft_ms_p50": ms(percentile(stats.ttft, 50)), "ttft_ms_p99": ms(percentile(stats.ttft, 99)),
        "itl_ms_p50": ms(percentile(stats.itl, 50)), "itl_ms_p99": ms(percentile(stats.itl, 99)),
        "errors": stats.errors,
    }))


if __name__ == "__main__":
    asyncio.run(main())
