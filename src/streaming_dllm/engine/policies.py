"""Per-step decisions on hand-made or model logits: scores, schedules and commit rules.

Everything here is a pure function of tensors, so each rule is unit-testable on its own.
Candidates are marked by a boolean tensor; non-candidates never get committed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def choose_tokens(
    logits: torch.Tensor,
    remasking: str,
    temperature: float,
    confidence_dtype: torch.dtype,
    generators: list[torch.Generator | None] | None = None,
    exclude: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token choice and confidence score for rows of logits [R, K, V] -> ([R, K], [R, K]).

    temperature 0 takes the argmax; > 0 takes the Gumbel-max on float64 logits (row r draws its
    noise from ``generators[r]``, so a row's samples do not depend on its batch). Token
    ``exclude`` (the mask id) is never chosen: committing it would leave the position masked.
    The score is the probability of the chosen token (``low_confidence`` / ``maskgit_plus``),
    the negative entropy (``entropy``), top-1 minus top-2 (``margin``) or uniform noise
    (``random``); probabilities are over the whole vocabulary, the excluded token included.
    """
    if temperature > 0:
        noise = _uniform_like(logits, torch.float64, generators)
        gumbel = (-torch.log(noise)) ** temperature
        keyed = logits.to(torch.float64).exp() / gumbel
        if exclude is not None:
            keyed[..., exclude] = NEG_INF
        x0 = keyed.argmax(-1)
    else:
        x0 = _argmax_except(logits, exclude)
    if remasking == "random":
        return x0, _uniform_like(x0, torch.float64, generators)
    if remasking in ("entropy", "margin"):
        p = F.softmax(logits.to(confidence_dtype), dim=-1)
        if remasking == "entropy":
            return x0, (p * torch.log(p + 1e-10)).sum(-1)
        top2 = p.topk(2, dim=-1).values
        return x0, top2[..., 0] - top2[..., 1]
    return x0, chosen_probability(logits.to(confidence_dtype), x0)


def chosen_probability(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[chosen] without materialising the softmax: exp(l[chosen] - logsumexp(l))."""
    picked = logits.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    return torch.exp(picked - torch.logsumexp(logits, dim=-1))


def _argmax_except(logits: torch.Tensor, exclude: int | None) -> torch.Tensor:
    """Argmax over the vocabulary with one token left out (restored afterwards, no copy)."""
    if exclude is None:
        return logits.argmax(-1)
    saved = logits[..., exclude].clone()
    logits[..., exclude] = NEG_INF
    x0 = logits.argmax(-1)
    logits[..., exclude] = saved
    return x0


def _uniform_like(t: torch.Tensor, dtype: torch.dtype, generators) -> torch.Tensor:
    if generators is None:
        return torch.rand(t.shape, dtype=dtype, device=t.device)
    rows = [torch.rand(t.shape[1:], dtype=dtype, device=t.device, generator=g) for g in generators]
    return torch.stack(rows)


def top_k_select(conf: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Commit the ``k[r]`` most confident candidates of each row (k may differ per row)."""
    conf = conf.masked_fill(~candidates, NEG_INF)
    kmax = int(k.max().item()) if k.numel() else 0
    sel = torch.zeros_like(candidates)
    if kmax <= 0:
        return sel
    idx = conf.topk(min(kmax, conf.shape[-1]), dim=-1).indices
    take = torch.arange(idx.shape[-1], device=k.device)[None, :] < k[:, None]
    sel.scatter_(-1, idx, take)
    return sel & candidates


def threshold_select(conf: torch.Tensor, candidates: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Commit candidates with confidence >= the row's threshold, and always the most confident.

    The threshold is compared in the confidence's dtype, as a Python-float threshold is in the
    reference code.
    """
    conf = conf.masked_fill(~candidates, NEG_INF)
    sel = (conf >= threshold.to(conf.dtype)[:, None]) & candidates
    best = conf.argmax(-1, keepdim=True)
    sel.scatter_(-1, best, candidates.gather(-1, best))
    return sel


def dynamic_threshold(tau0: float, alpha: float, mask_ratio: torch.Tensor) -> torch.Tensor:
    """Streaming-dLLM's tau(t) = tau0 * (1 - alpha * (1 - r)), r = share of masks still left."""
    return tau0 * (1.0 - alpha * (1.0 - mask_ratio.to(torch.float64)))


def factor_select(conf: torch.Tensor, candidates: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: sorted confidences c_j pass while c_j >= 1 - f/(j+1).

    The first always passes; with k passing out of n candidates, commit the top k, except that
    k >= n-1 commits all n (the reference's off-by-one, kept for parity).
    """
    n = candidates.sum(-1)
    sorted_conf = conf.masked_fill(~candidates, NEG_INF).sort(dim=-1, descending=True).values
    j = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=torch.float64)
    bound = 1.0 - factor / (j + 1.0)
    ok = sorted_conf.to(torch.float64) >= bound[None, :]
    ok[:, 0] = True
    passed = ok.long().cumprod(-1).sum(-1)
    k = torch.where(passed >= n - 1, n, passed)
    return top_k_select(conf, candidates, k)


def even_schedule(masks: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's schedule: m masks over ``steps`` steps -> [R, steps] counts, remainder first."""
    base = masks[:, None] // steps
    extra = (torch.arange(steps, device=masks.device)[None, :] < (masks % steps)[:, None]).long()
    return base + extra


def linspace_count(masks: torch.Tensor, step: int, steps: int, eps: float) -> torch.Tensor:
    """Dream's schedule: ``int(n * (1 - t[i+1]/t[i]))`` in float32, everything at the last step."""
    if step >= steps - 1:
        return masks
    t = torch.linspace(1, eps, steps + 1, dtype=torch.float32)
    ratio = 1 - t[step + 1] / t[step]
    return (masks.to(torch.float32) * ratio.to(masks.device)).long()


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, dtype: torch.dtype,
                   renormalise: bool = False) -> torch.Tensor:
    """The sampling distribution of the block-diffusion decoders: at temperature 0 the plain
    softmax (their argmax path ignores the filters), else softmax of ``logits / T`` restricted to
    the top-k and the top-p nucleus.

    ``renormalise`` zeroes the probabilities outside the nucleus and divides by their sum
    (Fast-dLLM v2); otherwise they get -inf logits before the softmax (SDAR, LLaDA2). The two
    are equal in exact arithmetic; each matches its reference to the bit.
    """
    logits = logits.to(dtype)
    if temperature == 0:
        return F.softmax(logits, dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if not renormalise:
        if top_p < 1.0:
            sorted_l, order = logits.sort(dim=-1, descending=True)
            logits = logits.masked_fill(_outside(F.softmax(sorted_l, dim=-1), order, top_p), NEG_INF)
        return F.softmax(logits, dim=-1)
    probs = F.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(_outside(sorted_p, order, top_p), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _outside(sorted_probs: torch.Tensor, order: torch.Tensor, top_p: float) -> torch.Tensor:
    """Tokens outside the top-p nucleus (the most probable always stays), in vocabulary order."""
    drop = sorted_probs.cumsum(-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return torch.zeros_like(drop).scatter(-1, order, drop)


def sample_multinomial(probs: torch.Tensor, temperature: float,
                       generators: list[torch.Generator | None] | None) -> torch.Tensor:
    """Token per position from probs [R, K, V]: argmax at temperature 0, else one multinomial draw
    per position from row r's generator (``torch.multinomial`` over the row's K positions at once,
    as the references call it, so a seeded row reproduces their draws)."""
    if temperature == 0:
        return probs.argmax(-1)
    rows = []
    for r in range(probs.shape[0]):
        g = None if generators is None else generators[r]
        rows.append(torch.multinomial(probs[r], 1, generator=g).squeeze(-1))
    return torch.stack(rows)


def threshold_topk_select(conf: torch.Tensor, candidates: torch.Tensor, threshold: float,
                          k: torch.Tensor) -> torch.Tensor:
    """Every candidate with confidence strictly above ``threshold`` when at least ``k[r]`` of them
    are, else the ``k[r]`` most confident (at most the candidates left). ``conf`` keeps the
    reference's dtype, so the threshold is compared as the reference compares it."""
    conf = conf.masked_fill(~candidates, NEG_INF)
    high = (conf > torch.tensor(threshold, dtype=conf.dtype)) & candidates
    enough = high.sum(-1) >= k
    top = top_k_select(conf, candidates, torch.minimum(k, candidates.sum(-1)))
    return torch.where(enough[:, None], high, top)


def sequential_select(candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The ``k[r]`` leftmost candidates of each row (SDAR's ``sequential``)."""
    rank = candidates.long().cumsum(-1)
    return candidates & (rank <= k[:, None])


def block_schedule(rows: int, block_length: int, steps: int, device: torch.device) -> torch.Tensor:
    """SDAR / LLaDA2's schedule: ``block_length // steps`` commits per step, remainder first,
    whatever the block's mask count -> [rows, steps]."""
    return even_schedule(torch.full((rows,), block_length, dtype=torch.long, device=device), steps)
