"""The cache modes of the decoder (``DecodeConfig.cache``) as parts: what each step feeds.

A mode answers, for step ``step`` of the block ``[s, e)`` whose forwards see the columns ``kept``:
which columns to feed, what the ``KVCache`` does with the forward, and which fed row's logits
predict each block position. The loop in ``decoder`` is the same for every mode.

* ``none``: every step feeds every kept column; no cache.
* ``prefix``: the block-start step feeds every kept column and stores their K/V; later steps feed
  the block and the kept suffix, attending to the cached prefix (Fast-dLLM prefix cache and
  Streaming-dLLM).
* ``dual``: as ``prefix``, but later steps feed only the block, overwriting its slots and
  attending to the cached prefix and suffix (Fast-dLLM dual cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv_cache import KVCache


@dataclass(frozen=True)
class Feed:
    """What one forward feeds: ``columns[lo:hi]`` of the kept columns (indices into ``kept``).

    ``block_row0`` is the fed row of the block's first position; ``full`` says the feed starts at
    column 0 (so a shifted family's block position 0 reads the row before the block).
    """

    lo: int
    hi: int
    block_row0: int
    full: bool


class CacheMode:
    """No cache: every step is a full forward over the kept columns."""

    name = "none"
    uses_cache = False

    def feed(self, step: int, s: int, e: int, n_kept: int) -> Feed:
        return Feed(0, n_kept, s, True)

    def prepare(self, cache: KVCache | None, step: int, s: int, e: int, n_kept: int) -> None:
        """Set the cache's mode for this step's forward."""


class PrefixCache(CacheMode):
    """Block start: store every kept column; later: feed block + kept suffix over the prefix.

    A later step's K/V overwrite the slots of the columns it feeds, so it attends to the cached
    prefix plus its own keys, with no copy of the prefix.
    """

    name = "prefix"
    uses_cache = True

    def feed(self, step: int, s: int, e: int, n_kept: int) -> Feed:
        if step == 0:
            return Feed(0, n_kept, s, True)
        return Feed(s, self._stop(e, n_kept), 0, False)

    def _stop(self, e: int, n_kept: int) -> int:
        """End (in kept columns) of what a later step feeds: the block and the kept suffix."""
        return n_kept

    def prepare(self, cache: KVCache | None, step: int, s: int, e: int, n_kept: int) -> None:
        if step == 0:
            cache.store()
        else:
            cache.overwrite(s, self._stop(e, n_kept))


class DualCache(PrefixCache):
    """As ``prefix``, but later steps feed only the block: the suffix's K/V stay cached."""

    name = "dual"

    def _stop(self, e: int, n_kept: int) -> int:
        return e


MODES: dict[str, CacheMode] = {m.name: m for m in (CacheMode(), PrefixCache(), DualCache())}


def logit_rows(feed: Feed, block_len: int, shift: bool, device: torch.device) -> torch.Tensor:
    """Fed row whose logits predict each block position [block_len].

    Unshifted families read the position's own row. Shifted ones (Dream) read the row before;
    when the feed starts at the block, position 0 reads its own row, as the reference does.
    """
    j = torch.arange(block_len, device=device) + feed.block_row0
    if not shift:
        return j
    return j - 1 if feed.full else (j - 1).clamp(min=0)
