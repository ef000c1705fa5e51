"""LLaDA2.0 / 2.1 (MoE block diffusion): our model against the official logits, the KV cache
against the uncached forward, the grouped MoE against a per-token reference, sharded loading,
registry and config errors. Fixtures: tests/fixtures/llada2 (tools/make_bd_fixtures_llada2.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import streaming_dllm as sd
from streaming_dllm.kv_cache import KVCache
from streaming_dllm.loading import CheckpointError, read_config
from streaming_dllm.models import family_for
from streaming_dllm.models.llada2 import DEFAULT_EOS_ID, DEFAULT_MASK_ID, LLaDA2Model

FIXTURE = Path(__file__).parent / "fixtures" / "llada2"
CKPT = FIXTURE / "checkpoint"


@pytest.fixture(scope="module")
def model() -> LLaDA2Model:
    m = sd.load_model(CKPT)
    assert isinstance(m, LLaDA2Model)
    return m


def block_mask(length: int, block: int, keys: int | None = None, start: int = 0) -> torch.Tensor:
    """[1, length, keys] block-causal mask of queries at start.. over keys 0.. (True = attend)."""
    q = torch.arange(start, start + length)
    k = torch.arange(keys if keys is not None else length)
    return (k[None, :] // block <= q[:, None] // block)[None]


def positions(length: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + length)[None]


def test_logits_match_the_official_forward(model):
    ref = load_file(str(FIXTURE / "logits.safetensors"))
    n = len([k for k in ref if k.startswith("ids.")])
    assert n >= 2
    for i in range(n):
        ids, block, want = ref[f"ids.{i}"], int(ref[f"block_size.{i}"]), ref[f"logits.{i}"]
        length = ids.shape[1]
        with torch.no_grad():
            got = model(ids, positions(length), key_mask=block_mask(length, block))
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-4, i
        assert want.std() > 0.5  # not a degenerate reference that anything would match


def test_block_causal_mask_matters(model):
    ref = load_file(str(FIXTURE / "logits.safetensors"))
    ids, want = ref["ids.0"], ref["logits.0"]
    with torch.no_grad():
        bidirectional = model(ids, positions(ids.shape[1]))
    assert (bidirectional - want).abs().max().item() > 1e-2


def _sequence(length: int = 20, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 300, (2, length), generator=g)
    ids[:, 14:] = 319
    return ids


def test_cached_forward_equals_uncached_crop_attend(model):
    ids, bs, prefix = _sequence(), 4, 12
    with torch.no_grad():
        full = model(ids, positions(20).expand(2, -1), key_mask=block_mask(20, bs).expand(2, -1, -1))
        cache = model.new_cache()
        cache.store()
        first = model(ids[:, :prefix + bs], positions(prefix + bs).expand(2, -1), cache,
                      block_mask(prefix + bs, bs).expand(2, -1, -1))
        cache.crop(prefix)
        cache.attend()
        step = model(ids[:, prefix:prefix + bs], positions(bs, prefix).expand(2, -1), cache,
                     block_mask(bs, bs, prefix + bs, prefix).expand(2, -1, -1))
    torch.testing.assert_close(first, full[:, :prefix + bs], atol=1e-5, rtol=0)
    torch.testing.assert_close(step, full[:, prefix:prefix + bs], atol=1e-5, rtol=0)


def test_cached_forward_equals_uncached_overwrite(model):
    ids, bs, start = _sequence(), 4, 8
    with torch.no_grad():
        cache = model.new_cache()
        cache.store()
        model(ids, positions(20).expand(2, -1), cache, block_mask(20, bs).expand(2, -1, -1))
        changed = ids.clone()
        changed[:, start:start + bs] = torch.tensor([5, 6, 7, 8])  # the block's slots get new K/V
        full = model(changed, positions(20).expand(2, -1), key_mask=block_mask(20, bs).expand(2, -1, -1))
        cache.overwrite(start, start + bs)
        step = model(changed[:, start:start + bs], positions(bs, start).expand(2, -1), cache,
                     block_mask(bs, bs, 20, start).expand(2, -1, -1))
    torch.testing.assert_close(step, full[:, start:start + bs], atol=1e-5, rtol=0)
    assert isinstance(cache, KVCache) and cache.capacity == 20


def _naive_moe(moe, h: torch.Tensor) -> tuple[torch.Tensor, list[list[int]], list[list[int]]]:
    """Per-token routing and mixing, written out directly: output, chosen and bias-free choices."""
    gate, out, chosen, unbiased = moe.gate, torch.zeros_like(h), [], []
    experts = gate.weight.shape[0]
    per_group = experts // gate.groups
    for t in range(h.shape[0]):
        s = torch.sigmoid(gate.weight.float() @ h[t].float())
        picks = []
        for biased in (s + gate.expert_bias.float(), s):
            groups = [sorted(biased[g * per_group:(g + 1) * per_group].tolist())[-2:]
                      for g in range(gate.groups)]
            best = sorted(range(gate.groups), key=lambda g: -sum(groups[g]))[:gate.topk_group]
            cand = [e for e in range(experts) if e // per_group in best]
            picks.append(sorted(cand, key=lambda e: -biased[e].item())[:gate.top_k])
        sel = picks[0]
        w = s[sel] / s[sel].sum() * gate.scale
        for j, e in enumerate(sel):
            out[t] += w[j] * moe.experts[e](h[t:t + 1])[0]
        out[t] += moe.shared_experts(h[t:t + 1])[0]
        chosen.append(sorted(sel))
        unbiased.append(sorted(picks[1]))
    return out, chosen, unbiased


def test_moe_grouped_by_expert_equals_naive_per_token(model):
    moe = model.model.layers[1].mlp
    h = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    calls = {}
    hooks = [e.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
             for i, e in enumerate(moe.experts)]
    try:
        with torch.no_grad():
            got = moe(h)
        assert calls and max(calls.values()) == 1  # one matmul per active expert, never per token
        calls.clear()
        with torch.no_grad():
            want, chosen, unbiased = _naive_moe(moe, h.reshape(-1, 64))
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(got.reshape(-1, 64), want, atol=1e-5, rtol=1e-5)
    idx, _ = moe.gate(h.reshape(-1, 64))
    assert idx.sort(-1).values.tolist() == chosen
    assert chosen != unbiased  # the fixture's expert_bias changes the selection ...
    assert moe.gate.expert_bias.abs().min() > 0  # ... and was loaded from the checkpoint


def test_sharded_hub_layout_loads_and_matches(model, tmp_path):
    state = load_file(str(CKPT / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for n, part in enumerate((names[:half], names[half:]), start=1):
        fname = f"model-{n:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(tmp_path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    shutil.copy(CKPT / "config.json", tmp_path / "config.json")
    sharded = sd.load_model(tmp_path)
    ids = _sequence()[:1]
    with torch.no_grad():
        a = model(ids, positions(20), key_mask=block_mask(20, 4))
        b = sharded(ids, positions(20), key_mask=block_mask(20, 4))
    assert torch.equal(a, b)


def test_missing_expert_bias_is_refused(tmp_path):
    state = load_file(str(CKPT / "model.safetensors"))
    del state["model.layers.2.mlp.gate.expert_bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(CKPT / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="expert_bias"):
        sd.load_model(tmp_path)


def test_registry_picks_the_family():
    config = read_config(CKPT)
    assert family_for(config) is LLaDA2Model
    assert family_for({"model_type": "llada21_moe"}) is LLaDA2Model
    assert family_for({"architectures": ["LLaDA2MoeModelLM"]}) is LLaDA2Model
    t = LLaDA2Model.traits
    assert t.block_causal and t.schedule == "block" and t.sampler == "multinomial"
    assert not t.logit_shift and t.confidence_dtype == torch.float32


def test_default_ids_when_the_config_has_none(model):
    config = {k: v for k, v in model.config.items() if k not in ("mask_token_id", "eos_token_id")}
    with torch.device("meta"):
        bare = LLaDA2Model(config)
    assert (bare.mask_id, bare.eos_id) == (DEFAULT_MASK_ID, DEFAULT_EOS_ID) == (156895, 156892)
    assert (model.mask_id, model.eos_id, model.pad_id) == (319, 306, 0)


BAD = [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"norm_head": True}, "norm_head"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"partial_rotary_factor": 0.1}, "partial_rotary_factor"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ({"n_group": 3}, "n_group"),
    ({"topk_group": 3}, "topk_group"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
    ({"num_experts": 0}, "num_experts"),
    ({"moe_intermediate_size": None}, "moe_intermediate_size"),
    ({"routed_scaling_factor": -1.0}, "routed_scaling_factor"),
    ({"num_shared_experts": -1}, "num_shared_experts"),
    ({"intermediate_size": None}, "intermediate_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"use_bias": "yes"}, "use_bias"),
    ({"first_k_dense_replace": -1}, "first_k_dense_replace"),
]


@pytest.mark.parametrize("change,key", BAD, ids=[k for _, k in BAD])
def test_bad_config_keys_are_named(change, key):
    config = {**read_config(CKPT), **change}
    with pytest.raises(ValueError, match=key):
        LLaDA2Model.check_config(config)


def test_bad_config_through_the_loader(tmp_path):
    config = {**read_config(CKPT), "topk_group": 5}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(CKPT / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="topk_group"):
        sd.load_model(tmp_path)


def test_all_moe_layers_without_intermediate_size_builds():
    config = {**read_config(CKPT), "first_k_dense_replace": 0, "intermediate_size": None}
    LLaDA2Model.check_config(config)
    with torch.device("meta"):
        m = LLaDA2Model(config)
    assert all(hasattr(layer.mlp, "gate") for layer in m.model.layers)
