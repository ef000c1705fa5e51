"""What a benchmark plans and records: methods (a label and a ``DecodeConfig``), the groups they are
compared in, and the samples each decoded. Plain data, so the CLI can plan a run without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import DecodeConfig


@dataclass
class Method:
    """One row of a table: a label, its decoding config, an optional smaller sample size and why."""

    label: str
    config: DecodeConfig
    n: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Group:
    """Methods compared side by side at one generation length (one table)."""

    suite: str
    name: str
    gen_length: int
    methods: list[Method]


@dataclass
class Sample:
    """One prompt decoded by one method. ``seconds`` is the wall time of its batch."""

    prompt: int
    batch: int
    seconds: float
    share: float
    tokens: int
    used: int
    nfe: int
    tokens_fed: int
    correct: bool


@dataclass
class MethodResult:
    """Every sample of one method in one group, plus how the sample came to be its size."""

    method: Method
    n_planned: int
    samples: list[Sample] = field(default_factory=list)
    peak_bytes: int | None = None
    seconds: float = 0.0
    stopped: str | None = None
    reused_from: str | None = None
