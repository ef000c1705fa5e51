"""The held-out check: the chosen config, the baseline and the ``streaming`` preset side by side
on prompts the search never saw, so the report can say how much of the dev result was luck."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..bench.metrics import paired_speedup, throughput
from .measure import Measurer
from .rule import Verdict, judge
from .space import Candidate
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


def held_out_check(
    m: Measurer,
    items: list[Item],
    baseline: Candidate,
    chosen: Candidate,
    streaming: Candidate,
    epsilon: float,
    tick: Callable[[str], None],
) -> HeldOut:
    """Decode ``items`` with the three configs, interleaved prompt by prompt (order rotating)."""
    trio = [baseline, chosen] + ([streaming] if streaming.config.key() != chosen.config.key() else [])
    for i, item in enumerate(items):
        k = i % len(trio)
        for cand in trio[k:] + trio[:k]:
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
    )
