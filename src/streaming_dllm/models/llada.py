"""LLaDA (LLaDA-8B-Base / -Instruct, LLaDA-1.5): pre-norm bidirectional Llama-style transformer.

Weight names and config keys follow the released checkpoints (``model.transformer.blocks.{i}``,
``d_model``, ``n_heads``...). The MLP is ``ff_out(silu(ff_proj(h)) * up_proj(h))``; ``attn_out``
is the attention output projection and ``model.transformer.ff_out`` the LM head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kv_cache import KVCache
from .base import DiffusionLM, FamilyTraits, TensorParallelPlan
from .layers import DecoderLayer, RMSNorm, Rotary, attention


class LLaDABlock(DecoderLayer):
    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int, eps: float, bias: bool) -> None:
        super().__init__()
        hd = d // heads
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.attn_norm = RMSNorm(d, eps)
        self.ff_norm = RMSNorm(d, eps)
        self.q_proj = nn.Linear(d, heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, kv_heads * hd, bias=bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_proj = nn.Linear(d, hidden, bias=bias)
        self.up_proj = nn.Linear(d, hidden, bias=bias)
        self.ff_out = nn.Linear(hidden, d, bias=bias)

    def attend(self, x, cos, sin, layer: int, cache: KVCache | None, key_mask) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, n, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, n, self.kv_heads, self.hd).transpose(1, 2)
        a = attention(q, k, v, cos, sin, layer, cache, key_mask)
        return x + self.attn_out(a.transpose(1, 2).reshape(b, n, -1))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


_BLOCK = "model.transformer.blocks.*"

TP_PLAN = TensorParallelPlan(
    heads=(_BLOCK,),
    column={f"{_BLOCK}.q_proj": "n_heads", f"{_BLOCK}.k_proj": "n_kv_heads", f"{_BLOCK}.v_proj": "n_kv_heads",
            f"{_BLOCK}.ff_proj": "mlp_hidden_size", f"{_BLOCK}.up_proj": "mlp_hidden_size"},
    row={f"{_BLOCK}.attn_out": "n_heads", f"{_BLOCK}.ff_out": "mlp_hidden_size"},
)
"""Attention heads and the MLP of each block sharded; ``model.transformer.ff_out`` (the LM head)
is replicated."""


class LLaDATransformer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = cfg["d_model"]
        heads = cfg["n_heads"]
        kv_heads = cfg.get("n_kv_heads") or heads
        hidden = cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d
        eps = cfg.get("rms_norm_eps", 1e-5)
        vocab = LLaDAModel.vocab_size_of(cfg)
        bias = bool(cfg.get("include_bias", False))
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            LLaDABlock(d, heads, kv_heads, hidden, eps, bias) for _ in range(cfg["n_layers"])
        )
        self.ln_f = RMSNorm(d, eps)
        self.ff_out = nn.Linear(d, vocab, bias=False)


class LLaDAModel(DiffusionLM):
    family = "llada"
    model_types = ("llada",)
    architectures = ("LLaDAModelLM",)
    traits = FamilyTraits(logit_shift=False, confidence_dtype=torch.float64, schedule="even")
    positive_keys = ("d_model", "n_heads", "n_layers")
    vocab_keys = ("embedding_size", "vocab_size")
    context_keys = ("max_sequence_length", "max_position_embeddings")
    heads_keys = ("d_model", "n_heads", "n_kv_heads")
    layers_key = "n_layers"
    layer_prefix = "model.transformer.blocks."
    tp_plan = TP_PLAN

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.check_config(config)
        for key in ("alibi", "weight_tying", "input_emb_norm", "attention_layer_norm", "scale_logits"):
            if config.get(key):
                raise ValueError(f"LLaDA config option {key}=true is not supported")
        if config.get("rope") is False:
            raise ValueError("LLaDA config without RoPE (rope=false) is not supported")
        self.model = nn.Module()
        self.model.transformer = LLaDATransformer(config)
        self.rotary = Rotary(config["d_model"] // config["n_heads"], config.get("rope_theta", 10000.0))

    def parts(self) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
        t = self.model.transformer
        return t.wte, t.blocks, t.ln_f, t.ff_out
