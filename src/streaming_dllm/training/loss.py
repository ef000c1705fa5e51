"""The diffusion objective: LLaDA's SFT loss on the masked response positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import sample_mask


def diffusion_loss(model, ids: torch.Tensor, region: torch.Tensor, mask_id: int, eps: float,
                   gen: torch.Generator, suffix_frac: float = 0.0) -> torch.Tensor:
    """LLaDA SFT loss: mask the response with ratio t per row, CE on masked tokens weighted 1/t."""
    b, n = ids.shape
    masked, t = sample_mask(region, eps, gen, suffix_frac)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    pos = torch.arange(n).expand(b, n)
    logits = model(noisy, pos)
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    weight = (1.0 / t[:, None]).expand(b, n)[masked] / region.sum(1, keepdim=True).expand(b, n)[masked]
    return (ce * weight).sum() / b
