"""Weight init and the training-time embedding options: tied head, head copied from the
embedding, digit-factored number rows."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.llada import LLaDAModel


def init_weights(model: LLaDAModel, n_layers: int) -> None:
    """GPT-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("attn_out.weight", "ff_out.weight")) \
                and ".blocks." in name else 0.02
            torch.nn.init.normal_(p, std=std)


def tie_embeddings(model: LLaDAModel) -> None:
    """Share the input embedding with the LM head during training.

    Copying a name or a number from the story is then close to the identity map through the
    residual stream, which a tiny model finds in far fewer steps than with two separate matrices.
    The checkpoint still stores both (equal) matrices, so it loads as a plain LLaDA checkpoint.
    """
    t = model.model.transformer
    t.ff_out.weight = t.wte.weight


def start_head_as_embedding(model: LLaDAModel) -> None:
    """Untied training: the LM head starts as a copy of the input embedding, then learns alone.

    The copy gives the identity map for copying tokens from the story at step 0, as tying does;
    afterwards the head is free to score N and N + 1 apart while the embedding keeps a number line.
    """
    t = model.model.transformer
    with torch.no_grad():
        t.ff_out.weight.copy_(t.wte.weight)


class DigitFactoredRows(nn.Module):
    """Parametrization of an embedding matrix: each number token's row gains a tens and a units vector.

    ``row(N) = free(N) + tens[N // 10] + units[N % 10]``. The tens and units tables are shared by
    all numbers, so with the tied LM head the logit of N is the sum of a tens score and a units
    score: the model can get the units digit exactly right (a 10 x 10 table for ``a + b``) while
    its magnitude is off, which is where the plain one-vector-per-number model fails (most wrong
    results were off by one, see builtin/TRAINING.md). It is a training-time parametrization
    only: the exported checkpoint stores the summed rows, a plain LLaDA embedding.
    """

    def __init__(self, number_ids: list[int], values: list[int], d_model: int, std: float = 0.02) -> None:
        super().__init__()
        self.register_buffer("rows", torch.tensor(number_ids, dtype=torch.long))
        self.register_buffer("tens_of", torch.tensor([v // 10 for v in values], dtype=torch.long))
        self.register_buffer("units_of", torch.tensor([v % 10 for v in values], dtype=torch.long))
        self.tens = nn.Parameter(torch.randn(max(values) // 10 + 1, d_model) * std)
        self.units = nn.Parameter(torch.randn(10, d_model) * std)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_add(0, self.rows, self.tens[self.tens_of] + self.units[self.units_of])


def number_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """Ids and values of the tokens that are a whole number, with or without the leading space."""
    ids, values = [], []
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if text.isdecimal() and text.isascii():
            ids.append(i)
            values.append(int(text))
    return ids, values


def add_digit_embeddings(model: LLaDAModel, tokenizer) -> None:
    """Register ``DigitFactoredRows`` on the input embedding and the LM head (one shared instance)."""
    from torch.nn.utils import parametrize

    ids, values = number_tokens(tokenizer)
    t = model.model.transformer
    digits = DigitFactoredRows(ids, values, t.wte.weight.shape[1])
    parametrize.register_parametrization(t.wte, "weight", digits)
    parametrize.register_parametrization(t.ff_out, "weight", digits)
