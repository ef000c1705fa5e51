"""Successive halving on growing dev samples: every candidate on a few prompts, the better half
on twice as many, and so on, until the planned dev sample; weak configurations stop early.

The halving is noise-aware. On 8 or 16 prompts one answer moves the accuracy by 6 to 12 points,
so a config that is as good as the baseline often looks worse by chance. A round therefore drops
for good only what the interval rejects (its upper bound below -eps); of the rest it keeps the
better half by the acceptance rule's order (acceptable first, then speed) *and* the
``KEEP_FAST`` fastest configs still within one answer of the tolerance, so a fast config that
lost one answer early is measured again on more prompts. Speed is relative to the reference
(the ``streaming`` preset, which every round keeps) on the same prompts (``speed.relative_speed``).

Each round decodes prompt by prompt, the baseline first (it is every comparison's reference) and
the candidates in an order that rotates per prompt, so a burst of machine noise does not always
hit the same config. A round cut short by the deadline ends the search; every comparison is
paired, so configurations with fewer samples are still judged fairly on the prompts they share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .measure import Measurer
from .rule import Verdict, judge, rank_key
from .space import Candidate, cost
from .speed import relative_speed
from .tasks import Item

FIRST_ROUND = 8
KEEP_FAST = 4
"""Fastest not-rejected configs (within one answer of the tolerance) kept each round besides the half."""
SPEED_TIE = 0.05
"""Acceptable configs within this fraction of the fastest one's speed count as equally fast: the
final choice among them is the most accurate (speeds measured on a shared machine differ by a
few percent from run to run, while a point of accuracy is what the user asked to keep)."""


@dataclass
class Round:
    n: int
    configs: int
    complete: bool


@dataclass
class SearchState:
    """What the search measured: every candidate tried, the survivors, the rounds."""

    tried: list[Candidate]
    survivors: list[Candidate]
    rounds: list[Round] = field(default_factory=list)
    reached: dict[str, int] = field(default_factory=dict)
    reference: Candidate | None = None
    """The speed reference (the ``streaming`` preset): ``speeds`` are relative to it."""
    speeds: dict[str, float] = field(default_factory=dict)


def affordable(
    pool: list[Candidate], anchor: Candidate, per_anchor_s: float, seconds: float, n0: int, rounds: int
) -> list[Candidate]:
    """The seeded candidates (anchors, ``streaming``'s neighbours), then the cheapest others, while
    the estimated cost over the whole search fits in ``seconds`` (each round costs about ``n0``
    decodes of every first-round candidate); ``anchor`` always."""
    unit = per_anchor_s / max(cost(anchor.config), 1e-9)
    kept, spent = [], 0.0
    for cand in sorted(pool, key=lambda c: (not c.seeded, cost(c.config))):
        price = cost(cand.config) * unit * n0 * rounds
        if kept and spent + price > seconds:
            break
        kept.append(cand)
        spent += price
    if anchor.config.key() not in {c.config.key() for c in kept}:
        kept.append(anchor)
    return kept


def _round(
    m: Measurer,
    items: list[Item],
    baseline: Candidate,
    cands: list[Candidate],
    deadline: float,
    tick: Callable[[str], None],
) -> bool:
    """Every candidate on ``items``; False when the deadline stopped it."""
    for i, item in enumerate(items):
        k = i % max(1, len(cands))
        for cand in [baseline, *cands[k:], *cands[:k]]:
            if time.perf_counter() > deadline and not m.known("dev", i, item, cand.config):
                return False
            m.measure("dev", i, item, cand.label, cand.config)
            tick(f"dev n={len(items)} {cand.label}")
    return True


def verdicts(
    m: Measurer, baseline: Candidate, cands: list[Candidate], epsilon: float
) -> dict[str, Verdict | None]:
    base = m.result("dev", baseline.label, baseline.config)
    return {c.config.key(): judge(m.result("dev", c.label, c.config), base, epsilon) for c in cands}


def speeds(m: Measurer, reference: Candidate | None, cands: list[Candidate]) -> dict[str, float]:
    """Each candidate's dev speed relative to ``reference`` (0 when not comparable yet)."""
    if reference is None:
        return {}
    ref = m.result("dev", reference.label, reference.config)
    out = {}
    for c in cands:
        r = relative_speed(m.result("dev", c.label, c.config), ref)
        out[c.config.key()] = 0.0 if r is None else r
    return out


def _plausible(v: Verdict | None, epsilon: float) -> bool:
    """Not rejected, and at most one answer beyond the tolerance (on n prompts, 1/n of accuracy)."""
    return v is None or (v.status != "rejected" and v.delta >= -epsilon - 1.0 / max(1, v.n) - 1e-12)


def select(
    alive: list[Candidate],
    v: dict[str, Verdict | None],
    speed: dict[str, float],
    epsilon: float,
    reference: Candidate | None,
) -> list[Candidate]:
    """The survivors of a round, best first: the better half of the configs not rejected, the
    ``KEEP_FAST`` fastest plausible ones, and the speed reference."""

    def key(c: Candidate) -> tuple[int, int, float]:
        return rank_key(v[c.config.key()], speed.get(c.config.key()))

    live = [c for c in alive if v[c.config.key()] is None or v[c.config.key()].status != "rejected"]
    ranked = sorted(live, key=key, reverse=True)
    keep = ranked[: max(1, math.ceil(len(ranked) / 2))] if ranked else []
    fast = [c for c in live if _plausible(v[c.config.key()], epsilon)]
    keep += sorted(fast, key=lambda c: speed.get(c.config.key(), 0.0), reverse=True)[:KEEP_FAST]
    if reference is not None and any(c.config.key() == reference.config.key() for c in alive):
        keep.append(reference)
    wanted = {c.config.key() for c in keep}
    return [c for c in sorted(alive, key=key, reverse=True) if c.config.key() in wanted]


def successive_halving(
    m: Measurer,
    dev: list[Item],
    baseline: Candidate,
    pool: list[Candidate],
    epsilon: float,
    n_dev: int,
    deadline: float,
    tick: Callable[[str], None],
    reference: Candidate | None = None,
) -> SearchState:
    """Halve the pool each round (``select``: rejected configs leave at once) while the sample
    doubles; speeds are relative to ``reference`` (the ``streaming`` preset) when given."""
    state = SearchState(tried=list(pool), survivors=list(pool), reference=reference)
    alive, n = list(pool), min(FIRST_ROUND, n_dev)
    while True:
        complete = _round(m, dev[:n], baseline, alive, deadline, tick)
        state.rounds.append(Round(n, len(alive), complete))
        for c in alive:
            state.reached[c.config.key()] = n
        v = verdicts(m, baseline, alive, epsilon)
        state.speeds.update(speeds(m, reference, alive))
        kept = select(alive, v, state.speeds, epsilon, reference)
        if not complete or n >= n_dev or len(kept) <= 1:
            state.survivors = kept
            return state
        alive, n = kept, min(n_dev, 2 * n)


def planned_rounds(n_dev: int, n0: int = FIRST_ROUND) -> int:
    return 1 + max(0, math.ceil(math.log2(max(1, n_dev) / max(1, n0))))


def best(
    m: Measurer, baseline: Candidate, state: SearchState, epsilon: float
) -> tuple[Candidate | None, Verdict | None]:
    """The chosen survivor (``choose``), or None when none is acceptable."""
    v = verdicts(m, baseline, state.survivors, epsilon)
    top = choose(state.survivors, v, state.speeds)
    return top, None if top is None else v[top.config.key()]


def choose(cands: list[Candidate], v: dict[str, Verdict | None], speed: dict[str, float]) -> Candidate | None:
    """Among the confirmed candidates if any, else the accepted ones, the most accurate of those
    within ``SPEED_TIE`` of the fastest (``speed`` relative to the reference where known, else
    tokens/s), then the faster; None when none is acceptable."""
    ok = [c for c in cands if v[c.config.key()] is not None and v[c.config.key()].ok]
    group = [c for c in ok if v[c.config.key()].status == "confirmed"] or ok
    if not group:
        return None

    def fast(c: Candidate) -> float:
        return rank_key(v[c.config.key()], speed.get(c.config.key()))[2]

    top = max(fast(c) for c in group)
    near = [c for c in group if fast(c) >= (1 - SPEED_TIE) * top]
    return max(near, key=lambda c: (v[c.config.key()].delta, fast(c)))
