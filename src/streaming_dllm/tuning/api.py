"""``tune``: the fastest decoding settings that keep a task's accuracy, checked on held-out data.

The run: calibrate (one baseline and one ``streaming`` decode say what a sample costs), plan the
sample sizes the budget allows, search the dev split by successive halving, then re-measure the
chosen config, the baseline and the ``streaming`` preset side by side on held-out prompts the
search never saw. The tuner decodes nothing itself: every decode is ``engine.generate``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PRESETS, DecodeConfig, gen_length_for
from .holdout import HeldOut, held_out_check
from .measure import MeasureCache, Measurer
from .progress import Progress
from .rule import Verdict
from .search import SearchState, affordable, best, planned_rounds, successive_halving
from .space import Candidate, candidates
from .tasks import TuneTask, load_task

MIN_SAMPLES = 8
BASELINE_SHARE = 0.7
"""Share of the budget planned for the baseline and the held-out check; the rest searches."""
MAX_SAMPLES = 200


@dataclass
class Plan:
    budget_s: float
    baseline_s: float
    streaming_s: float
    n_dev: int
    n_held_out: int
    reserve_s: float


@dataclass
class TuneResult:
    """What ``tune`` found; unpacks as ``config, table = tune(...)``."""

    config: DecodeConfig
    table: list[dict[str, Any]]
    baseline: DecodeConfig
    chosen_label: str
    dev_verdict: Verdict | None
    held_out: HeldOut
    plan: Plan
    state: SearchState
    task: TuneTask
    seconds: float
    epsilon: float = 1.0
    files: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.config, self.table))


def check_settings(epsilon: float, budget_min: float, max_configs: int = 48) -> None:
    """The numbers a user gives, refused with one line naming the flag."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"--epsilon: must be a number of accuracy points >= 0, got {epsilon}")
    if not (
        isinstance(budget_min, (int, float)) and math.isfinite(budget_min) and 0 < budget_min <= 7 * 24 * 60
    ):
        raise ValueError(f"--budget-min: must be a number of minutes > 0 (at most a week), got {budget_min}")
    if not 1 <= max_configs <= 10_000:
        raise ValueError(f"--max-configs: must be in [1, 10000], got {max_configs}")


def baseline_config(baseline: str | DecodeConfig, gen_length: int, block_length: int) -> DecodeConfig:
    if isinstance(baseline, DecodeConfig):
        return baseline
    if baseline not in PRESETS:
        raise ValueError(f"--baseline: unknown preset {baseline!r}; choose one of {sorted(PRESETS)}")
    return DecodeConfig.preset(baseline, gen_length=gen_length, block_length=block_length)


def plan_sizes(
    task: TuneTask, budget_s: float, baseline_s: float, streaming_s: float, max_samples: int = MAX_SAMPLES
) -> Plan:
    """Dev and held-out sizes: the baseline and held-out decodes get ``BASELINE_SHARE`` of the budget."""
    per = 2 * baseline_s + 2 * streaming_s  # a dev and a held-out baseline decode, plus two fast ones
    n = int(BASELINE_SHARE * budget_s / max(per, 1e-9))
    n_dev, n_held = min(n, len(task.dev), max_samples), min(n, len(task.held_out), max_samples)
    need = min(MIN_SAMPLES, len(task.dev), len(task.held_out))
    if min(n_dev, n_held) < max(1, need):
        minutes = need * per / BASELINE_SHARE / 60
        raise ValueError(
            f"--budget-min: {budget_s / 60:g} min is too small to measure the baseline: one decode takes "
            f"{baseline_s:.2f} s, and {need} dev plus {need} held-out prompts need about {minutes:.1f} min"
        )
    reserve = n_held * (baseline_s + 2 * streaming_s) * 1.15
    return Plan(budget_s, baseline_s, streaming_s, n_dev, n_held, reserve)


CALIBRATION = 3
"""Dev prompts decoded by the baseline and ``streaming`` to price a decode (the search reuses them)."""


def _calibrate(
    m: Measurer, task: TuneTask, base: Candidate, anchor: Candidate, budget_s: float
) -> tuple[float, float]:
    """Mean seconds of a baseline and a ``streaming`` decode, on up to ``CALIBRATION`` dev prompts
    (one decode is a poor price on a loaded machine; the search reuses them), fewer once they have
    taken 5% of the budget."""
    b, s = [], []
    for i, item in enumerate(task.dev[: max(1, CALIBRATION)]):
        if b and sum(b) + sum(s) > 0.05 * budget_s:
            break
        b.append(m.measure("dev", i, item, base.label, base.config).share)
        s.append(m.measure("dev", i, item, anchor.label, anchor.config).share)
    return sum(b) / len(b), sum(s) / len(s)


HELD_OUT_MARGIN = 0.9
"""Share of the time left after the search that the held-out check may plan to use."""


def held_out_size(m: Measurer, plan: Plan, trio: list[Candidate], time_left_s: float) -> int:
    """Held-out prompts for the time left: the plan's, or more when the dev decodes of the three
    configs (the baseline first) show that more fit. Decided from times only, never from results."""
    per = 0.0
    for cand in trio:  # a config without dev decodes is priced as the baseline's calibration decode
        samples = m.result("dev", cand.label, cand.config).samples
        per += sum(s.share for s in samples) / len(samples) if samples else plan.baseline_s
    fit = int(HELD_OUT_MARGIN * time_left_s / max(per, 1e-9))
    return max(plan.n_held_out, min(fit, len(m.task.held_out), MAX_SAMPLES))


def _search(
    m: Measurer,
    base: Candidate,
    pool: list[Candidate],
    budget_s: float,
    start: float,
    eps: float,
    bar: Progress,
) -> tuple[Plan, SearchState, Candidate, Verdict | None, HeldOut]:
    """Calibrate, plan, search the dev split, check the winner (or the baseline) on held-out prompts."""
    task = m.task
    anchor = next(c for c in pool if c.label == "streaming")
    plan = plan_sizes(task, budget_s, *_calibrate(m, task, base, anchor, budget_s))
    deadline = start + plan.budget_s - plan.reserve_s
    search_s = max(0.0, deadline - time.perf_counter() - plan.n_dev * plan.baseline_s)
    pool = affordable(
        pool, anchor, plan.streaming_s, search_s, min(8, plan.n_dev), planned_rounds(plan.n_dev)
    )
    state = successive_halving(m, task.dev, base, pool, eps, plan.n_dev, deadline, bar.tick, anchor)
    chosen, verdict = best(m, base, state, eps)
    chosen = chosen or base
    trio = [base, chosen] + ([anchor] if anchor.config.key() != chosen.config.key() else [])
    plan.n_held_out = held_out_size(m, plan, trio, start + plan.budget_s - time.perf_counter())
    held = held_out_check(m, task.held_out[: plan.n_held_out], base, chosen, anchor, eps, bar.tick)
    return plan, state, chosen, verdict, held


def tune(
    model: Any,
    task: str | TuneTask = "arith",
    *,
    tokenizer: Any = None,
    baseline: str | DecodeConfig = "vanilla",
    epsilon: float = 1.0,
    budget_min: float = 10.0,
    out: str | Path | None = None,
    gen_length: int | None = None,
    block_length: int = 32,
    scorer: Any = None,
    max_configs: int = 48,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Search the knobs on ``task``'s dev split for the fastest config whose accuracy is within
    ``epsilon`` points of ``baseline``'s (the rule in ``tuning.rule``), then check it on the
    held-out split. With ``out``, measurements are cached in ``out/measurements.jsonl`` (a second
    run resumes) and ``preset.json``, ``report.md`` and ``pareto.png`` are written there."""
    check_settings(epsilon, budget_min, max_configs)
    from ..loading import load_tokenizer

    start = time.perf_counter()
    task = load_task(task, scorer, seed)
    tokenizer = tokenizer or load_tokenizer(model)
    gen = gen_length_for(gen_length or task.gen_length, block_length)
    base_cfg = baseline_config(baseline, gen, block_length)
    pool = candidates(base_cfg, model.traits.block_causal, max_configs, seed)
    base = Candidate(f"baseline ({base_cfg.preset_name or 'custom'})", base_cfg)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    bar = Progress(budget_min * 60, enabled=progress)
    m = Measurer(model, tokenizer, task, MeasureCache(out / "measurements.jsonl" if out else None))
    try:
        plan, state, chosen, verdict, held = _search(
            m, base, pool, budget_min * 60, start, epsilon / 100, bar
        )
    finally:
        bar.close()
    config = chosen.config.replace(preset_name="tuned" if chosen is not base else base_cfg.preset_name)
    from .report import table_rows, write_outputs

    result = TuneResult(
        config,
        table_rows(m, base, state, epsilon / 100),
        base_cfg,
        chosen.label,
        verdict,
        held,
        plan,
        state,
        task,
        time.perf_counter() - start,
        epsilon,
    )
    if out is not None:
        result.files = write_outputs(result, m, out, epsilon, model)
    return result
