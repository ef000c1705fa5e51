"""``ChoiceText``: end tokens, the max_tokens cut and stop strings, block by block."""

from __future__ import annotations

import random

import pytest

from streaming_dllm.server.output import ChoiceText

EOS, EOT = 0, 1


class CharTokenizer:
    """Id i > 1 decodes to chr(ord('a') + i - 2); a ``\\ufffd`` id stands for a split character."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("\ufffd" if i == 99 else chr(ord("a") + i - 2) for i in ids if i > 1)


def ids(text: str) -> list[int]:
    return [ord(c) - ord("a") + 2 for c in text]


def run(blocks: list[list[int]], max_tokens: int = 100,
        stops: tuple[str, ...] = ()) -> tuple[list[str], ChoiceText]:
    out = ChoiceText(CharTokenizer(), {EOS, EOT}, max_tokens, list(stops))
    pieces = [out.feed(b, last=i == len(blocks) - 1) for i, b in enumerate(blocks)]
    return pieces, out


def test_end_token_stops_the_text():
    pieces, out = run([ids("abcd"), ids("ef") + [EOT, EOS]])
    assert pieces == ["abcd", "ef"]
    assert (out.text, out.finish_reason, out.completion_tokens) == ("abcdef", "stop", 6)


def test_max_tokens_cuts_inside_a_block():
    pieces, out = run([ids("abcd"), ids("efgh")], max_tokens=6)
    assert "".join(pieces) == out.text == "abcdef"
    assert (out.finish_reason, out.completion_tokens) == ("length", 6)


def test_stop_string_across_a_block_boundary_is_held_back():
    pieces, out = run([ids("xyab"), ids("cdef")], stops=("bcd",))
    assert pieces == ["xya", ""]
    assert (out.text, out.finish_reason, out.completion_tokens) == ("xya", "stop", 3)


def test_split_character_waits_for_the_next_block():
    pieces, out = run([ids("ab") + [99], ids("cd")])
    assert pieces[0] == "ab"
    assert "".join(pieces) == out.text


def test_finished_choice_ignores_later_blocks():
    out = ChoiceText(CharTokenizer(), {EOS, EOT}, 100, [])
    assert out.feed(ids("ab") + [EOS], last=False) == "ab"
    assert out.feed(ids("cd"), last=True) == ""
    assert out.text == "ab"


@pytest.mark.parametrize("seed", range(30))
def test_streamed_pieces_join_to_the_final_text(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abc") for _ in range(rng.randint(1, 40)))
    stops = tuple({"".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(2)})
    size = rng.randint(1, 8)
    blocks = [ids(text[i:i + size]) for i in range(0, len(text), size)]
    max_tokens = rng.randint(1, 50)
    pieces, out = run(blocks, max_tokens=max_tokens, stops=stops)
    expected = text[:max_tokens]
    cut = min((i for i in (expected.find(s) for s in stops) if i >= 0), default=-1)
    reason = "stop" if cut >= 0 else "length"
    expected = expected[:cut] if cut >= 0 else expected
    assert "".join(pieces) == out.text == expected
    assert out.finish_reason == reason


def test_completion_tokens_count_up_to_the_end_of_the_answer():
    """An end token right at the max_tokens boundary is a stop; tokens after it never count."""
    pieces, out = run([ids("abc") + [EOS] + ids("zz")], max_tokens=3)
    assert (out.text, out.finish_reason, out.completion_tokens) == ("abc", "stop", 3)
    pieces, out = run([ids("ab"), ids("cd") + [EOT] + ids("ef")], max_tokens=3)
    assert (out.text, out.finish_reason, out.completion_tokens) == ("abc", "length", 3)
    pieces, out = run([ids("ab"), [EOS] + ids("cd")])
    assert (pieces, out.finish_reason, out.completion_tokens) == (["ab", ""], "stop", 2)
