"""The logits of a few rows equal, bit for bit, the same rows of a whole forward.

The decoder asks for logits at the block's still-masked positions only (``logits_rows``), and the
shared forward then runs the last layer's feed-forward and the LM head on those rows alone. A row's
logits must not depend on how many rows share the forward: solo and batched decodes (a packed
forward holds many runs' rows) give the same tokens only if they are the same numbers. A float32
product over 1 to 3 rows rounds differently on the CPU, so those subsets are padded
(``models.layers.MIN_GEMM_ROWS``); before that, 1 to 3 rows differed from the full forward in the
last bits. MoE experts see a varying number of tokens too (LLaDA2); they are padded alike, but
the tiny LLaDA2 fixture's router (a product with 8 outputs) still rounds some subsets of 4 or more
rows differently on this BLAS, so for that family the logits are checked to 1e-5, not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import streaming_dllm as sd
from streaming_dllm.models.layers import MIN_GEMM_ROWS, padded_rows

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = {"builtin": "builtin", "builtin-bd": "builtin-bd",
               "llada2": str(FIXTURES / "llada2" / "checkpoint"),
               "sdar": str(FIXTURES / "sdar" / "checkpoint"),
               "fast_dllm_v2": str(FIXTURES / "fast_dllm_v2" / "checkpoint")}


ROUNDING = {"llada2"}
"""Families whose row subsets may round differently from the full forward (see the docstring)."""


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def model(request):
    m = sd.load_model(CHECKPOINTS[request.param], device="cpu", dtype="float32")
    m.test_name = request.param
    return m


def _same(model, got: torch.Tensor, want: torch.Tensor) -> bool:
    if model.test_name in ROUNDING:
        return torch.allclose(got, want, rtol=0, atol=1e-5)
    return torch.equal(got, want)


def _inputs(model, batch: int = 2, length: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.vocab_size, (batch, length), generator=g)
    return ids, torch.arange(length)[None].expand(batch, length)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 17])
def test_pairs_equal_the_full_forward(model, count):
    ids, pos = _inputs(model)
    g = torch.Generator().manual_seed(count)
    b = torch.randint(0, ids.shape[0], (count,), generator=g)
    r = torch.randint(0, ids.shape[1], (count,), generator=g)
    with torch.inference_mode():
        full = model(ids, pos)
        got = model(ids, pos, logits_rows=(b, r))
    assert got.shape == (count, full.shape[-1])
    assert _same(model, got, full[b, r])


@pytest.mark.parametrize("batch,cols", [(1, slice(23, 24)), (2, slice(20, 24)), (3, slice(0, 1))])
def test_slices_equal_the_full_forward(model, batch, cols):
    ids, pos = _inputs(model, batch=batch)
    with torch.inference_mode():
        full = model(ids, pos)
        got = model(ids, pos, logits_rows=cols)
    assert got.shape == full[:, cols].shape
    assert _same(model, got, full[:, cols])


def test_no_rows_gives_empty_logits(model):
    ids, pos = _inputs(model)
    empty = torch.zeros(0, dtype=torch.long)
    with torch.inference_mode():
        got = model(ids, pos, logits_rows=(empty, empty))
    assert got.shape == (0, model.vocab_size)


def test_padding_repeats_the_first_row_and_leaves_enough_rows_alone():
    x = torch.arange(6.0).view(3, 2)
    padded = padded_rows(x)
    assert padded.shape == (MIN_GEMM_ROWS, 2)
    assert torch.equal(padded[:3], x) and torch.equal(padded[3], x[0])
    many = torch.zeros(MIN_GEMM_ROWS, 2)
    assert padded_rows(many) is many
    assert padded_rows(x[:0]).shape == (0, 2)


def test_few_row_products_do_round_differently_on_this_backend():
    """Why the padding exists: without it, 1 to 3 rows do not reproduce the full product here.
    (If a backend rounds them alike, the padding costs three rows and this test says so.)"""
    torch.manual_seed(0)
    x, w = torch.randn(64, 128), torch.randn(384, 128)
    full = torch.nn.functional.linear(x, w)
    differs = [not torch.equal(torch.nn.functional.linear(x[:k], w), full[:k]) for k in (1, 2, 3)]
    padded = [torch.equal(torch.nn.functional.linear(padded_rows(x[:k]), w)[:k], full[:k]) for k in (1, 2, 3)]
    assert all(padded)
    assert any(differs), "this BLAS rounds 1-3 row products like larger ones; MIN_GEMM_ROWS could be 1"
