"""Data and scoring of the ``streaming-dllm-arith`` harness tasks: the package's own arith task.

The task YAMLs name these functions by their import path, so the documents and the scorer are
exactly those of ``streaming_dllm.tasks.arith`` (and of our bench, ``tasks.arith_eval``).
"""

from __future__ import annotations

from typing import Any


def load_dataset(**_: Any):
    """The shipped arith test split, in order, as a ``datasets.DatasetDict`` (offline).

    The harness passes task metadata as keyword arguments; they are not needed here.
    """
    import datasets

    from streaming_dllm.tasks import arith

    rows = [
        {"prompt": p.prompt, "answer": str(p.answer), "solution": p.solution} for p in arith.problems("test")
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the final number, scored by ``arith.score`` (the bench's scorer)."""
    from streaming_dllm.tasks import arith

    return {"exact_match": float(arith.score(results[0], doc["answer"]))}


def mc_choices(doc: dict[str, Any]) -> list[str]:
    """The worked solution ending in the right answer (index 0), then three wrong final answers."""
    answer = int(doc["answer"])
    work = doc["solution"].rsplit(" The answer is", 1)[0]
    wrong = [answer + 1, answer + 10, answer - 7 if answer >= 7 else answer + 3]
    return [f"{work} The answer is {x}." for x in [answer, *wrong]]
