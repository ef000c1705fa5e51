"""Building blocks shared by the model families: RMSNorm, rotary embeddings, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kv_cache import KVCache, PackedCaches

MIN_GEMM_ROWS = 4
"""A float32 product over 1 to 3 rows takes another CPU kernel (a matrix-vector path) that rounds
differently from the one over 4 rows or more (measured on torch's CPU BLAS, and for attention's
query blocks alike): a row's result would depend on how many rows share the product. Row subsets
(the rows that get logits, an expert's tokens) are padded to this many rows, so a row computes
the same alone, in a batch, or inside a whole-sequence forward."""


def padded_rows(x: torch.Tensor) -> torch.Tensor:
    """Flat rows ``x`` [T, d], the first one repeated up to ``MIN_GEMM_ROWS`` rows when T is
    fewer (the caller drops the extra outputs)."""
    short = MIN_GEMM_ROWS - x.shape[0]
    if short <= 0 or x.shape[0] == 0:
        return x
    return torch.cat([x, x[:1].expand(short, -1)])


class DecoderLayer(nn.Module):
    """A pre-norm layer in two halves: ``attend`` (attention plus its residual, over every fed
    position: their K/V go to the cache) and ``feed_forward`` (norm, MLP plus its residual, a
    per-position map). The shared forward runs the last layer's feed-forward only on the rows
    that get logits, since no other position's output is read."""

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
               cache: KVCache | PackedCaches | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | PackedCaches | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self.feed_forward(self.attend(x, cos, sin, layer, cache, key_mask))


class RMSNorm(nn.Module):
    """``w * x * rsqrt(mean(x^2) + eps)`` computed in float32, no +1 on the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward ``down(silu(gate(x)) * up(x))`` without biases, in the Qwen / Dream /
    LLaDA2 weight names (``gate_proj``, ``up_proj``, ``down_proj``)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Rotary(nn.Module):
    """Rotate-half RoPE; positions are explicit (may be non-contiguous).

    ``head_dim`` is the number of rotated dimensions: the whole head, or its first part for a
    family with partial RoPE (LLaDA2's ``partial_rotary_factor``); the rest pass unrotated.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.theta**exponent)

    def reset(self, device: torch.device) -> None:
        """Recompute the frequencies (after building the model on the meta device)."""
        self.inv_freq = self._inv_freq(device)

    def cos_sin(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape [batch, 1, n, head_dim] in float32."""
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq.float()
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE in float32 and return in the input's dtype.

    Only the first ``cos.shape[-1]`` dimensions rotate (partial RoPE); the others are kept.
    """
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)
    h = x.float()
    return (h * cos + _rotate_half(h) * sin).to(x.dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layer: int,
    cache: KVCache | PackedCaches | None,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Bidirectional attention over [batch, heads, n, head_dim] tensors (a ``PackedCaches``
    forward: [1, heads, N, head_dim], attended run by run).

    RoPE is applied to the new queries and keys, the cache merges the new K/V with the cached
    ones, and kv head j serves query heads [j*H/KV, (j+1)*H/KV) (SDPA's ``enable_gqa`` where
    torch has it, repeated K/V heads otherwise: the logits and tokens are identical).
    ``key_mask`` is a boolean mask (True = attend) covering cached + new keys: [batch, keys] for
    the same keys for every query (padding), or [batch, queries, keys] (a block-causal forward).
    """
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(k, cos, sin)
    if isinstance(cache, PackedCaches):
        return cache.attention(layer, q, k, v, sdpa)
    if cache is not None:
        k, v = cache.update(layer, k, v)
    return sdpa(q, k, v, key_mask)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention with a boolean key mask ([batch, keys] or [batch, queries,
    keys]) and grouped K/V heads."""
    if key_mask is None:
        mask = None
    else:
        mask = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]
    if q.shape[1] == k.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if _SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _sdpa_supports_gqa() -> bool:
    """torch >= 2.5 maps grouped K/V heads inside SDPA (no repeated copy of K and V)."""
    return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_SDPA_GQA = _sdpa_supports_gqa()
