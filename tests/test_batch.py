"""Batches of mixed-length prompts: every row decodes exactly as it does alone."""

from __future__ import annotations

import pytest
from fixture_cases import load_cases

import streaming_dllm as sd
from streaming_dllm.config import BLOCK_DIFFUSION_PRESETS


def _prompts(arch: str, n: int = 4) -> list[list[int]]:
    seen, out = set(), []
    for case in load_cases(arch):
        ids = tuple(case["input_ids"])
        if ids not in seen:
            seen.add(ids)
            out.append(list(ids))
    out.sort(key=len)
    picked = [out[0], out[-1], out[len(out) // 2], out[1]][:n]
    assert len({len(p) for p in picked}) > 1, "need prompts of different lengths"
    return picked


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("preset", sorted(set(sd.PRESETS) - set(BLOCK_DIFFUSION_PRESETS)))
def test_batch_equals_solo_for_every_preset(tiny_models, arch, preset):
    model = tiny_models[arch]
    cfg = sd.DecodeConfig.preset(
        preset, gen_length=64, block_length=16, **({"window": 16} if "stream" in preset else {})
    )
    prompts = _prompts(arch)
    batch = sd.generate(model, prompts, cfg)
    assert batch.sequences.shape == (len(prompts), max(map(len, prompts)) + 64)
    for i, p in enumerate(prompts):
        solo = sd.generate(model, [p], cfg)
        assert batch.prompt(i) == p
        assert batch.generated(i) == solo.generated(0), f"row {i} differs from its solo run"
        assert batch.row_nfe[i] == solo.nfe
    assert batch.nfe <= sum(batch.row_nfe)


def test_batch_equals_solo_with_sampling(llada_tiny):
    cfg = sd.DecodeConfig.preset("streaming", gen_length=64, block_length=16, window=16, temperature=0.8)
    prompts = _prompts("llada", 3)
    batch = sd.generate(llada_tiny, prompts, cfg, seeds=[11, 12, 13])
    for i, p in enumerate(prompts):
        solo = sd.generate(llada_tiny, [p], cfg, seeds=[11 + i])
        assert batch.generated(i) == solo.generated(0)
    again = sd.generate(llada_tiny, prompts, cfg, seeds=[11, 12, 13])
    assert again.sequences.tolist() == batch.sequences.tolist()


def test_stream_blocks_rebuild_generate_output(llada_tiny):
    cfg = sd.DecodeConfig.preset("streaming", gen_length=64, block_length=16, window=16)
    prompts = _prompts("llada", 2)
    out = sd.generate(llada_tiny, prompts, cfg)
    chunks = list(sd.stream(llada_tiny, prompts, cfg))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].finished == [True, True]
    for c in chunks:
        assert c.tokens.tolist() == out.sequences[:, c.start : c.end].tolist()
    assert chunks[-1].nfe == out.nfe


def test_cancelled_row_stops_and_others_are_unaffected(llada_tiny):
    cfg = sd.DecodeConfig.preset("vanilla", gen_length=64, block_length=16)
    prompts = _prompts("llada", 3)
    full = sd.generate(llada_tiny, prompts, cfg)
    steps = {"n": 0}

    def cancelled(row: int) -> bool:
        steps["n"] += row == 0
        return row == 1 and steps["n"] >= 3

    chunks = list(sd.stream(llada_tiny, prompts, cfg, cancelled=cancelled))
    assert chunks[0].finished[1] and not chunks[0].finished[0]
    for c in chunks:
        assert c.tokens[0].tolist() == full.sequences[0, c.start : c.end].tolist()
        assert c.tokens[2].tolist() == full.sequences[2, c.start : c.end].tolist()
    # Row 1 left after its third step: most of its first block is still masked.
    assert (chunks[0].tokens[1] == llada_tiny.mask_id).sum() >= 12
