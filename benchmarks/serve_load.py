"""Load test of the OpenAI-compatible server: latency percentiles and requests/s, batched vs solo.

Starts ``python -m streaming_dllm.server`` twice on loopback (``--max-batch-size N`` and
``--max-batch-size 1``), sends the same workload (arithmetic dev-set prompts, half chat, half
completions) from ``--concurrency`` clients, checks every answer equals the one-at-a-time answer
of the same request, and prints one row per mode. Example::

    python benchmarks/serve_load.py --requests 200 --concurrency 16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One distinct request of the workload."""

    key: int
    chat: bool
    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    n: int = 1


@dataclass
class Result:
    """One answer: its choices' texts and finish reasons, and the usage counts."""

    key: int
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency: float

    def answer(self) -> tuple:
        return self.texts, self.finish_reasons, self.prompt_tokens, self.completion_tokens


def make_workload(distinct: int, max_tokens: int, sampled_share: float = 0.25, seed: int = 0,
                  multi_choice: bool = False) -> list[Item]:
    """``distinct`` requests over dev-set problems; a share sampled with a fixed seed; with
    ``multi_choice`` every third one asks for n=2 (a server with --max-batch-size 1 refuses those)."""
    from streaming_dllm.tasks import arith

    rng = random.Random(seed)
    items = []
    for i, p in enumerate(arith.problems("dev", distinct)):
        sampled = rng.random() < sampled_share
        n = 2 if multi_choice and i % 3 == 0 else 1
        items.append(Item(i, i % 2 == 0, p.prompt, max_tokens, 0.7 if sampled else 0.0, 1000 + i, n))
    return items


def expand(items: list[Item], total: int, seed: int = 0) -> list[Item]:
    """``total`` requests cycling over ``items``, shuffled."""
    out = [items[i % len(items)] for i in range(total)]
    random.Random(seed).shuffle(out)
    return out


async def run_load(base_url: str, model: str, workload: list[Item], concurrency: int,
                   api_key: str = "unused") -> tuple[list[Result], float]:
    """Send ``workload`` from ``concurrency`` clients; return the results and the wall time."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=600)
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in workload:
        queue.put_nowait(item)
    results: list[Result] = []

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            kw = dict(model=model, max_tokens=item.max_tokens, temperature=item.temperature, seed=item.seed,
                      n=item.n)
            t = time.perf_counter()
            if item.chat:
                messages = [{"role": "user", "content": item.prompt}]
                r = await client.chat.completions.create(messages=messages, **kw)
                texts = [c.message.content for c in r.choices]
            else:
                r = await client.completions.create(prompt=item.prompt, **kw)
                texts = [c.text for c in r.choices]
            reasons = [c.finish_reason for c in r.choices]
            results.append(Result(item.key, texts, reasons, r.usage.prompt_tokens, r.usage.completion_tokens,
                                  time.perf_counter() - t))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


async def load_with_health_probe(base_url: str, model: str, workload: list[Item],
                                 concurrency: int) -> tuple[list[Result], float, list[float]]:
    """``run_load`` while a probe GETs /health every 50 ms; also returns the probe latencies."""
    import httpx

    probes: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not done.is_set():
                t = time.perf_counter()
                (await client.get(base_url + "/health")).raise_for_status()
                probes.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)

    task = asyncio.create_task(probe())
    try:
        results, wall = await run_load(base_url, model, workload, concurrency)
    finally:
        done.set()
        await task
    return results, wall, probes


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def summary(results: list[Result], wall: float) -> dict[str, float]:
    lat = [r.latency for r in results]
    return {"requests": len(results), "wall_s": wall, "req_per_s": len(results) / wall,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "mean_s": statistics.mean(lat),
            "tokens_per_s": sum(r.completion_tokens for r in results) / wall}


def mismatches(results: list[Result], reference: dict[int, Result]) -> list[int]:
    """Keys whose answer differs from the reference (one-at-a-time) answer."""
    return [r.key for r in results if r.answer() != reference[r.key].answer()]


def scrape(base_url: str, name: str) -> float:
    """One value of the server's /metrics."""
    body = urllib.request.urlopen(base_url + "/metrics").read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    return float(m.group(1)) if m else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m streaming_dllm.server`` on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "streaming_dllm.server", "--port", str(self.port),
               "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--method", default="streaming")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--distinct", type=int, default=50, help="distinct requests in the workload")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sampled-share", type=float, default=0.25,
                    help="share of requests sampled at temperature 0.7 (the rest greedy)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="the server's --batch-wait-ms")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    items = make_workload(args.distinct, args.max_tokens, sampled_share=args.sampled_share)
    workload = expand(items, args.requests)
    common = ["--model", args.model, "--method", args.method, "--block-length", str(args.block_length),
              "--threads", str(args.threads), "--max-queue", str(max(64, args.requests)), "--device", "cpu",
              "--batch-wait-ms", str(args.batch_wait_ms)]
    rows = {}
    reference: dict[int, Result] = {}
    for mode, batch in (("solo", 1), ("batched", args.batch_size)):
        with ServerProcess([*common, "--max-batch-size", str(batch)]) as srv:
            if not reference:
                ref, _ = asyncio.run(run_load(srv.url, args.model, items, 1))
                reference = {r.key: r for r in ref}
            results, wall, probes = asyncio.run(
                load_with_health_probe(srv.url, args.model, workload, args.concurrency))
            row = summary(results, wall)
            row["health_p50_ms"] = 1000 * percentile(probes, 50)
            row["health_max_ms"] = 1000 * max(probes)
            row["mismatches"] = len(mismatches(results, reference))
            row["batches"] = scrape(srv.url, "sdllm_batch_rows_count")
            row["mean_rows_per_batch"] = scrape(srv.url, "sdllm_batch_rows_sum") / row["batches"]
            rows[mode] = row
    print(f"{args.requests} requests, {args.concurrency} clients, max_tokens {args.max_tokens}, "
          f"sampled share {args.sampled_share}, "
          f"method {args.method}, block {args.block_length}, model {args.model}, threads {args.threads}")
    head = ("mode", "req/s", "p50 s", "p99 s", "tok/s", "rows/batch", "mismatch", "/health p50/max ms")
    print(f"{head[0]:8} " + " ".join(f"{h:>7}" for h in head[1:5]) + f" {head[5]:>10} {head[6]:>8}",
          head[7])
    for mode, r in rows.items():
        print(f"{mode:8} {r['req_per_s']:7.2f} {r['p50_s']:7.3f} {r['p99_s']:7.3f} {r['tokens_per_s']:7.1f} "
              f"{r['mean_rows_per_batch']:10.2f} {r['mismatches']:8d}  "
              f"{r['health_p50_ms']:.1f} / {r['health_max_ms']:.1f}")
    print(f"batched / solo throughput: {rows['batched']['req_per_s'] / rows['solo']['req_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "modes": rows}, f, indent=2)
    return 1 if any(r["mismatches"] for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
