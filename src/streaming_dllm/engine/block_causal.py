"""The decoder's block-causal parts (SDAR / TraDo, Fast-dLLM v2, LLaDA2.x).

In a block-causal model a block attends to itself and to the blocks before it, with blocks
counted from position 0 of the sequence. So the K/V of a finished block is exact: the decoder
keeps one ``KVCache`` for the whole sequence, writes each finished block into it once and never
recomputes it, and a block's steps feed only the block (or one of its sub-blocks). No suffix is
ever fed, so suffix pruning (``window``, ``tail_keep``) has nothing to prune here.

Layout of a batch: each row's prompt is left-padded by whole blocks so that every row's prompt
ends in the same block (column ``first`` starts it). A row whose prompt ends inside that block
decodes the rest of it, as the references do; its generation starts at ``gen_start[row]``.

The forward that commits a finished block's K/V:

* unshifted families (SDAR, LLaDA2) fold it into the next block's first forward, which feeds the
  finished block and the new one together with a block-causal mask (the prompt's full blocks for
  the first block): one forward fewer per block than SDAR's reference, none more than LLaDA2's;
* shifted families (Fast-dLLM v2) run it on its own, because its last row predicts the next
  block's first token (by argmax, as the reference does), which that block's forwards are fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError, DecodeConfig


@dataclass(frozen=True)
class CausalLayout:
    """Where each row of a block-causal batch sits (see the module docstring)."""

    pads: list[int]
    first: int
    row_blocks: list[int]
    num_blocks: int
    total: int
    gen_start: list[int]


def causal_layout(lengths: list[int], cfg: DecodeConfig) -> CausalLayout:
    """Block-aligned layout: ``cfg.span`` says how many blocks each row decodes."""
    bs = cfg.block_length
    full = [n // bs for n in lengths]
    top = max(full)
    pads = [(top - f) * bs for f in full]
    if cfg.span == "cover":
        blocks = [math.ceil((n % bs + cfg.gen_length) / bs) for n in lengths]
    else:
        blocks = [cfg.gen_length // bs] * len(lengths)
    first = top * bs
    return CausalLayout(pads, first, blocks, max(blocks), first + max(blocks) * bs,
                        [p + n for p, n in zip(pads, lengths, strict=True)])


def check_causal_config(cfg: DecodeConfig) -> None:
    """Refuse the knobs block-causal decoding has no meaning for, naming the field."""
    if cfg.unmask == "factor":
        raise ConfigError("unmask", "DecodeConfig.unmask='factor': not available for block-causal "
                          "families; use threshold_topk, threshold, dynamic, steps or sequential")
    if cfg.edit_threshold is not None and cfg.sub_block_length not in (None, cfg.block_length):
        raise ConfigError("edit_threshold", "DecodeConfig.edit_threshold: editing works on whole "
                          "blocks; leave sub_block_length unset")


def check_full_attention_config(cfg: DecodeConfig, family: str, sampler: str) -> None:
    """The block-causal-only knobs are refused on full-attention families, naming the field."""
    if cfg.sub_block_length not in (None, cfg.block_length):
        raise ConfigError("sub_block_length", f"DecodeConfig.sub_block_length: the {family} family "
                          "is not block-causal; sub-blocks exist only for block-causal families")
    if cfg.edit_threshold is not None:
        raise ConfigError("edit_threshold", f"DecodeConfig.edit_threshold: token editing is "
                          f"implemented for block-causal families only, not {family}")
    if sampler == "gumbel" and (cfg.top_k or cfg.top_p < 1.0):
        name = "top_k" if cfg.top_k else "top_p"
        raise ConfigError(name, f"DecodeConfig.{name}: the {family} family's decoder samples by "
                          "Gumbel-max without top-k/top-p filters")


def causal_mask(valid: torch.Tensor | None, lo: int, hi: int, block: int, rows: int,
                device: torch.device) -> torch.Tensor:
    """[rows, hi-lo, hi] mask of queries at columns [lo, hi) over keys [0, hi): a key is seen
    when its block is not after the query's and it is not padding; every query sees itself, so
    a padding query never attends to nothing."""
    q = torch.arange(lo, hi, device=device)
    k = torch.arange(hi, device=device)
    seen = (k[None, :] // block) <= (q[:, None] // block)
    seen = seen[None].expand(rows, -1, -1)
    if valid is None:
        return seen
    return (seen & valid[:, None, :hi]) | (k[None, None, :] == q[None, :, None])


def current_sub_block(masked: torch.Tensor, sub: int) -> torch.Tensor:
    """Index of each row's first sub-block that still has a mask ([R]; rows are decoded left to
    right, sub-block after sub-block, like the reference's loop over small blocks)."""
    has = masked.view(masked.shape[0], -1, sub).any(-1)
    return has.long().argmax(-1)


def eos_reached(x: torch.Tensor, gen_start: torch.Tensor, end: int, eos: int, mask: int) -> torch.Tensor:
    """Rows whose first generated EOS (before column ``end``) has no mask before it ([R] bool)."""
    cols = torch.arange(end, device=x.device)[None, :]
    gen = cols >= gen_start[:, None]
    is_eos = (x[:, :end] == eos) & gen
    first = torch.where(is_eos.any(-1), is_eos.long().argmax(-1), torch.full_like(gen_start, end))
    pending = (x[:, :end] == mask) & gen & (cols < first[:, None])
    return is_eos.any(-1) & ~pending.any(-1)
