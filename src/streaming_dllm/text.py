"""Turning generated ids into text, and text into prompt ids: the one rule for each.

* Where an answer ends: ``answer_end`` (the first stop id); ``answer_ids`` and
  ``used_positions`` are views of it. The CLI, the server, the benchmarks, the arithmetic
  evaluation and the lm-eval adapter all cut answers here.
* How a chat becomes ids: ``encode_chat`` (a list of messages through the tokenizer's chat
  template), ``encode_prompt`` (one user prompt, chat-templated when the tokenizer has a template).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models.base import DiffusionLM

# End-of-turn markers of the chat formats we know (LLaDA, Qwen/Dream, Gemma, Phi, the built-in
# model). The CLI, the server, the benchmarks and the lm-eval adapter all stop on these.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end_of_turn|>", "<|end|>", "<|eot|>")


def stop_ids(model: DiffusionLM, tokenizer: Any) -> set[int]:
    """Ids that end an answer: the checkpoint's EOS and end-of-turn ids (``config.json``), the
    tokenizer's EOS and the end-of-turn tokens its vocabulary has."""
    ids = {model.eos_id, getattr(tokenizer, "eos_token_id", None)}
    config = getattr(model, "config", None) or {}
    for key in ("eos_token_id", "eot_token_id"):
        value = config.get(key)
        ids.update(value if isinstance(value, list) else [value])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    ids.discard(None)
    return ids


def answer_end(ids: Sequence[int], stops: set[int]) -> int | None:
    """Index of the first stop id in ``ids`` (where the answer ends), None if there is none."""
    for i, t in enumerate(ids):
        if t in stops:
            return i
    return None


def answer_ids(ids: Sequence[int], stops: set[int]) -> list[int]:
    """The generated ids before the first stop id."""
    end = answer_end(ids, stops)
    return list(ids if end is None else ids[:end])


def used_positions(ids: Sequence[int], stops: set[int]) -> int:
    """Generated positions up to and including the first stop id (all of them if none)."""
    end = answer_end(ids, stops)
    return len(ids) if end is None else end + 1


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Ids of a conversation through the tokenizer's chat template, ending with the assistant's
    generation prompt. The template's text is tokenized without adding special tokens again."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Ids of a user prompt; with ``chat`` (default: when the tokenizer has a chat template)
    the prompt is wrapped as one user turn followed by the assistant's generation prompt."""
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        return encode_chat(tokenizer, [{"role": "user", "content": prompt}])
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
