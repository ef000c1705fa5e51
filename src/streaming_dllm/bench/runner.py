"""Interleaved timing: every method of a group on the same prompts, round-robin, after a warm-up.

Noise on a shared machine comes in bursts, so methods take turns batch by batch (the order
rotates each batch) rather than running one after the other. Each call is timed on its own with
``perf_counter`` (CUDA synchronised), so per-sample figures stay paired across methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine import generate
from ..tasks import arith
from ..tasks.arith_eval import answer_text, encode_prompts
from ..text import stop_ids, used_positions
from .memory import PeakMemory
from .results import Group, Method, MethodResult, Sample

__all__ = ["BenchContext", "Group", "Method", "MethodResult", "Sample", "planned_calls", "run_group"]


@dataclass
class BenchContext:
    """The model, tokenizer and prompts shared by every group of a run."""

    model: Any
    tokenizer: Any
    problems: list[arith.Problem]
    batch_size: int = 1
    warmup: bool = True
    budget_s: float = 0.0
    progress: bool = True
    prompt_ids: list[list[int]] = field(default_factory=list)
    stops: set[int] = field(default_factory=set)
    done: dict[tuple[str, int], tuple[str, MethodResult]] = field(default_factory=dict)
    memory: PeakMemory | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        self.prompt_ids = encode_prompts(self.tokenizer, self.problems)
        self.stops = stop_ids(self.model, self.tokenizer)
        self.memory = PeakMemory(self.model.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _warm_up(ctx: BenchContext, method: Method) -> None:
    """A short decode (two blocks at most) so lazy init and allocator growth are not timed."""
    cfg = method.config
    short = cfg.replace(gen_length=min(cfg.gen_length, 2 * cfg.block_length), steps=None)
    generate(ctx.model, ctx.prompt_ids[:1], short)


def _run_batch(
    ctx: BenchContext, method: Method, prompts: list[int], batch: int
) -> tuple[list[Sample], int | None]:
    """Decode one batch; the samples and the call's peak memory (bytes, None if unknown)."""
    device = ctx.model.device
    tracker = ctx.memory
    _sync(device)
    with tracker:
        start = time.perf_counter()
        out = generate(ctx.model, [ctx.prompt_ids[i] for i in prompts], method.config)
        _sync(device)
        seconds = time.perf_counter() - start
    eos = ctx.model.eos_id
    samples = []
    for row, i in enumerate(prompts):
        gen = out.generated(row)
        samples.append(
            Sample(
                prompt=i,
                batch=batch,
                seconds=seconds,
                share=seconds / len(prompts),
                tokens=sum(t != eos for t in gen),
                used=used_positions(gen, ctx.stops),
                nfe=int(out.row_nfe[row]),
                tokens_fed=int(out.tokens_fed[row]),
                correct=bool(arith.score(answer_text(ctx.tokenizer, gen, ctx.stops), ctx.problems[i].answer)),
            )
        )
    return samples, tracker.peak_bytes


def _reuse(ctx: BenchContext, method: Method, n: int) -> tuple[str, MethodResult] | None:
    hit = ctx.done.get((method.config.key(), ctx.batch_size))
    if hit is None or hit[1].n_planned < n or hit[1].stopped == "time budget" and len(hit[1].samples) < n:
        return None
    where, old = hit
    samples = [s for s in old.samples if s.prompt < n]
    return where, MethodResult(method, n, samples, old.peak_bytes, sum(s.share for s in samples),
                               old.stopped if len(samples) < n else None, where)


def run_group(
    ctx: BenchContext, group: Group, tick: Callable[[str], None] | None = None
) -> list[MethodResult]:
    """Decode the group's prompts with every method, interleaved.

    A group whose every method was already decoded together in one earlier group (e.g. the
    length table at 512 = the main table at 512) reuses those results. A partial match is run
    afresh: figures timed at another moment must not be mixed into one table.
    """
    sizes = [min(len(ctx.problems), m.n or len(ctx.problems)) for m in group.methods]
    hits = [_reuse(ctx, m, n) for m, n in zip(group.methods, sizes, strict=True)]
    if all(hits) and len({h[0] for h in hits}) == 1:
        for m, n, h in zip(group.methods, sizes, hits, strict=True):
            h[1].method = m
            if tick:
                for _ in _batches(n, ctx.batch_size):
                    tick(f"{m.label} (reused)")
        return [h[1] for h in hits]
    results = [MethodResult(m, n) for m, n in zip(group.methods, sizes, strict=True)]
    if ctx.warmup:
        for res in results:
            _warm_up(ctx, res.method)
    batches = _batches(len(ctx.problems), ctx.batch_size)
    for b, prompts in enumerate(batches):
        k = b % max(1, len(results))
        for res in results[k:] + results[:k]:  # rotate the order so no method always goes first
            if res.stopped is not None or prompts[0] >= res.n_planned:
                continue
            rows = [i for i in prompts if i < res.n_planned]
            samples, peak = _run_batch(ctx, res.method, rows, b)
            if peak is not None:
                res.peak_bytes = max(res.peak_bytes or 0, peak)
            res.samples += samples
            res.seconds += samples[0].seconds
            if tick:
                tick(res.method.label)
            done = len(res.samples) >= res.n_planned
            if not done and ctx.budget_s and res.seconds >= ctx.budget_s:
                res.stopped = "time budget"
    where = f"{group.suite}/{group.name}"
    for res in results:
        ctx.done.setdefault((res.method.config.key(), ctx.batch_size), (where, res))
    return results


def planned_calls(ctx: BenchContext, groups: list[Group]) -> int:
    """Number of batch calls a run plans (for the progress bar's total)."""
    total = 0
    for g in groups:
        for m in g.methods:
            n = min(len(ctx.problems), m.n or len(ctx.problems))
            total += len(_batches(n, ctx.batch_size))
    return total
