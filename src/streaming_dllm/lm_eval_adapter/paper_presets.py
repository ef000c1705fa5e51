"""The Streaming-dLLM paper's per-task evaluation settings (its Table 11) as named presets.

A preset is named ``<family>/<task>/<gen_length>``, e.g. ``llada-1.5/gsm8k/512``. It fixes the
knobs the paper tuned per model family, benchmark and generation length: the sliding window,
tau0 (``threshold``), alpha and the block size (32 everywhere). Everything else is the
``streaming`` method (prefix cache, tail_keep=1, dynamic threshold, early exit).

``PAPER_TASKS`` records how the paper ran each benchmark in lm-evaluation-harness (task name and
number of few-shot examples, as in the authors' ``eval_llada.sh`` / ``eval_dream.sh``).

Source: Streaming-dLLM (arXiv 2601.17917), Appendix B.3, Table 11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAPER_MODELS = ("dream", "llada", "llada-1.5")
"""The model families of the paper's runs (not ``models.registry.FAMILIES``, the architectures)."""
TASKS = ("humaneval", "gsm8k", "mbpp", "math")
GEN_LENGTHS = (256, 512)
BLOCK_LENGTH = 32
TAU0 = 0.9


@dataclass(frozen=True)
class PaperTask:
    """How the paper evaluates one benchmark: the harness task and its few-shot count."""

    lm_eval_task: str
    num_fewshot: int


# Dream's GSM8K row is the chain-of-thought variant (Table 11: "GSM8K-CoT (5-shot)").
PAPER_TASKS: dict[tuple[str, str], PaperTask] = {}
for _fam in PAPER_MODELS:
    PAPER_TASKS[(_fam, "humaneval")] = PaperTask("humaneval", 0)
    PAPER_TASKS[(_fam, "gsm8k")] = PaperTask("gsm8k_cot" if _fam == "dream" else "gsm8k", 5)
    PAPER_TASKS[(_fam, "mbpp")] = PaperTask("mbpp", 3)
    PAPER_TASKS[(_fam, "math")] = PaperTask("minerva_math", 4)

# (family, task) -> {gen_length: (window, alpha)}; tau0 = 0.9 and block size 32 in every row.
_TABLE_11: dict[tuple[str, str], dict[int, tuple[int, float]]] = {
    ("dream", "humaneval"): {256: (192, 0.7), 512: (128, 0.4)},
    ("dream", "gsm8k"): {256: (32, 0.3), 512: (32, 0.3)},
    ("dream", "mbpp"): {256: (192, 0.3), 512: (192, 0.6)},
    ("dream", "math"): {256: (32, 0.1), 512: (32, 0.3)},
    ("llada", "humaneval"): {256: (192, 0.3), 512: (256, 0.4)},
    ("llada", "gsm8k"): {256: (96, 0.3), 512: (96, 0.3)},
    ("llada", "mbpp"): {256: (32, 0.3), 512: (32, 0.3)},
    ("llada", "math"): {256: (128, 0.3), 512: (256, 0.2)},
    ("llada-1.5", "humaneval"): {256: (96, 0.3), 512: (96, 0.4)},
    ("llada-1.5", "gsm8k"): {256: (96, 0.4), 512: (128, 0.6)},
    ("llada-1.5", "mbpp"): {256: (96, 0.3), 512: (96, 0.3)},
    ("llada-1.5", "math"): {256: (96, 0.4), 512: (192, 0.3)},
}

PAPER_PRESETS: dict[str, dict[str, Any]] = {
    f"{fam}/{task}/{n}": dict(
        gen_length=n, block_length=BLOCK_LENGTH, window=window, threshold=TAU0, alpha=alpha
    )
    for (fam, task), rows in _TABLE_11.items()
    for n, (window, alpha) in rows.items()
}
"""Preset name -> ``DecodeConfig`` fields, applied on top of the ``streaming`` method."""


def paper_preset(name: str) -> dict[str, Any]:
    """The ``DecodeConfig`` overrides of one paper preset; ValueError names the valid choices."""
    key = name.strip().lower()
    if key not in PAPER_PRESETS:
        raise ValueError(
            f"preset={name!r}: unknown paper preset; use <family>/<task>/<gen_length> with family in "
            f"{PAPER_MODELS}, task in {TASKS}, gen_length in {GEN_LENGTHS} (e.g. 'llada-1.5/gsm8k/512')"
        )
    return dict(PAPER_PRESETS[key])


def paper_task(name: str) -> PaperTask:
    """The harness task and few-shot count the paper used for a preset name."""
    fam, task, _ = paper_preset_parts(name)
    return PAPER_TASKS[(fam, task)]


def paper_preset_parts(name: str) -> tuple[str, str, int]:
    paper_preset(name)  # validates
    fam, task, n = name.strip().lower().split("/")
    return fam, task, int(n)

