"""The paper's experiments, shaped for the built-in model: main table, ablation, length scaling,
window and alpha sweeps. Each suite is a list of groups (one table each).

Sample sizes: every method decodes ``n`` prompts (``n_sweep`` in the sweeps), except the methods
that pay one forward pass per token (``vanilla``, ``prefix-cache``), which use ``n_slow``; at long
lengths every whole-suffix method (no window: its cost grows with the length) is capped by
``n_cap``, and the slow ones by ``n_slow_cap``. A smaller sample
carries a note that the tables print next to the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..config import PRESETS, DecodeConfig
from .results import Group, Method

SUITES = ("main", "ablation", "length", "window", "alpha")
SLOW = ("vanilla", "prefix-cache")
MAIN_METHODS = ("vanilla", "prefix-cache", "fast-dllm", "fast-dllm-dual", "streaming")
SCALING_METHODS = ("vanilla", "fast-dllm", "streaming")


@dataclass(frozen=True)
class Sizes:
    """Prompt counts and lengths of a run."""

    n: int = 16
    n_slow: int = 3
    n_sweep: int = 8
    n_cap: dict[int, int] = field(default_factory=lambda: {1024: 6, 2048: 3})
    n_slow_cap: dict[int, int] = field(default_factory=lambda: {1024: 1, 2048: 1})
    block_length: int = 32
    main_lengths: tuple[int, ...] = (256, 512)
    ablation_length: int = 512
    scaling_lengths: tuple[int, ...] = (256, 512, 1024, 2048)
    sweep_length: int = 512
    windows: tuple[int | None, ...] = (8, 16, 32, 64, 128, None)
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


FULL = Sizes()
QUICK = Sizes(
    n=2,
    n_slow=1,
    n_sweep=2,
    n_cap={256: 1},
    n_slow_cap={},
    main_lengths=(64, 128),
    ablation_length=128,
    scaling_lengths=(64, 128, 256),
    sweep_length=128,
    windows=(8, 32, None),
    alphas=(0.0, 0.3, 0.7),
)


def _preset(name: str, sizes: Sizes, gen_length: int, **overrides) -> DecodeConfig:
    return DecodeConfig.preset(name, gen_length=gen_length, block_length=sizes.block_length, **overrides)


def _sample(name: str, sizes: Sizes, gen_length: int) -> tuple[int, str]:
    """Prompts for a preset at a length, and why when fewer than ``sizes.n``."""
    n, why = sizes.n, ""
    if name in SLOW:
        n, why = min(n, sizes.n_slow), "one forward pass per token"
    full_suffix = PRESETS[name].get("window") is None
    if full_suffix and gen_length in sizes.n_cap and sizes.n_cap[gen_length] < n:
        n, why = sizes.n_cap[gen_length], f"time: whole suffix every step at gen_length {gen_length}"
    if name in SLOW and gen_length in sizes.n_slow_cap and sizes.n_slow_cap[gen_length] < n:
        n, why = sizes.n_slow_cap[gen_length], f"one forward pass per token, at gen_length {gen_length}"
    return n, why


def _presets(names: tuple[str, ...], sizes: Sizes, gen_length: int) -> list[Method]:
    out = []
    for name in names:
        n, why = _sample(name, sizes, gen_length)
        out.append(Method(name, _preset(name, sizes, gen_length), n, note=why))
    return out


def main_table(sizes: Sizes, methods: tuple[str, ...] = MAIN_METHODS) -> list[Group]:
    return [Group("main", f"gen_length={L}", L, _presets(methods, sizes, L)) for L in sizes.main_lengths]


def ablation(sizes: Sizes) -> list[Group]:
    """Fast-dLLM with suffix pruning, dynamic threshold, early exit switched on one at a time."""
    L = sizes.ablation_length
    s = PRESETS["streaming"]
    parts = {
        "+ suffix pruning": dict(window=s["window"], tail_keep=s["tail_keep"]),
        "+ dynamic threshold": dict(unmask="dynamic", alpha=s["alpha"]),
        "+ early exit": dict(early_exit=True),
    }
    methods = [Method("fast-dllm", _preset("fast-dllm", sizes, L))]
    methods += [Method(label, _preset("fast-dllm", sizes, L, **kw), params=kw) for label, kw in parts.items()]
    methods.append(Method("streaming (all three)", _preset("streaming", sizes, L)))
    return [Group("ablation", f"gen_length={L}", L, methods)]


def length_scaling(sizes: Sizes) -> list[Group]:
    lengths = sizes.scaling_lengths
    return [Group("length", f"gen_length={L}", L, _presets(SCALING_METHODS, sizes, L)) for L in lengths]


def _sweep_n(sizes: Sizes) -> tuple[int, str]:
    n = min(sizes.n, sizes.n_sweep)
    return n, ("sweep sample" if n < sizes.n else "")


def window_sweep(sizes: Sizes) -> list[Group]:
    L = sizes.sweep_length
    n, why = _sweep_n(sizes)
    methods = [
        Method(f"W={'full' if w is None else w}", _preset("streaming", sizes, L, window=w), n,
               params={"window": w}, note=why)
        for w in sizes.windows
    ]
    return [Group("window", f"gen_length={L}", L, methods)]


def alpha_sweep(sizes: Sizes) -> list[Group]:
    L = sizes.sweep_length
    n, why = _sweep_n(sizes)
    methods = [
        Method(f"alpha={a:g}", _preset("streaming", sizes, L, alpha=a), n, params={"alpha": a}, note=why)
        for a in sizes.alphas
    ]
    return [Group("alpha", f"gen_length={L}", L, methods)]


BUILDERS = {
    "main": main_table,
    "ablation": ablation,
    "length": length_scaling,
    "window": window_sweep,
    "alpha": alpha_sweep,
}


def build(suites: list[str], sizes: Sizes) -> list[Group]:
    """Groups of the chosen suites, in the order given."""
    unknown = [s for s in suites if s not in BUILDERS]
    if unknown:
        raise ValueError(f"--suite: unknown suite(s) {unknown}; choose from {list(SUITES)} or 'all'")
    return [g for s in suites for g in BUILDERS[s](sizes)]


def custom(methods: list[str], gen_lengths: list[int], sizes: Sizes) -> list[Group]:
    """Any presets at any lengths (``--methods``), one group per length."""
    unknown = [m for m in methods if m not in PRESETS]
    if unknown:
        raise ValueError(f"--methods: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    return [Group("custom", f"gen_length={L}", L, _presets(tuple(methods), sizes, L)) for L in gen_lengths]


def sizes_for(quick: bool, **overrides) -> Sizes:
    """QUICK or FULL with the given fields replaced (None values ignored)."""
    base = QUICK if quick else FULL
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
