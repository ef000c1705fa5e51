"""``streaming-dllm tune``: flags in, checked before torch is imported; the run is ``tuning.api.tune``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.options import add_model_args, check_model_args, load_from_args
from ..config import PRESETS

MAX_THREADS = 1024


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tune`` on the main CLI."""
    p = subparsers.add_parser(
        "tune",
        help="find the fastest decoding settings that keep a task's accuracy",
        description="Search window, alpha, tau0, block length, cache mode and early exit on the task's dev "
        "split (successive halving, measurements cached in --out), keep the fastest config within --epsilon "
        "points of the baseline's accuracy, check it on a held-out split, and write preset.json, report.md "
        "and pareto.png to --out.",
    )
    p.add_argument(
        "--task",
        default="arith",
        help="arith (built-in), lm_eval:<name> (a harness task, loaded offline) or a .jsonl file of "
        '{"prompt": ..., "reference": ...} lines (default: arith)',
    )
    p.add_argument(
        "--scorer",
        default=None,
        help="exact | regex:<pattern> | module:function (default: the task's own; exact for JSONL)",
    )
    p.add_argument(
        "--baseline", default="vanilla", choices=sorted(PRESETS), help="reference preset (default vanilla)"
    )
    p.add_argument("--epsilon", type=float, default=1.0, help="accuracy tolerance in points (default 1)")
    p.add_argument("--budget-min", type=float, default=10.0, help="time budget in minutes (default 10)")
    p.add_argument(
        "--out", default="tune_out", help="folder for preset.json, report.md, pareto.png and the cache"
    )
    p.add_argument(
        "--gen-length", type=int, default=None, help="tokens generated (default: the task's, 128 for arith)"
    )
    p.add_argument("--block-length", type=int, default=32, help="block length of the baseline (default 32)")
    p.add_argument("--max-configs", type=int, default=48, help="candidates in the first round (default 48)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate sample and the JSONL split")
    p.add_argument("--no-chat-template", action="store_true", help="feed text prompts raw (JSONL, lm_eval)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=run_tune)
    return p


def _check(args: argparse.Namespace):
    """Every flag and the task, before the model is loaded; the task and scorer resolved."""
    from ..bench.cli import check_writable_dir
    from .api import check_settings
    from .tasks import load_task

    check_settings(args.epsilon, args.budget_min, args.max_configs)
    for name in ("gen_length", "block_length"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= 1 << 16:
            raise ValueError(f"--{name.replace('_', '-')}: must be in [1, 65536], got {v}")
    if not 0 <= args.threads <= MAX_THREADS:
        raise ValueError(f"--threads: must be in [0, {MAX_THREADS}] (0 = default), got {args.threads}")
    check_model_args(args)
    check_writable_dir(Path(args.out), "--out")
    task = load_task(args.task, args.scorer, args.seed)
    if args.no_chat_template:
        task.chat = False
    return task


def run_tune(args: argparse.Namespace) -> int:
    task = _check(args)
    import torch

    from .api import tune

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_from_args(args)
    with torch.inference_mode():
        result = tune(
            model,
            task,
            tokenizer=tok,
            baseline=args.baseline,
            epsilon=args.epsilon,
            budget_min=args.budget_min,
            out=args.out,
            gen_length=args.gen_length,
            block_length=args.block_length,
            max_configs=args.max_configs,
            seed=args.seed,
            progress=not args.no_progress,
        )
    h = result.held_out
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    acc = f"{100 * h.chosen.accuracy:.1f}%" if h.chosen else "–"
    print(
        f"chosen {result.chosen_label}: held out {acc} vs baseline {100 * h.baseline_accuracy:.1f}% "
        f"(n={h.n}); "
        f"wrote {', '.join(result.files.values())} in {result.seconds / 60:.1f} min",
        file=sys.stderr,
    )
    return 0
