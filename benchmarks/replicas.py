"""Throughput of ``serve --replicas N`` on Ray Serve against one server process, same load.

Each configuration is started fresh and alone (two Ray instances on one machine would compete for
its cores), loaded with the same closed-loop workload (``serve_load``'s mixed workload by default),
and stopped; rounds rotate the order so drift in the machine's load hits every configuration alike.
Every answer is checked against the one-at-a-time answer of the single server. Configurations:

* ``single``: ``python -m streaming_dllm.server --threads <cores - 1>`` (no Ray; the other core
  runs HTTP, as a replica's default threads leave one);
* ``replicas-N``: ``python -m streaming_dllm serve --replicas N`` (each replica a share of the cores).

Example (the figures in docs/scaling.md)::

    python benchmarks/replicas.py --configs single,replicas-1,replicas-2 --requests 96 --rounds 2 \\
        --json benchmarks/results/replicas.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import (  # noqa: E402
    _free_port,
    expand,
    make_mixed_workload,
    make_workload,
    mismatches,
    run_load,
    summary,
)


def command(config: str, port: int, common: list[str], cores: int) -> list[str]:
    """The server command of one configuration on ``port``."""
    if config == "single":
        return [sys.executable, "-m", "streaming_dllm.server", "--port", str(port),
                "--threads", str(max(1, cores - 1)), *common]
    if config.startswith("replicas-") and config[9:].isdigit():
        return [sys.executable, "-m", "streaming_dllm", "serve", "--port", str(port),
                "--replicas", config[9:], *common]
    raise SystemExit(f"--configs {config}: single or replicas-N")


def wait_ready(url: str, proc: subprocess.Popen, replicas: int, timeout_s: float = 600) -> float:
    """Seconds until ``/health`` is 200 with every replica healthy."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            body = json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())
            if body.get("replicas_healthy", 1) >= replicas and body.get("status") == "ok":
                return time.monotonic() - start
        except (OSError, ValueError):
            pass
        time.sleep(1)
    raise SystemExit(f"the server was not ready in {timeout_s:g} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(2)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(config: str, args: argparse.Namespace, common: list[str], work: list[Any],
            concurrency: int) -> tuple[list[Any], float, float]:
    """(results, wall s, start-up s) of one fresh server of ``config`` under ``work``."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cores = os.cpu_count() or 1
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(command(config, port, common, cores), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        replicas = int(config[9:]) if config.startswith("replicas-") else 1
        startup = wait_ready(url, proc, replicas)
        results, wall = asyncio.run(run_load(url, args.model, work, concurrency))
        return results, wall, startup
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--configs", default="single,replicas-1,replicas-2")
    ap.add_argument("--workload", choices=("uniform", "mixed"), default="mixed")
    ap.add_argument("--distinct", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96, help="closed-loop requests per config and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32, help="uniform workload: every request's max_tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    configs = args.configs.split(",")
    items = (make_mixed_workload(args.distinct, seed=args.seed) if args.workload == "mixed"
             else make_workload(args.distinct, args.max_tokens, seed=args.seed))
    common = ["--model", args.model, "--block-length", str(args.block_length), "--device", "cpu",
              "--max-queue", "4096", "--log-level", "warning"]
    ref, _, _ = measure("single", args, common, items, 1)
    if any(r.error for r in ref):
        raise SystemExit(f"reference answers failed: {[(r.key, r.error) for r in ref if r.error]}")
    reference = {r.key: r for r in ref}
    work = expand(items, args.requests, seed=args.seed)
    tallies: dict[str, dict[str, Any]] = {c: {"results": [], "wall": 0.0, "startup": []} for c in configs}
    for rnd in range(args.rounds):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for config in order:
            results, wall, startup = measure(config, args, common, work, args.concurrency)
            t = tallies[config]
            t["results"] += results
            t["wall"] += wall
            t["startup"].append(startup)
            print(f"round {rnd + 1} {config}: {len(results) / wall:.2f} req/s, start-up {startup:.0f} s",
                  flush=True)
    rows = {}
    base = None
    for config in configs:
        t = tallies[config]
        s = summary(t["results"], t["wall"])
        s["mismatched"] = len(mismatches(t["results"], reference))
        s["startup_s"] = sum(t["startup"]) / len(t["startup"])
        base = base or s["req_per_s"]
        s["vs_first"] = s["req_per_s"] / base
        rows[config] = s
    print(f"\n| config | req/s | tokens/s | vs {configs[0]} | p50 s | p99 s | errors | mismatched | "
          "start-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config, s in rows.items():
        print(f"| {config} | {s['req_per_s']:.2f} | {s['tokens_per_s']:.1f} | {s['vs_first']:.2f}x | "
              f"{s['p50_s']:.2f} | {s['p99_s']:.2f} | {s['errors']} | {s['mismatched']} | "
              f"{s['startup_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
                       "args": vars(args), "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
