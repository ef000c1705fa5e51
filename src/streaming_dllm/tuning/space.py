"""The search space: the knobs that matter for the model's family, as ``DecodeConfig`` candidates.

Full-attention families (LLaDA, Dream) search the suffix window W (None = the whole suffix), the
dynamic threshold's tau0 and alpha, the block length, the cache mode and early exit. Block-diffusion
families feed no suffix and fix the block length to the model's own, so only the threshold, the
cache mode and early exit remain. The named fast presets are always candidates, so the search
can at worst return one of them.
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
EARLY_EXIT = (True, False)
ANCHORS = ("streaming", "streaming-dual", "fast-dllm", "fast-dllm-dual")
KNOBS = ("window", "alpha", "threshold", "block_length", "cache", "early_exit")
"""The fields the search varies (the report's table columns)."""


@dataclass(frozen=True)
class Candidate:
    label: str
    config: DecodeConfig


def label(cfg: DecodeConfig) -> str:
    """A short name: ``W16 a0.6 t0.8 b32 dual ee``."""
    w = "full" if cfg.window is None else str(cfg.window)
    return f"W{w} a{cfg.alpha:g} t{cfg.threshold:g} b{cfg.block_length} {cfg.cache}" + (
        " ee" if cfg.early_exit else ""
    )


def cost(cfg: DecodeConfig) -> float:
    """A rough relative price of one decode, to try cheap configurations first: positions fed per
    forward times forwards (fewer blocks with early exit, fewer steps with a lower threshold)."""
    suffix = cfg.window if cfg.window is not None else cfg.gen_length / 2
    width = cfg.block_length + (suffix if cfg.cache != "dual" else suffix / 4)
    blocks = min(cfg.num_blocks, 2) if cfg.early_exit else cfg.num_blocks
    steps = 1 + cfg.block_length * cfg.threshold * (1 - cfg.alpha / 2) / 4
    return width * blocks * steps


def _grid(base: DecodeConfig, block_causal: bool) -> list[DecodeConfig]:
    windows = (None,) if block_causal else WINDOWS
    blocks = (
        (base.block_length,)
        if block_causal
        else tuple(b for b in BLOCKS if b <= base.gen_length and base.gen_length % b == 0)
    )
    out = []
    for w, a, t, b, c, e in itertools.product(windows, ALPHAS, TAU0S, blocks, CACHES, EARLY_EXIT):
        out.append(
            base.replace(
                unmask="dynamic",
                window=w,
                tail_keep=1,
                alpha=a,
                threshold=t,
                block_length=b,
                cache=c,
                early_exit=e,
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


def candidates(
    base: DecodeConfig, block_causal: bool = False, max_configs: int = 48, seed: int = 0
) -> list[Candidate]:
    """The anchors plus a seeded sample of the grid, cheapest first, at most ``max_configs``."""
    anchors = [_anchor(n, base, block_causal) for n in ANCHORS]
    seen = {c.key() for c in anchors}
    grid = [c for c in _grid(base, block_causal) if c.key() not in seen]
    picked = random.Random(seed).sample(grid, max(0, min(len(grid), max_configs - len(anchors))))
    pool = [Candidate(c.preset_name or label(c), c) for c in anchors[:max_configs]]
    pool += [Candidate(label(c), c.replace(preset_name=None)) for c in picked]
    return sorted(pool, key=lambda c: cost(c.config))
