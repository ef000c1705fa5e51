"""``streaming-dllm tune``: pick the fastest decoding knobs that keep a task's accuracy.

``tune(model, task)`` searches the dev split (successive halving, measurements cached on disk),
checks the chosen config on a held-out split, and returns it with the search table.
"""

from __future__ import annotations

from typing import Any


def tune(model: Any, task: Any = "arith", **kwargs: Any):
    """See ``streaming_dllm.tuning.api.tune`` (imported on first use: it needs torch)."""
    from .api import tune as _tune

    return _tune(model, task, **kwargs)


__all__ = ["tune"]
