"""Arithmetic word problems: a seeded generator, fixed splits and an exact-match scorer.

The task exists so the built-in model has something real to be right or wrong about. Problems
are short stories with 2 to 4 operations (+, -, *, /) on numbers below 100; the reference
answer is one equation per line and a final ``The answer is N.`` line, so answer length varies
with the number of operations.

Splits are versioned (``VERSION``): dev and test are shipped as JSON lines in ``tasks/data``;
train is the generator's stream from a fixed seed with every dev/test prompt removed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

VERSION = "v1"
DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "dev", "test")
SPLIT_SIZES = {"train": 200_000, "dev": 200, "test": 500}
_SPLIT_SEEDS = {"train": 0, "dev": 1_000_002, "test": 1_000_001}
MAX_VALUE = 99

NAMES = [
    "Tom", "Mia", "Sam", "Ava", "Leo", "Zoe", "Max", "Lily", "Ben", "Emma", "Noah", "Ella",
    "Jack", "Ruby", "Omar", "Nina", "Liam", "Sara", "Eli", "Anna", "Ivan", "Maya", "Hugo",
    "Rosa", "Kai", "Lena", "Finn", "Iris", "Theo", "June",
]
OBJECTS = [
    "apples", "marbles", "stickers", "coins", "books", "pencils", "cookies", "shells", "cards",
    "stamps", "beads", "balloons", "candies", "buttons", "rocks", "toys", "eggs", "flowers",
    "ribbons", "crayons", "feathers", "keys", "nuts", "cupcakes", "blocks",
]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets", "bowls", "cans", "crates"]

_ADD = [
    "{a} finds {x} more {o}.",
    "{a} buys {x} {o}.",
    "{b} gives {a} {x} {o}.",
    "{a} gets {x} more {o} from {b}.",
    "{a} wins {x} {o} at the fair.",
]
_SUB = [
    "{a} gives {x} {o} to {b}.",
    "{a} loses {x} {o}.",
    "{a} sells {x} {o}.",
    "{b} takes {x} {o} from {a}.",
    "{a} uses {x} of the {o}.",
]
_MUL = {
    2: ["The number of {o} {a} has doubles.", "{a} ends up with twice as many {o}."],
    3: ["The number of {o} {a} has triples.", "{a} ends up with three times as many {o}."],
    4: ["{a} ends up with four times as many {o}."],
    5: ["{a} ends up with five times as many {o}."],
}
_DIV = {
    2: ["{a} splits the {o} into 2 equal piles and keeps one.", "{a} gives half of the {o} to {b}."],
    3: ["{a} splits the {o} into 3 equal piles and keeps one."],
    4: ["{a} splits the {o} into 4 equal piles and keeps one."],
    5: ["{a} splits the {o} into 5 equal piles and keeps one."],
}
_GROUP = [
    "{a} buys {k} {c} with {m} {o} in each.",
    "{b} gives {a} {k} {c} of {o} with {m} in each.",
]
_START = ["{a} has {x} {o}.", "{a} starts with {x} {o}.", "There are {x} {o} in {a}'s room."]
_QUESTION = [
    "How many {o} does {a} have now?",
    "How many {o} does {a} have in the end?",
    "How many {o} are left with {a}?",
]


@dataclass(frozen=True)
class Problem:
    """One word problem: ``prompt`` (user text), ``answer`` (int) and the worked ``solution``."""

    prompt: str
    answer: int
    solution: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _one(rng: random.Random) -> Problem:
    """Draw one problem: a start value, then 2-4 equations, each keeping values in 1..MAX_VALUE."""
    a, b = rng.sample(NAMES, 2)
    o = rng.choice(OBJECTS)
    n_ops = rng.choice((2, 3, 4))
    cur = rng.randint(2, 60) if rng.random() < 0.8 else rng.randint(2, 9)
    story = [rng.choice(_START).format(a=a, x=cur, o=o)]
    lines: list[str] = []
    while len(lines) < n_ops:
        kinds = ["add", "sub"] * 2
        if cur <= MAX_VALUE // 2:
            kinds.append("mul")
        if any(cur % k == 0 and cur >= 2 * k for k in _DIV):
            kinds.append("div")
        if n_ops - len(lines) >= 2 and cur <= MAX_VALUE - 4:
            kinds.append("group")
        kind = rng.choice(kinds)
        if kind == "add" and cur < MAX_VALUE:
            x = rng.randint(1, min(60, MAX_VALUE - cur))
            story.append(rng.choice(_ADD).format(a=a, b=b, x=x, o=o))
            lines.append(f"{cur} + {x} = {cur + x}.")
            cur += x
        elif kind == "sub" and cur > 1:
            x = rng.randint(1, cur - 1)
            story.append(rng.choice(_SUB).format(a=a, b=b, x=x, o=o))
            lines.append(f"{cur} - {x} = {cur - x}.")
            cur -= x
        elif kind == "mul":
            k = rng.choice([k for k in _MUL if cur * k <= MAX_VALUE])
            story.append(rng.choice(_MUL[k]).format(a=a, o=o))
            lines.append(f"{cur} * {k} = {cur * k}.")
            cur *= k
        elif kind == "div":
            k = rng.choice([k for k in _DIV if cur % k == 0 and cur >= 2 * k])
            story.append(rng.choice(_DIV[k]).format(a=a, b=b, o=o))
            lines.append(f"{cur} / {k} = {cur // k}.")
            cur //= k
        elif kind == "group":
            room = MAX_VALUE - cur
            k = rng.randint(2, min(6, room // 2))
            m = rng.randint(2, min(12, room // k))
            story.append(rng.choice(_GROUP).format(a=a, b=b, k=k, c=rng.choice(CONTAINERS), m=m, o=o))
            lines.append(f"{k} * {m} = {k * m}.")
            lines.append(f"{cur} + {k * m} = {cur + k * m}.")
            cur += k * m
    story.append(rng.choice(_QUESTION).format(a=a, o=o))
    lines.append(f"The answer is {cur}.")
    return Problem(prompt=" ".join(story), answer=cur, solution="\n".join(lines))


def generate(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """``n`` distinct problems from ``seed``, skipping prompts in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Problem] = []
    while len(out) < n:
        p = _one(rng)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def split_path(split: str) -> Path:
    return DATA_DIR / f"arith_{VERSION}_{split}.jsonl"


@cache
def _load_split(split: str) -> tuple[Problem, ...]:
    path = split_path(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file missing (run `python -m streaming_dllm.tasks.arith`)")
    return tuple(Problem(**json.loads(line)) for line in path.read_text().splitlines() if line)


def _held_out() -> frozenset[str]:
    return frozenset(p.prompt for s in ("dev", "test") for p in _load_split(s))


def problems(split: str = "test", n: int | None = None, seed: int | None = None) -> list[Problem]:
    """The first ``n`` problems of a fixed split, or, with ``seed``, a fresh sample of ``n``.

    A fresh sample never contains a dev or test prompt, so it is safe for training or for extra
    evaluation without touching the reported figures.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed is not None:
        return generate(n if n is not None else 100, seed, _held_out())
    if split == "train":
        return generate(n if n is not None else SPLIT_SIZES["train"], _SPLIT_SEEDS["train"], _held_out())
    data = _load_split(split)
    return list(data if n is None else data[:n])


def messages(problem: Problem) -> list[dict[str, str]]:
    """Chat messages for the problem; the tokenizer's chat template turns them into model input."""
    return [{"role": "user", "content": problem.prompt}]


_ANSWER_RE = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The last ``The answer is N`` number, else the last number in the text, else None."""
    found = _ANSWER_RE.findall(text) or _NUMBER_RE.findall(text)
    return int(found[-1]) if found else None


def score(text: str, answer: int | str) -> bool:
    """Exact match of the extracted final number against the reference answer."""
    got = extract_answer(text)
    return got is not None and got == int(answer)


def write_splits() -> None:
    """(Re)build the shipped dev/test files; the generator is seeded, so this is reproducible."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    test = generate(SPLIT_SIZES["test"], _SPLIT_SEEDS["test"])
    dev = generate(SPLIT_SIZES["dev"], _SPLIT_SEEDS["dev"], {p.prompt for p in test})
    for split, data in (("test", test), ("dev", dev)):
        split_path(split).write_text("".join(p.to_json() + "\n" for p in data))
    _load_split.cache_clear()


if __name__ == "__main__":
    write_splits()
    for s in ("dev", "test"):
        print(f"wrote {split_path(s)} ({len(_load_split(s))} problems)")
