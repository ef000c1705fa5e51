"""Block-diffusion families on the Qwen layout: SDAR (and TraDo) and Fast-dLLM v2.

Both are decoder stacks of pre-norm layers (RMSNorm, grouped-query attention with RoPE, SwiGLU)
trained so that attention is bidirectional inside a block and causal across blocks. The forward
is the shared one of ``DiffusionLM``: the caller passes the block-causal boolean key mask
([B, N, cached + N]) and the cache, and gets raw logits.

* SDAR (Qwen3 layout): per-head RMSNorm of q and k over ``head_dim``, applied before RoPE; no
  attention biases; ``head_dim`` may differ from ``hidden_size / num_attention_heads``.
* Fast-dLLM v2 (Qwen2.5 layout): q/k/v biases, no o bias, no QK-norm; position i-1 predicts
  token i (``logit_shift``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kv_cache import KVCache
from .base import QWEN_LAYOUT_TP_PLAN, DiffusionLM, FamilyTraits
from .layers import DecoderLayer, GatedMLP, RMSNorm, Rotary, attention


class QwenAttention(nn.Module):
    """q/k/v/o projections, optional q/k/v biases and optional per-head QK RMSNorm."""

    def __init__(self, d: int, heads: int, kv_heads: int, hd: int, qkv_bias: bool,
                 qk_norm_eps: float | None) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.q_proj = nn.Linear(d, heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * hd, d, bias=False)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(hd, qk_norm_eps)
            self.k_norm = RMSNorm(hd, qk_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = h.shape
        q = self.q_proj(h).view(b, n, self.heads, self.hd)
        k = self.k_proj(h).view(b, n, self.kv_heads, self.hd)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.hd).transpose(1, 2)
        if hasattr(self, "q_norm"):  # QK-norm over head_dim, before RoPE (applied in attention)
            q, k = self.q_norm(q), self.k_norm(k)
        o = attention(q.transpose(1, 2), k.transpose(1, 2), v, cos, sin, layer, cache, key_mask)
        return self.o_proj(o.transpose(1, 2).reshape(b, n, -1))


class QwenLayer(DecoderLayer):
    """Pre-norm decoder layer: x + attn(norm(x)) (``attend``), then x + mlp(norm(x)) (``feed_forward``)."""

    def __init__(self, d: int, heads: int, kv_heads: int, hd: int, hidden: int, eps: float,
                 qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.self_attn = QwenAttention(d, heads, kv_heads, hd, qkv_bias, eps if qk_norm else None)
        self.mlp = GatedMLP(d, hidden)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
               cache: KVCache | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, key_mask)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class QwenBlockDiffusionLM(DiffusionLM):
    """Shared builder of the two families; subclasses set the layer options and config checks."""

    qkv_bias: bool = False
    qk_norm: bool = False
    positive_keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
    tp_plan = QWEN_LAYOUT_TP_PLAN

    @classmethod
    def head_dim_of(cls, config: dict[str, Any]) -> int:
        """``head_dim`` when the config sets it, else ``hidden_size / num_attention_heads``."""
        hd = config.get("head_dim")
        return hd if hd is not None else config["hidden_size"] // config["num_attention_heads"]

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """The base checks, with an explicit ``head_dim`` replacing hidden_size / heads."""
        if config.get("head_dim") is None:
            super().check_config(config)
        else:
            hd = config["head_dim"]
            if not (_positive_int(hd) and hd % 2 == 0):
                raise ValueError(f"head_dim={hd!r}: must be a positive even integer")
            super().check_config({**config, "hidden_size": config["num_attention_heads"] * hd})
            if not _positive_int(config.get("hidden_size")):
                raise ValueError(f"hidden_size={config.get('hidden_size')!r}: must be a positive integer")
        cls.check_unsupported(config)

    @classmethod
    def check_unsupported(cls, config: dict[str, Any]) -> None:
        """Raise ValueError naming a config option this implementation does not provide."""
        if config.get("rope_scaling"):
            raise ValueError(f"rope_scaling={config['rope_scaling']!r}: not supported ({cls.family})")
        if config.get("use_sliding_window"):
            raise ValueError(f"use_sliding_window={config['use_sliding_window']!r}: sliding-window "
                             f"attention is not supported ({cls.family})")
        layer_types = config.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(f"layer_types={layer_types!r}: only 'full_attention' layers are supported")
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r}: only 'silu' is supported ({cls.family})")

    @classmethod
    def tied_weights(cls, config: dict[str, Any]) -> dict[str, str]:
        return {"lm_head.weight": "model.embed_tokens.weight"} if config.get("tie_word_embeddings") else {}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.check_config(config)
        d, heads = config["hidden_size"], config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or heads
        hd = self.head_dim_of(config)
        eps = config.get("rms_norm_eps", 1e-6)
        vocab = config["vocab_size"]
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList(
            QwenLayer(d, heads, kv_heads, hd, config["intermediate_size"], eps, self.qkv_bias, self.qk_norm)
            for _ in range(config["num_hidden_layers"])
        )
        self.model.norm = RMSNorm(d, eps)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.rotary = Rotary(hd, config.get("rope_theta", 10000.0))
        if self.tied_weights(config):
            self.lm_head.weight = self.model.embed_tokens.weight

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
        m = self.model
        return m.embed_tokens, m.layers, m.norm, self.lm_head


BLOCK_TRAITS: dict[str, Any] = dict(
    block_causal=True, schedule="block", sampler="multinomial", confidence_dtype=torch.float32
)
"""Traits both families share: their reference decoders sample with ``torch.multinomial`` and
compute the softmax behind the confidence in the logits' dtype (float32 for a float32 model)."""


class SDARModel(QwenBlockDiffusionLM):
    """SDAR / TraDo (``SDARForCausalLM``): Qwen3 layout with QK-norm, trained block size ``block_size``."""

    family = "sdar"
    model_types = ("sdar",)
    architectures = ("SDARForCausalLM",)
    traits = FamilyTraits(**BLOCK_TRAITS)
    block_size_keys = ("block_size",)
    qk_norm = True
    DEFAULT_MASK_ID = 151669

    @classmethod
    def check_unsupported(cls, config: dict[str, Any]) -> None:
        super().check_unsupported(config)
        if config.get("attention_bias"):
            raise ValueError("attention_bias=True: SDAR checkpoints have no attention biases; not supported")

    @property
    def mask_id(self) -> int | None:
        """``mask_token_id`` from config.json, else 151669: the ``<|MASK|>`` token SDAR's tokenizer
        adds (added_tokens.json of the published checkpoints)."""
        mask = self.config.get("mask_token_id")
        return self.DEFAULT_MASK_ID if mask is None else mask


class FastDLLMv2Model(QwenBlockDiffusionLM):
    """Fast-dLLM v2 (``Fast_dLLM_QwenForCausalLM``): Qwen2.5 layout, trained block size ``bd_size``."""

    family = "fast_dllm_v2"
    model_types = ("fast_dllm_qwen",)
    architectures = ("Fast_dLLM_QwenForCausalLM",)
    traits = FamilyTraits(logit_shift=True, **{**BLOCK_TRAITS, "sampler": "multinomial_renorm"})
    block_size_keys = ("bd_size",)
    qkv_bias = True
    DEFAULT_MASK_ID = 151665

    @property
    def mask_id(self) -> int | None:
        """``mask_token_id`` from config.json, else 151665: the published configs do not name one
        and the official decoders (``generate``, ``batch_sample``) default ``mask_id`` to 151665."""
        mask = self.config.get("mask_token_id")
        return self.DEFAULT_MASK_ID if mask is None else mask
