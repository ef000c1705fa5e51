"""Our LLaDA and Dream forwards against the reference modeling code's recorded logits."""

from __future__ import annotations

import pytest
import torch
from fixture_cases import FIXTURES
from safetensors.torch import load_file

TOL = 1e-4


def _fixture(arch: str, k: int) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{arch}-tiny" / f"logits_{k}.safetensors"))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("k", [0, 1])
def test_plain_and_pruned_forward(tiny_models, arch, k):
    model, t = tiny_models[arch], _fixture(arch, k)
    with torch.no_grad():
        plain = model(t["plain.input_ids"], t["plain.position_ids"])
        pruned = model(t["pruned.input_ids"], t["pruned.position_ids"])
    assert _max_diff(plain, t["plain.logits"]) <= TOL
    # Non-contiguous positions: the tail token sits at L-1 although it is fed at index N-1.
    assert t["pruned.position_ids"][0, -1] > t["pruned.position_ids"][0, -2] + 1
    assert _max_diff(pruned, t["pruned.logits"]) <= TOL


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("k", [0, 1])
def test_prefix_and_dual_cached_forwards(tiny_models, arch, k):
    model, t = tiny_models[arch], _fixture(arch, k)
    s = 24  # block_start of the fixtures (prompt 8 + one block of 16)
    length = t["state_a"].shape[1]
    with torch.no_grad():
        # Streaming-dLLM: cache from the pruned block-start forward, then block + kept suffix.
        cache = model.new_cache()
        cache.store()
        model(t["prefix_streaming.cache_input_ids"], t["prefix_streaming.cache_position_ids"], cache=cache)
        cache.crop(s)
        cache.attend()
        pos = t["prefix_streaming.position_ids"][:, s:]
        got = model(t["prefix_streaming.input_ids"], pos, cache=cache)
        assert _max_diff(got, t["prefix_streaming.logits"]) <= TOL
        # Fast-dLLM prefix cache: whole sequence, contiguous positions.
        cache = model.new_cache()
        cache.store()
        model(t["prefix_fastdllm.cache_input_ids"], torch.arange(length)[None], cache=cache)
        cache.crop(s)
        cache.attend()
        got = model(t["prefix_fastdllm.input_ids"], torch.arange(s, length)[None], cache=cache)
        assert _max_diff(got, t["prefix_fastdllm.logits"]) <= TOL
        # Fast-dLLM dual cache: the block's K/V replace its slots.
        cache = model.new_cache()
        cache.store()
        model(t["dual_fastdllm.cache_input_ids"], torch.arange(length)[None], cache=cache)
        cache.overwrite(s, s + 16)
        got = model(t["dual_fastdllm.input_ids"], torch.arange(s, s + 16)[None], cache=cache)
        assert _max_diff(got, t["dual_fastdllm.logits"]) <= TOL


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_cached_equals_uncached_on_same_state(tiny_models, arch):
    """A cache built from the current state gives the full forward's logits for the rest."""
    model, t = tiny_models[arch], _fixture(arch, 0)
    x = t["state_b"]
    length, s, e = x.shape[1], 24, 40
    pos = torch.arange(length)[None]
    with torch.no_grad():
        full = model(x, pos)
        cache = model.new_cache()
        cache.store()
        model(x, pos, cache=cache)
        cache.crop(s)
        cache.attend()
        prefix = model(x[:, s:], pos[:, s:], cache=cache)
        cache = model.new_cache()
        cache.store()
        model(x, pos, cache=cache)
        cache.overwrite(s, e)
        dual = model(x[:, s:e], pos[:, s:e], cache=cache)
        rows = model(x, pos, logits_rows=slice(s, e))
    assert _max_diff(prefix, full[:, s:]) <= 1e-5
    assert _max_diff(dual, full[:, s:e]) <= 1e-5
    assert _max_diff(rows, full[:, s:e]) <= 1e-5
