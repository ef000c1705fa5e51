"""What every model family provides to the decoder: the forward contract, its traits and ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..kv_cache import KVCache
from .layers import Rotary, padded_rows

LogitRows = slice | tuple[torch.Tensor, torch.Tensor] | None
"""Which fed rows get logits: all (None), a slice of every batch row ([B, k, V]), or flat
(batch index, row index) pairs ([N, V]): the head runs only where the decoder needs it."""


@dataclass(frozen=True)
class FamilyTraits:
    """Decoding behaviour that belongs to a model family, declared once and read by the decoder.

    * ``logit_shift``: logits at position i-1 predict token i (Dream), applied by the decoder.
    * ``confidence_dtype``: dtype of the softmax behind confidence scores (LLaDA float64, Dream
      float32), as the reference decoders compute it.
    * ``schedule``: ``"even"`` spreads a block's masks evenly over its steps (LLaDA);
      ``"linspace"`` commits ``int(n * (1 - t[i+1]/t[i]))`` with t = linspace(1, eps, S+1) (Dream).
    * ``first_token_at_block_start``: the forward that builds a block's cache commits exactly the
      block's first position by argmax instead of applying the unmasking rule (Dream).
    * ``block_causal``: attention is bidirectional inside a block and causal across blocks, with
      blocks counted from position 0 (SDAR, Fast-dLLM v2, LLaDA2). The K/V of a finished block is
      exact, so the decoder caches it once; a block's steps feed only its own positions.
      ``schedule="block"`` gives each step ``block_length // steps`` commits (remainder first)
      whatever the block's mask count, as those families' decoders do.
    * ``sampler``: how temperature > 0 draws tokens: ``gumbel`` (LLaDA/Dream decoders) or
      ``multinomial`` over the temperature-scaled, top-k/top-p-filtered softmax, whose probability
      is also the confidence (the block-diffusion decoders); ``multinomial_renorm`` renormalises
      the nucleus' probabilities instead of filtering logits (Fast-dLLM v2).
    """

    logit_shift: bool = False
    confidence_dtype: torch.dtype = torch.float64
    schedule: Literal["even", "linspace", "block"] = "even"
    first_token_at_block_start: bool = False
    schedule_eps: float = 1e-3
    block_causal: bool = False
    sampler: Literal["gumbel", "multinomial", "multinomial_renorm"] = "gumbel"


@dataclass(frozen=True)
class TensorParallelPlan:
    """Which modules tensor parallel shards, declared once per family, applied by
    ``parallel.tensor.shard_model``. Patterns are module names where ``*`` is one name segment
    (a layer or expert index); each sharded linear maps to the config key of the dimension it
    splits, which a non-divisible error names.

    * ``heads``: modules whose ``heads`` / ``kv_heads`` attributes become the rank's local counts
      (their forwards, and so the K/V cache, use local heads).
    * ``column``: output features split (q/k/v by head, gate/up by neuron); bias split too.
    * ``fused_qkv``: one projection laid out [q | k | v] over its parent ``heads`` module's heads,
      split per segment.
    * ``row``: input features split, outputs all-reduced, the bias added once after the reduce.
    * ``partial``: input features split, no reduce of its own (MoE expert down projections).
    * ``reduce``: modules whose output is all-reduced once, when they hold ``partial`` linears.

    Everything not named (embedding, norms, QK-norm, the router, the LM head) is replicated.
    """

    heads: tuple[str, ...]
    column: dict[str, str]
    row: dict[str, str]
    fused_qkv: dict[str, str] = field(default_factory=dict)
    partial: dict[str, str] = field(default_factory=dict)
    reduce: tuple[str, ...] = ()


def _qwen_layout_plan() -> TensorParallelPlan:
    attn, mlp = "model.layers.*.self_attn", "model.layers.*.mlp"
    heads, kv, inter = "num_attention_heads", "num_key_value_heads", "intermediate_size"
    return TensorParallelPlan(
        heads=(attn,),
        column={f"{attn}.q_proj": heads, f"{attn}.k_proj": kv, f"{attn}.v_proj": kv,
                f"{mlp}.gate_proj": inter, f"{mlp}.up_proj": inter},
        row={f"{attn}.o_proj": heads, f"{mlp}.down_proj": inter},
    )


QWEN_LAYOUT_TP_PLAN = _qwen_layout_plan()
"""The tensor-parallel plan of the Qwen-layout families (Dream, SDAR, Fast-dLLM v2)."""


@dataclass(frozen=True)
class TokenIds:
    """The special ids one decode uses, resolved and checked once (``DiffusionLM.token_ids``)."""

    mask: int
    eos: int | None
    pad: int


class DiffusionLM(nn.Module):
    """Base of the model families: architecture only, no decoding logic.

    ``forward(input_ids, position_ids, cache=None, key_mask=None, logits_rows=None)`` returns
    logits; ``logits_rows`` (see ``LogitRows``) limits the LM head to the rows the decoder needs,
    which matters with a 126k-token vocabulary.

    A family declares what differs once: its ``traits``, the config keys it is built from
    (``positive_keys``, ``vocab_keys``, ``context_keys``), where its layers' weights live
    (``layer_prefix``) and which weights it ties (``tied_weights``).
    """

    family: ClassVar[str]
    traits: ClassVar[FamilyTraits]
    model_types: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ()
    positive_keys: ClassVar[tuple[str, ...]] = ()
    """config.json keys that must be positive integers for the architecture to be built."""
    vocab_keys: ClassVar[tuple[str, ...]] = ("vocab_size",)
    """config.json keys of the vocabulary size, first present wins (the embedding's rows)."""
    context_keys: ClassVar[tuple[str, ...]] = ("max_position_embeddings",)
    """config.json keys of the longest sequence the model was built for, first present wins."""
    heads_keys: ClassVar[tuple[str, str, str]] = ("hidden_size", "num_attention_heads", "num_key_value_heads")
    """config.json keys of (model width, query heads, K/V heads)."""
    layers_key: ClassVar[str] = "num_hidden_layers"
    block_size_keys: ClassVar[tuple[str, ...]] = ()
    """config.json keys of the block size a block-causal family was trained with, first present wins."""
    layer_prefix: ClassVar[str] = "model.layers."
    tp_plan: ClassVar[TensorParallelPlan | None] = None
    """How ``--tensor-parallel`` shards this family (None: not supported)."""
    rotary: Rotary

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.name_or_path: str = ""
        self.trust_remote_code = False

    # ---------------------------------------------------------------- the checkpoint's contract
    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Raise ValueError naming the first config key the architecture cannot be built from."""
        for key in cls.positive_keys:
            v = config.get(key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"{key}={v!r}: must be a positive integer")
        width, heads, kv_key = cls.heads_keys
        kv = config.get(kv_key) or config[heads]
        if not (isinstance(kv, int) and kv > 0 and config[heads] % kv == 0):
            raise ValueError(f"{kv_key}={kv!r}: must be a positive divisor of {heads}={config[heads]}")
        if config[width] % config[heads] or (config[width] // config[heads]) % 2:
            raise ValueError(
                f"{width}={config[width]}: must be {heads}={config[heads]} times an even head size"
            )
        vocab = cls.vocab_size_of(config)
        if vocab is None:
            raise ValueError(f"{cls.vocab_keys[0]}: missing, or not a positive integer")

    @classmethod
    def vocab_size_of(cls, config: dict[str, Any]) -> int | None:
        for key in cls.vocab_keys:
            v = config.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    @classmethod
    def tied_weights(cls, config: dict[str, Any]) -> dict[str, str]:
        """Weights that alias another (name -> source name): not read from the checkpoint."""
        return {}

    def post_load(self, device: torch.device) -> None:
        """Rebuild what is not a weight (after building on the meta device and assigning weights)."""
        for target, source in self.tied_weights(self.config).items():
            _set_param(self, target, self.get_parameter(source))
        self.rotary.reset(device)

    @property
    def vocab_size(self) -> int:
        return int(self.vocab_size_of(self.config) or self.parts()[0].num_embeddings)

    @property
    def max_context(self) -> int | None:
        """The longest sequence (prompt + generation) the checkpoint declares, or None."""
        for key in self.context_keys:
            v = self.config.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    @property
    def block_size(self) -> int | None:
        """The training block size a block-causal checkpoint declares (a default for decoding)."""
        for key in self.block_size_keys:
            v = self.config.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    # Special ids come from the checkpoint's config; the decoder never hard-codes them.
    @property
    def mask_id(self) -> int | None:
        return self.config.get("mask_token_id")

    @property
    def eos_id(self) -> int | None:
        eos = self.config.get("eos_token_id")
        return eos[0] if isinstance(eos, list) else eos

    @property
    def pad_id(self) -> int | None:
        return self.config.get("pad_token_id", self.eos_id)

    def token_ids(self, mask_id: int | None = None, eos_id: int | None = None) -> TokenIds:
        """The ids of a decode: overrides first, else the checkpoint's; refused when unusable.

        The mask id must be a vocabulary id other than EOS and pad: a decode that commits the
        mask id, or cannot tell a mask from padding, never ends.
        """
        vocab = self.vocab_size
        mask = mask_id if mask_id is not None else self.mask_id
        eos = eos_id if eos_id is not None else self.eos_id
        if mask is None:
            raise ValueError(
                "mask_id: the checkpoint's config has no mask_token_id; set DecodeConfig.mask_id"
            )
        pad = self.pad_id if self.pad_id is not None else (eos if eos is not None else 0)
        for name, value in (("mask_id", mask), ("eos_id", eos)):
            if value is not None and not (isinstance(value, int) and 0 <= value < vocab):
                raise ValueError(f"{name}={value!r}: outside the vocabulary [0, {vocab})")
        if mask == eos:
            raise ValueError(f"mask_id={mask}: equals the EOS id; the mask id must be a token of its own")
        if mask == pad:
            raise ValueError(f"mask_id={mask}: equals the pad id; the mask id must be a token of its own")
        return TokenIds(mask=mask, eos=eos, pad=pad)

    # ---------------------------------------------------------------- the forward
    @property
    def num_layers(self) -> int:
        return len(self.parts()[1])

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
        """(token embedding, layers, final norm, LM head): what the shared forward runs."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        key_mask: torch.Tensor | None = None,
        logits_rows: LogitRows = None,
    ) -> torch.Tensor:
        embed, layers, norm, head = self.parts()
        x = embed(input_ids)
        cos, sin = self.rotary.cos_sin(position_ids)
        last, lead = len(layers) - 1, None
        for i, layer in enumerate(layers):
            x = layer.attend(x, cos, sin, i, cache, key_mask)
            if i == last and logits_rows is not None:
                x, lead = _logit_inputs(x, logits_rows)
            x = layer.feed_forward(x)
        logits = head(norm(x))
        return logits if lead is None else logits[: lead.numel()].view(*lead, logits.shape[-1])

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def new_cache(self) -> KVCache:
        return KVCache(self.num_layers)

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's config.json describes this family."""
        model_type = str(config.get("model_type", "")).lower()
        archs = config.get("architectures")
        archs = archs if isinstance(archs, list) else []
        return model_type in cls.model_types or bool({str(a) for a in archs} & set(cls.architectures))


def _logit_inputs(x: torch.Tensor, rows: slice | tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Size]:
    """The rows that get logits, flat and padded (``layers.padded_rows``), and the leading shape
    their logits take: [K] for (batch, row) pairs, [B, k] for a slice of every batch row."""
    picked = x[rows] if isinstance(rows, tuple) else x[:, rows]
    return padded_rows(picked.reshape(-1, x.shape[-1])), picked.shape[:-1]


def _set_param(root: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, leaf, param)
