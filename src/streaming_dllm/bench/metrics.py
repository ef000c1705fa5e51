"""Figures from samples: accuracy, throughput, latency, cost, and paired speedups.

Throughput is the paper's: generated non-EOS tokens per second, summed over samples (each
sample's share of its batch's wall time). Speedups are paired: a method and its reference are
compared on the prompts both decoded, so a reference with a smaller sample stays fair. So is the
accuracy difference, which comes with a 95% interval: on a few dozen prompts a gap of several
points can be noise, and the interval says how many.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from ..config import DecodeConfig
from .results import MethodResult, Sample


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def throughput(samples: list[Sample]) -> float:
    """Generated non-EOS tokens per second of wall time."""
    seconds = sum(s.share for s in samples)
    return sum(s.tokens for s in samples) / seconds if seconds > 0 else math.nan


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Per-method figures; means are per sample."""
    n = len(samples)
    lat = [s.seconds for s in samples]

    def mean(attr: str) -> float:
        return statistics.fmean(getattr(s, attr) for s in samples) if samples else math.nan

    return {
        "n": n,
        "accuracy": sum(s.correct for s in samples) / n if n else math.nan,
        "throughput_tok_s": throughput(samples),
        "latency_median_s": statistics.median(lat) if lat else math.nan,
        "latency_p90_s": percentile(lat, 90),
        "nfe_mean": mean("nfe"),
        "tokens_fed_mean": mean("tokens_fed"),
        "tokens_mean": mean("tokens"),
        "used_mean": mean("used"),
        "seconds_total": sum(s.share for s in samples),
    }


def paired(result: MethodResult, reference: MethodResult) -> tuple[list[Sample], list[Sample]]:
    """Both methods' samples on the prompts both decoded, position i of each on the same prompt."""
    theirs = {s.prompt: s for s in reference.samples}
    mine = [s for s in result.samples if s.prompt in theirs]
    return mine, [theirs[s.prompt] for s in mine]


def paired_speedup(result: MethodResult, reference: MethodResult | None) -> float | None:
    """Throughput ratio on the prompts both decoded (None without a reference or overlap)."""
    if reference is None:
        return None
    mine_samples, their_samples = paired(result, reference)
    if not mine_samples:
        return None
    mine, theirs = throughput(mine_samples), throughput(their_samples)
    return mine / theirs if theirs > 0 and not math.isnan(theirs) else None  # None: reference made no tokens


def paired_accuracy_delta(result: MethodResult, reference: MethodResult | None) -> dict[str, Any] | None:
    """Accuracy minus the reference's on the prompts both decoded, with a 95% interval.

    ``delta`` is the plain difference. The interval is Bonett and Price's adjusted Wald interval
    for paired proportions (2012): one is added to each count of disagreements and two to the
    number of prompts, so that a small sample on which the two methods happen to agree
    everywhere still gets a wide interval instead of a zero-width one. Only prompts on which the
    methods disagree (``better``, ``worse``) narrow it, which is why a paired interval is much
    narrower than the two accuracies' own intervals.
    """
    if reference is None:
        return None
    mine, theirs = paired(result, reference)
    if not mine:
        return None
    n = len(mine)
    better = sum(a.correct and not b.correct for a, b in zip(mine, theirs, strict=True))
    worse = sum(b.correct and not a.correct for a, b in zip(mine, theirs, strict=True))
    up, down = (better + 1) / (n + 2), (worse + 1) / (n + 2)
    centre = up - down
    half = 1.96 * math.sqrt(max(0.0, up + down - centre**2) / (n + 2))
    ci = [max(-1.0, centre - half), min(1.0, centre + half)]
    return {"n": n, "delta": (better - worse) / n, "ci95": ci, "better": better, "worse": worse}


def paired_time_speedup(result: MethodResult, reference: MethodResult | None) -> float | None:
    """Wall time per sample of the reference over this method's, on the prompts both decoded.

    Defined even when the reference generates no non-EOS tokens (throughput 0), e.g. a model
    that answers nothing at a length it was not trained for.
    """
    if reference is None:
        return None
    mine_samples, their_samples = paired(result, reference)
    mine = sum(s.share for s in mine_samples)
    theirs = sum(s.share for s in their_samples)
    return theirs / mine if mine_samples and mine > 0 else None


def reference_key(preset: str, like: DecodeConfig) -> str:
    """The key of ``preset`` at the generation and block length of ``like``."""
    return DecodeConfig.preset(preset, gen_length=like.gen_length, block_length=like.block_length).key()


def find_reference(results: list[MethodResult], preset: str, like: DecodeConfig) -> MethodResult | None:
    """The result (from any group) decoded with ``preset`` at ``like``'s lengths, most samples first."""
    key = reference_key(preset, like)
    hits = [r for r in results if r.method.config.key() == key]
    return max(hits, key=lambda r: len(r.samples), default=None)
