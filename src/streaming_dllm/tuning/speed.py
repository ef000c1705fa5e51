"""Speed on a shared, loaded machine: a config against a reference decoded next to it.

A config's own tokens/s swings with the machine's load (a burst of another job can halve it for a
few decodes), so the search ranks configurations by their speed relative to a reference config
(the ``streaming`` preset) decoded on the same prompts at about the same time: the median over
prompts of the reference's wall time over the config's, times the ratio of tokens generated. The
median ignores the prompts a burst hit; the pairing cancels slow drifts of the load.
"""

from __future__ import annotations

import statistics

from ..bench.metrics import paired
from ..bench.results import MethodResult


def relative_speed(mine: MethodResult, reference: MethodResult) -> float | None:
    """Throughput relative to ``reference`` (>1: faster) on the prompts both decoded, robust to
    bursts of load; None before they share a prompt or when either generated nothing."""
    a, b = paired(mine, reference)
    times = [y.share / x.share for x, y in zip(a, b, strict=True) if x.share > 0 and y.share > 0]
    tokens_a, tokens_b = sum(x.tokens for x in a), sum(y.tokens for y in b)
    if not times or tokens_a <= 0 or tokens_b <= 0:
        return None
    return statistics.median(times) * tokens_a / tokens_b
