"""Training data: the run's tokenizer, encoded problems, padded batches and the mask of each row."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..tasks import arith
from ..tasks import tokenizer as tok_lib
from ..tasks.arith_eval import encode_prompts


def get_tokenizer(out: Path, drill_equations: int = 10):
    """Load the run's tokenizer, training it on task text the first time."""
    from transformers import AutoTokenizer

    if (out / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(out))
    rng = random.Random(0)
    texts = [p.prompt + "\n" + p.solution for p in arith.problems("train", 20_000)]
    texts += [p.prompt + "\n" + p.solution for p in (arith.drill(rng, drill_equations) for _ in range(2000))]
    tokenizer = tok_lib.train_tokenizer(texts, numbers=arith.MAX_VALUE)
    tok_lib.save_tokenizer(tokenizer, out)
    return AutoTokenizer.from_pretrained(str(out))


def encode_data(tokenizer, problems: list[arith.Problem]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and response ids (solution + end-of-turn) per problem."""
    eot = tokenizer.convert_tokens_to_ids(tok_lib.EOT)
    responses = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    return encode_prompts(tokenizer, problems), [r + [eot] for r in responses]


def make_batch(prompts, responses, pad_len: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of prompt + response + EOS padding, all of length max(prompt) + pad_len.

    Returns the ids and a bool mask of the response region (the part that may be masked).
    """
    width = max(len(p) for p in prompts) + max(pad_len, max(len(r) for r in responses))
    ids = torch.full((len(prompts), width), eos, dtype=torch.long)
    region = torch.ones((len(prompts), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, : len(p)] = torch.tensor(p)
        ids[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        region[i, : len(p)] = False
    return ids, region


def sample_mask(region: torch.Tensor, eps: float, gen: torch.Generator,
                suffix_frac: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row a ratio t ~ U(0, 1] (stratified over the batch) and the response positions to mask.

    Each response position is masked with probability t. With ``suffix_frac`` > 0, that share of
    the rows masks the last ``ceil(t * n)`` response positions instead: the context that
    semi-autoregressive decoding gives the model (what comes before is known, everything after
    is masked), which random masking almost never shows it. Returns (masked, t).
    """
    b, n = region.shape
    t = (torch.randperm(b, generator=gen) + torch.rand(b, generator=gen)) / b
    t = t.clamp(min=eps)
    masked = (torch.rand(b, n, generator=gen) < t[:, None]) & region
    if suffix_frac > 0:
        suffix_rows = torch.rand(b, generator=gen) < suffix_frac
        k = torch.ceil(t * region.sum(1)).long()  # the region runs to the end of the row
        suffix = torch.arange(n)[None, :] >= (n - k)[:, None]
        masked = torch.where(suffix_rows[:, None], suffix & region, masked)
    return masked, t
