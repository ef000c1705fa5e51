"""The held-out check: the chosen config, the baseline and the ``streaming`` preset side by side
on prompts the search never saw, so the report can say how much of the dev result was luck."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..bench.metrics import paired_speedup, throughput
from .measure import Measurer
from .rule import Verdict, judge
from .space import Candidate
from .speed import relative_speed
from .tasks import Item


@dataclass
class HeldOut:
    n: int
    baseline_accuracy: float
    baseline_tok_s: float
    chosen: Verdict | None
    streaming: Verdict | None
    speedup_vs_streaming: float | None
    speedup_vs_baseline: float | None
    relative_vs_streaming: float | None = None
    """``speed.relative_speed`` against ``streaming``: the median per-prompt time ratio, times the
    tokens ratio (robust to bursts of load; ``speedup_vs_streaming`` is the bench's summed ratio)."""


def held_out_check(
    m: Measurer,
    items: list[Item],
    baseline: Candidate,
    chosen: Candidate,
    streaming: Candidate,
    epsilon: float,
    tick: Callable[[str], None],
) -> HeldOut:
    """Decode ``items`` with the three configs prompt by prompt: the baseline, then the chosen
    config and ``streaming`` back to back (their order alternating), so the two fast configs
    whose speeds are compared meet the same load."""
    pair = [chosen] + ([streaming] if streaming.config.key() != chosen.config.key() else [])
    for i, item in enumerate(items):
        for cand in [baseline, *(pair if i % 2 == 0 else pair[::-1])]:
            m.measure("held_out", i, item, cand.label, cand.config)
            tick(f"held-out {cand.label}")
    base = m.result("held_out", baseline.label, baseline.config)
    mine = m.result("held_out", chosen.label, chosen.config)
    ref = m.result("held_out", streaming.label, streaming.config)
    return HeldOut(
        n=len(base.samples),
        baseline_accuracy=sum(s.correct for s in base.samples) / max(1, len(base.samples)),
        baseline_tok_s=throughput(base.samples),
        chosen=judge(mine, base, epsilon),
        streaming=judge(ref, base, epsilon),
        speedup_vs_streaming=paired_speedup(mine, ref),
        speedup_vs_baseline=paired_speedup(mine, base),
        relative_vs_streaming=relative_speed(mine, ref),
    )
