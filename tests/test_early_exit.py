"""``early_exit_at="eos"`` on the full-attention families: stop as soon as an EOS is committed with
no mask before it. The answer (the tokens before the first EOS) is the one ``early_exit_at="block"``
gives, in fewer forwards, alone and in a batch."""

from __future__ import annotations

import pytest

import streaming_dllm as sd
from streaming_dllm.tasks import arith
from streaming_dllm.text import answer_ids


@pytest.fixture(scope="module")
def builtin():
    model = sd.load_model("builtin")
    tok = sd.load_tokenizer(model)
    prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in arith.problems("dev", 6)]
    return model, prompts


CONFIGS = {
    "streaming": sd.DecodeConfig.preset("streaming", gen_length=128),
    "dual, whole suffix": sd.DecodeConfig.preset("streaming-dual", gen_length=128, window=None),
    "fast-dllm, no window": sd.DecodeConfig.preset("fast-dllm", gen_length=128, early_exit=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exit_at_eos_keeps_the_answer_in_fewer_forwards(builtin, name):
    model, prompts = builtin
    ids_ = model.token_ids()
    stops, mask = {ids_.eos}, ids_.mask
    block_cfg = CONFIGS[name]
    eos_cfg = block_cfg.replace(early_exit_at="eos")
    saved = 0
    for ids in prompts:
        by_block = sd.generate(model, [ids], block_cfg)
        by_eos = sd.generate(model, [ids], eos_cfg)
        answer = answer_ids(by_block.decoded(0), stops)
        assert answer_ids(by_eos.decoded(0), stops) == answer
        tail = by_eos.decoded(0)[len(answer):]
        assert tail and tail[0] in stops and mask not in tail  # the answer ended; nothing left masked
        assert by_eos.nfe <= by_block.nfe
        saved += by_block.nfe - by_eos.nfe
    assert saved > 0  # some answers end before their block does


def test_exit_at_eos_batch_equals_solo(builtin):
    model, prompts = builtin
    cfg = CONFIGS["streaming"].replace(early_exit_at="eos")
    batch = sd.generate(model, prompts, cfg)
    for r, ids in enumerate(prompts):
        solo = sd.generate(model, [ids], cfg)
        assert batch.decoded(r) == solo.decoded(0)
