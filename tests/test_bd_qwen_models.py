"""SDAR and Fast-dLLM v2 forwards against logits recorded from the official modeling code.

Fixtures: tests/fixtures/{sdar,fast_dllm_v2}/ (tools/make_bd_fixtures_qwen.py): a tiny checkpoint
saved by the official model class, and the official logits of plain block-causal forwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import streaming_dllm
from streaming_dllm.loading import CheckpointError
from streaming_dllm.models import FastDLLMv2Model, SDARModel, family_for

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = {"sdar": SDARModel, "fast_dllm_v2": FastDLLMv2Model}
TOL = 1e-4


def _checkpoint(family: str) -> Path:
    return FIXTURES / family / "checkpoint"


def _load(folder: Path):
    return streaming_dllm.load_model(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return _load(_checkpoint(family))


def _sequences(family: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = load_file(str(FIXTURES / family / "logits.safetensors"))
    n = len({k.split(".")[0] for k in t})
    return [(t[f"seq{i}.input_ids"], t[f"seq{i}.logits"]) for i in range(n)]


def block_causal_mask(length: int, block: int, offset: int = 0, keys: int | None = None) -> torch.Tensor:
    """[1, length, keys] mask: query offset+i sees key j iff j's block <= the query's block."""
    q = torch.arange(offset, offset + length)[:, None] // block
    k = torch.arange(keys if keys is not None else offset + length)[None, :] // block
    return (k <= q)[None]


def _forward(model, ids: torch.Tensor) -> torch.Tensor:
    n = ids.shape[1]
    with torch.no_grad():
        return model(ids, torch.arange(n)[None], key_mask=block_causal_mask(n, model.block_size))


def test_loads_the_right_family_and_traits(family, model):
    assert type(model) is FAMILIES[family]
    assert model.traits.block_causal and model.traits.schedule == "block"
    # Fast-dLLM v2 renormalises its top-p nucleus; SDAR filters logits (engine/policies.filtered_probs).
    sampler = "multinomial_renorm" if family == "fast_dllm_v2" else "multinomial"
    assert model.traits.sampler == sampler and model.traits.confidence_dtype == torch.float32
    assert model.traits.logit_shift == (family == "fast_dllm_v2")
    config = json.loads((_checkpoint(family) / "config.json").read_text())
    assert model.block_size == config["block_size" if family == "sdar" else "bd_size"]
    ids = model.token_ids()
    keys = ("mask_token_id", "eos_token_id", "pad_token_id")
    assert (ids.mask, ids.eos, ids.pad) == tuple(config[k] for k in keys)


def test_plain_block_causal_forward_matches_official(family, model):
    seqs = _sequences(family)
    assert len(seqs) >= 2 and any(ids.shape[1] % model.block_size for ids, _ in seqs)
    for ids, want in seqs:
        got = _forward(model, ids)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= TOL


def test_block_mask_matters(family, model):
    """A fully bidirectional forward differs: the test can tell a wrong mask from the right one."""
    ids, want = max(_sequences(family), key=lambda s: s[0].shape[1])
    with torch.no_grad():
        full = model(ids, torch.arange(ids.shape[1])[None])
    assert (full - want).abs().max().item() > 1e-2


def test_cached_blocks_equal_uncached(family, model):
    """Prefix blocks stored once in the KVCache, then each next block attends to them."""
    ids, _ = max(_sequences(family), key=lambda s: s[0].shape[1])
    n, bs = ids.shape[1], model.block_size
    full = _forward(model, ids)
    start = bs
    cache = model.new_cache()
    cache.store()
    with torch.no_grad():
        model(ids[:, :start], torch.arange(start)[None], cache=cache, key_mask=block_causal_mask(start, bs))
        # Grow the buffers to the whole sequence: a store forward of every position, then crop.
        cache.store()
        model(ids, torch.arange(n)[None], cache=cache, key_mask=block_causal_mask(n, bs))
        while start < n:
            stop = min(start + bs, n)
            cache.crop(start)
            cache.attend()
            mask = block_causal_mask(stop - start, bs, offset=start)
            got = model(ids[:, start:stop], torch.arange(start, stop)[None], cache=cache, key_mask=mask)
            assert (got - full[:, start:stop]).abs().max().item() <= TOL
            # Dual-style: overwrite the block's own slots and attend to all cached positions.
            cache.overwrite(start, stop)
            mask = block_causal_mask(stop - start, bs, offset=start, keys=n)
            got = model(ids[:, start:stop], torch.arange(start, stop)[None], cache=cache, key_mask=mask)
            assert (got - full[:, start:stop]).abs().max().item() <= TOL
            start = stop


def _write_sharded(src: Path, dst: Path) -> None:
    """A hub-layout checkpoint: two shards plus model.safetensors.index.json."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    weights = load_file(str(src / "model.safetensors"))
    names = sorted(weights)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        fname = f"model-0000{i}-of-00002.safetensors"
        save_file({k: weights[k].contiguous() for k in part}, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_gives_the_same_logits(family, model, tmp_path):
    _write_sharded(_checkpoint(family), tmp_path / "sharded")
    sharded = _load(tmp_path / "sharded")
    for ids, want in _sequences(family):
        assert (_forward(sharded, ids) - want).abs().max().item() <= TOL


def test_registry_picks_family_from_config():
    assert family_for({"architectures": ["SDARForCausalLM"]}) is SDARModel
    assert family_for({"model_type": "sdar"}) is SDARModel
    assert family_for({"architectures": ["Fast_dLLM_QwenForCausalLM"]}) is FastDLLMv2Model
    assert family_for({"model_type": "Fast_dLLM_Qwen"}) is FastDLLMv2Model
    for family, cls in FAMILIES.items():
        config = json.loads((_checkpoint(family) / "config.json").read_text())
        assert family_for(config) is cls
        assert family_for({"model_type": config["model_type"]}) is cls
        assert family_for({"architectures": config["architectures"]}) is cls


def test_sdar_checkpoint_is_tied_and_has_qk_norm(model, family):
    names = set(load_file(str(_checkpoint(family) / "model.safetensors")))
    if family == "sdar":
        assert "lm_head.weight" not in names and model.lm_head.weight is model.model.embed_tokens.weight
        assert "model.layers.0.self_attn.q_norm.weight" in names
        assert "model.layers.0.self_attn.q_proj.bias" not in names
    else:
        assert "lm_head.weight" in names and "model.layers.0.self_attn.q_proj.bias" in names
        assert "model.layers.0.self_attn.o_proj.bias" not in names


@pytest.mark.parametrize(
    "key, value",
    [
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
        ("use_sliding_window", True),
        ("hidden_act", "gelu"),
        ("head_dim", 31),
        ("num_key_value_heads", 3),
    ],
)
def test_bad_config_key_gives_a_clear_error(family, tmp_path, key, value):
    dst = tmp_path / "bad"
    shutil.copytree(_checkpoint(family), dst)
    config = json.loads((dst / "config.json").read_text())
    config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=key):
        _load(dst)


def test_sdar_rejects_attention_bias(tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(_checkpoint("sdar"), dst)
    config = json.loads((dst / "config.json").read_text())
    config["attention_bias"] = True
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="attention_bias"):
        _load(dst)


def test_default_mask_ids_when_config_has_none(family):
    config = json.loads((_checkpoint(family) / "config.json").read_text())
    del config["mask_token_id"]
    cls = FAMILIES[family]
    with torch.device("meta"):
        m = cls(config)
    assert m.mask_id == (151669 if family == "sdar" else 151665)
