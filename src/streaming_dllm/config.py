"""``DecodeConfig``: every decoding knob in one frozen dataclass, validated once; plus the presets.

A method is a preset of orthogonal parts (cache, suffix window, unmasking rule, remasking score,
early exit), so the paper's ablations are flag changes, not code paths. Every rule a value must
follow lives here, once: front ends translate their inputs into a ``DecodeConfig`` and map a
``ConfigError``'s ``field`` back to their own name for it (a CLI flag, a request field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

UnmaskRule = Literal["steps", "threshold", "dynamic", "factor", "threshold_topk", "sequential"]
CacheMode = Literal["none", "prefix", "dual"]
ExitAt = Literal["block", "eos"]
Span = Literal["cover", "blocks"]
Remasking = Literal["low_confidence", "random", "entropy", "margin", "maskgit_plus"]

UNMASK_RULES: tuple[str, ...] = get_args(UnmaskRule)
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
REMASKING: tuple[str, ...] = get_args(Remasking)
EXIT_AT: tuple[str, ...] = get_args(ExitAt)
SPANS: tuple[str, ...] = get_args(Span)

MAX_GEN_LENGTH = 1 << 16
"""Largest ``gen_length`` (and ``window`` / ``tail_keep``) any config may ask for; a model's own
context (``max_position_embeddings``) usually bounds a run well below it."""
MAX_SEED = 2**63 - 1


class ConfigError(ValueError):
    """A decoding setting that breaks a rule; ``field`` names the ``DecodeConfig`` field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class DecodeConfig:
    """Settings of one decoding run (immutable: derive variants with ``replace``).

    Fields:
        gen_length: tokens generated after the prompt (a multiple of ``block_length``).
        block_length: positions decoded together, left to right, block by block.
        steps: total steps of the fixed schedule (``unmask="steps"``), split evenly between
            blocks; None = ``gen_length`` (one token per step); at most ``gen_length``.
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
        top_k / top_p: filters of the sampling distribution (0 / 1.0 = off); with a
            ``multinomial``-sampler family the confidence is the filtered probability.
        sub_block_length: block-causal families: a block is decoded in sub-blocks of this many
            positions, left to right (Fast-dLLM v2's small blocks); None = the whole block.
            With ``cache="dual"`` a sub-block's later steps feed only the sub-block.
        edit_threshold: LLaDA2.1's editing: an already decoded position of the current block is
            re-written when the argmax changed and its probability is above this (None = off).
        max_post_steps: with editing, forwards a block may take after its last mask is gone.
        early_exit_at: ``block``: stop after the block that holds EOS (Streaming-dLLM);
            ``eos``: stop at once when an EOS is committed with no mask before it.
        span: block-causal families: ``cover`` decodes the blocks covering ``gen_length``
            positions after the prompt (SDAR, LLaDA2); ``blocks`` decodes
            ``gen_length / block_length`` blocks from the one holding the prompt's end
            (Fast-dLLM v2).
    """

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    unmask: UnmaskRule = "steps"
    threshold: float = 0.9
    alpha: float = 0.0
    factor: float = 1.0
    cache: CacheMode = "none"
    window: int | None = None
    tail_keep: int = 1
    early_exit: bool = False
    remasking: Remasking = "low_confidence"
    temperature: float = 0.0
    mask_id: int | None = None
    eos_id: int | None = None
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    sub_block_length: int | None = None
    edit_threshold: float | None = None
    max_post_steps: int = 16
    early_exit_at: ExitAt = "block"
    span: Span = "cover"
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

    @property
    def max_block_steps(self) -> int:
        """Forwards a block may take before its last masks are committed at once: every rule
        commits at least one token per step, except a fixed schedule's empty steps."""
        extra = self.steps_per_block if self.unmask in ("steps", "sequential") else 0
        post = self.max_post_steps if self.edit_threshold is not None else 0
        return self.block_length + extra + post

    def _need(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ConfigError(name, f"DecodeConfig.{name}={getattr(self, name)!r}: {rule}")

    def validate(self) -> None:
        """Raise one ``ConfigError`` naming the field and the rule it breaks."""
        need = self._need
        for name in ("gen_length", "block_length"):
            v = getattr(self, name)
            need(_is_int(v) and v > 0, name, "must be a positive integer")
            need(v <= MAX_GEN_LENGTH, name, f"must be at most {MAX_GEN_LENGTH}")
        need(self.gen_length % self.block_length == 0, "gen_length",
             f"must be a multiple of block_length={self.block_length}")
        for name, choices in (("unmask", UNMASK_RULES), ("cache", CACHE_MODES), ("remasking", REMASKING)):
            need(getattr(self, name) in choices, name, f"must be one of {choices}")
        need(self.steps is None or (_is_int(self.steps) and self.steps > 0), "steps",
             "must be a positive integer")
        need(self.steps is None or self.steps <= self.gen_length, "steps",
             f"must be at most gen_length={self.gen_length} (one token per step)")
        if self.unmask == "steps":
            need(self.total_steps % self.num_blocks == 0, "steps",
                 f"must be a multiple of the number of blocks gen_length/block_length={self.num_blocks}")
        need(_is_num(self.threshold) and 0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        need(_is_num(self.alpha) and 0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        need(_is_num(self.factor) and 0 < self.factor <= 1e6, "factor", "must be > 0 (and at most 1e6)")
        need(self.window is None or (_is_int(self.window) and 0 <= self.window <= MAX_GEN_LENGTH), "window",
             f"must be None or >= 0 (and at most {MAX_GEN_LENGTH})")
        need(_is_int(self.tail_keep) and 0 <= self.tail_keep <= MAX_GEN_LENGTH, "tail_keep",
             f"must be an integer >= 0 (and at most {MAX_GEN_LENGTH})")
        need(isinstance(self.early_exit, bool), "early_exit", "must be a bool")
        need(_is_num(self.temperature) and 0.0 <= self.temperature <= 100.0, "temperature",
             "must be in [0, 100]")
        self._validate_block_knobs()
        for name in ("mask_id", "eos_id", "seed"):
            v = getattr(self, name)
            need(v is None or (_is_int(v) and 0 <= v <= MAX_SEED), name,
                 "must be None or a non-negative integer (at most 2**63-1)")

    def _validate_block_knobs(self) -> None:
        need = self._need
        need(_is_int(self.top_k) and 0 <= self.top_k <= MAX_GEN_LENGTH * 64, "top_k",
             "must be an integer >= 0 (0 = off)")
        need(_is_num(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1] (1 = off)")
        sub = self.sub_block_length
        need(sub is None or (_is_int(sub) and sub > 0 and self.block_length % sub == 0), "sub_block_length",
             f"must be None or a positive divisor of block_length={self.block_length}")
        edit = self.edit_threshold
        need(edit is None or (_is_num(edit) and 0.0 < edit <= 1.0),
             "edit_threshold", "must be None or in (0, 1]")
        need(_is_int(self.max_post_steps) and 0 <= self.max_post_steps <= MAX_GEN_LENGTH, "max_post_steps",
             f"must be an integer in [0, {MAX_GEN_LENGTH}]")
        need(self.early_exit_at in EXIT_AT, "early_exit_at", f"must be one of {EXIT_AT}")
        need(self.span in SPANS, "span", f"must be one of {SPANS}")

    def replace(self, **changes: Any) -> DecodeConfig:
        """A copy with some fields changed (validated again)."""
        _check_fields(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """What decides the decode: equal keys give equal tokens for equal prompts and seeds, so
        runs with equal keys may share a batch and results may be reused (the preset's name is
        a label, not a setting)."""
        d = self.to_dict()
        d.pop("preset_name")
        return json.dumps(d, sort_keys=True)

    def for_budget(self, max_tokens: int) -> DecodeConfig:
        """This config with ``gen_length`` = ``max_tokens`` rounded up to whole blocks."""
        return self.replace(gen_length=gen_length_for(max_tokens, self.block_length))

    def save(self, path: str | os.PathLike) -> Path:
        """Write this config as a preset file (JSON) that ``load``, ``--preset-file`` and the
        lm-eval adapter's ``preset_file=`` read back (``preset_files.save_config``)."""
        from .preset_files import save_config

        return save_config(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DecodeConfig:
        """Read a preset file written by ``save`` or ``streaming-dllm tune``; a bad file or field
        is one ``ConfigError`` naming both (``preset_files.load_config``)."""
        from .preset_files import load_config

        return load_config(path)

    @classmethod
    def from_reference(cls, name: str, **kwargs: Any) -> DecodeConfig:
        """The config that reproduces one official decoder call, from that call's own keyword
        arguments as the research scripts pass them, e.g.
        ``from_reference("sdar.block_diffusion_generate", gen_length=256, block_length=4, ...)``.
        ``streaming_dllm.references.REFERENCES`` lists the names; an argument that cannot be
        honoured is a ``ConfigError`` naming it."""
        from .references import reference_fields

        return cls(**reference_fields(name, kwargs), preset_name=name)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DecodeConfig:
        """The named method with any knob overridden, e.g. ``preset("streaming", window=64)``."""
        if name not in PRESETS:
            raise ConfigError("method", f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        _check_fields(overrides)
        fields = {**PRESETS[name], **overrides, "preset_name": name}
        sub, block = fields.get("sub_block_length"), fields.get("block_length", 32)
        if sub and "sub_block_length" not in overrides and _is_int(block) and block > 0 and block % sub:
            fields["sub_block_length"] = None  # the preset's sub-blocks do not fit the chosen block
        return cls(**fields)


def gen_length_for(max_tokens: int, block_length: int) -> int:
    """The smallest whole number of blocks that holds ``max_tokens`` tokens (at least one block)."""
    return max(1, math.ceil(max_tokens / block_length)) * block_length


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DecodeConfig) if f.name != "preset_name")
"""The knobs a front end may set (every field but the preset's label)."""


def _check_fields(changes: dict[str, Any]) -> None:
    unknown = set(changes) - set(FIELDS) - {"preset_name"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"DecodeConfig has no field(s) {sorted(unknown)}")


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
    # Block-diffusion families: each family's official defaults.
    "sdar": dict(
        block_length=4, cache="prefix", unmask="threshold_topk", threshold=0.9, temperature=1.0, top_k=1,
        early_exit=True,
    ),
    "fast-dllm-v2": dict(
        block_length=32, sub_block_length=8, cache="prefix", unmask="threshold_topk", threshold=0.9,
        span="blocks", early_exit=True, early_exit_at="eos",
    ),
    "llada2": dict(block_length=32, cache="prefix", unmask="threshold_topk", threshold=0.95, early_exit=True),
    "llada2.1": dict(
        block_length=32, cache="prefix", unmask="threshold_topk", threshold=0.95, edit_threshold=0.9,
        max_post_steps=16,
    ),
}
BLOCK_DIFFUSION_PRESETS: tuple[str, ...] = ("sdar", "fast-dllm-v2", "llada2", "llada2.1")
"""The block-diffusion families' own decoders: their sub-blocks, SDAR's top-k greedy and LLaDA2.1's
editing need a block-causal family (a full-attention one refuses them, naming the field)."""

"""Named methods (the CLI's ``--method``). Fields not given keep the dataclass defaults.

``sdar`` is SDAR's greedy setting (top_k=1 at temperature 1, blocks of 4, 4 steps each);
``fast-dllm-v2`` blocks of 32 in sub-blocks of 8 at threshold 0.9; ``llada2`` / ``llada2.1``
blocks of 32 at threshold 0.95 (2.1 with token editing). On a block-diffusion family,
``streaming`` is the dynamic threshold plus early exit: no suffix is fed there, so its window
prunes nothing."""
