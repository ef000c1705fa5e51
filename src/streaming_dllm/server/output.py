"""From generated ids to the text a client sees: end tokens, ``max_tokens`` cut, stop strings.

Streamed and non-streamed responses go through the same ``ChoiceText``, so the streamed pieces
joined are exactly the non-streamed text.
"""

from __future__ import annotations

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
        for t in block:
            if t in self.end_ids:
                reason = "stop"
                break
            if len(self.ids) >= self.max_tokens:
                reason = "length"
                break
            self.ids.append(t)
        if reason is None and (last or len(self.ids) >= self.max_tokens):
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
