"""The decoder's guarantees whatever the model says: bounded steps, no mask id committed, ids and
lengths checked up front, inference mode confined to the engine, the K/V cache written in place."""

from __future__ import annotations

import pytest
import torch

import streaming_dllm as sd
from streaming_dllm.config import ConfigError
from streaming_dllm.models.llada import LLaDAModel


class AlwaysMask(LLaDAModel):
    """The fixture model with its logits overridden so that the mask id is always the argmax."""

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., self.mask_id] = logits.max() + 100.0
        return logits


@pytest.fixture(scope="module")
def always_mask(llada_tiny):
    model = AlwaysMask(llada_tiny.config)
    model.load_state_dict(llada_tiny.state_dict())
    return model.eval()


PROMPT = [[990, 980, 981, 982, 992, 993]]
CONFIGS = {
    name: sd.DecodeConfig.preset(name, gen_length=32, block_length=16)
    for name in ("vanilla", "prefix-cache", "fast-dllm", "fast-dllm-dual", "streaming", "streaming-dual")
}
CONFIGS["factor"] = sd.DecodeConfig(gen_length=32, block_length=16, unmask="factor", cache="prefix")
CONFIGS["sampled"] = sd.DecodeConfig(gen_length=32, block_length=16, unmask="threshold", temperature=1.0,
                                     seed=3)
CONFIGS["few-steps"] = sd.DecodeConfig(gen_length=32, block_length=16, steps=4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_ends_within_its_step_bound_when_argmax_is_the_mask(always_mask, name):
    cfg = CONFIGS[name]
    out = sd.generate(always_mask, PROMPT, cfg)
    generated = out.generated(0)
    assert always_mask.mask_id not in generated
    assert out.nfe <= cfg.num_blocks * cfg.max_block_steps
    # Excluding the mask id leaves an ordinary choice, so the rule's own step count holds too.
    assert out.nfe <= cfg.num_blocks * (cfg.steps_per_block if cfg.unmask == "steps" else cfg.block_length)


def test_mask_id_of_an_ordinary_token_still_ends(llada_tiny):
    """--mask-id 20 with fast-dllm: committing id 20 must not keep the position 'masked'."""
    cfg = sd.DecodeConfig.preset("fast-dllm", gen_length=32, block_length=16, mask_id=20)
    out = sd.generate(llada_tiny, PROMPT, cfg)
    assert 20 not in out.generated(0)
    assert out.nfe <= cfg.num_blocks * cfg.max_block_steps


@pytest.mark.parametrize("mask_id,message", [(991, "equals the EOS id"), (5000, "outside the vocabulary")])
def test_unusable_mask_id_is_refused(llada_tiny, mask_id, message):
    cfg = sd.DecodeConfig(gen_length=16, block_length=16, mask_id=mask_id)
    with pytest.raises(ValueError, match=message):
        sd.generate(llada_tiny, PROMPT, cfg)


def test_mask_id_equal_to_pad_is_refused(dream_tiny):
    pad = dream_tiny.config["pad_token_id"]
    cfg = sd.DecodeConfig(gen_length=16, block_length=16, mask_id=pad, eos_id=pad - 1)
    with pytest.raises(ValueError, match="equals the pad id"):
        sd.generate(dream_tiny, PROMPT, cfg)


def test_generation_beyond_the_models_context_is_refused(llada_tiny):
    context = llada_tiny.max_context
    cfg = sd.DecodeConfig(gen_length=context, block_length=32)
    with pytest.raises(ConfigError) as err:
        sd.generate(llada_tiny, PROMPT, cfg)
    assert err.value.field == "gen_length" and str(context) in str(err.value)
    with pytest.raises(ValueError, match="leaves no room"):
        sd.generate(llada_tiny, [[980] * context], sd.DecodeConfig(gen_length=32, block_length=32))


def test_caller_is_not_in_inference_mode_between_chunks(llada_tiny):
    cfg = sd.DecodeConfig.preset("streaming", gen_length=48, block_length=16, early_exit=False)
    seen = []
    for chunk in sd.stream(llada_tiny, PROMPT, cfg):
        seen.append(torch.is_inference_mode_enabled())
        assert not chunk.tokens.requires_grad
    assert seen == [False, False, False]


def test_kv_cache_is_written_in_place(llada_tiny):
    """A prefix step and a dual step write into the block-start buffers: no new allocation."""
    x = torch.randint(0, 900, (1, 40))
    pos = torch.arange(40)[None]
    with torch.no_grad():
        for recipe in ("prefix", "dual"):
            cache = llada_tiny.new_cache()
            cache.store()
            llada_tiny(x, pos, cache=cache)
            ptrs = [k.data_ptr() for k in cache.keys]
            if recipe == "prefix":
                cache.crop(24)
                cache.attend()
                llada_tiny(x[:, 24:], pos[:, 24:], cache=cache)
            else:
                cache.overwrite(24, 32)
                llada_tiny(x[:, 24:32], pos[:, 24:32], cache=cache)
            assert [k.data_ptr() for k in cache.keys] == ptrs
            assert cache.capacity == 40
