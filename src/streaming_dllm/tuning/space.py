"""The search space: the knobs that matter for the model's family, as ``DecodeConfig`` candidates.

Full-attention families (LLaDA, Dream) search the suffix window W (None = the whole suffix), the
dynamic threshold's tau0 and alpha, the block length, the cache mode and early exit. Block-diffusion
families feed no suffix and fix the block length to the model's own, so only the threshold, the
cache mode and early exit remain. The named fast presets are always candidates, so the search
can at worst return one of them, and so are the ``streaming`` preset's fast neighbours (dual cache,
a larger block, a higher tau0 with a smaller alpha, a wider or narrower window): on a small model
those are the configurations that can match the baseline's answers at the preset's speed, and a
random sample of the grid rarely holds them.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from ..config import PRESETS, DecodeConfig

WINDOWS: tuple[int | None, ...] = (8, 16, 32, 64, None)
ALPHAS = (0.0, 0.3, 0.6, 1.0)
TAU0S = (0.7, 0.8, 0.9, 0.95)
BLOCKS = (8, 16, 32, 64)
CACHES = ("prefix", "dual")
EXITS: tuple[str | None, ...] = (None, "block", "eos")
"""Early exit off, after the block holding EOS, or as soon as an EOS has no mask before it (the
same answer as ``block`` in fewer forwards: the block's positions after the answer are not
decoded)."""
ANCHORS = ("streaming", "streaming-dual", "fast-dllm", "fast-dllm-dual")
NEIGHBOURS: tuple[dict[str, object], ...] = tuple(
    {"cache": "dual", "window": w, "alpha": a, "threshold": t, "block_length": b}
    | {"early_exit_at": "eos"}
    for w, a, t, b in (
        (32, 0.0, 0.9, 32),
        (32, 0.0, 0.95, 32),
        (32, 0.1, 0.95, 32),
        (32, 0.3, 0.95, 32),
        (32, 0.2, 0.85, 32),
        (16, 0.0, 0.95, 32),
        (16, 0.1, 0.9, 32),
        (64, 0.0, 0.95, 32),
        (64, 0.1, 0.9, 32),
        (None, 0.0, 0.95, 32),
        (32, 0.3, 0.95, 64),
        (32, 0.0, 0.95, 64),
        (64, 0.3, 0.95, 64),
        (16, 0.2, 0.9, 64),
    )
) + tuple(
    {"threshold": t, "alpha": a, "window": w, "early_exit_at": at}
    for t, a, w, at in ((0.95, 0.1, 32, "block"), (0.95, 0.1, 16, "block"), (0.9, 0.3, 32, "eos"),
                        (0.95, 0.1, 32, "eos"), (0.95, 0.0, 64, "eos"), (0.95, 0.0, None, "eos"))
)
"""Changes to the ``streaming`` preset tried on every full-attention model, before the random
sample: the dual-cache ones exit as soon as EOS is final (``early_exit_at="eos"``: with a high
tau0 the block's positions after the answer take many forwards, which this skips)."""
KNOBS = ("window", "alpha", "threshold", "block_length", "cache", "early_exit", "early_exit_at")
"""The fields the search varies (the report's table columns)."""


@dataclass(frozen=True)
class Candidate:
    label: str
    config: DecodeConfig
    seeded: bool = False
    """An anchor or a neighbour of ``streaming``: tried before the random sample when time is short."""


def label(cfg: DecodeConfig) -> str:
    """A short name: ``W16 a0.6 t0.8 b32 dual ee``."""
    w = "full" if cfg.window is None else str(cfg.window)
    exit_ = "" if not cfg.early_exit else " ee" if cfg.early_exit_at == "block" else " ee@eos"
    return f"W{w} a{cfg.alpha:g} t{cfg.threshold:g} b{cfg.block_length} {cfg.cache}{exit_}"


def cost(cfg: DecodeConfig) -> float:
    """A rough relative price of one decode, to try cheap configurations first: positions fed per
    forward times forwards (fewer blocks with early exit, fewer steps with a lower threshold)."""
    suffix = cfg.window if cfg.window is not None else cfg.gen_length / 2
    width = cfg.block_length + (suffix if cfg.cache != "dual" else suffix / 4)
    blocks = min(cfg.num_blocks, 2) if cfg.early_exit else cfg.num_blocks
    steps = 1 + cfg.block_length * cfg.threshold * (1 - cfg.alpha / 2) / 4
    if cfg.early_exit and cfg.early_exit_at == "eos":
        steps *= 0.75
    return width * blocks * steps


def _grid(base: DecodeConfig, block_causal: bool) -> list[DecodeConfig]:
    windows = (None,) if block_causal else WINDOWS
    blocks = (
        (base.block_length,)
        if block_causal
        else tuple(b for b in BLOCKS if b <= base.gen_length and base.gen_length % b == 0)
    )
    out = []
    for w, a, t, b, c, e in itertools.product(windows, ALPHAS, TAU0S, blocks, CACHES, EXITS):
        out.append(
            base.replace(
                unmask="dynamic",
                window=w,
                tail_keep=1,
                alpha=a,
                threshold=t,
                block_length=b,
                cache=c,
                early_exit=e is not None,
                early_exit_at=e or "block",
                steps=None,
            )
        )
    return out


def _anchor(name: str, base: DecodeConfig, block_causal: bool) -> DecodeConfig:
    fields = {
        k: getattr(base, k) for k in ("gen_length", "remasking", "temperature", "mask_id", "eos_id", "seed")
    }
    if block_causal or base.gen_length % PRESETS[name].get("block_length", 32):
        fields["block_length"] = base.block_length
    if block_causal:
        fields["window"] = None  # no suffix is fed: pruning is a no-op
    return DecodeConfig.preset(name, **fields)


def neighbours(streaming: DecodeConfig, block_causal: bool = False) -> list[DecodeConfig]:
    """``NEIGHBOURS`` applied to the ``streaming`` anchor (block lengths that do not divide
    gen_length are skipped; a block-causal family keeps its block length and feeds no suffix)."""
    out = []
    for change in NEIGHBOURS:
        fields = dict(change, preset_name=None)
        if block_causal:
            fields.update(window=None, block_length=streaming.block_length)
        if streaming.gen_length % int(fields.get("block_length", streaming.block_length)):
            continue
        out.append(streaming.replace(**fields))
    return out


def candidates(
    base: DecodeConfig, block_causal: bool = False, max_configs: int = 48, seed: int = 0
) -> list[Candidate]:
    """The anchors, then ``streaming``'s neighbours, then a seeded sample of the grid, cheapest
    first, at most ``max_configs``, no two alike."""
    anchors = [_anchor(n, base, block_causal) for n in ANCHORS]
    chosen: dict[str, DecodeConfig] = {}
    for c in anchors + neighbours(anchors[0], block_causal):
        chosen.setdefault(c.key(), c)
    fixed = list(chosen.values())[:max_configs]
    grid = [c for c in _grid(base, block_causal) if c.key() not in chosen]
    picked = random.Random(seed).sample(grid, max(0, min(len(grid), max_configs - len(fixed))))
    pool = [Candidate(c.preset_name or label(c), c, seeded=True) for c in fixed]
    pool += [Candidate(label(c), c.replace(preset_name=None)) for c in picked]
    return sorted(pool, key=lambda c: cost(c.config))
