"""Mixture-of-experts feed-forward of LLaDA2: group-limited sigmoid routing plus shared experts.

Routing (per token): ``s = sigmoid(gate(h))`` in float32. Experts are chosen on ``s + expert_bias``:
groups are ranked by the sum of their two best biased scores, the best ``topk_group`` groups are
kept and the ``top_k`` best biased experts among them are picked. The bias only selects: the
weights are the *unbiased* scores of the chosen experts, renormalised to sum to one (when
``top_k > 1``) and multiplied by ``routed_scaling_factor``.

Dispatch is grouped by expert: the (token, slot) pairs are sorted by expert and every active
expert runs one matmul over its tokens; the slot outputs are then weighted in float32 and summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GatedMLP, padded_rows


class Router(nn.Module):
    """The gate: ``weight`` [experts, d] and the selection-only ``expert_bias`` [experts].

    ``expert_bias`` is a buffer in the reference implementation but is saved in every checkpoint;
    it is a (frozen) parameter here so the loader checks and assigns it like any weight.
    """

    def __init__(self, d: int, experts: int, top_k: int, groups: int, topk_group: int, scale: float) -> None:
        super().__init__()
        self.top_k, self.groups, self.topk_group, self.scale = top_k, groups, topk_group, scale
        self.weight = nn.Parameter(torch.empty(experts, d))
        self.expert_bias = nn.Parameter(torch.zeros(experts), requires_grad=False)

    def select(self, biased: torch.Tensor) -> torch.Tensor:
        """Expert indices [T, top_k] chosen on the biased scores [T, E], group-limited."""
        t, e = biased.shape
        grouped = biased.view(t, self.groups, e // self.groups)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        group_ok = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        expert_ok = group_ok[:, :, None].expand_as(grouped).reshape(t, e)
        return biased.masked_fill(~expert_ok, float("-inf")).topk(self.top_k, dim=-1).indices

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert indices [T, top_k], float32 routing weights [T, top_k]) for flat tokens [T, d]."""
        scores = torch.sigmoid(F.linear(h.float(), self.weight.float()))
        idx = self.select(scores + self.expert_bias.float())
        w = scores.gather(1, idx)
        if self.top_k > 1:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * self.scale


class SparseMoE(nn.Module):
    """Routed experts (grouped by expert) plus optional always-on shared experts."""

    def __init__(self, d: int, cfg: dict) -> None:
        super().__init__()
        n, inter = cfg["num_experts"], cfg["moe_intermediate_size"]
        self.gate = Router(d, n, cfg["num_experts_per_tok"], cfg["n_group"], cfg["topk_group"],
                           float(cfg["routed_scaling_factor"]))
        self.experts = nn.ModuleList(GatedMLP(d, inter) for _ in range(n))
        shared = cfg.get("num_shared_experts")
        self.shared_experts = GatedMLP(d, inter * shared) if shared is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        tokens = flat.shape[0]
        if tokens == 0:
            return torch.zeros_like(x)
        flat = padded_rows(flat)  # a token's routing and output do not depend on its company
        idx, w = self.gate(flat)
        y = self.dispatch(flat, idx, w)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y[:tokens].view_as(x)

    def dispatch(self, flat: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w[t, j] * expert[idx[t, j]](flat[t])``: one matmul per active expert, over at
        least ``MIN_GEMM_ROWS`` rows (an expert's token count varies with the batch)."""
        k = idx.shape[1]
        order = idx.reshape(-1).argsort()
        tokens = flat[order // k]
        counts = torch.bincount(idx.reshape(-1), minlength=len(self.experts)).tolist()
        outs, start = [], 0
        for e, count in enumerate(counts):
            if count:
                outs.append(self.experts[e](padded_rows(tokens[start:start + count]))[:count])
                start += count
        sorted_out = torch.cat(outs) if outs else tokens[:0]
        slot_out = torch.empty_like(sorted_out)
        slot_out[order] = sorted_out
        mixed = (slot_out.view(*idx.shape, -1).to(w.dtype) * w[..., None]).sum(1)
        return mixed.to(flat.dtype)
