"""What every model family provides to the decoder: the forward contract and its traits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..kv_cache import KVCache


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
    """

    logit_shift: bool = False
    confidence_dtype: torch.dtype = torch.float64
    schedule: Literal["even", "linspace"] = "even"
    first_token_at_block_start: bool = False
    schedule_eps: float = 1e-3


class DiffusionLM(nn.Module):
    """Base of the model families: architecture only, no decoding logic.

    ``forward(input_ids, position_ids, cache=None, key_mask=None, logits_rows=None)`` returns
    logits [batch, n, vocab]; ``logits_rows`` (a slice over the fed tokens) limits the LM head to
    the rows the decoder needs, which matters with a 126k-token vocabulary.
    """

    family: ClassVar[str]
    traits: ClassVar[FamilyTraits]
    model_types: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.name_or_path: str = ""

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
        logits_rows: slice | None = None,
    ) -> torch.Tensor:
        embed, layers, norm, head = self.parts()
        x = embed(input_ids)
        cos, sin = self.rotary.cos_sin(position_ids)
        for i, layer in enumerate(layers):
            x = layer(x, cos, sin, i, cache, key_mask)
        if logits_rows is not None:
            x = x[:, logits_rows]
        return head(norm(x))

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
        return model_type in cls.model_types or bool(
            set(config.get("architectures") or []) & set(cls.architectures)
        )
