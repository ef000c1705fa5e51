"""Continuous batching: requests with any settings join and leave one running batch.

Every request is its own ``Run`` (its own token rows, K/V cache, ``DecodeConfig`` and random
streams), written as the same block loop that ``generate`` runs: a run *yields* each forward it
needs. An engine ``step`` takes the forward every ready run is waiting for, runs them as one
packed forward per group (every run's fed tokens side by side in one row, no padding; the
projections and MLP run once over all of them, attention run by run over each run's own cache and
mask, its K/V written into its own cache), and sends each run its logits. A run that finishes
(its last block, early exit, a stop reached by the caller, cancellation) leaves at once; waiting
requests join at the next step.

Grouping (``policy``): ``split`` (the default) runs long forwards (a block start: the kept prefix)
apart from short ones (in-block steps), so a step's short rows do not wait for the long ones;
``joint`` runs all ready forwards as one packed forward; ``buckets`` groups forwards whose fed
and attended lengths are within ``bucket_ratio`` of each other (it mattered when forwards were
padded to their longest row). Batching changes speed, not answers: a run's tokens are its solo
tokens.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..config import DecodeConfig
from ..kv_cache import PackedCaches, PackedPart
from ..models.base import DiffusionLM
from .decoder import GenerateOutput, output_of, start_run
from .run import SCHEDULED, BlockChunk, Forward, Run, score_forwards

Policy = Literal["split", "joint", "buckets"]


class QueueFull(RuntimeError):
    """The scheduler's waiting queue is full: the request was not accepted."""


@dataclass
class Event:
    """What happened to one request in a step: ``block`` (``chunk`` is final), ``done``
    (``output``), ``failed`` (``error``) or ``cancelled``."""

    handle: Handle
    kind: Literal["block", "done", "failed", "cancelled"]
    chunk: BlockChunk | None = None
    output: GenerateOutput | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class Handle:
    """One submitted request and its decode state."""

    id: int
    prompts: list
    config: DecodeConfig
    seeds: list[int] | None
    cancelled: Callable[[], bool] | None
    tag: Any = None
    submitted: float = field(default_factory=time.perf_counter)
    first_block: float | None = None
    entered: int = 0
    """The scheduler's step count when the request was submitted (its age, in steps)."""
    blocks: int = 0
    block_nfe: int = 0
    """Blocks finished, and the forwards they took (``slack``'s estimate of the forwards left)."""
    run: Run | None = None
    events: Generator | None = None
    pending: Forward | None = None

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def slack(self) -> float:
        """How urgent the request is under a step budget: its submission step minus the forwards
        it still needs, so a request that needs many (one token per forward) is served as if it
        had come that many steps earlier, and one that has waited long comes first. The
        forwards left are exact for a step-scheduled rule (``steps``: one per scheduled step) and
        estimated for a threshold rule (the forwards per finished block, 2 before the first one
        ends, times the blocks left, less those of the current block). Only counts, never clocks:
        every rank orders alike."""
        cfg, run = self.config, self.run
        if cfg.unmask in SCHEDULED:
            left = cfg.total_steps - run.nfe
        else:
            per_block = self.block_nfe / self.blocks if self.blocks else 2.0
            left = per_block * (cfg.num_blocks - self.blocks) - (run.nfe - self.block_nfe)
        return self.entered - max(left, 1.0)

    @property
    def tokens(self) -> int:
        """Positions this request holds K/V for (its K/V memory), once admitted."""
        return 0 if self.run is None else self.run.batch * self.run.total


class Scheduler:
    """Continuous batching over one model (not thread-safe: one thread calls ``step``)."""

    def __init__(self, model: DiffusionLM, max_rows: int = 64, max_tokens: int = 1 << 20,
                 max_queue: int = 1024, policy: Policy = "split", long_tokens: int = 128,
                 bucket_ratio: float = 1.5, max_step_tokens: int | None = None) -> None:
        if policy not in ("split", "joint", "buckets"):
            raise ValueError(f"policy={policy!r}: must be 'split', 'joint' or 'buckets'")
        self.model, self.policy, self.long_tokens = model, policy, long_tokens
        self.bucket_ratio, self.max_step_tokens = bucket_ratio, max_step_tokens
        self.max_rows, self.max_tokens, self.max_queue = max_rows, max_tokens, max_queue
        self.waiting: deque[Handle] = deque()
        self.active: list[Handle] = []
        self._ids = itertools.count()
        self.forwards = 0
        self.rows_forwarded = 0
        self.steps = 0

    # ---------------------------------------------------------------- requests
    def submit(self, prompts: list, config: DecodeConfig, seeds: list[int] | None = None,
               cancelled: Callable[[], bool] | None = None, tag: Any = None) -> Handle:
        """Queue a request (prompt id lists, one per row); ``QueueFull`` when the queue is full."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(f"the queue holds {self.max_queue} requests")
        handle = Handle(next(self._ids), list(prompts), config, seeds, cancelled, tag, entered=self.steps)
        self.waiting.append(handle)
        return handle

    def drop_waiting(self, handle: Handle) -> None:
        """Remove a request that has not started (it will never run); a lockstep scheduler
        (``parallel.lockstep``) also tells its followers."""
        self.waiting.remove(handle)

    @property
    def rows_in_flight(self) -> int:
        return sum(h.rows for h in self.active)

    @property
    def tokens_in_flight(self) -> int:
        return sum(h.tokens for h in self.active)

    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    # ---------------------------------------------------------------- one engine step
    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, run one forward for every ready request, return what happened."""
        out: list[Event] = []
        self.steps += 1
        self._admit(out)
        self._drop_cancelled(out)
        ran: list[tuple[Handle, torch.Tensor]] = []
        for group in self._groups(self._this_step([h for h in self.active if h.pending is not None])):
            try:
                ran += zip(group, self._forward([h.pending for h in group]), strict=True)
            except Exception as exc:  # a forward that fails fails its requests, no others
                for h in group:
                    self._finish(h, Event(h, "failed", error=exc), out)
        try:
            score_forwards([h.pending for h, _ in ran], [logits for _, logits in ran])
        except Exception as exc:  # scoring is per row: a failure here fails this step's requests
            for h, _ in ran:
                self._finish(h, Event(h, "failed", error=exc), out)
            return out
        for h, logits in ran:
            self._advance(h, logits, out)
        return out

    def _admit(self, out: list[Event]) -> None:
        while self.waiting:
            h = self.waiting[0]
            rows = self.rows_in_flight
            if self.active and rows + h.rows > self.max_rows:
                return
            try:
                h.run = start_run(self.model, h.prompts, h.config, None, h.seeds)
            except Exception as exc:
                self.waiting.popleft()
                out.append(Event(h, "failed", error=exc))
                continue
            if self.active and self.tokens_in_flight + h.tokens > self.max_tokens:
                h.run = None
                return
            self.waiting.popleft()
            self.active.append(h)
            h.events = h.run.events()
            self._advance(h, None, out)

    def _drop_cancelled(self, out: list[Event]) -> None:
        for h in list(self.active):
            if h.cancelled is not None and h.cancelled():
                self._finish(h, Event(h, "cancelled"), out)

    def _advance(self, h: Handle, logits: torch.Tensor | None, out: list[Event]) -> None:
        """Run a request's loop up to its next forward, reporting the blocks it finishes."""
        try:
            event = next(h.events) if logits is None else h.events.send(logits)
            while isinstance(event, BlockChunk):
                if h.first_block is None:
                    h.first_block = time.perf_counter()
                out.append(Event(h, "block", chunk=event))
                h.blocks, h.block_nfe = h.blocks + 1, h.run.nfe
                event = next(h.events)
        except StopIteration:
            self._finish(h, Event(h, "done", output=output_of(h.run)), out)
            return
        except Exception as exc:
            self._finish(h, Event(h, "failed", error=exc), out)
            return
        h.pending = event

    def _finish(self, h: Handle, event: Event, out: list[Event]) -> None:
        if h.events is not None:
            h.events.close()
        h.pending = None
        if h in self.active:
            self.active.remove(h)
        out.append(event)

    def _this_step(self, ready: list[Handle]) -> list[Handle]:
        """The ready requests this step runs: all of them, or with ``max_step_tokens`` the most
        urgent first (``Handle.slack``: the oldest, counting the forwards each still needs) while
        their fed tokens fit, so a step's time is bounded and the requests closest to the latency
        tail never wait for newer, shorter ones. A forward larger than the budget on its own
        always runs and is not counted, so a long request never starves the short ones."""
        if self.max_step_tokens is None:
            return ready
        chosen, fed = [], 0
        for h in sorted(ready, key=lambda h: (h.slack(), h.id)):
            n = h.pending.ids.numel()
            if n > self.max_step_tokens:
                chosen.append(h)
            elif not chosen or fed + n <= self.max_step_tokens:
                chosen.append(h)
                fed += n
        return chosen

    # ---------------------------------------------------------------- batched forwards
    def _groups(self, ready: list[Handle]) -> list[list[Handle]]:
        if not ready:
            return []
        if self.policy == "joint":
            return [ready]
        if self.policy == "buckets":
            return _buckets(ready, self.bucket_ratio)
        long = [h for h in ready if h.pending.ids.shape[1] > self.long_tokens]
        short = [h for h in ready if h.pending.ids.shape[1] <= self.long_tokens]
        return [g for g in (short, long) if g]

    def _forward(self, forwards: list[Forward]) -> list[torch.Tensor]:
        self.forwards += 1
        self.rows_forwarded += sum(f.ids.shape[0] for f in forwards)
        if len(forwards) == 1:
            f = forwards[0]
            return [self.model(f.ids, f.positions, cache=f.cache, key_mask=f.key_mask,
                               logits_rows=f.logits_rows)]
        return batched_forward(self.model, forwards)


def _shape(h: Handle) -> tuple[int, int]:
    f = h.pending
    n = f.ids.shape[1]
    return n, n if f.cache is None else f.cache.next_keys(n)


def _buckets(ready: list[Handle], ratio: float) -> list[list[Handle]]:
    """Consecutive runs, by (fed, attended) length, whose largest fed and attended lengths are
    within ``ratio`` of their smallest: each bucket is one forward with little padding."""
    ordered = sorted(ready, key=_shape)
    groups: list[list[Handle]] = []
    lo = (0, 0)
    for h in ordered:
        n, k = _shape(h)
        if groups and n <= ratio * lo[0] and k <= ratio * max(lo[1], 1):
            groups[-1].append(h)
        else:
            groups.append([h])
            lo = (n, k)
    return groups


def batched_forward(model: DiffusionLM, forwards: list[Forward]) -> list[torch.Tensor]:
    """Several runs' forwards as one packed forward: every run's fed tokens, row after row, in one
    [1, N] row (no padding), and a ``PackedCaches`` view under which each run attends to exactly
    its own keys, cache and mask, as alone. Returns each forward's logits."""
    ids, pos, parts, rows, start = [], [], [], [], 0
    for f in forwards:
        b, n = f.ids.shape
        ids.append(f.ids.reshape(-1))
        pos.append(f.positions.expand(b, n).reshape(-1))
        parts.append(PackedPart(f.cache, start, start + b * n, b, n, f.key_mask))
        rows.append(start + f.logits_rows[0] * n + f.logits_rows[1])
        start += b * n
    flat = torch.cat(rows)
    logits = model(torch.cat(ids)[None], torch.cat(pos)[None], cache=PackedCaches(parts),
                   logits_rows=(torch.zeros_like(flat), flat))
    return list(logits.split([len(r) for r in rows]))


def generate_many(model: DiffusionLM, prompts: list[list[int]], configs: DecodeConfig | list[DecodeConfig],
                  seeds: list[int | None] | None = None, **scheduler_args: Any) -> list[GenerateOutput]:
    """Decode many prompts, each with its own config (one config for all, or one each), with
    continuous batching; each output equals ``generate(model, [prompt], config)``."""
    if isinstance(configs, DecodeConfig):
        configs = [configs] * len(prompts)
    if len(configs) != len(prompts):
        raise ValueError(f"configs: {len(configs)} configs for {len(prompts)} prompts")
    seeds = seeds if seeds is not None else [None] * len(prompts)
    sched = Scheduler(model, max_queue=max(len(prompts), 1), **scheduler_args)
    handles = [sched.submit([p], c, None if s is None else [s]) for p, c, s in
               zip(prompts, configs, seeds, strict=True)]
    done: dict[int, GenerateOutput] = {}
    while sched.busy():
        for ev in sched.step():
            if ev.kind == "done":
                done[ev.handle.id] = ev.output
            elif ev.kind == "failed":
                raise ev.error
    return [done[h.id] for h in handles]
