"""Load test of the OpenAI-compatible server: throughput, latency and time to first block per server mode.

Starts ``python -m streaming_dllm.server`` once per server mode on loopback (``--servers``, by
default ``serial,same-settings,continuous``: one request at a time, today's batching of identical
settings, continuous batching) and sends every mode the same requests, **interleaved**: each round
runs the same chunk of the workload on every server in turn (the order rotating from round to
round), so drift in the machine's load (a shared box) hits all modes alike. Every answer is
checked against the answer the same request got alone (the serial server, one client, before the
load), so batching may change speed but never an answer.

Workloads (``--workload``): ``uniform`` is the original one (one method and ``max_tokens``, a
share sampled); ``mixed`` mixes ``max_tokens`` in {16, 32, 64, 128}, methods and knobs
(streaming with several alpha / threshold / window values, fast-dllm, a few vanilla), greedy and
seeded sampling, chat and completions, and a third of the requests streamed (their time to the
first content chunk is the time to first block, TTFB).

Arrivals (``--arrivals``): ``closed`` runs ``--concurrency`` clients, each sending its next request
as soon as the last one is answered (this measures saturation throughput). ``poisson`` runs that
closed-loop phase first and then, per rate in ``--rates``, requests arriving by a seeded Poisson
process (open loop, the same arrival times for every server); a rate written ``1.5x`` is that
multiple of the closed-loop throughput of ``--saturation-server``. Examples::

    python benchmarks/serve_load.py --requests 200 --concurrency 16 --max-tokens 32
    python benchmarks/serve_load.py --workload mixed --distinct 48 \\
        --servers serial,same-settings,continuous,continuous-joint --requests 160 --rounds 4 \\
        --arrivals poisson --rates 0.5x,1x,1.5x,2x,3x --poisson-requests 80 --poisson-rounds 2 \\
        --json benchmarks/results/serve_load_poisson.json

A server without ``--batching`` (before continuous batching) is driven with ``--max-batch-size 1``
for ``serial`` and ``--max-batch-size N`` for ``same-settings``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

Knobs = tuple[tuple[str, float], ...]
Arrivals = list[tuple[float, "Item"]]

MIXED_SETTINGS: list[tuple[str, Knobs, int]] = [
    ("streaming", (), 3),
    ("streaming", (("alpha", 0.1),), 1),
    ("streaming", (("alpha", 0.5),), 1),
    ("streaming", (("threshold", 0.8),), 1),
    ("streaming", (("threshold", 0.95),), 1),
    ("streaming", (("window", 16),), 1),
    ("streaming", (("window", 64),), 1),
    ("fast-dllm", (), 2),
    ("fast-dllm", (("threshold", 0.8),), 1),
    ("vanilla", (), 1),
]
"""(method, request knobs, weight) of the mixed workload: mostly Streaming-dLLM with one knob
moved at a time, some Fast-dLLM, a few vanilla (no cache, one token per forward: the costly kind)."""
MIXED_MAX_TOKENS = (16, 32, 64, 128)
VANILLA_MAX_TOKENS = (16, 32)
"""vanilla commits one token per forward over the whole sequence; longer ones would dominate a run."""


@dataclass(frozen=True)
class Item:
    """One distinct request of the workload (``method`` None = the server's default method)."""

    key: int
    chat: bool
    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    n: int = 1
    method: str | None = None
    knobs: Knobs = ()
    stream: bool = False

    def extra_body(self) -> dict[str, Any]:
        """The decoding fields the server takes beyond OpenAI's (``method`` and the knobs)."""
        body: dict[str, Any] = dict(self.knobs)
        if self.method is not None:
            body["method"] = self.method
        return body

    @property
    def setting(self) -> str:
        """A short label of the decoding settings, for the workload description."""
        knobs = " ".join(f"{k}={v}" for k, v in self.knobs)
        return f"{self.method or 'default'}{' ' + knobs if knobs else ''}"


@dataclass
class Result:
    """One answer: its choices' texts and finish reasons, the usage counts, and its timings.

    ``ttfb`` is the time to the first content chunk of a streamed request (None when not streamed);
    ``error`` names the failure of a request that got no answer (its answer is then empty)."""

    key: int
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency: float
    ttfb: float | None = None
    error: str | None = None

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


def make_mixed_workload(distinct: int, sampled_share: float = 0.2, stream_share: float = 1 / 3,
                        seed: int = 0) -> list[Item]:
    """``distinct`` requests with mixed settings (``MIXED_SETTINGS``, ``MIXED_MAX_TOKENS``): the
    workload where batching only identical settings finds little company and continuous batching
    should not care. Seeded, so every run and every server sees the same requests."""
    from streaming_dllm.tasks import arith

    rng = random.Random(seed)
    choices = [(m, k) for m, k, w in MIXED_SETTINGS for _ in range(w)]
    items = []
    for i, p in enumerate(arith.problems("dev", distinct)):
        method, knobs = choices[i % len(choices)] if i < len(choices) else rng.choice(choices)
        lengths = VANILLA_MAX_TOKENS if method == "vanilla" else MIXED_MAX_TOKENS
        temperature = 0.7 if rng.random() < sampled_share else 0.0
        items.append(Item(i, i % 2 == 0, p.prompt, rng.choice(lengths), temperature, 1000 + i, 1, method,
                          knobs, rng.random() < stream_share))
    return items


def expand(items: list[Item], total: int, seed: int = 0) -> list[Item]:
    """``total`` requests cycling over ``items``, shuffled."""
    out = [items[i % len(items)] for i in range(total)]
    random.Random(seed).shuffle(out)
    return out


async def send(client: Any, model: str, item: Item) -> Result:
    """One request; a failure becomes a ``Result`` with ``error`` set (the load goes on)."""
    kw: dict[str, Any] = dict(model=model, max_tokens=item.max_tokens, temperature=item.temperature,
                              seed=item.seed, n=item.n)
    if item.extra_body():
        kw["extra_body"] = item.extra_body()
    t = time.perf_counter()
    try:
        if item.stream:
            return await _send_stream(client, item, kw, t)
        if item.chat:
            messages = [{"role": "user", "content": item.prompt}]
            r = await client.chat.completions.create(messages=messages, **kw)
            texts = [c.message.content for c in r.choices]
        else:
            r = await client.completions.create(prompt=item.prompt, **kw)
            texts = [c.text for c in r.choices]
    except Exception as exc:  # counted as an error of this request, reported per server
        return Result(item.key, [], [], 0, 0, time.perf_counter() - t, error=_error_name(exc))
    reasons = [c.finish_reason for c in r.choices]
    return Result(item.key, texts, reasons, r.usage.prompt_tokens, r.usage.completion_tokens,
                  time.perf_counter() - t)


async def _send_stream(client: Any, item: Item, kw: dict[str, Any], t: float) -> Result:
    """A streamed request: the pieces joined per choice, and the time of the first content chunk."""
    kw = {**kw, "stream": True, "stream_options": {"include_usage": True}}
    if item.chat:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": item.prompt}],
                                                      **kw)
    else:
        stream = await client.completions.create(prompt=item.prompt, **kw)
    texts, reasons = [""] * item.n, [""] * item.n
    ttfb, usage = None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            piece = (c.delta.content if item.chat else c.text) or ""
            if ttfb is None and (piece or c.finish_reason):
                ttfb = time.perf_counter() - t
            texts[c.index] += piece
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    prompt_tokens = usage.prompt_tokens if usage else 0
    completion_tokens = usage.completion_tokens if usage else 0
    return Result(item.key, texts, reasons, prompt_tokens, completion_tokens, time.perf_counter() - t, ttfb)


def _error_name(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' {status}' if status else ''}"


def _client(base_url: str, api_key: str) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=600)


async def run_load(base_url: str, model: str, workload: list[Item], concurrency: int,
                   api_key: str = "unused") -> tuple[list[Result], float]:
    """Send ``workload`` from ``concurrency`` closed-loop clients; return the results and the wall time."""
    client = _client(base_url, api_key)
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in workload:
        queue.put_nowait(item)
    results: list[Result] = []

    async def worker() -> None:
        while not queue.empty():
            results.append(await send(client, model, queue.get_nowait()))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


async def run_poisson(base_url: str, model: str, arrivals: list[tuple[float, Item]],
                      api_key: str = "unused") -> tuple[list[Result], float]:
    """Send each item at its arrival time (seconds from the start), whatever is still in flight
    (open loop); the wall time runs from the start to the last answer."""
    client = _client(base_url, api_key)
    start = time.perf_counter()

    async def one(at: float, item: Item) -> Result:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        return await send(client, model, item)

    results = list(await asyncio.gather(*(one(at, item) for at, item in arrivals)))
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


def poisson_arrivals(items: list[Item], rate: float, count: int, seed: int) -> list[tuple[float, Item]]:
    """``count`` (arrival time, item) pairs: exponential gaps of mean 1 / ``rate``, items drawn
    uniformly; seeded, so every server gets the same arrivals."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append((t, rng.choice(items)))
        t += rng.expovariate(rate)
    return out


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
    """Nearest-rank percentile (NaN of nothing)."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def summary(results: list[Result], wall: float) -> dict[str, float]:
    """Throughput over the wall time and latency / TTFB percentiles of the answered requests."""
    ok = [r for r in results if r.error is None]
    lat = [r.latency for r in ok]
    ttfb = [r.ttfb for r in ok if r.ttfb is not None]
    return {"requests": len(results), "answered": len(ok), "errors": len(results) - len(ok), "wall_s": wall,
            "req_per_s": len(ok) / wall, "tokens_per_s": sum(r.completion_tokens for r in ok) / wall,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
            "mean_s": statistics.mean(lat) if lat else float("nan"),
            "streamed": len(ttfb), "ttfb_p50_s": percentile(ttfb, 50), "ttfb_p99_s": percentile(ttfb, 99)}


def mismatches(results: list[Result], reference: dict[int, Result]) -> list[int]:
    """Keys whose answer differs from the reference (one-at-a-time) answer (failed requests too)."""
    return [r.key for r in results if r.answer() != reference[r.key].answer()]


def scrape(base_url: str, name: str) -> float:
    """One value of the server's /metrics (NaN when the server has no such metric)."""
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
        self.cmd = [sys.executable, "-m", "streaming_dllm.server", "--port", str(self.port),
                    "--log-level", "warning", *args]
        self.proc = subprocess.Popen(self.cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {shlex.join(self.cmd)}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def server_has_batching() -> bool:
    """Whether this checkout's server takes ``--batching`` (continuous batching is there)."""
    out = subprocess.run([sys.executable, "-m", "streaming_dllm.server", "--help"], capture_output=True,
                         text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}).stdout
    return "--batching" in out


def server_flags(name: str, batch_size: int, has_batching: bool) -> list[str]:
    """The flags of one server mode: ``serial``, ``same-settings``, ``continuous`` (the default
    split policy), ``continuous-split``, ``continuous-buckets`` or ``continuous-joint``; a suffix
    ``-rowsN`` adds ``--max-rows-in-flight N`` (``continuous-rows8``), ``-stepN`` adds
    ``--max-step-tokens N`` (``continuous-step384``)."""
    if not has_batching:
        if name == "serial":
            return ["--max-batch-size", "1"]
        if name == "same-settings":
            return ["--max-batch-size", str(batch_size)]
        raise SystemExit(f"--servers {name}: this server has no --batching (no continuous batching yet)")
    base, sep, rows = name.rpartition("-rows")
    if sep and rows.isdigit():
        return [*server_flags(base, batch_size, has_batching), "--max-rows-in-flight", rows]
    base, sep, budget = name.rpartition("-step")
    if sep and budget.isdigit():
        return [*server_flags(base, batch_size, has_batching), "--max-step-tokens", budget]
    policies = {"continuous": "split", "continuous-split": "split", "continuous-buckets": "buckets",
                "continuous-joint": "joint"}
    if name in policies:
        return ["--batching", "continuous", "--batch-policy", policies[name],
                "--max-batch-size", str(batch_size)]
    if name in ("serial", "same-settings"):
        return ["--batching", name, "--max-batch-size", str(batch_size)]
    raise SystemExit(f"--servers {name}: one of serial, same-settings, continuous, continuous-split, "
                     "continuous-buckets, continuous-joint")


def package_origin() -> dict[str, str]:
    """Where the servers' ``streaming_dllm`` comes from, and the checkout's commit, for the record."""
    import streaming_dllm

    here = os.path.dirname(os.path.abspath(__file__))
    commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return {"module": os.path.dirname(streaming_dllm.__file__), "checkout_commit": commit.strip()}


def uptime() -> str:
    """``uptime``'s line (the machine load the figures were taken under)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Tally:
    """What one server got in one phase, summed over the rounds."""

    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    mismatched: int = 0
    load1: list[float] = field(default_factory=list)
    batches: float = 0.0
    batch_rows: float = 0.0
    round_rates: list[float] = field(default_factory=list)
    """req/s of each round (the same requests every server got in that round)."""

    def row(self, max_tokens_of: dict[int, int] | None = None) -> dict[str, Any]:
        """The summary; with ``max_tokens_of`` (key -> max_tokens) also p50/p99 latency per length,
        which shows who pays for sharing the engine (long answers) and who gains (short ones)."""
        out: dict[str, Any] = summary(self.results, self.wall) if self.results else {}
        if max_tokens_of:
            by: dict[int, list[float]] = {}
            for r in self.results:
                if r.error is None:
                    by.setdefault(max_tokens_of[r.key], []).append(r.latency)
            out["latency_by_max_tokens"] = {
                str(k): {"n": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
                for k, v in sorted(by.items())}
        out["mismatches"] = self.mismatched
        out["load1_mean"] = statistics.mean(self.load1) if self.load1 else float("nan")
        out["rows_per_batch"] = self.batch_rows / self.batches if self.batches > 0 else float("nan")
        out["req_per_s_by_round"] = self.round_rates
        return out


def _batch_counts(url: str) -> tuple[float, float]:
    """(batches, rows) so far: same-settings batches, plus the continuous engine's forwards
    (``sdllm_rows_per_forward``); a server has counts in one of the two, so the sum is its own."""
    count = sum(_zero(scrape(url, f"{m}_count")) for m in ("sdllm_batch_rows", "sdllm_rows_per_forward"))
    rows = sum(_zero(scrape(url, f"{m}_sum")) for m in ("sdllm_batch_rows", "sdllm_rows_per_forward"))
    return count, rows


def _zero(x: float) -> float:
    return 0.0 if x != x else x


def interleaved(servers: dict[str, ServerProcess], names: list[str], rounds: int, chunk: Any,
                run: Any, reference: dict[int, Result], label: str) -> dict[str, Tally]:
    """Run ``chunk(round)``'s workload with ``run(url, workload)`` on every server in ``names``,
    round by round, rotating the order so no server always goes first (or last) in a round."""
    tallies = {n: Tally() for n in names}
    for r in range(rounds):
        work = chunk(r)
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            srv, tally = servers[name], tallies[name]
            tally.load1.append(os.getloadavg()[0])
            b0 = _batch_counts(srv.url)
            results, wall = asyncio.run(run(srv.url, work))
            b1 = _batch_counts(srv.url)
            tally.batches += b1[0] - b0[0]
            tally.batch_rows += b1[1] - b0[1]
            tally.results += results
            tally.wall += wall
            tally.mismatched += len(mismatches([x for x in results if x.error is None], reference))
            s = summary(results, wall)
            tally.round_rates.append(s["req_per_s"])
            print(f"  {label} round {r + 1}/{rounds} {name:16} {s['req_per_s']:6.2f} req/s "
                  f"p50 {s['p50_s']:6.2f} s p99 {s['p99_s']:6.2f} s  errors {s['errors']}  "
                  f"load {tally.load1[-1]:.1f}", flush=True)
    return tallies


def parse_rates(text: str, saturation: float | None) -> list[tuple[str, float]]:
    """``r1,r2,...``: requests/s, or ``Nx`` = N times the measured saturation throughput."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.endswith("x"):
            if saturation is None:
                raise SystemExit("--rates: a relative rate (e.g. 1.5x) needs the closed-loop phase "
                                 "(--requests > 0)")
            out.append((part, float(part[:-1]) * saturation))
        else:
            out.append((part, float(part)))
    return out


def fmt_table(rows: dict[str, dict[str, Any]], first: str = "server") -> list[str]:
    """Markdown rows: throughput, latency and TTFB percentiles, errors, mismatches, load."""
    head = [first, "req/s", "tok/s", "p50 s", "p99 s", "TTFB p50 s", "TTFB p99 s", "answered", "errors",
            "mismatches", "rows/step", "load 1 min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['req_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | "
                     f"{r['p99_s']:.2f} | {r['ttfb_p50_s']:.2f} | {r['ttfb_p99_s']:.2f} | {r['answered']} | "
                     f"{r['errors']} | {r['mismatches']} | {_num(r['rows_per_batch'])} | "
                     f"{r['load1_mean']:.1f} |")
    return lines


def by_length_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: p50 / p99 latency per max_tokens and server."""
    lengths = sorted({int(k) for r in rows.values() for k in r.get("latency_by_max_tokens", {})})
    if not lengths:
        return []
    lines = ["| server | " + " | ".join(f"max_tokens {n}: p50 / p99 s" for n in lengths) + " |",
             "|" + "---|" * (len(lengths) + 1)]
    for name, r in rows.items():
        cells = [r["latency_by_max_tokens"].get(str(n)) for n in lengths]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c['p50_s']:.2f} / {c['p99_s']:.2f}"
                                                  for c in cells) + " |")
    return lines


def _num(x: float) -> str:
    return "-" if x != x else f"{x:.1f}"


def ratios(closed: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The acceptance figures of the closed-loop phase (when those servers ran)."""
    out: dict[str, float] = {}
    if "serial" in closed and "same-settings" in closed:
        same, serial = closed["same-settings"], closed["serial"]
        out["same-settings/serial req/s"] = same["req_per_s"] / serial["req_per_s"]
    c = closed.get("continuous")
    if c is None:
        return out
    for other in ("serial", "same-settings", "continuous-joint"):
        if other in closed:
            out[f"continuous/{other} req/s"] = c["req_per_s"] / closed[other]["req_per_s"]
            out[f"continuous/{other} tok/s"] = c["tokens_per_s"] / closed[other]["tokens_per_s"]
            out[f"continuous/{other} p99"] = c["p99_s"] / closed[other]["p99_s"]
    return out


def round_ratios(closed: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """continuous's throughput over each other server's, round by round: each round's servers ran
    the same requests minutes apart, so the spread of these is the run's own noise."""
    c = closed.get("continuous")
    if c is None:
        return {}
    out = {}
    for other in ("serial", "same-settings"):
        if other in closed:
            pairs = zip(c["req_per_s_by_round"], closed[other]["req_per_s_by_round"], strict=True)
            out[f"continuous/{other} req/s"] = [a / b for a, b in pairs]
    return out


def acceptance(r: dict[str, float]) -> dict[str, bool]:
    """Issue 18's bar: >= 1.5x serial, >= 1.3x same-settings throughput, p99 no worse than today's."""
    out = {}
    if "continuous/serial req/s" in r:
        out["continuous >= 1.5x serial req/s"] = r["continuous/serial req/s"] >= 1.5
    if "continuous/same-settings req/s" in r:
        out["continuous >= 1.3x same-settings req/s"] = r["continuous/same-settings req/s"] >= 1.3
        out["continuous p99 <= same-settings p99"] = r["continuous/same-settings p99"] <= 1.0
    return out


def workload_lines(items: Iterable[Item]) -> list[str]:
    """How the distinct requests split by settings, length, sampling and streaming."""
    items = list(items)
    by: dict[str, int] = {}
    for i in items:
        by[i.setting] = by.get(i.setting, 0) + 1
    lengths: dict[int, int] = {}
    for i in items:
        lengths[i.max_tokens] = lengths.get(i.max_tokens, 0) + 1
    return [f"{len(items)} distinct requests; settings: " + ", ".join(f"{k} x{v}" for k, v in by.items()),
            "max_tokens: " + ", ".join(f"{k} x{v}" for k, v in sorted(lengths.items()))
            + f"; sampled (T=0.7, seeded): {sum(i.temperature > 0 for i in items)}"
            + f"; streamed: {sum(i.stream for i in items)}; chat: {sum(i.chat for i in items)}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--method", default="streaming", help="the servers' default method")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--workload", choices=("uniform", "mixed"), default="uniform")
    ap.add_argument("--arrivals", choices=("closed", "poisson"), default="closed")
    ap.add_argument("--servers", help="comma-separated modes (default: serial,same-settings[,continuous])")
    ap.add_argument("--requests", type=int, default=200, help="closed-loop requests per server (0: skip)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaving rounds (requests split among them)")
    ap.add_argument("--distinct", type=int, default=50, help="distinct requests in the workload")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rates", default="0.5x,1x,1.5x",
                    help="Poisson rates, requests/s, or Nx = N times the saturation throughput")
    ap.add_argument("--saturation-server", default="continuous",
                    help="whose closed-loop throughput a relative rate multiplies (default continuous, "
                    "else the fastest)")
    ap.add_argument("--poisson-requests", type=int, default=60, help="requests per server and rate")
    ap.add_argument("--poisson-rounds", type=int, help="interleaving rounds per rate (default --rounds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampled-share", type=float, default=0.25,
                    help="uniform workload: share of requests sampled at temperature 0.7 (the rest greedy)")
    ap.add_argument("--max-tokens", type=int, default=32, help="uniform workload: every request's max_tokens")
    ap.add_argument("--batch-size", type=int, default=16, help="the servers' --max-batch-size")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="the servers' --batch-wait-ms")
    ap.add_argument("--health-probe", action="store_true", help="closed loop: also GET /health every 50 ms")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--markdown", help="also write the tables to this file (default: --json with .md)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    has_batching = server_has_batching()
    names = (args.servers.split(",") if args.servers else
             ["serial", "same-settings", *(["continuous"] if has_batching else [])])
    if args.workload == "mixed":
        items = make_mixed_workload(args.distinct, seed=args.seed)
    else:
        items = make_workload(args.distinct, args.max_tokens, sampled_share=args.sampled_share,
                              seed=args.seed)
    max_tokens_of = {i.key: i.max_tokens for i in items}
    loads = {"start": uptime()}
    print(loads["start"], flush=True)
    for line in workload_lines(items):
        print(line)
    common = ["--model", args.model, "--method", args.method, "--block-length", str(args.block_length),
              "--threads", str(args.threads), "--max-queue", str(max(4096, args.requests)), "--device", "cpu",
              "--batch-wait-ms", str(args.batch_wait_ms)]
    servers = {n: ServerProcess([*common, *server_flags(n, args.batch_size, has_batching)]) for n in names}
    out: dict[str, Any] = {"command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
                           "args": vars(args), "servers": {n: s.cmd[2:] for n, s in servers.items()},
                           "server_has_batching": has_batching, "cpus": os.cpu_count(),
                           "package": package_origin(),
                           "workload": workload_lines(items), "items": [asdict(i) for i in items]}
    try:
        for s in servers.values():
            s.wait_ready()
        ref_name = "serial" if "serial" in servers else names[0]
        ref, ref_wall = asyncio.run(run_load(servers[ref_name].url, args.model, items, 1))
        failed = [r for r in ref if r.error]
        if failed:
            raise SystemExit(f"reference answers failed: {[(r.key, r.error) for r in failed]}")
        reference = {r.key: r for r in ref}
        print(f"reference: {len(ref)} solo answers from {ref_name} in {ref_wall:.1f} s", flush=True)
        out["reference_wall_s"] = ref_wall

        closed: dict[str, dict[str, Any]] = {}
        if args.requests > 0:
            rounds = max(1, args.rounds)
            per = -(-args.requests // rounds)
            workload = expand(items, per * rounds, seed=args.seed)

            async def closed_run(url: str, work: list[Item]) -> tuple[list[Result], float]:
                if args.health_probe:
                    results, wall, _ = await load_with_health_probe(url, args.model, work, args.concurrency)
                    return results, wall
                return await run_load(url, args.model, work, args.concurrency)

            tallies = interleaved(servers, names, rounds, lambda r: workload[r * per : (r + 1) * per],
                                  closed_run, reference, f"closed {args.concurrency} clients")
            closed = {n: t.row(max_tokens_of) for n, t in tallies.items()}
            loads["after closed loop"] = uptime()
        out["closed_loop"] = closed

        poisson: dict[str, dict[str, dict[str, Any]]] = {}
        saturation = None
        if args.arrivals == "poisson":
            if closed:
                sat_name = (args.saturation_server if args.saturation_server in closed
                            else max(closed, key=lambda n: closed[n]["req_per_s"]))
                saturation = closed[sat_name]["req_per_s"]
                out["saturation"] = {"server": sat_name, "req_per_s": saturation}
                print(f"saturation: {saturation:.2f} req/s ({sat_name}, closed loop, "
                      f"{args.concurrency} clients)")
            rounds = max(1, args.poisson_rounds or args.rounds)
            per = -(-args.poisson_requests // rounds)
            for i, (label, rate) in enumerate(parse_rates(args.rates, saturation)):
                def chunk(r: int, rate: float = rate, i: int = i) -> Arrivals:
                    return poisson_arrivals(items, rate, per, seed=args.seed * 1000 + 100 * i + r)

                async def open_run(url: str, arrivals: Arrivals) -> tuple[list[Result], float]:
                    return await run_poisson(url, args.model, arrivals)

                tallies = interleaved(servers, names, rounds, chunk, open_run, reference,
                                      f"poisson {rate:.2f}/s")
                key = f"{label} ({rate:.2f} req/s)"
                poisson[key] = {n: {**t.row(max_tokens_of), "offered_req_per_s": rate}
                                for n, t in tallies.items()}
            loads["after poisson"] = uptime()
        out["poisson"] = poisson
    finally:
        for s in servers.values():
            s.__exit__()
    out["loads"] = loads
    out["ratios"] = ratios(closed)
    out["round_ratios"] = round_ratios(closed)
    out["acceptance"] = acceptance(out["ratios"])
    out["total_s"] = time.perf_counter() - t_start

    lines = report(out, args)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        md = args.markdown or os.path.splitext(args.json)[0] + ".md"
        with open(md, "w") as f:
            f.write("\n".join(lines) + "\n")
    bad = [n for t in (closed, *poisson.values()) for n, r in t.items() if r["mismatches"] or r.get("errors")]
    return 1 if bad else 0


def report(out: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The Markdown report: command, machine load, workload, tables, ratios."""
    lines = ["# serve_load", "", f"`{out['command']}`", "",
             f"model {args.model}, {args.threads} torch thread(s) per server, block {args.block_length}, "
             f"servers' default method {args.method}, {out['cpus']} CPUs; "
             f"{args.rounds} interleaved round(s); total {out['total_s'] / 60:.1f} min; "
             f"package {out['package']['module']} (checkout {out['package']['checkout_commit'][:7]})", ""]
    lines += [f"* load {k}: `{v}`" for k, v in out["loads"].items()]
    lines += [""] + [f"* {w}" for w in out["workload"]] + [""]
    if out["closed_loop"]:
        lines += [f"## Closed loop, {args.concurrency} clients, {args.requests} requests per server", ""]
        lines += fmt_table(out["closed_loop"]) + [""]
        lines += by_length_table(out["closed_loop"]) + [""]
        lines += ["rows/step: rows per engine batch (same-settings, each batch run to its end) or per "
                  "forward (serial, continuous), from the server's /metrics.", ""]
    if out.get("saturation"):
        s = out["saturation"]
        lines += [f"Saturation: {s['req_per_s']:.2f} req/s ({s['server']}, the closed loop above); "
                  f"rates {args.rates} (Nx = N times it).", ""]
    for rate, rows in out["poisson"].items():
        lines += [f"## Poisson arrivals, {rate}, {args.poisson_requests} requests per server "
                  f"({args.poisson_rounds or args.rounds} rounds)", ""]
        lines += fmt_table(rows) + [""]
    if out["ratios"]:
        lines += ["## Ratios (closed loop)", ""]
        lines += [f"* {k}: {v:.2f}" for k, v in out["ratios"].items()]
        lines += [f"* {k}, round by round: min {min(v):.2f}, median {statistics.median(v):.2f}, "
                  f"max {max(v):.2f} ({len(v)} rounds)" for k, v in out["round_ratios"].items() if v]
        lines += [f"* {k}: {'met' if v else 'NOT met'}" for k, v in out["acceptance"].items()]
    return lines


if __name__ == "__main__":
    sys.exit(main())
