"""``pareto.png``: accuracy against throughput of every configuration tried, with the front.

Accuracy is plotted as the paired difference to the baseline (points), because configurations
stopped in early rounds were measured on fewer prompts than the survivors: the difference on the
prompts each shares with the baseline is the comparable figure; marker size grows with the sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configs no other config beats on both accuracy and speed, by speed."""
    pts = sorted(rows, key=lambda r: -r["tok_s"])
    front, best = [], -float("inf")
    for r in pts:
        if r["delta"] > best:
            front.append(r)
            best = r["delta"]
    return front


def _marks(ax: Any, result: Any, rows: list[dict[str, Any]]) -> None:
    """The baseline, the ``streaming`` preset and the chosen config, drawn on top."""
    base = result.table[0]
    marks = [(base, "baseline", "k", "s")]
    marks += [(r, "streaming", "tab:purple", "D") for r in rows if r["label"] == "streaming"]
    marks += [(r, "chosen", "gold", "*") for r in rows if r["key"] == result.config.key() and r is not base]
    for r, name, color, marker in marks:
        ax.scatter(
            [r["tok_s"]],
            [100 * r["delta"]],
            s=180,
            color=color,
            marker=marker,
            edgecolor="k",
            zorder=5,
            label=f"{name}: {r['label']}",
        )


def pareto_plot(result: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.table if r["tok_s"] and r["tok_s"] > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for status, color in (
        ("confirmed", "tab:green"),
        ("accepted", "tab:blue"),
        ("below", "tab:orange"),
        ("rejected", "tab:red"),
    ):
        pts = [r for r in rows if r["status"] == status]
        if pts:
            ax.scatter(
                [r["tok_s"] for r in pts],
                [100 * r["delta"] for r in pts],
                s=[12 + 2 * r["n"] for r in pts],
                color=color,
                alpha=0.6,
                label=status,
            )
    front = _front(rows)
    ax.plot(
        [r["tok_s"] for r in front],
        [100 * r["delta"] for r in front],
        color="grey",
        lw=1,
        ls="--",
        label="Pareto front",
    )
    _marks(ax, result, rows)
    ax.axhline(0, color="k", lw=0.5)
    ax.axhline(
        -result.epsilon, color="tab:red", lw=0.8, ls=":", label=f"tolerance -{result.epsilon:g} points"
    )
    ax.set_xscale("log")
    ax.set_xlabel("throughput, generated tokens / s (log)")
    ax.set_ylabel(
        f"accuracy vs baseline, points (dev, paired; baseline {100 * result.table[0]['accuracy']:.0f}%)"
    )
    ax.set_title(f"tune: {result.task.name}, {len(rows)} configs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
