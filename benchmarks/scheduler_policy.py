"""The continuous scheduler's grouping policy (split vs joint) and one-at-a-time, offline, no HTTP.

The server measurement (``serve_load.py --servers ...,continuous,continuous-joint``) includes the
HTTP side, tokenising and detokenising, and the event loop, which share the same CPUs as the
engine; this drives ``engine.scheduler.Scheduler`` directly on the same mixed workload
(``serve_load.make_mixed_workload``, configs built by ``ServerSettings.decode_config`` exactly as
the server builds them), so the policies' difference is seen without that noise. A closed loop
keeps ``--concurrency`` requests in flight (a new one is submitted as one finishes), like the
server's clients. Modes: ``serial`` (``max_rows=1``: one request at a time, as ``--batching
serial``), ``split``, ``buckets`` and ``joint``. Rounds interleave the modes (order rotating) so machine-load
drift hits all alike, and every request's tokens and nfe are checked equal across modes. Example::

    python benchmarks/scheduler_policy.py --requests 96 --rounds 3 --json /tmp/policy.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).with_name("serve_load.py"))
serve_load = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = serve_load
_spec.loader.exec_module(serve_load)


def prepare(model: Any, tok: Any, items: list, block_length: int) -> list[tuple[list[int], Any, int]]:
    """(prompt ids, DecodeConfig, seed) per item, as the server would decode it."""
    from streaming_dllm.server.settings import ServerSettings
    from streaming_dllm.text import encode_chat

    settings = ServerSettings(method="streaming", shared_overrides={"block_length": block_length})
    out = []
    for it in items:
        if it.chat:
            ids = encode_chat(tok, [{"role": "user", "content": it.prompt}])
        else:
            ids = tok(it.prompt, add_special_tokens=False)["input_ids"]
        knobs = {"temperature": float(it.temperature), **dict(it.knobs)}
        out.append((list(ids), settings.decode_config(it.method, knobs, it.max_tokens), it.seed))
    return out


def closed_loop(model: Any, work: list[tuple[list[int], Any, int]], mode: str, concurrency: int,
                max_rows: int) -> dict[str, Any]:
    """Decode ``work`` keeping ``concurrency`` requests submitted; wall time, latencies, outputs."""
    from streaming_dllm.engine.scheduler import Scheduler

    policy = "split" if mode == "serial" else mode
    sched = Scheduler(model, max_rows=1 if mode == "serial" else max_rows, max_queue=len(work) + 1,
                      policy=policy)
    todo = deque(enumerate(work))
    outputs: dict[int, tuple] = {}
    latency: list[float] = []

    def submit() -> None:
        i, (ids, cfg, seed) = todo.popleft()
        sched.submit([ids], cfg, [seed], tag=i)

    t0 = time.perf_counter()
    while todo and len(sched.waiting) + len(sched.active) < concurrency:
        submit()
    while sched.busy():
        for ev in sched.step():
            if ev.kind == "failed":
                raise ev.error
            if ev.kind == "done":
                latency.append(time.perf_counter() - ev.handle.submitted)
                outputs[ev.handle.tag] = (ev.output.sequences.tolist(), ev.output.nfe)
                if todo:
                    submit()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "latency": latency, "outputs": outputs, "forwards": sched.forwards,
            "rows_forwarded": sched.rows_forwarded}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--requests", type=int, default=96, help="requests per mode, split among the rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--distinct", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-rows", type=int, default=64, help="the scheduler's max_rows (server default 64)")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="serial,split,joint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    import streaming_dllm as sd

    torch.set_num_threads(args.threads)
    load0 = serve_load.uptime()
    model = sd.load_model(args.model, device="cpu")
    tok = sd.load_tokenizer(model)
    items = serve_load.make_mixed_workload(args.distinct, seed=args.seed)
    per = -(-args.requests // args.rounds)
    workload = prepare(model, tok, serve_load.expand(items, per * args.rounds, seed=args.seed),
                       args.block_length)
    modes = args.modes.split(",")
    closed_loop(model, workload[:4], modes[0], args.concurrency, args.max_rows)  # warm-up, untimed
    agg = {m: {"wall_s": 0.0, "latency": [], "forwards": 0, "rows_forwarded": 0, "load1": []} for m in modes}
    outputs: dict[str, dict[int, tuple]] = {m: {} for m in modes}
    for r in range(args.rounds):
        work = workload[r * per : (r + 1) * per]
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            agg[mode]["load1"].append(os.getloadavg()[0])
            res = closed_loop(model, work, mode, args.concurrency, args.max_rows)
            for k in ("wall_s", "forwards", "rows_forwarded"):
                agg[mode][k] += res[k]
            agg[mode]["latency"] += res["latency"]
            outputs[mode].update({r * per + i: o for i, o in res["outputs"].items()})
            per_fwd = res["rows_forwarded"] / res["forwards"]
            print(f"round {r + 1}/{args.rounds} {mode:6} {len(work) / res['wall_s']:6.2f} req/s "
                  f"{per_fwd:5.2f} rows/forward  load {agg[mode]['load1'][-1]:.1f}", flush=True)
    differ = {m: sum(outputs[m][i] != outputs[modes[0]][i] for i in outputs[modes[0]]) for m in modes}
    rows = {}
    for m, a in agg.items():
        n, lat = len(a["latency"]), a["latency"]
        rows[m] = {"requests": n, "wall_s": a["wall_s"], "req_per_s": n / a["wall_s"],
                   "p50_s": serve_load.percentile(lat, 50), "p99_s": serve_load.percentile(lat, 99),
                   "forwards": a["forwards"], "rows_per_forward": a["rows_forwarded"] / a["forwards"],
                   "differ_from_first_mode": differ[m], "load1_mean": statistics.mean(a["load1"])}
    lines = [f"load start: `{load0}`; end: `{serve_load.uptime()}`",
             f"{args.requests} requests per mode, {args.concurrency} in flight, {args.rounds} rounds, "
             f"model {args.model}, {args.threads} thread(s)", "",
             "| mode | req/s | p50 s | p99 s | forwards | rows/forward | differ | load 1 min |",
             "|---|---|---|---|---|---|---|---|"]
    for m, x in rows.items():
        lines.append(f"| {m} | {x['req_per_s']:.2f} | {x['p50_s']:.2f} | {x['p99_s']:.2f} | "
                     f"{x['forwards']} | {x['rows_per_forward']:.2f} | {x['differ_from_first_mode']} | "
                     f"{x['load1_mean']:.1f} |")
    lines.append("")
    for a, b in (("split", "joint"), ("split", "serial"), ("joint", "serial")):
        if a in rows and b in rows:
            lines.append(f"* {a} / {b} throughput: {rows[a]['req_per_s'] / rows[b]['req_per_s']:.2f}x, "
                         f"p99 {rows[a]['p99_s'] / rows[b]['p99_s']:.2f}x")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "modes": rows, "report": lines}, f, indent=2)
    return 1 if any(differ.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
