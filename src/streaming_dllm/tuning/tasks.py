"""What ``tune`` measures on: prompts with references, split into a dev and a held-out part.

Three sources: the built-in ``arith`` task (dev split for the search, test split held out), any
lm-evaluation-harness ``generate_until`` task (``lm_eval:<name>``, documents loaded offline), and
a user's JSONL of ``{"prompt": ..., "reference": ...}`` lines (a seeded split). The search never
sees the held-out part.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scorers

MAX_JSONL_BYTES = 256 << 20
HELD_OUT_SHARE = 0.5
ARITH_GEN_LENGTH = 128
"""As the harness task (``max_gen_toks: 128``): answers use a median of 40 positions, and the
baseline (one forward per token) costs about a third of what it costs at 256."""


@dataclass(frozen=True)
class Item:
    """One prompt: a stable id (part of the cache key), the prompt, and what the scorer needs."""

    id: str
    prompt: str | list[dict[str, str]]
    reference: Any


@dataclass
class TuneTask:
    """A task as the tuner sees it. ``identity`` changes whenever the prompts or the scoring do."""

    name: str
    identity: str
    dev: list[Item]
    held_out: list[Item]
    scorer: scorers.Scorer
    until: tuple[str, ...] = ()
    gen_length: int = 256
    chat: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _scorer_id(spec: Any) -> str:
    return spec if isinstance(spec, str) or spec is None else getattr(spec, "__qualname__", repr(spec))


def arith_task(scorer: Any = None) -> TuneTask:
    """The built-in arithmetic task: dev split (200) for the search, test split (500) held out, 128 tokens."""
    from ..tasks import arith

    def items(split: str) -> list[Item]:
        return [
            Item(f"{split}:{i}", arith.messages(p), p.answer) for i, p in enumerate(arith.problems(split))
        ]

    return TuneTask(
        "arith",
        _digest("arith", arith.VERSION, _scorer_id(scorer)),
        items("dev"),
        items("test"),
        scorers.resolve(scorer, arith.score),
        gen_length=ARITH_GEN_LENGTH,
        info={"dev": "dev split", "held_out": "test split"},
    )


def _seeded_split(items: list[Item], seed: int) -> tuple[list[Item], list[Item]]:
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(len(order) * (1 - HELD_OUT_SHARE))))
    return order[:cut], order[cut:]


def _jsonl_item(path: Path, lineno: int, line: str) -> Item:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--task: {path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(
            f'--task: {path}:{lineno}: each line must be an object with a non-empty "prompt" '
            'string and a "reference"'
        )
    if "reference" not in row:
        raise ValueError(f'--task: {path}:{lineno}: no "reference"')
    return Item(str(row.get("id", f"line{lineno}")), row["prompt"], row["reference"])


def jsonl_task(path: str | Path, scorer: Any = None, seed: int = 0) -> TuneTask:
    """A user's prompts with references; dev and held-out halves by a seeded shuffle."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--task: {str(path)!r} is not a file")
    if path.stat().st_size > MAX_JSONL_BYTES:
        raise ValueError(f"--task: {path} is larger than {MAX_JSONL_BYTES >> 20} MiB")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--task: {path}: not UTF-8 (byte {exc.start})") from None
    items = [_jsonl_item(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(items) < 2:
        raise ValueError(
            f"--task: {path} has {len(items)} prompt(s): need at least 2 (a dev and a held-out part)"
        )
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f'--task: {path}: the "id" values are not unique')
    dev, held = _seeded_split(items, seed)
    return TuneTask(
        path.name,
        _digest("jsonl", hashlib.sha256(data).hexdigest(), seed, _scorer_id(scorer)),
        dev,
        held,
        scorers.resolve(scorer, scorers.exact),
        info={"dev": f"seeded split (seed {seed})", "held_out": f"seeded split (seed {seed})"},
    )


def _lm_eval_docs(task: Any) -> tuple[list[Any], list[Any], str]:
    if task.has_validation_docs() and task.has_test_docs():
        return list(task.validation_docs()), list(task.test_docs()), "validation / test"
    docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
    return docs, [], "seeded split"


def lm_eval_task(name: str, scorer: Any = None, seed: int = 0) -> TuneTask:
    """A harness ``generate_until`` task by name (our task folder included), loaded offline."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise ValueError(
            "--task lm_eval:...: needs the [eval] extra: pip install 'streaming-dllm[eval]'"
        ) from None
    from ..lm_eval_tasks import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR))
    if name not in manager.all_tasks:
        raise ValueError(f"--task: unknown lm-eval task {name!r}")
    try:
        task = get_task_dict([name], manager)[name]
    except Exception as exc:  # the harness raises many types for a dataset it cannot load offline
        raise ValueError(f"--task: lm-eval task {name!r} cannot be loaded offline: {exc}") from None
    if getattr(task, "OUTPUT_TYPE", None) != "generate_until":
        raise ValueError(f"--task: lm-eval task {name!r} is not a generate_until task")
    dev_docs, held_docs, how = _lm_eval_docs(task)
    items = [Item(f"{name}:{i}", str(task.doc_to_text(d)), d) for i, d in enumerate(dev_docs + held_docs)]
    if not items:
        raise ValueError(f"--task: lm-eval task {name!r} has no documents")
    dev, held = (items[: len(dev_docs)], items[len(dev_docs) :]) if held_docs else _seeded_split(items, seed)
    until = (
        tuple(task.config.generation_kwargs.get("until", []) or []) if task.config.generation_kwargs else ()
    )
    gen = int((task.config.generation_kwargs or {}).get("max_gen_toks", 256))
    return TuneTask(
        f"lm_eval:{name}",
        _digest("lm_eval", name, len(items), seed, _scorer_id(scorer)),
        dev,
        held,
        scorers.resolve(scorer, _process_results(task)),
        until=tuple(until),
        gen_length=gen,
        info={"dev": how, "held_out": how},
    )


def _process_results(task: Any) -> scorers.Scorer:
    """The task's own scoring: its first metric on one document, as a truth value."""

    def score(answer: str, doc: Any) -> bool:
        metrics = task.process_results(doc, [answer])
        return bool(next(iter(metrics.values()))) if metrics else False

    score.__qualname__ = "process_results"
    return score


def load_task(spec: str | TuneTask, scorer: Any = None, seed: int = 0) -> TuneTask:
    """``arith``, ``lm_eval:<name>``, a ``.jsonl`` path, or a ready ``TuneTask``."""
    if isinstance(spec, TuneTask):
        return spec
    if spec == "arith":
        return arith_task(scorer)
    if spec.startswith("lm_eval:"):
        return lm_eval_task(spec[len("lm_eval:") :], scorer, seed)
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return jsonl_task(spec, scorer, seed)
    raise ValueError(f"--task: unknown task {spec!r}: use arith, lm_eval:<name> or a .jsonl file")


def encoder(task: TuneTask, tokenizer: Any) -> Callable[[Item], list[int]]:
    """Prompt ids of an item: chat messages through the template, text as ``text.encode_prompt``."""
    from ..text import encode_chat, encode_prompt

    def encode(item: Item) -> list[int]:
        if isinstance(item.prompt, list):
            return encode_chat(tokenizer, item.prompt)
        return encode_prompt(tokenizer, item.prompt, chat=task.chat)

    return encode
