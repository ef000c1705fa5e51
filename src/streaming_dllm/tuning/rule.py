"""The acceptance rule: how a config's accuracy is judged against the baseline's.

On the prompts both decoded, d = paired accuracy difference (config minus baseline) and [lo, hi]
its 95% interval, exactly as the bench reports them (``bench.metrics.paired_accuracy_delta``,
Bonett and Price's adjusted Wald interval). With tolerance eps:

* ``rejected``: hi < -eps, the interval says the config is worse by more than eps;
* ``below``: d < -eps, the estimate is beyond the tolerance, though the interval cannot tell;
* ``confirmed``: lo >= -eps, the interval says the config is not worse by more than eps;
* ``accepted``: otherwise (d >= -eps, the interval does not put it beyond the tolerance).

A config is acceptable when ``accepted`` or ``confirmed``; the chosen one is the fastest
``confirmed`` config if there is one, else the fastest ``accepted`` one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..bench.metrics import paired, paired_accuracy_delta, throughput
from ..bench.results import MethodResult

OK = ("confirmed", "accepted")


@dataclass(frozen=True)
class Verdict:
    status: str
    n: int
    delta: float
    lo: float
    hi: float
    accuracy: float
    tok_s: float
    seconds_per_sample: float

    @property
    def ok(self) -> bool:
        return self.status in OK


def judge(result: MethodResult, baseline: MethodResult, epsilon: float) -> Verdict | None:
    """The verdict on ``result`` against ``baseline`` (None before they share a prompt)."""
    d = paired_accuracy_delta(result, baseline)
    if d is None:
        return None
    lo, hi = d["ci95"]
    if hi < -epsilon:
        status = "rejected"
    elif d["delta"] < -epsilon:
        status = "below"
    elif lo >= -epsilon:
        status = "confirmed"
    else:
        status = "accepted"
    mine, _ = paired(result, baseline)
    tok_s = throughput(mine)
    per = sum(s.share for s in mine) / len(mine)
    acc = sum(s.correct for s in mine) / len(mine)
    return Verdict(status, d["n"], d["delta"], lo, hi, acc, 0.0 if math.isnan(tok_s) else tok_s, per)


def rank_key(v: Verdict | None, speed: float | None = None) -> tuple[int, int, float]:
    """Sort key, best first when reversed: acceptable before not, confirmed first, then speed
    (``speed``, relative to a reference decoded alongside, when given; else the verdict's tokens/s)."""
    if v is None:
        return (0, 0, 0.0)
    return (int(v.ok), int(v.status == "confirmed"), v.tok_s if speed is None else speed)
