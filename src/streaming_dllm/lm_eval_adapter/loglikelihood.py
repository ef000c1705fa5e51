"""Monte-Carlo masked log-likelihood of a continuation, as in the LLaDA paper (its Eq. 6).

A masked diffusion LM has no left-to-right factorisation, so log p(target | prefix) is bounded
from below by an expectation over masking levels:

    log p(y | x) >= E_{k ~ U{1..L}} [ L / k * sum_{i masked} log p(y_i | x, y_masked) ]

where k of the L target tokens are masked uniformly at random and the prefix is never masked.
Each sample is one forward pass; the estimate is the mean over ``n_samples`` samples. The masking
levels are stratified (evenly spaced around a random offset) to lower the variance,
and the estimate is seeded, so a request always scores the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.base import DiffusionLM


def mc_loglikelihood(
    model: DiffusionLM,
    prefix: list[int],
    target: list[int],
    *,
    n_samples: int = 128,
    batch_size: int = 32,
    mask_id: int | None = None,
    seed: int = 0,
) -> float:
    """Estimate log p(target | prefix) with ``n_samples`` masked forward passes.

    Honours the family's ``logit_shift`` (Dream: logits at position i-1 predict token i).
    """
    if not prefix:
        raise ValueError("prefix: must hold at least one token (use a BOS/EOS token for an empty context)")
    if not target:
        raise ValueError("target: empty continuation")
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples={n_samples}, batch_size={batch_size}: both must be >= 1")
    mask_id = model.mask_id if mask_id is None else mask_id
    if mask_id is None:
        raise ValueError("mask_id: the checkpoint's config has no mask_token_id")
    dev = model.device
    p, n = len(prefix), len(target)
    seq = torch.tensor(prefix + target, dtype=torch.long, device=dev)
    tgt = seq[p:]
    shift = 1 if model.traits.logit_shift else 0
    rows = slice(p - shift, p + n - shift)
    # All masks are drawn up front, so the estimate does not depend on batch_size. Masking levels
    # are stratified: k in 1..n at evenly spaced fractions around one random offset.
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    frac = (torch.rand(1, generator=gen) + torch.arange(n_samples) / n_samples) % 1.0
    k_all = (frac * n).long().clamp(max=n - 1) + 1
    order = torch.rand(n_samples, n, generator=gen).argsort(dim=1).argsort(dim=1)
    masked_all = order < k_all[:, None]
    total = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for s in range(0, n_samples, batch_size):
            k, masked = k_all[s : s + batch_size], masked_all[s : s + batch_size].to(dev)
            b = k.numel()
            x = seq.expand(b, -1).clone()
            x[:, p:] = torch.where(masked, torch.full_like(x[:, p:], mask_id), x[:, p:])
            pos = torch.arange(p + n, device=dev).expand(b, -1)
            logits = model(x, pos, logits_rows=rows)
            if logits.shape[1] != n:  # a model that ignores logits_rows returns every row
                logits = logits[:, rows]
            nll = F.cross_entropy(logits.float().reshape(b * n, -1), tgt.repeat(b), reduction="none").view(
                b, n
            )
            total += ((nll * masked).sum(dim=1).double().cpu() * n / k.double()).sum()
    return -float(total / n_samples)
