"""A small byte-level BPE tokenizer for the built-in model, trained on the arithmetic task's text.

Every task number (0 to ``arith.MAX_VALUE``) is one token: the model then copies a number from
the story as one token and learns each step as one small lookup (``12 + 7`` -> ``19``), which a
tiny model masters far sooner than column arithmetic with carries over digit tokens. The
training text includes the number line so that every number gets its merge. The chat format
mirrors LLaDA-Instruct: a turn is
``<|role|>\\n content <|eot|>`` and the reply is followed by ``<|endoftext|>`` padding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

MASK = "<|mask|>"
EOS = "<|endoftext|>"
EOT = "<|eot|>"
PAD = "<|pad|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [PAD, EOS, EOT, MASK] + [f"<|{r}|>" for r in ROLES]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|eot|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 768, numbers: int | None = None):
    """Train the BPE on ``texts`` and wrap it as a ``transformers`` fast tokenizer.

    ``numbers``: if given, every `` N`` for N in 0..numbers must end up a single token (checked).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    wanted = range(numbers + 1) if numbers is not None else range(0)
    number_line = "".join(f" {n}" for n in wanted)
    extra = [number_line] * 20 if number_line else []
    tok.train_from_iterator(itertools.chain(texts, extra), trainer=trainer)
    split = [n for n in wanted if len(tok.encode(f" {n}").ids) != 1]
    if split:
        raise ValueError(f"vocab_size={vocab_size} too small: numbers {split[:5]} are not single tokens")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        additional_special_tokens=[EOT] + [f"<|{r}|>" for r in ROLES],
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Save so that ``AutoTokenizer.from_pretrained(folder)`` finds the chat template too."""
    import json

    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    # transformers 5 writes its own class name; older versions only know the fast base class.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def special_ids(tokenizer) -> dict[str, int]:
    """The ids the model config records: mask, EOS (end of text), end-of-turn, pad."""
    conv = tokenizer.convert_tokens_to_ids
    return {"mask_token_id": conv(MASK), "eos_token_id": conv(EOS), "eot_token_id": conv(EOT),
            "pad_token_id": conv(PAD)}
