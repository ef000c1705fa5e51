"""``streaming-dllm bench``: run suites, print Markdown, write JSON (+ Markdown) and PNG plots."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..cli.options import add_model_args, check_model_args, load_from_args
from ..config import ConfigError
from . import suites

MAX_BATCH = 1024
MAX_THREADS = 1024


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` on the main CLI."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark decoding methods side by side (accuracy, tokens/s, latency, nfe, memory)",
        description="Decode the same arithmetic prompts with every method, interleaved after a "
        "warm-up; print Markdown tables, write bench.json (raw figures, configs, machine, "
        "versions) and PNG plots.",
    )
    p.add_argument("--suite", nargs="+", default=["all"], choices=[*suites.SUITES, "all"],
                   help="experiments to run (default: all): " + ", ".join(suites.SUITES))
    p.add_argument("--methods", nargs="+", default=None,
                   help="instead of suites: these presets side by side at each --gen-lengths")
    p.add_argument("--gen-lengths", nargs="+", type=int, default=None,
                   help="lengths for --methods (default: the main table's)")
    p.add_argument("--preset-file", default=None, metavar="JSON",
                   help="instead of suites: a saved DecodeConfig (e.g. tune's preset.json) side by side with "
                   "--methods (default vanilla, streaming), at its own gen_length unless --gen-lengths")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, a CI smoke test: under a minute on an idle CPU (25 s measured on 2 "
                   "idle cores, 45 s on 2 busy ones), a few minutes on a heavily loaded machine")
    p.add_argument("--n", type=int, default=None, help="prompts per method (default 16; quick 2)")
    p.add_argument("--n-slow", type=int, default=None,
                   help="prompts for vanilla and prefix-cache, one forward per token (default 3; quick 1)")
    p.add_argument("--n-sweep", type=int, default=None, help="prompts per W / alpha value (default 8)")
    p.add_argument("--block-length", type=int, default=None, help="block length (default 32)")
    p.add_argument("--batch-size", type=int, default=1,
                   help=f"prompts per generate call (default 1, at most {MAX_BATCH})")
    p.add_argument("--split", default="test", choices=["dev", "test"], help="arithmetic split")
    p.add_argument("--budget", type=float, default=0.0,
                   help="seconds per method per table after which it stops (0 = no limit); "
                   "the smaller sample is reported")
    p.add_argument("--threads", type=int, default=0,
                   help=f"torch threads (0 = torch's default, at most {MAX_THREADS})")
    p.add_argument("--out", default="bench_out", help="folder for bench.json, bench.md and plots")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--update-doc", default=None, metavar="MD",
                   help="also rewrite the generated section of this Markdown file (e.g. BENCHMARKS.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up decode")
    p.add_argument("--plan", action="store_true", help="print methods and sample sizes, then exit")
    add_model_args(p)
    p.set_defaults(func=run_bench, bench_options=_options(p))
    return p


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    return [(a.option_strings[-1], a.dest) for a in parser._actions if a.option_strings and a.dest != "help"]


def _with_preset_file(args: argparse.Namespace, sizes: suites.Sizes):
    """A custom table per length: the presets plus the file's config at that length."""
    from ..cli.options import base_from_file
    from .results import Method

    cfg = base_from_file(args.preset_file)
    lengths = args.gen_lengths or [cfg.gen_length]
    groups = suites.custom(args.methods or ["vanilla", "streaming"], lengths, sizes)
    for g in groups:
        g.methods.append(Method(f"file: {cfg.preset_name or 'custom'}", cfg.replace(gen_length=g.gen_length)))
    return groups


def _groups(args: argparse.Namespace, sizes: suites.Sizes):
    if args.preset_file:
        return _with_preset_file(args, sizes)
    if args.methods:
        return suites.custom(args.methods, args.gen_lengths or list(sizes.main_lengths), sizes)
    names = list(suites.SUITES) if "all" in args.suite else list(dict.fromkeys(args.suite))
    return suites.build(names, sizes)


def plan_text(groups, sizes: suites.Sizes) -> str:
    """One line per method: table, label, prompts, and why fewer; identical runs counted once."""
    lines, seen, decodes = [], {}, 0
    for gi, g in enumerate(groups):
        ns = [min(sizes.n, m.n or sizes.n) for m in g.methods]
        sources = {seen.get((m.config.key(), n)) for m, n in zip(g.methods, ns, strict=True)}
        again = len(sources) == 1 and None not in sources
        for m, n in zip(g.methods, ns, strict=True):
            seen.setdefault((m.config.key(), n), gi)
            decodes += 0 if again else n
            extra = (f" ({m.note})" if m.note else "") + (" [reused]" if again else "")
            lines.append(f"{g.suite:9} {g.name:16} {m.label:24} n={n}{extra}")
    lines.append(f"{decodes} timed decodes (plus one short warm-up per method)")
    return "\n".join(lines)


def _clean(obj: Any) -> Any:
    """NaN becomes null so the JSON is strict."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers and devices before anything is loaded; each error names its flag."""
    for name in ("n", "n_slow", "n_sweep", "block_length"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise ValueError(f"--batch-size: must be in [1, {MAX_BATCH}], got {args.batch_size}")
    if not 0 <= args.threads <= MAX_THREADS:
        raise ValueError(f"--threads: must be in [0, {MAX_THREADS}] (0 = default), got {args.threads}")
    if not (math.isfinite(args.budget) and args.budget >= 0):
        raise ValueError(f"--budget: must be a finite number of seconds >= 0, got {args.budget}")
    for v in args.gen_lengths or []:
        if v < 1:
            raise ValueError(f"--gen-lengths: must be >= 1, got {v}")
    check_model_args(args)


def check_writable_dir(path: Path, name: str) -> None:
    """``path`` is (or can be made) a folder we can write in; checked before the run starts."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{name}: {str(path)!r} cannot be a folder: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: {str(probe)!r} is not writable")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{name}: cannot write in {str(path)!r}: {exc.strerror or exc}") from None


def check_writable_file(path: Path, name: str) -> None:
    """``path`` is a file we can rewrite (or create); checked before the run starts."""
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder, not a Markdown file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise ValueError(f"{name}: {str(path)!r} is not writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot create {str(path)!r}: the folder is not writable")


def run_bench(args: argparse.Namespace) -> int:
    check_args(args)
    sizes = suites.sizes_for(args.quick, n=args.n, n_slow=args.n_slow, n_sweep=args.n_sweep,
                             block_length=args.block_length)
    try:
        groups = _groups(args, sizes)
    except ConfigError as exc:
        name = {"block_length": "--block-length", "gen_length": "--gen-lengths",
                "preset_file": "--preset-file"}.get(exc.field, exc.field)
        raise ValueError(f"{name}: {exc}") from None
    if args.plan:
        print(plan_text(groups, sizes))
        return 0
    out = Path(args.out)
    check_writable_dir(out, "--out")
    if args.update_doc:
        check_writable_file(Path(args.update_doc), "--update-doc")
    # Everything the user typed is checked before torch is imported.
    import torch

    from ..tasks import arith
    from . import plots, report
    from .runner import BenchContext, planned_calls, run_group

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_from_args(args)
    ctx = BenchContext(model, tok, arith.problems(args.split, sizes.n), batch_size=args.batch_size,
                       warmup=not args.no_warmup, budget_s=args.budget, progress=not args.no_progress)
    limit, longest = model.max_context, max(map(len, ctx.prompt_ids))
    for g in groups:
        if limit is not None and longest + g.gen_length > limit:
            raise ValueError(f"--gen-lengths: {g.gen_length} plus the longest prompt ({longest} tokens) "
                             f"exceeds the model's context of {limit} tokens")
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    code_versions = report.versions()  # the code that runs, not what the tree holds by the end
    start = time.perf_counter()
    bar = None
    if ctx.progress:
        from tqdm import tqdm

        bar = tqdm(total=planned_calls(ctx, groups), unit="call", file=sys.stderr, dynamic_ncols=True)
    results = []
    with torch.inference_mode():
        for g in groups:
            def tick(label: str, g=g) -> None:
                if bar is not None:
                    bar.set_description(f"{g.suite} {g.name} {label}")
                    bar.update(1)

            results.append(run_group(ctx, g, tick))
    if bar is not None:
        bar.close()
    settings = {"quick": args.quick, "n": sizes.n, "n_slow": sizes.n_slow, "n_sweep": sizes.n_sweep,
                "n_cap": sizes.n_cap, "n_slow_cap": sizes.n_slow_cap,
                "block_length": sizes.block_length, "batch_size": args.batch_size, "split": args.split,
                "budget_s": args.budget, "warmup": not args.no_warmup,
                "suites": sorted({g.suite for g in groups})}
    model_info = {"name": args.model, "family": model.family, "config": model.config,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "dtype": str(model.dtype).replace("torch.", ""), "device": str(model.device)}
    # --methods / --preset-file replace the suites, so the recorded command leaves --suite out.
    options = [o for o in args.bench_options if not ((args.methods or args.preset_file) and o[1] == "suite")]
    record = report.build_record(
        command=report.command_line(args, options), settings=settings, model_info=model_info,
        device=model.device,
        memory_method=ctx.memory.method, groups=report.group_records(groups, results),
        seconds=time.perf_counter() - start, code_versions=code_versions)
    record["machine"]["load_avg_start"] = load_start
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        try:
            record["plots"] = plots.make_plots(record, out)
        except ImportError:
            print("matplotlib is not installed (pip install 'streaming-dllm[bench]'): no plots",
                  file=sys.stderr)
    text = report.markdown(record)
    (out / "bench.json").write_text(json.dumps(_clean(record), indent=1) + "\n")
    (out / "bench.md").write_text(text + "\n")
    print(text)
    if args.update_doc:
        report.update_doc(Path(args.update_doc), record, out)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}"
          + (f" and {len(record['plots'])} plots" if record["plots"] else "")
          + f" in {record['seconds']:.0f} s", file=sys.stderr)
    return 0
