"""Suffix pruning: which columns of the sequence a block's forwards see."""

from __future__ import annotations

import torch


def kept_columns(
    block_end: int, total: int, window: int | None, tail_keep: int, device: torch.device | None = None
) -> torch.Tensor:
    """Columns seen while decoding a block that ends at ``block_end`` in a sequence of ``total``.

    Everything up to the block end, then the first ``window`` positions after the block, then the
    last ``tail_keep`` positions of the sequence (Streaming-dLLM's attenuation-guided pruning).
    With ``window=None``, or when at most ``window`` positions follow the block, nothing is pruned.
    Column order is ascending, so the first ``block_end`` entries are ``0 .. block_end-1``.
    """
    if window is None or total - block_end <= window:
        return torch.arange(total, device=device)
    head = torch.arange(block_end + window, device=device)
    tail_start = max(total - tail_keep, block_end + window)
    tail = torch.arange(tail_start, total, device=device)
    return torch.cat([head, tail])
