"""Arithmetic word problems: a seeded generator, fixed splits and an exact-match scorer.

The task exists so the built-in model has something real to be right or wrong about. Problems
are short stories with 2 to 4 operations (+, -, *, /) on whole numbers from 1 to ``MAX_VALUE``
(added or taken amounts up to ``MAX_OPERAND``); the reference answer takes the story's steps in
order, each named by its key phrase from the story and followed by its equation (``uses 10, so
11 - 10 = 1.``), and ends with ``The answer is N.``, so answer length varies with the number of
operations.

Splits are versioned (``VERSION``): dev and test are shipped as JSON lines in ``tasks/data``;
train is the generator's stream from a fixed seed with every dev/test prompt removed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

VERSION = "v4"
DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "dev", "test")
SPLIT_SIZES = {"train": 200_000, "dev": 200, "test": 500}
_SPLIT_SEEDS = {"train": 0, "dev": 1_000_002, "test": 1_000_001}
MAX_VALUE = 30
MAX_OPERAND = 10

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

# Each template is (story sentence, key phrase). The worked solution names a step by its key
# phrase: the words just before the number in the story, then the number, so the phrase is the
# story's own tokens. No verb serves two operations, and a problem uses each template at most once.
_ADD = [
    ("{a} finds {x} more {o}.", "finds {x}"),
    ("{a} buys {x} {o}.", "buys {x}"),
    ("{a} receives {x} {o} from {b}.", "receives {x}"),
    ("{a} gets {x} more {o} from {b}.", "gets {x}"),
    ("{a} wins {x} {o} at the fair.", "wins {x}"),
]
_SUB = [
    ("{a} gives {x} {o} to {b}.", "gives {x}"),
    ("{a} loses {x} {o}.", "loses {x}"),
    ("{a} sells {x} {o}.", "sells {x}"),
    ("{b} takes {x} {o} from {a}.", "takes {x}"),
    ("{a} uses {x} of the {o}.", "uses {x}"),
]
_MUL = {
    2: [("The number of {o} {a} has doubles.", "doubles"),
        ("{a} ends up with twice as many {o}.", "twice as many")],
    3: [("The number of {o} {a} has triples.", "triples"),
        ("{a} ends up with three times as many {o}.", "three times as many")],
    4: [("{a} ends up with four times as many {o}.", "four times as many")],
    5: [("{a} ends up with five times as many {o}.", "five times as many")],
}
_DIV = {
    2: [("{a} splits the {o} into 2 equal piles and keeps one.", "into 2 equal piles"),
        ("{a} gives half of the {o} to {b}.", "half")],
    3: [("{a} splits the {o} into 3 equal piles and keeps one.", "into 3 equal piles")],
    4: [("{a} splits the {o} into 4 equal piles and keeps one.", "into 4 equal piles")],
    5: [("{a} splits the {o} into 5 equal piles and keeps one.", "into 5 equal piles")],
}
_GROUP = [
    ("{a} orders {k} {c} with {m} {o} in each.", "orders {k} {c} with {m}"),
    ("{a} fills {k} {c} with {m} {o} each.", "fills {k} {c} with {m}"),
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


def _divides(k: int, cur: int) -> bool:
    """Whether ``cur`` splits into ``k`` equal piles of at least 2."""
    return cur % k == 0 and cur >= 2 * k


def _one(rng: random.Random) -> Problem:
    """Draw one problem: a start value, then 2-4 operations, each keeping values in 1..MAX_VALUE.

    The solution starts from the first number (``Start with 11.``), then takes the story's steps
    in order: each step is its key phrase, then its equation(s), e.g. ``uses 10, so 11 - 10 =
    1.``; the last sentence is ``The answer is N.``
    """
    a, b = rng.sample(NAMES, 2)
    o = rng.choice(OBJECTS)
    n_ops = rng.choice((2, 3, 4))
    cur = rng.randint(2, MAX_VALUE - 5) if rng.random() < 0.8 else rng.randint(2, 9)
    story, steps = [rng.choice(_START).format(a=a, x=cur, o=o)], [f"Start with {cur}."]
    used: set[str] = set()

    def pick(options):
        free = [t for t in options if t[0] not in used]
        return rng.choice(free) if free else None

    ops = 0
    while ops < n_ops:
        kinds = ["add", "sub"] * 2
        if cur * 2 <= MAX_VALUE:
            kinds.append("mul")
        if any(_divides(k, cur) for k in _DIV):
            kinds.append("div")
        if n_ops - ops >= 2 and cur <= MAX_VALUE - 4:
            kinds.append("group")
        kind = rng.choice(kinds)
        fields = {"a": a, "b": b, "o": o}
        if kind == "add" and cur < MAX_VALUE and (t := pick(_ADD)):
            x = fields["x"] = rng.randint(1, min(MAX_OPERAND, MAX_VALUE - cur))
            work, cur, n = f"{cur} + {x} = {cur + x}", cur + x, 1
        elif kind == "sub" and cur > 1 and (t := pick(_SUB)):
            x = fields["x"] = rng.randint(1, min(MAX_OPERAND, cur - 1))
            work, cur, n = f"{cur} - {x} = {cur - x}", cur - x, 1
        elif kind == "mul" and (t := pick([t for k, ts in _MUL.items() if cur * k <= MAX_VALUE for t in ts])):
            k = next(k for k in _MUL if t in _MUL[k])
            work, cur, n = f"{cur} * {k} = {cur * k}", cur * k, 1
        elif kind == "div" and (t := pick([t for k, ts in _DIV.items() if _divides(k, cur) for t in ts])):
            k = next(k for k in _DIV if t in _DIV[k])
            work, cur, n = f"{cur} / {k} = {cur // k}", cur // k, 1
        elif kind == "group" and (t := pick(_GROUP)):
            room = MAX_VALUE - cur
            k = fields["k"] = rng.randint(2, min(4, room // 2))
            m = fields["m"] = rng.randint(2, min(6, room // k))
            fields["c"] = rng.choice(CONTAINERS)
            work, cur, n = f"{k} * {m} = {k * m} and {cur} + {k * m} = {cur + k * m}", cur + k * m, 2
        else:
            continue
        used.add(t[0])
        story.append(t[0].format(**fields))
        steps.append(f"{t[1].format(**fields)}, so {work}.")
        ops += n
    story.append(rng.choice(_QUESTION).format(a=a, o=o))
    steps.append(f"The answer is {cur}.")
    return Problem(prompt=" ".join(story), answer=cur, solution=" ".join(steps))


@cache
def facts() -> dict[str, tuple[str, ...]]:
    """Every equation a problem can contain, by operation (``"7 + 5 = 12"``, ...)."""
    add = [f"{a} + {b} = {a + b}" for a in range(1, MAX_VALUE) for b in range(1, MAX_VALUE - a + 1)]
    sub = [f"{a} - {b} = {a - b}" for a in range(2, MAX_VALUE + 1)
           for b in range(1, min(MAX_OPERAND, a - 1) + 1)]
    mul = [f"{a} * {k} = {a * k}" for k in _MUL for a in range(1, MAX_VALUE // k + 1)]
    mul += [f"{k} * {m} = {k * m}" for k in range(2, 5) for m in range(2, 7)]
    div = [f"{a} / {k} = {a // k}" for k in _DIV for a in range(2 * k, MAX_VALUE + 1) if a % k == 0]
    return {"add": tuple(add), "sub": tuple(sub), "mul": tuple(dict.fromkeys(mul)), "div": tuple(div)}


DRILL_PROMPT = "Work out each equation."
_DRILL_MIX = {"add": 0.4, "sub": 0.3, "mul": 0.15, "div": 0.15}


def sheet(equations: Sequence[str]) -> Problem:
    """A practice sheet: ``DRILL_PROMPT`` and the equations as its solution; the answer is the last result."""
    return Problem(prompt=DRILL_PROMPT, answer=int(equations[-1].rsplit(" ", 1)[1]),
                   solution=" ".join(e + "." for e in equations))


def drill(rng: random.Random, n_equations: int) -> Problem:
    """A practice sheet of ``n_equations`` facts (40% additions, 30% subtractions, 15% each of the rest).

    Training mixes these in so the model sees every addition, subtraction, multiplication and
    division fact the problems use many times, not only the ones a story happens to contain.
    """
    table = facts()
    kinds = rng.choices(tuple(_DRILL_MIX), weights=tuple(_DRILL_MIX.values()), k=n_equations)
    return sheet([rng.choice(table[k]) for k in kinds])


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
