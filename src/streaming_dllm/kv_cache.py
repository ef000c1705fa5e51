"""Per-layer key/value cache shared by the models and the decoder.

Keys are stored *after* RoPE. Rotating a key depends only on its own position, so caching rotated
keys gives bit-identical attention to re-rotating every key at every forward (what the research
code does) while saving the work.

The decoder tells the cache what the next forward should do with it:

* ``store()``: the forward's K/V become the cache (a block-start forward);
* ``attend()``: the forward attends to cached + its own K/V and writes nothing (prefix cache);
* ``replace(start, stop)``: the forward's K/V overwrite slots ``[start, stop)`` and it attends to
  the whole cache (dual cache).
"""

from __future__ import annotations

import torch


class KVCache:
    """K/V tensors of shape [batch, kv_heads, positions, head_dim], one pair per layer."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._mode = "store"
        self._slots: tuple[int, int] | None = None

    def __len__(self) -> int:
        """Number of cached positions."""
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def store(self) -> None:
        self._mode, self._slots = "store", None

    def attend(self) -> None:
        if self.keys[0] is None:
            raise RuntimeError("attend() on an empty KVCache: run a store() forward first")
        self._mode, self._slots = "attend", None

    def replace(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= len(self):
            raise RuntimeError(f"replace({start}, {stop}) outside the cache's {len(self)} slots")
        self._mode, self._slots = "replace", (start, stop)

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (the prefix before the current block)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k is not None:
                self.keys[i] = k[:, :, :length]
                self.values[i] = v[:, :, :length]

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        """A cache holding only the given batch rows (shares nothing writable with ``self``)."""
        out = KVCache(len(self.keys))
        out.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        out.values = [None if v is None else v.index_select(0, rows) for v in self.values]
        out._mode, out._slots = self._mode, self._slots
        return out

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record this layer's new K/V as the current mode says; return the K/V to attend to."""
        if self._mode == "store":
            self.keys[layer], self.values[layer] = k, v
            return k, v
        ck, cv = self.keys[layer], self.values[layer]
        if self._mode == "attend":
            return torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
        start, stop = self._slots
        if stop - start != k.shape[2]:
            raise RuntimeError(f"replace slots [{start}, {stop}) but the forward fed {k.shape[2]} tokens")
        ck[:, :, start:stop] = k
        cv[:, :, start:stop] = v
        return ck, cv
