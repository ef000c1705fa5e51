"""PNG figures from a bench record (matplotlib, headless): main bars, ablation, length scaling,
the W and alpha sweeps (accuracy and throughput on one plot each), accuracy-vs-throughput scatter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(record: dict[str, Any], suite: str) -> list[dict[str, Any]]:
    return [g for g in record["groups"] if g["suite"] == suite]


def _plain_log(ax, axis: str = "y") -> None:
    """Log scale with plain numbers (10, 100) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"set_{axis}scale")("log")
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    _plt().close(fig)
    return name


def _bars(record: dict[str, Any], suite: str, out: Path, name: str, title: str) -> str | None:
    groups = _groups(record, suite)
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        labels = [m["label"] for m in g["methods"]]
        tput = [m["summary"]["throughput_tok_s"] for m in g["methods"]]
        bars = ax.bar(range(len(labels)), tput, color="tab:blue")
        for bar, m in zip(bars, g["methods"], strict=True):
            acc = m["summary"]["accuracy"]
            ax.annotate(f"{100 * acc:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        _plain_log(ax)
        ax.set_ylabel("tokens / s (log); labels: accuracy")
        ax.set_title(f"{title}, {g['name']}")
    return _save(fig, out, name)


def length_plot(record: dict[str, Any], out: Path) -> str | None:
    groups = sorted(_groups(record, "length"), key=lambda g: g["gen_length"])
    if not groups:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [m["label"] for m in groups[0]["methods"]]
    xs = [g["gen_length"] for g in groups]
    for label in labels:
        ms = [next((m for m in g["methods"] if m["label"] == label), None) for g in groups]
        tput = [m and m["summary"]["throughput_tok_s"] for m in ms]
        tput = [t if t else None for t in tput]  # 0 tokens/s has no place on a log axis
        left.plot(xs, tput, marker="o", label=label)
        if label != "vanilla":
            line = right.plot(xs, [m and m["speedup_vs_vanilla"] for m in ms], marker="o",
                              label=f"{label}, tokens/s")[0]
            right.plot(xs, [m and m["time_speedup_vs_vanilla"] for m in ms], marker="x", linestyle="--",
                       color=line.get_color(), label=f"{label}, time per sample")
    for ax, ylabel in ((left, "tokens / s"), (right, "speedup vs vanilla (paired)")):
        ax.set_xscale("log", base=2)
        _plain_log(ax)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("gen_length")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    left.set_title("throughput vs generation length")
    right.set_title("speedup over vanilla (paired prompts)")
    return _save(fig, out, "length_scaling.png")


def sweep_plot(record: dict[str, Any], suite: str, param: str, out: Path) -> str | None:
    groups = _groups(record, suite)
    if not groups:
        return None
    plt = _plt()
    g = groups[0]
    values = [m["params"][param] for m in g["methods"]]
    ticks = ["full" if v is None else f"{v:g}" for v in values]
    xs = list(range(len(values)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(xs, [m["summary"]["throughput_tok_s"] for m in g["methods"]], marker="o", color="tab:blue")
    ax.set_ylabel("tokens / s", color="tab:blue")
    ax.set_xticks(xs, ticks)
    ax.set_xlabel("window W" if param == "window" else "alpha")
    acc = ax.twinx()
    acc.plot(xs, [100 * m["summary"]["accuracy"] for m in g["methods"]], marker="s", color="tab:red")
    acc.set_ylabel("accuracy (%)", color="tab:red")
    acc.set_ylim(-2, 102)
    ax.set_title(f"streaming: {param} sweep, {g['name']}")
    return _save(fig, out, f"sweep_{param}.png")


def scatter_plot(record: dict[str, Any], out: Path) -> str | None:
    """Accuracy vs throughput of every method at the main suite's longest length (paper Fig. 1)."""
    groups = _groups(record, "main") or _groups(record, "custom")
    if not groups:
        return None
    g = max(groups, key=lambda g: g["gen_length"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in g["methods"]:
        s = m["summary"]
        ax.scatter(s["throughput_tok_s"], 100 * s["accuracy"], s=60)
        ax.annotate(m["label"], (s["throughput_tok_s"], 100 * s["accuracy"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    _plain_log(ax, "x")
    ax.set_xlabel("throughput, tokens / s (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.set_title(f"accuracy vs throughput, {g['name']}")
    ax.grid(alpha=0.3)
    return _save(fig, out, "scatter.png")


def make_plots(record: dict[str, Any], out: Path) -> list[str]:
    """Write every plot the record has data for into ``out``; the file names."""
    out.mkdir(parents=True, exist_ok=True)
    made = [
        _bars(record, "main", out, "main.png", "main table"),
        _bars(record, "ablation", out, "ablation.png", "ablation"),
        length_plot(record, out),
        sweep_plot(record, "window", "window", out),
        sweep_plot(record, "alpha", "alpha", out),
        scatter_plot(record, out),
    ]
    return [m for m in made if m]
