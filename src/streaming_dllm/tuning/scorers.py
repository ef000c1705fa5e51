"""Scorers: is one answer right? ``exact``, ``regex:<pattern>`` or a user's ``module:function``.

A scorer gets the answer text (cut at the end of the answer, as the bench and the harness score
it) and the reference, and returns a truth value. Scorers are resolved from their spec before the
model is loaded, so a typo is reported at once.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

Scorer = Callable[[str, Any], Any]


def exact(answer: str, reference: Any) -> bool:
    """The answer, stripped, equals the reference as text."""
    return answer.strip() == str(reference).strip()


def regex_scorer(pattern: str) -> Scorer:
    """The first match of ``pattern`` (its first group if it has one) equals the reference."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--scorer: regex:{pattern!r} is not a valid regular expression: {exc}") from None

    def score(answer: str, reference: Any) -> bool:
        m = rx.search(answer)
        if m is None:
            return False
        got = m.group(1) if rx.groups else m.group(0)
        return got is not None and got.strip() == str(reference).strip()

    return score


def import_scorer(spec: str) -> Scorer:
    """``package.module:function``, imported; must be callable."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--scorer: {spec!r}: expected exact, regex:<pattern> or module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--scorer: cannot import module {module_name!r}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--scorer: {module_name!r} has no function {name!r}")
    return fn


def resolve(spec: str | Scorer | None, default: Scorer) -> Scorer:
    """The scorer a spec names (None: the task's own)."""
    if spec is None:
        return default
    if callable(spec):
        return spec
    if spec == "exact":
        return exact
    if spec.startswith("regex:"):
        return regex_scorer(spec[len("regex:") :])
    return import_scorer(spec)


def safe_score(scorer: Scorer, answer: str, reference: Any, item_id: str) -> bool:
    """``scorer``'s verdict as a bool; a scorer that raises becomes one error naming the sample."""
    try:
        return bool(scorer(answer, reference))
    except Exception as exc:  # a user's scorer may raise anything: one clear error, no traceback
        name = getattr(scorer, "__qualname__", repr(scorer))
        raise ValueError(
            f"--scorer: {name} raised {type(exc).__name__} on sample {item_id!r}: {exc}"
        ) from None
