"""From generated ids to what a client sees: end tokens, ``max_tokens`` cut, stop strings, and
the response objects (non-streamed bodies, stream chunks, usage).

Streamed and non-streamed responses go through the same ``ChoiceText``, so the streamed pieces
joined are exactly the non-streamed text; ``Replies`` builds every object a request sends back.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..text import answer_end

REPLACEMENT = "\ufffd"


def _holdback(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class ChoiceText:
    """One choice's output, fed block by block; ``feed`` returns the text that became final."""

    def __init__(self, tokenizer, end_ids: set[int], max_tokens: int, stops: list[str]) -> None:
        self.tok, self.end_ids, self.max_tokens, self.stops = tokenizer, end_ids, max_tokens, stops
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, block: list[int], last: bool) -> str:
        """Take the next final block of ids; ``last`` = the engine has no more blocks for this row."""
        if self.finished:
            return ""
        reason = None
        end = answer_end(block, self.end_ids)  # the one answer-cut rule (text.py)
        room = self.max_tokens - len(self.ids)
        if end is not None and end <= room:
            self.ids.extend(block[:end])
            reason = "stop"
        else:
            kept = block if end is None else block[:end]
            self.ids.extend(kept[:room])
            if len(kept) > room or last or len(self.ids) >= self.max_tokens:
                reason = "length"
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        self.completion_tokens = len(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            self.completion_tokens = self._tokens_covering(cut)
        self.text = text
        if reason is not None:
            self.finish_reason = reason
            safe = len(text)
        else:
            safe = len(text.rstrip(REPLACEMENT))
            safe -= _holdback(text[:safe], self.stops)
        piece = text[self.emitted : max(safe, self.emitted)]
        self.emitted += len(piece)
        return piece

    def _tokens_covering(self, n_chars: int) -> int:
        """Fewest generated tokens whose text reaches ``n_chars`` characters (binary search)."""
        lo, hi = 0, len(self.ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tok.decode(self.ids[:mid], skip_special_tokens=True)) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return lo


class Replies:
    """Every object one request sends back, built in one place: the non-streamed body, each
    stream chunk and ``usage``; ``chat`` picks the chat or the completions shape."""

    def __init__(self, model_name: str, chat: bool, prompt_tokens: int) -> None:
        self.chat, self.prompt_tokens = chat, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created, self.model = int(time.time()), model_name

    def _head(self, stream: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, texts: list[ChoiceText]) -> dict[str, int]:
        completion = sum(t.completion_tokens for t in texts)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def body(self, texts: list[ChoiceText]) -> dict[str, Any]:
        """The non-streamed response: every choice's full text and finish reason, and usage."""
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t.text}, "logprobs": None,
                        "finish_reason": t.finish_reason} for i, t in enumerate(texts)]
        else:
            choices = [{"index": i, "text": t.text, "logprobs": None, "finish_reason": t.finish_reason}
                       for i, t in enumerate(texts)]
        return {**self._head(False), "choices": choices, "usage": self.usage(texts)}

    def role_chunk(self, index: int) -> dict[str, Any]:
        """The first chunk of a chat choice: the assistant's role, no content yet."""
        delta = {"role": "assistant", "content": ""}
        return {**self._head(True), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                 "finish_reason": None}]}

    def chunk(self, index: int, piece: str, reason: str | None) -> dict[str, Any]:
        """A stream chunk: new text of choice ``index`` and, on its last chunk, its finish reason."""
        if self.chat:
            choice = {"index": index, "delta": {"content": piece} if piece else {}, "logprobs": None,
                      "finish_reason": reason}
        else:
            choice = {"index": index, "text": piece, "logprobs": None, "finish_reason": reason}
        return {**self._head(True), "choices": [choice]}

    def usage_chunk(self, texts: list[ChoiceText]) -> dict[str, Any]:
        """The last chunk of a stream with ``stream_options.include_usage``: usage, no choices."""
        return {**self._head(True), "choices": [], "usage": self.usage(texts)}
