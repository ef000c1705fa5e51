"""Measurements: one prompt decoded by one config through the engine, timed, scored and cached.

Each measurement is a bench ``Sample`` (so the bench's paired interval and throughput apply
unchanged) stored on disk under a key of the model's identity, the task's identity, the sample's
id and ``cfg.key()``: a second run with the same model and task reuses it and resumes where the
first stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..bench.results import Method, MethodResult, Sample
from ..config import DecodeConfig
from ..engine import generate
from ..text import answer_ids, stop_ids, used_positions
from .scorers import safe_score
from .tasks import Item, TuneTask, encoder


def model_identity(model: Any) -> str:
    """What the measured tokens and times depend on: the checkpoint, its weights, dtype, device."""
    h = hashlib.sha256()
    h.update(
        json.dumps([model.name_or_path, model.family, model.config], sort_keys=True, default=str).encode()
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    h.update(f"{model.dtype}/{model.device.type}".encode())
    return h.hexdigest()[:16]


class MeasureCache:
    """Append-only JSON lines ``{"key": ..., "sample": {...}}``; a torn last line is skipped."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = row["sample"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, sample: dict[str, Any]) -> None:
        self.entries[key] = sample
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": key, "sample": sample}) + "\n")


@dataclasses.dataclass
class Measurer:
    """Decodes items of one split with any config; results are ``MethodResult`` per config key."""

    model: Any
    tokenizer: Any
    task: TuneTask
    cache: MeasureCache
    on_measure: Callable[[float], None] | None = None
    model_id: str = ""
    results: dict[tuple[str, str], MethodResult] = dataclasses.field(default_factory=dict)
    decoded_s: float = 0.0

    def __post_init__(self) -> None:
        self.model_id = self.model_id or model_identity(self.model)
        self.stops = stop_ids(self.model, self.tokenizer)
        self._encode = encoder(self.task, self.tokenizer)
        self._ids: dict[str, list[int]] = {}
        self._warm: set[str] = set()

    def ids(self, item: Item) -> list[int]:
        if item.id not in self._ids:
            self._ids[item.id] = self._encode(item)
        return self._ids[item.id]

    def result(self, split: str, label: str, cfg: DecodeConfig) -> MethodResult:
        """The samples of ``cfg`` on ``split`` so far (one object per config and split)."""
        key = (split, cfg.key())
        if key not in self.results:
            self.results[key] = MethodResult(Method(label, cfg), 0)
        return self.results[key]

    def _key(self, item: Item, cfg: DecodeConfig) -> str:
        raw = json.dumps([self.model_id, self.task.identity, item.id, cfg.key()])
        return hashlib.sha256(raw.encode()).hexdigest()

    def known(self, split: str, index: int, item: Item, cfg: DecodeConfig) -> bool:
        """Whether measuring this costs nothing (done in this run or cached on disk)."""
        res = self.results.get((split, cfg.key()))
        if res is not None and any(s.prompt == index for s in res.samples):
            return True
        return self.cache.get(self._key(item, cfg)) is not None

    def measure(self, split: str, index: int, item: Item, label: str, cfg: DecodeConfig) -> Sample:
        """``cfg`` on one item (from the cache when measured before); recorded in ``result``."""
        res = self.result(split, label, cfg)
        done = next((s for s in res.samples if s.prompt == index), None)
        if done is not None:
            return done
        key = self._key(item, cfg)
        cached = self.cache.get(key)
        sample = Sample(**cached) if cached else self._decode(index, item, cfg)
        sample.prompt = index
        if not cached:
            self.cache.put(key, dataclasses.asdict(sample))
        res.samples.append(sample)
        res.n_planned = len(res.samples)
        res.seconds += sample.share
        return sample

    def _answer(self, gen: list[int]) -> str:
        text = self.tokenizer.decode(answer_ids(gen, self.stops), skip_special_tokens=True)
        for stop in self.task.until:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    def _decode(self, index: int, item: Item, cfg: DecodeConfig) -> Sample:
        ids = self.ids(item)
        if cfg.key() not in self._warm:  # lazy init and allocator growth are not timed (as the bench)
            generate(
                self.model,
                [ids],
                cfg.replace(gen_length=min(cfg.gen_length, 2 * cfg.block_length), steps=None),
            )
            self._warm.add(cfg.key())
        start = time.perf_counter()
        out = generate(self.model, [ids], cfg)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        seconds = time.perf_counter() - start
        self.decoded_s += seconds
        gen = out.generated(0)
        correct = safe_score(self.task.scorer, self._answer(gen), item.reference, item.id)
        sample = Sample(
            prompt=index,
            batch=0,
            seconds=seconds,
            share=seconds,
            tokens=sum(t != self.model.eos_id for t in gen),
            used=used_positions(gen, self.stops),
            nfe=int(out.row_nfe[0]),
            tokens_fed=int(out.tokens_fed[0]),
            correct=correct,
        )
        if self.on_measure is not None:
            self.on_measure(seconds)
        return sample
