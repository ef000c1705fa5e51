"""Successive halving on growing dev samples: every candidate on a few prompts, the better half
on twice as many, and so on, until the planned dev sample; weak configurations stop early.

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
from .tasks import Item

FIRST_ROUND = 8


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


def affordable(
    pool: list[Candidate], anchor: Candidate, per_anchor_s: float, seconds: float, n0: int, rounds: int
) -> list[Candidate]:
    """The cheapest candidates whose estimated cost over the whole search fits in ``seconds``
    (each round costs about ``n0`` decodes of every first-round candidate); ``anchor`` always."""
    unit = per_anchor_s / max(cost(anchor.config), 1e-9)
    kept, spent = [], 0.0
    for cand in sorted(pool, key=lambda c: cost(c.config)):
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


def successive_halving(
    m: Measurer,
    dev: list[Item],
    baseline: Candidate,
    pool: list[Candidate],
    epsilon: float,
    n_dev: int,
    deadline: float,
    tick: Callable[[str], None],
) -> SearchState:
    """Halve the pool each round (rejected configs leave at once) while the sample doubles."""
    state = SearchState(tried=list(pool), survivors=list(pool))
    alive, n = list(pool), min(FIRST_ROUND, n_dev)
    while True:
        complete = _round(m, dev[:n], baseline, alive, deadline, tick)
        state.rounds.append(Round(n, len(alive), complete))
        for c in alive:
            state.reached[c.config.key()] = n
        v = verdicts(m, baseline, alive, epsilon)
        ranked = sorted(
            (c for c in alive if v[c.config.key()] is None or v[c.config.key()].status != "rejected"),
            key=lambda c: rank_key(v[c.config.key()]),
            reverse=True,
        )
        if not complete or n >= n_dev or len(ranked) <= 1:
            state.survivors = ranked
            return state
        alive, n = ranked[: max(1, math.ceil(len(ranked) / 2))], min(n_dev, 2 * n)


def planned_rounds(n_dev: int, n0: int = FIRST_ROUND) -> int:
    return 1 + max(0, math.ceil(math.log2(max(1, n_dev) / max(1, n0))))


def best(
    m: Measurer, baseline: Candidate, state: SearchState, epsilon: float
) -> tuple[Candidate | None, Verdict | None]:
    """The fastest acceptable survivor (confirmed first), or None when none is acceptable."""
    v = verdicts(m, baseline, state.survivors, epsilon)
    ok = [c for c in state.survivors if v[c.config.key()] is not None and v[c.config.key()].ok]
    if not ok:
        return None, None
    top = max(ok, key=lambda c: rank_key(v[c.config.key()]))
    return top, v[top.config.key()]
