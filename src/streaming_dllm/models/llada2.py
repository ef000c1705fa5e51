"""LLaDA2.0 / LLaDA2.1 (``LLaDA2MoeModelLM``, model_type ``llada2_moe``): MoE block diffusion.

A Ling-style transformer: one fused ``query_key_value`` projection, per-head RMSNorm on queries
and keys (QK-norm) before partial rotary embeddings (the first ``head_dim * partial_rotary_factor``
dimensions of each head rotate, rotate-half layout), an output projection ``dense``; the first
``first_k_dense_replace`` layers have a dense SwiGLU MLP, the others a mixture of experts with
shared experts (``models/moe.py``). Attention is block-causal: the decoder passes a [B, Q, K]
boolean mask. Logits at position i predict token i (no shift). LLaDA2.0 and 2.1 share the
architecture and weights layout; they differ only in how they decode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kv_cache import KVCache
from .base import DiffusionLM, FamilyTraits, TensorParallelPlan
from .layers import DecoderLayer, GatedMLP, RMSNorm, Rotary, attention
from .moe import SparseMoE

DEFAULT_MASK_ID = 156895
"""``<|mask|>`` of the LLaDA2 tokenizer: the official ``generate`` default (configs lack it)."""
DEFAULT_EOS_ID = 156892
"""The official ``generate`` default EOS id, used when config.json names none."""

_MOE_KEYS = ("num_experts_per_tok", "n_group", "topk_group", "moe_intermediate_size")

DEFAULTS: dict[str, Any] = {
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "use_qkv_bias": False,
    "use_bias": True, "use_qk_norm": True, "num_experts": 16, "num_shared_experts": 0,
    "num_experts_per_tok": 2, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 0, "hidden_act": "silu",
}
"""What the reference configuration class fills in for a key config.json leaves out."""


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the reference defaults for absent keys (an explicit null is kept)."""
    return {**DEFAULTS, **config}


def _head_dim(config: dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _kv_heads(config: dict[str, Any]) -> int:
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def _rotated_dims(config: dict[str, Any]) -> int:
    return int(_head_dim(config) * config["partial_rotary_factor"])


def _tp_plan() -> TensorParallelPlan:
    attn, mlp = "model.layers.*.attention", "model.layers.*.mlp"
    inter, moe = "intermediate_size", "moe_intermediate_size"
    experts, shared = f"{mlp}.experts.*", f"{mlp}.shared_experts"
    return TensorParallelPlan(
        heads=(attn,),
        fused_qkv={f"{attn}.query_key_value": "num_key_value_heads"},
        column={f"{mlp}.gate_proj": inter, f"{mlp}.up_proj": inter,
                f"{experts}.gate_proj": moe, f"{experts}.up_proj": moe,
                f"{shared}.gate_proj": moe, f"{shared}.up_proj": moe},
        row={f"{attn}.dense": "num_attention_heads", f"{mlp}.down_proj": inter},
        partial={f"{experts}.down_proj": moe, f"{shared}.down_proj": moe},
        reduce=(mlp,),
    )


TP_PLAN = _tp_plan()
"""Fused q/k/v split per segment, dense MLPs column/row; in MoE layers the router is replicated,
every routed and shared expert's intermediate dimension is split and the MoE output is reduced once."""


class LLaDA2Attention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config["rms_norm_eps"]
        self.heads, self.kv_heads = config["num_attention_heads"], _kv_heads(config)
        self.hd = _head_dim(config)
        out = (self.heads + 2 * self.kv_heads) * self.hd
        self.query_key_value = nn.Linear(d, out, bias=bool(config["use_qkv_bias"]))
        self.qk_norm = bool(config["use_qk_norm"])
        if self.qk_norm:
            self.query_layernorm = RMSNorm(self.hd, eps)
            self.key_layernorm = RMSNorm(self.hd, eps)
        self.dense = nn.Linear(self.heads * self.hd, d, bias=bool(config["use_bias"]))

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None, key_mask) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.query_key_value(x).view(b, n, self.heads + 2 * self.kv_heads, self.hd)
        q, k, v = (t.transpose(1, 2) for t in qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2))
        if self.qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        o = attention(q, k, v, cos, sin, layer, cache, key_mask)
        return self.dense(o.transpose(1, 2).reshape(b, n, -1))


class LLaDA2Layer(DecoderLayer):
    def __init__(self, config: dict[str, Any], index: int) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config["rms_norm_eps"]
        self.attention = LLaDA2Attention(config)
        moe = config["num_experts"] is not None and index >= config["first_k_dense_replace"]
        self.mlp = SparseMoE(d, config) if moe else GatedMLP(d, config["intermediate_size"])
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)

    def attend(self, x, cos, sin, layer: int, cache: KVCache | None, key_mask) -> torch.Tensor:
        return x + self.attention(self.input_layernorm(x), cos, sin, layer, cache, key_mask)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Model(DiffusionLM):
    family = "llada2"
    model_types = ("llada2_moe", "llada21_moe")
    architectures = ("LLaDA2MoeModelLM",)
    traits = FamilyTraits(
        logit_shift=False,
        confidence_dtype=torch.float32,
        schedule="block",
        block_causal=True,
        sampler="multinomial",
    )
    positive_keys = ("hidden_size", "num_attention_heads", "num_hidden_layers")
    tp_plan = TP_PLAN

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """The generic checks (with an explicit ``head_dim``) plus every LLaDA2-specific option."""
        config = with_defaults(config)
        checked = dict(config)
        heads = config.get("num_attention_heads")
        if isinstance(config.get("head_dim"), int) and isinstance(heads, int) and heads > 0:
            checked["hidden_size"] = config["head_dim"] * heads  # the width check is on q's heads
        super().check_config(checked)
        _check_options(config)
        moe = config.get("num_experts") is not None
        if moe:
            _check_moe(config)
        if not moe or config["first_k_dense_replace"] > 0:
            _positive_int(config, "intermediate_size")

    @classmethod
    def tied_weights(cls, config: dict[str, Any]) -> dict[str, str]:
        return {"lm_head.weight": "model.word_embeddings.weight"} if config.get("tie_word_embeddings") else {}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.check_config(config)
        config = with_defaults(config)
        d, vocab = config["hidden_size"], config["vocab_size"]
        self.model = nn.Module()
        self.model.word_embeddings = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList(LLaDA2Layer(config, i) for i in range(config["num_hidden_layers"]))
        self.model.norm = RMSNorm(d, config["rms_norm_eps"])
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.rotary = Rotary(_rotated_dims(config), config["rope_theta"])
        if self.tied_weights(config):
            self.lm_head.weight = self.model.word_embeddings.weight

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
        m = self.model
        return m.word_embeddings, m.layers, m.norm, self.lm_head

    @property
    def mask_id(self) -> int | None:
        mask = self.config.get("mask_token_id")
        return DEFAULT_MASK_ID if mask is None else mask

    @property
    def eos_id(self) -> int | None:
        eos = super().eos_id
        return DEFAULT_EOS_ID if eos is None else eos


def _positive_int(config: dict[str, Any], key: str) -> int:
    v = config.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        raise ValueError(f"{key}={v!r}: must be a positive integer")
    return v


def _check_options(config: dict[str, Any]) -> None:
    """Refuse the options this implementation does not build, naming the key."""
    if config["hidden_act"] != "silu":
        raise ValueError(f"hidden_act={config['hidden_act']!r}: only 'silu' is supported")
    scaling = config.get("rope_scaling")
    kind = (scaling.get("rope_type") or scaling.get("type")) if isinstance(scaling, dict) else scaling
    if scaling and kind != "default":
        raise ValueError(f"rope_scaling={scaling!r}: only the default RoPE is supported")
    if config.get("norm_head"):
        raise ValueError("norm_head=True: a normalised LM head is not supported")
    factor = config["partial_rotary_factor"]
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor <= 1):
        raise ValueError(f"partial_rotary_factor={factor!r}: must be a number in (0, 1]")
    rot = _rotated_dims(config)
    if rot < 2 or rot % 2:
        raise ValueError(
            f"partial_rotary_factor={factor!r}: rotates {rot} of {_head_dim(config)} head dims, must be even"
        )
    for key in ("use_qkv_bias", "use_bias", "use_qk_norm", "tie_word_embeddings"):
        if not isinstance(config.get(key, False), bool):
            raise ValueError(f"{key}={config[key]!r}: must be true or false")
    dense = config["first_k_dense_replace"]
    if not (isinstance(dense, int) and not isinstance(dense, bool) and dense >= 0):
        raise ValueError(f"first_k_dense_replace={dense!r}: must be a non-negative integer")


def _check_moe(config: dict[str, Any]) -> None:
    """The MoE keys: counts positive, groups that divide the experts, selections that fit."""
    experts = _positive_int(config, "num_experts")
    top_k, groups, topk_group, _ = (_positive_int(config, k) for k in _MOE_KEYS)
    shared = config.get("num_shared_experts")
    if shared is not None and not (isinstance(shared, int) and not isinstance(shared, bool) and shared >= 0):
        raise ValueError(f"num_shared_experts={shared!r}: must be a non-negative integer or null")
    if experts % groups or experts // groups < 2:
        raise ValueError(f"n_group={groups}: must divide num_experts={experts} into groups of at least 2")
    if topk_group > groups:
        raise ValueError(f"topk_group={topk_group}: must not exceed n_group={groups}")
    if top_k > topk_group * (experts // groups):
        raise ValueError(
            f"num_experts_per_tok={top_k}: more than the {topk_group * (experts // groups)} experts "
            f"in the topk_group={topk_group} selected groups"
        )
    scale = config["routed_scaling_factor"]
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
        raise ValueError(f"routed_scaling_factor={scale!r}: must be a positive number")
