"""Turning generated ids into text: where an answer stops, and chat prompts into ids."""

from __future__ import annotations

from typing import Any

from .models.base import DiffusionLM

END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end_of_turn|>", "<|eot|>")


def stop_ids(model: DiffusionLM, tokenizer: Any) -> set[int]:
    """Ids that end an answer: the checkpoint's EOS, the tokenizer's EOS and end-of-turn tokens."""
    ids = {model.eos_id, getattr(tokenizer, "eos_token_id", None)}
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    ids.discard(None)
    return ids


def answer_ids(ids: list[int], stops: set[int]) -> list[int]:
    """The generated ids before the first stop id."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Ids of a user prompt; with ``chat`` (default: when the tokenizer has a chat template)
    the prompt is wrapped as one user turn followed by the assistant's generation prompt."""
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
