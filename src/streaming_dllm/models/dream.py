"""Dream (Dream-v0-Base/Instruct-7B): Qwen2-style bidirectional transformer.

q/k/v projections carry biases, o_proj does not; grouped-query attention. Dream was trained so
that the logits at position i-1 predict token i: the model returns raw logits and declares the
shift as a family trait, which the decoder applies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kv_cache import KVCache
from .base import QWEN_LAYOUT_TP_PLAN, DiffusionLM, FamilyTraits
from .layers import DecoderLayer, GatedMLP, RMSNorm, Rotary, attention


class DreamAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        hd = d // heads
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.q_proj = nn.Linear(d, heads * hd, bias=True)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(heads * hd, d, bias=False)


class DreamLayer(DecoderLayer):
    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.self_attn = DreamAttention(d, heads, kv_heads)
        self.mlp = GatedMLP(d, hidden)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)

    def attend(self, x, cos, sin, layer: int, cache: KVCache | None, key_mask) -> torch.Tensor:
        b, n, _ = x.shape
        a = self.self_attn
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(b, n, a.heads, a.hd).transpose(1, 2)
        k = a.k_proj(h).view(b, n, a.kv_heads, a.hd).transpose(1, 2)
        v = a.v_proj(h).view(b, n, a.kv_heads, a.hd).transpose(1, 2)
        o = attention(q, k, v, cos, sin, layer, cache, key_mask)
        return x + a.o_proj(o.transpose(1, 2).reshape(b, n, -1))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamModel(DiffusionLM):
    family = "dream"
    model_types = ("dream",)
    architectures = ("DreamModel",)
    traits = FamilyTraits(
        logit_shift=True,
        confidence_dtype=torch.float32,
        schedule="linspace",
        first_token_at_block_start=True,
    )
    positive_keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
    tp_plan = QWEN_LAYOUT_TP_PLAN

    @classmethod
    def tied_weights(cls, config: dict[str, Any]) -> dict[str, str]:
        return {"lm_head.weight": "model.embed_tokens.weight"} if config.get("tie_word_embeddings") else {}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.check_config(config)
        if config.get("rope_scaling"):
            raise ValueError("Dream config with rope_scaling is not supported")
        d = config["hidden_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or heads
        eps = config.get("rms_norm_eps", 1e-6)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config["vocab_size"], d)
        self.model.layers = nn.ModuleList(
            DreamLayer(d, heads, kv_heads, config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )
        self.model.norm = RMSNorm(d, eps)
        self.lm_head = nn.Linear(d, config["vocab_size"], bias=False)
        self.rotary = Rotary(d // heads, config.get("rope_theta", 10000.0))
        if self.tied_weights(config):
            self.lm_head.weight = self.model.embed_tokens.weight

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
        m = self.model
        return m.embed_tokens, m.layers, m.norm, self.lm_head
