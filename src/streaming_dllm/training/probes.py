"""The checks run during training: accuracy on a few dev problems and arithmetic facts on sheets."""

from __future__ import annotations

import torch

from ..config import DecodeConfig
from ..engine import generate
from ..tasks import arith
from ..tasks.arith_eval import encode_prompts
from .data import encode_data, make_batch


def quick_eval(model, tokenizer, problems: list[arith.Problem], gen_length: int = 128) -> float:
    """Exact-match accuracy on a few problems with the engine's ``vanilla`` preset (blocks of 32).

    One token per step, no cache; the engine takes the mask and EOS ids from ``model.config``.
    """
    model.eval()
    out = generate(model, encode_prompts(tokenizer, problems),
                   DecodeConfig.preset("vanilla", gen_length=gen_length, block_length=32))
    model.train()
    texts = tokenizer.batch_decode([out.generated(i) for i in range(len(problems))], skip_special_tokens=True)
    return sum(arith.score(t, p.answer) for t, p in zip(texts, problems, strict=True)) / len(problems)


@torch.no_grad()
def fact_accuracy(model, tokenizer, per_sheet: int = 10) -> dict[str, float]:
    """Share of ``arith.facts()`` whose result the model predicts, by operation and overall.

    Every fact appears once on practice sheets of ``per_sheet`` equations (followed by EOS
    padding, as in training); all results are masked at once and the operands stay visible.
    Problems need every one of their 2 to 4 results right, so this is the number to watch when
    accuracy on problems stalls. It measures the facts on sheets only: a model can know them
    there and still get the same equation wrong inside a solution (see builtin/TRAINING.md).
    """
    was_training = model.training
    model.eval()
    eos, mask_id = tokenizer.eos_token_id, tokenizer.mask_token_id
    (equals,) = tokenizer(" =", add_special_tokens=False)["input_ids"]
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for kind, eqs in arith.facts().items():
        sheets = [arith.sheet(eqs[i : i + per_sheet]) for i in range(0, len(eqs), per_sheet)]
        prompts, responses = encode_data(tokenizer, sheets)
        ids, region = make_batch(prompts, responses, 64, eos)  # EOS padding as in training
        after_equals = torch.zeros_like(region)
        after_equals[:, 1:] = (ids[:, :-1] == equals) & region[:, :-1]
        logits = model(ids.masked_fill(after_equals, mask_id), torch.arange(ids.shape[1]).expand_as(ids))
        right[kind] = int((logits.argmax(-1) == ids)[after_equals].sum())
        total[kind] = int(after_equals.sum())
    model.train(was_training)
    out = {kind: right[kind] / total[kind] for kind in total}
    out["all"] = sum(right.values()) / sum(total.values())
    return out
