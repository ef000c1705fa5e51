"""What ``tune`` leaves in ``--out``: ``preset.json``, ``report.md`` and ``pareto.png``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..bench.metrics import paired_speedup, throughput
from ..preset_files import save_config
from .measure import Measurer
from .rule import Verdict, judge
from .search import SearchState
from .space import KNOBS, Candidate


def _knobs(cand: Candidate) -> dict[str, Any]:
    return {k: getattr(cand.config, k) for k in KNOBS}


def table_rows(m: Measurer, base: Candidate, state: SearchState, epsilon: float) -> list[dict[str, Any]]:
    """One row per configuration tried (the baseline first): knobs, dev figures, verdict."""
    ref = m.result("dev", base.label, base.config)
    rows = [
        {
            "label": base.label,
            **_knobs(base),
            "n": len(ref.samples),
            "status": "baseline",
            "accuracy": _acc(ref.samples),
            "delta": 0.0,
            "lo": 0.0,
            "hi": 0.0,
            "tok_s": throughput(ref.samples),
            "s_per_sample": _per(ref.samples),
            "speedup": 1.0,
            "vs_streaming": None,
            "round_n": state.rounds[-1].n if state.rounds else 0,
            "key": base.config.key(),
        }
    ]
    for cand in state.tried:
        res = m.result("dev", cand.label, cand.config)
        v = judge(res, ref, epsilon)
        if v is None:
            continue
        rows.append(
            {
                "label": cand.label,
                **_knobs(cand),
                "n": v.n,
                "status": v.status,
                "accuracy": v.accuracy,
                "delta": v.delta,
                "lo": v.lo,
                "hi": v.hi,
                "tok_s": v.tok_s,
                "s_per_sample": v.seconds_per_sample,
                "speedup": paired_speedup(res, ref),
                "vs_streaming": state.speeds.get(cand.config.key()),
                "round_n": state.reached.get(cand.config.key(), 0),
                "key": cand.config.key(),
            }
        )
    return rows


def _acc(samples: list) -> float:
    return sum(s.correct for s in samples) / len(samples) if samples else math.nan


def _per(samples: list) -> float:
    return sum(s.share for s in samples) / len(samples) if samples else math.nan


def _pts(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def _verdict_line(name: str, v: Verdict | None) -> str:
    if v is None:
        return f"| {name} | – | – | – | – | – |"
    return (
        f"| {name} | {v.n} | {100 * v.accuracy:.1f}% | {_pts(v.delta)} ({_pts(v.lo)} to {_pts(v.hi)}) | "
        f"{v.status} | {v.tok_s:.1f} |"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "full"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:g}"
    return str(v)


def _search_table(rows: list[dict[str, Any]], chosen_key: str) -> list[str]:
    head = [
        "config",
        *KNOBS,
        "n",
        "accuracy",
        "vs baseline, points (95% CI)",
        "verdict",
        "tokens/s",
        "s/sample",
        "speedup",
        "vs streaming",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [rows[0]] + sorted(
        rows[1:], key=lambda r: (-r["round_n"], -(r["vs_streaming"] or 0), -(r["tok_s"] or 0))
    )
    for r in order:
        mark = " **(chosen)**" if r["key"] == chosen_key else ""
        sp = "–" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"] + mark,
                    *(_fmt(r[k]) for k in KNOBS),
                    str(r["n"]),
                    f"{100 * r['accuracy']:.1f}%",
                    _ci(r),
                    r["status"],
                    f"{r['tok_s']:.1f}",
                    f"{r['s_per_sample']:.3f}",
                    sp,
                    _ratio(r["vs_streaming"] or None),
                ]
            )
            + " |"
        )
    return lines


def _ci(r: dict[str, Any]) -> str:
    return "–" if r["status"] == "baseline" else f"{_pts(r['delta'])} ({_pts(r['lo'])} to {_pts(r['hi'])})"


def markdown(result: Any, epsilon: float, model_name: str) -> str:
    """The report: settings, chosen config, held-out figures and overfit, the search table."""
    h, p, cfg = result.held_out, result.plan, result.config
    chosen_row = next((r for r in result.table if r["key"] == cfg.key()), result.table[0])
    knobs = ", ".join(f"{k}={_fmt(getattr(cfg, k))}" for k in KNOBS)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        f"# tune: {result.task.name} on {model_name}",
        "",
        f"Baseline `{result.baseline.preset_name}` (gen_length {result.baseline.gen_length}), tolerance "
        f"ε = {epsilon:g} point(s), budget {p.budget_s / 60:g} min, run {result.seconds / 60:.1f} min"
        + (f", load average at the end {load[0]:.1f}" if load else "")
        + ".",
        f"Dev: {result.task.info.get('dev', 'dev')}, up to {p.n_dev} prompts; held out: "
        f"{result.task.info.get('held_out', 'held-out')}, {h.n} prompts. Throughput = generated non-EOS "
        "tokens per second (as the bench), batch size 1.",
        "",
        f"**Chosen:** `{result.chosen_label}`: {knobs} (saved as `preset.json`).",
        "",
        "| held out | n | accuracy | vs baseline, points (95% CI) | verdict | tokens/s |",
        "|---|---|---|---|---|---|",
        f"| baseline | {h.n} | {100 * h.baseline_accuracy:.1f}% | – | – | {h.baseline_tok_s:.1f} |",
        _verdict_line("chosen", h.chosen),
        _verdict_line("streaming (default preset)", h.streaming),
        "",
        f"Chosen vs `streaming`, held out: {_ratio(h.speedup_vs_streaming)} tokens/s (paired, summed), "
        f"{_ratio(h.relative_vs_streaming)} by the median per-prompt time ratio (robust to load); vs "
        f"baseline {_ratio(h.speedup_vs_baseline)}.",
        "",
        f"Overfit: on dev the chosen config was {_pts(chosen_row['delta'])} points vs the baseline "
        f"(n={chosen_row['n']}), held out {_pts(h.chosen.delta if h.chosen else None)} (n={h.n}); "
        f"tokens/s {chosen_row['tok_s']:.1f} dev, {h.chosen.tok_s if h.chosen else math.nan:.1f} held out.",
        "",
        "Rule: d = paired accuracy difference, [lo, hi] its 95% interval (Bonett–Price). rejected: hi < −ε; "
        "below: d < −ε; confirmed: lo ≥ −ε; accepted: otherwise. Among the confirmed configs if any, "
        "else the accepted ones, the most accurate of those within 5% of the fastest wins; with none, "
        "the baseline.",
        "",
        "Rounds (successive halving): "
        + ", ".join(
            f"{r.configs} configs on {r.n} prompts" + ("" if r.complete else " (cut by the budget)")
            for r in result.state.rounds
        )
        + ".",
        "",
        "![pareto](pareto.png)",
        "",
        "## Every configuration tried (dev)",
        "",
        *_search_table(result.table, cfg.key()),
    ]
    return "\n".join(lines) + "\n"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def write_outputs(result: Any, m: Measurer, out: Path, epsilon: float, model: Any) -> dict[str, str]:
    """``preset.json``, ``report.md`` and (matplotlib permitting) ``pareto.png`` in ``out``."""
    files = {"preset": str(save_config(result.config, out / "preset.json"))}
    try:
        from .plot import pareto_plot

        files["plot"] = str(pareto_plot(result, out / "pareto.png"))
    except ImportError:
        pass
    name = Path(model.name_or_path).name or "model"
    report = out / "report.md"
    report.write_text(markdown(result, epsilon, name), encoding="utf-8")
    files["report"] = str(report)
    return files
