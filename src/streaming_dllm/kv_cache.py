"""Per-layer key/value cache shared by the models and the decoder, written in place.

Keys are stored *after* RoPE. Rotating a key depends only on its own position, so caching rotated
keys gives bit-identical attention to re-rotating every key at every forward (what the research
code does) while saving the work.

The decoder tells the cache what the next forward does with it:

* ``store()``: the forward's K/V become the cache's buffers (a block-start forward). The buffers
  are allocated once, by that forward, and every later forward of the block writes into them;
  ``store(capacity)`` allocates ``capacity`` slots and writes the forward's K/V into the first ones
  (a block-causal decode keeps one cache for the whole sequence and appends block after block);
* ``overwrite(start, stop, visible)``: the forward's K/V overwrite slots ``[start, stop)`` and it
  attends to the first ``visible`` slots (default: every slot) (the decoder's prefix cache feeds
  ``[block start, end of kept suffix)``, its dual cache only the block);
* ``crop(n)`` then ``attend()``: the cache's first ``n`` positions are the prefix; the forward
  writes its K/V into the slots after it and attends to prefix + its own K/V.

No forward concatenates the prefix: a step costs its own tokens' K/V, not a copy of the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class KVCache:
    """K/V tensors of shape [batch, kv_heads, positions, head_dim], one pair per layer."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._length = 0
        self._mode = "store"
        self._slots: tuple[int, int, int | None] | None = None
        self._reserve: int | None = None

    def __len__(self) -> int:
        """Number of cached positions the next ``attend()`` forward sees before its own."""
        return self._length

    @property
    def capacity(self) -> int:
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def store(self, capacity: int | None = None) -> None:
        self._mode, self._slots, self._reserve = "store", None, capacity

    def attend(self) -> None:
        if self.keys[0] is None:
            raise RuntimeError("attend() on an empty KVCache: run a store() forward first")
        self._mode, self._slots = "attend", None

    def overwrite(self, start: int, stop: int, visible: int | None = None) -> None:
        if not 0 <= start < stop <= (visible or self.capacity) <= self.capacity:
            raise RuntimeError(f"overwrite({start}, {stop}, {visible}) outside the cache's "
                               f"{self.capacity} slots")
        self._mode, self._slots = "overwrite", (start, stop, visible)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions as the prefix (the buffers stay allocated)."""
        self._length = min(length, self.capacity)

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        """A cache holding only the given batch rows (shares nothing writable with ``self``)."""
        out = KVCache(len(self.keys))
        out.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        out.values = [None if v is None else v.index_select(0, rows) for v in self.values]
        out._length, out._mode, out._slots = self._length, self._mode, self._slots
        out._reserve = self._reserve
        return out

    def next_keys(self, fed: int) -> int:
        """How many keys the next forward (feeding ``fed`` tokens) attends to, as its mode says."""
        if self._mode == "store":
            return fed
        if self._mode == "attend":
            return self._length + fed
        return self._slots[2] or self.capacity

    def put_rows(self, rows: torch.Tensor, part: KVCache, start: int, stop: int) -> None:
        """Write slots [start, stop) of ``part`` (a ``select_rows(rows)`` copy) back into this cache."""
        for layer, (k, v) in enumerate(zip(part.keys, part.values, strict=True)):
            self.keys[layer][rows, :, start:stop] = k[:, :, start:stop]
            self.values[layer][rows, :, start:stop] = v[:, :, start:stop]

    @property
    def keeps_input(self) -> bool:
        """The next forward's K/V tensors become the buffers themselves (no copy is made)."""
        return self._mode == "store" and self._reserve is None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record this layer's new K/V as the current mode says; return the K/V to attend to."""
        if self._mode == "store":
            if layer == 0:
                self._length = k.shape[2]
            if self._reserve is None:
                self.keys[layer], self.values[layer] = k, v
                return k, v
            shape = (k.shape[0], k.shape[1], max(self._reserve, k.shape[2]), k.shape[3])
            self.keys[layer], self.values[layer] = k.new_zeros(shape), v.new_zeros(shape)
            self.keys[layer][:, :, : k.shape[2]] = k
            self.values[layer][:, :, : v.shape[2]] = v
            return k, v
        if self._mode == "attend":
            start, stop = self._length, self._length + k.shape[2]
            if stop > self.capacity:
                raise RuntimeError(f"attend(): {k.shape[2]} new tokens after {start} do not fit the "
                                   f"cache's {self.capacity} slots")
        else:
            start, stop, visible = self._slots
            if stop - start != k.shape[2]:
                raise RuntimeError(f"overwrite slots [{start}, {stop}) but the forward fed {k.shape[2]} "
                                   "tokens")
        ck, cv = self.keys[layer], self.values[layer]
        ck[:, :, start:stop] = k
        cv[:, :, start:stop] = v
        end = stop if self._mode == "attend" else (visible or self.capacity)
        return ck[:, :, :end], cv[:, :, :end]


@dataclass(frozen=True)
class PackedPart:
    """One run's share of a packed forward: its fed tokens are positions ``[start, stop)`` of the
    packed row, ``rows`` x ``length`` of them (row-major), with its own cache and key mask."""

    cache: KVCache | None
    start: int
    stop: int
    rows: int
    length: int
    key_mask: torch.Tensor | None


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class PackedCaches:
    """The caches of several runs fed as one packed forward ([1, N] tokens, no padding).

    Every layer's projections and MLP run once over all the runs' tokens; attention runs per run,
    over exactly the queries, keys and mask of that run's solo forward (its cache, written in
    place as alone). So no position is padding, and each run's attention is its solo attention.
    """

    def __init__(self, parts: list[PackedPart]) -> None:
        self.parts = parts

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  attend: Attend) -> torch.Tensor:
        """q, k, v of shape [1, heads, N, head_dim] -> the attention output, packed alike.

        Each run's queries, keys and values are views of the packed tensors; a copy is made only
        where a cache keeps the tensor itself (a ``store()`` forward without reserved slots). The
        outputs are written into one [1, N, heads, head_dim] buffer, returned as its
        [1, heads, N, head_dim] view, so the model's transpose back costs no copy."""
        out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
        for p in self.parts:
            ki, vi = _unpack(k, p), _unpack(v, p)
            if p.cache is not None:
                if p.cache.keeps_input:
                    ki, vi = ki.contiguous(), vi.contiguous()
                ki, vi = p.cache.update(layer, ki, vi)
            o = attend(_unpack(q, p), ki, vi, p.key_mask)  # [rows, H, length, D]
            out[0, p.start:p.stop].view(p.rows, p.length, o.shape[1], o.shape[3]).copy_(o.transpose(1, 2))
        return out.transpose(1, 2)


def _unpack(x: torch.Tensor, p: PackedPart) -> torch.Tensor:
    """[1, H, N, D] -> this part's [rows, H, length, D], a view (no copy)."""
    heads, dim = x.shape[1], x.shape[3]
    return x[0, :, p.start:p.stop].view(heads, p.rows, p.length, dim).transpose(0, 1)
