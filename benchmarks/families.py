"""Full attention vs block diffusion on the built-in task: `builtin` (LLaDA layout) and
`builtin-bd` (SDAR layout, blocks of 4) decode the same test prompts, interleaved batch by batch.

For each model its reference preset (`vanilla` for LLaDA, `sdar` for SDAR) and `streaming` are
run; the table gives accuracy, generated tokens/s, forwards per answer, and the paired speed-up
and accuracy difference (95% interval) against the model's reference preset and against
`builtin`'s `vanilla`. Example::

    python benchmarks/families.py --n 64 --n-slow 16 --threads 2 --out benchmarks/results/families
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import streaming_dllm as sd
from streaming_dllm.bench.metrics import paired_accuracy_delta, paired_speedup, summarize
from streaming_dllm.bench.results import Method, MethodResult
from streaming_dllm.bench.runner import BenchContext, _run_batch
from streaming_dllm.tasks import arith

ROWS = (
    ("builtin", "vanilla", dict(block_length=32), True),
    ("builtin", "streaming", dict(block_length=32), False),
    ("builtin-bd", "sdar", dict(block_length=4), False),
    ("builtin-bd", "streaming", dict(block_length=4), False),
)
REFERENCE = {"builtin": "vanilla", "builtin-bd": "sdar"}


def _contexts(problems: list, threads: int) -> dict[str, BenchContext]:
    torch.set_num_threads(threads)
    out = {}
    for name in {r[0] for r in ROWS}:
        model = sd.load_model(name)
        out[name] = BenchContext(model, sd.load_tokenizer(model), problems, progress=False)
    return out


def run(n: int, n_slow: int, gen_length: int, threads: int, split: str) -> list[tuple[str, MethodResult]]:
    problems = arith.problems(split, n)
    ctxs = _contexts(problems, threads)
    results = []
    for model, preset, knobs, slow in ROWS:
        cfg = sd.DecodeConfig.preset(preset, gen_length=gen_length, **knobs)
        results.append((model, MethodResult(Method(f"{model} / {preset}", cfg), n_slow if slow else n)))
    for model, res in results:  # warm-up, untimed
        sd.generate(ctxs[model].model, ctxs[model].prompt_ids[:1], res.method.config.for_budget(8))
    for i in range(n):
        k = i % len(results)
        for model, res in results[k:] + results[:k]:  # rotate so no row always goes first
            if i < res.n_planned:
                samples, _ = _run_batch(ctxs[model], res.method, [i], i)
                res.samples += samples
                res.seconds += samples[0].seconds
    return results


def table(results: list[tuple[str, MethodResult]]) -> tuple[str, list[dict]]:
    by_label = {res.method.label: res for _, res in results}
    base = by_label["builtin / vanilla"]
    lines = ["| model / preset | n | accuracy | tokens/s | nfe per answer | vs model's reference: "
             "speed-up, Δ accuracy (95% CI) | vs builtin / vanilla: speed-up, Δ accuracy |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for model, res in results:
        s = summarize(res.samples)
        ref = by_label[f"{model} / {REFERENCE[model]}"]
        cells = [_vs(res, ref), _vs(res, base)]
        rows.append({"label": res.method.label, "config": res.method.config.to_dict(), **s,
                     "vs_reference": _figures(res, ref), "vs_builtin_vanilla": _figures(res, base)})
        lines.append(f"| {res.method.label} | {len(res.samples)} | {100 * s['accuracy']:.1f}% | "
                     f"{s['throughput_tok_s']:.1f} | {s['nfe_mean']:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines), rows


def _figures(res: MethodResult, ref: MethodResult) -> dict:
    return {"speedup": paired_speedup(res, ref), "accuracy": paired_accuracy_delta(res, ref)}


def _vs(res: MethodResult, ref: MethodResult) -> str:
    if res is ref:
        return "reference"
    f = _figures(res, ref)
    acc = f["accuracy"]
    if acc is None or f["speedup"] is None:
        return "–"
    lo, hi = (100 * x for x in acc["ci95"])
    return f"{f['speedup']:.1f}x, {100 * acc['delta']:+.1f} ({lo:+.1f} to {hi:+.1f}; n={acc['n']})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="test prompts per preset")
    ap.add_argument("--n-slow", type=int, default=16, help="prompts for builtin / vanilla (one per step)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", default="test", choices=("dev", "test"))
    ap.add_argument("--out", default="benchmarks/results/families")
    args = ap.parse_args()
    start = time.perf_counter()
    results = run(args.n, args.n_slow, args.gen_length, args.threads, args.split)
    text, rows = table(results)
    wall = time.perf_counter() - start
    load = os.getloadavg()
    head = (f"{args.split} split, gen_length {args.gen_length}, {args.threads} threads, {wall / 60:.1f} min, "
            f"load average {load[0]:.1f} at the end")
    print(head + "\n\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.md").write_text(head + "\n\n" + text + "\n")
    (out / "families.json").write_text(json.dumps({"header": head, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
