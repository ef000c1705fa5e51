"""Data and scoring of the ``streaming-dllm-arith`` harness task: the package's own arith task."""

from __future__ import annotations

from typing import Any


def load_dataset(split: str = "test", **_: Any):
    """The shipped arith split as a ``datasets.DatasetDict`` (offline; extra harness kwargs ignored)."""
    import datasets

    from streaming_dllm.tasks import arith

    rows = [
        {"prompt": p.prompt, "answer": str(p.answer), "solution": p.solution} for p in arith.problems(split)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the final number, scored by ``arith.score`` (the bench's scorer)."""
    from streaming_dllm.tasks import arith

    return {"exact_match": float(arith.score(results[0], doc["answer"]))}
