"""Turning generated ids into text: where an answer stops, and chat prompts into ids."""

from __future__ import annotations

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
