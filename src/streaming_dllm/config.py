"""``DecodeConfig``: every decoding knob in one dataclass, validated once; plus the preset registry.

A method is a preset of orthogonal parts (cache, suffix window, unmasking rule, remasking score,
early exit), so the paper's ablations are flag changes, not code paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

UNMASK_RULES = ("steps", "threshold", "dynamic", "factor")
CACHE_MODES = ("none", "prefix", "dual")
REMASKING = ("low_confidence", "random", "entropy", "margin", "maskgit_plus")


@dataclass
class DecodeConfig:
    """Settings of one decoding run.

    Fields:
        gen_length: tokens generated after the prompt (a multiple of ``block_length``).
        block_length: positions decoded together, left to right, block by block.
        steps: total steps of the fixed schedule (``unmask="steps"``), split evenly between
            blocks; None = ``gen_length`` (one token per step).
        unmask: commit rule per step: ``steps`` (fixed schedule, top-k confidence), ``threshold``
            (confidence >= ``threshold``), ``dynamic`` (>= threshold * (1 - alpha * (1 - r)),
            r = share of masks in the current block + kept suffix), ``factor`` (Fast-dLLM factor
            rule). Threshold-type rules always commit the most confident token.
        threshold: tau0 of ``threshold`` / ``dynamic``.
        alpha: strength of the dynamic threshold (0 = fixed threshold).
        factor: f of the ``factor`` rule.
        cache: ``none`` (full forward every step), ``prefix`` (prefix K/V from the block-start
            forward), ``dual`` (prefix and suffix K/V; only the block is recomputed).
        window: suffix positions kept after the current block (None = the whole suffix).
        tail_keep: last positions of the sequence kept in addition to the window.
        early_exit: stop once a finished block contains ``eos_id``; the rest becomes EOS.
        remasking: confidence score: ``low_confidence`` (= ``maskgit_plus``: probability of the
            chosen token), ``random``, ``entropy`` (negative entropy) or ``margin`` (top-1 minus
            top-2 probability).
        temperature: 0 = argmax; > 0 = Gumbel-max sampling on float64 logits.
        mask_id / eos_id: None = from the checkpoint's config.
        seed: seed of the sampling / random-remasking generator (None = torch's global RNG).
    """

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    unmask: str = "steps"
    threshold: float = 0.9
    alpha: float = 0.0
    factor: float = 1.0
    cache: str = "none"
    window: int | None = None
    tail_keep: int = 1
    early_exit: bool = False
    remasking: str = "low_confidence"
    temperature: float = 0.0
    mask_id: int | None = None
    eos_id: int | None = None
    seed: int | None = None
    preset_name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def total_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // self.num_blocks

    def validate(self) -> None:
        """Raise one ValueError naming the field and the rule it breaks."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"DecodeConfig.{name}={getattr(self, name)!r}: {rule}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        need(is_int(self.gen_length) and self.gen_length > 0, "gen_length", "must be a positive integer")
        need(
            is_int(self.block_length) and self.block_length > 0, "block_length", "must be a positive integer"
        )
        need(
            self.gen_length % self.block_length == 0,
            "gen_length",
            f"must be a multiple of block_length={self.block_length}",
        )
        need(self.unmask in UNMASK_RULES, "unmask", f"must be one of {UNMASK_RULES}")
        need(self.cache in CACHE_MODES, "cache", f"must be one of {CACHE_MODES}")
        need(self.remasking in REMASKING, "remasking", f"must be one of {REMASKING}")
        need(
            self.steps is None or (is_int(self.steps) and self.steps > 0),
            "steps",
            "must be a positive integer",
        )
        if self.unmask == "steps":
            need(
                self.total_steps % self.num_blocks == 0,
                "steps",
                f"must be a multiple of the number of blocks gen_length/block_length={self.num_blocks}",
            )
        need(is_num(self.threshold) and 0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        need(is_num(self.alpha) and 0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        need(is_num(self.factor) and self.factor > 0, "factor", "must be > 0")
        need(
            self.window is None or (is_int(self.window) and self.window >= 0),
            "window",
            "must be None or >= 0",
        )
        need(is_int(self.tail_keep) and self.tail_keep >= 0, "tail_keep", "must be an integer >= 0")
        need(isinstance(self.early_exit, bool), "early_exit", "must be a bool")
        need(
            is_num(self.temperature) and 0.0 <= self.temperature <= 100.0,
            "temperature",
            "must be in [0, 100]",
        )
        for name in ("mask_id", "eos_id", "seed"):
            v = getattr(self, name)
            need(v is None or (is_int(v) and v >= 0), name, "must be None or a non-negative integer")

    def replace(self, **changes: Any) -> DecodeConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"DecodeConfig has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DecodeConfig:
        """The named method with any knob overridden, e.g. ``preset("streaming", window=64)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - fields
        if unknown:
            raise ValueError(f"DecodeConfig has no field(s) {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides, "preset_name": name})


PRESETS: dict[str, dict[str, Any]] = {
    "vanilla": dict(cache="none", unmask="steps"),
    "prefix-cache": dict(cache="prefix", unmask="steps"),
    "fast-dllm": dict(cache="prefix", unmask="threshold", threshold=0.9),
    "fast-dllm-dual": dict(cache="dual", unmask="threshold", threshold=0.9),
    "streaming": dict(
        cache="prefix", window=32, tail_keep=1, unmask="dynamic", threshold=0.9, alpha=0.3, early_exit=True
    ),
    "streaming-dual": dict(
        cache="dual", window=32, tail_keep=1, unmask="dynamic", threshold=0.9, alpha=0.3, early_exit=True
    ),
}
"""Named methods (the CLI's ``--method``). Fields not given keep the dataclass defaults."""
