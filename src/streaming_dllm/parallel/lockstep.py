"""Serving under tensor parallel: rank 0 serves HTTP, every other rank replays its scheduler.

Every forward of a sharded model is a collective (its all-reduces), so all ranks must run the
same forwards in the same order. The server's engine thread drives ``engine.scheduler.Scheduler``
objects with ``submit``, ``drop_waiting`` and ``step``; on rank 0 they are ``LeaderScheduler``s,
which before each step broadcast what changed since the previous one (the requests submitted: ids,
``DecodeConfig``, seeds; the queued requests dropped; the requests cancelled as of this step). The
followers (``follow``) apply the same operations to identical schedulers and step them, so every
rank admits, groups and decodes the same rows.

Cancellation is decided once, on rank 0, at the start of each step, and the decision travels with
the step: a client that leaves mid-step is seen at the next step on every rank alike.

Every collective of rank 0 (a step's broadcast and forwards, a heartbeat while idle, the stop) is
taken under one lock, so the followers see them in rank 0's order. The heartbeat keeps idle
followers inside the process group's timeout.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from ..config import DecodeConfig
from ..engine.scheduler import Event, Handle, Scheduler
from ..models.base import DiffusionLM

HEARTBEAT_S = 60.0
"""An idle leader tells the followers it is alive this often (the gloo timeout is 30 minutes)."""


@dataclass
class Submit:
    id: int
    prompts: list
    config: DecodeConfig
    seeds: list[int] | None


@dataclass
class Step:
    """One scheduler step: which scheduler (``name``, ``sid`` and how it is built), the operations
    since its previous step, and the requests cancelled as of this one."""

    name: str
    sid: int
    options: dict[str, Any]
    submits: list[Submit] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


STOP = "stop"


def _broadcast(message: object = None) -> object:
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Leader:
    """Rank 0's side: builds the schedulers the server's engine thread uses, sends heartbeats and
    the stop signal."""

    def __init__(self, model: DiffusionLM, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.model = model
        self.lock = threading.Lock()
        self._sids = itertools.count()
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), name="sdllm-lockstep",
                                      daemon=True)
        self._beat.start()

    def scheduler(self, name: str, **options: Any) -> LeaderScheduler:
        """A scheduler the followers mirror; a new one under an old ``name`` replaces it there."""
        return LeaderScheduler(self, name, next(self._sids), options)

    def send(self, message: object) -> None:
        """Broadcast to the followers (the caller holds ``lock``)."""
        _broadcast(message)
        self._last = time.monotonic()

    def _heartbeat(self, every: float) -> None:
        while not self._stopped.wait(min(every, 5.0)):
            with self.lock:
                if not self._stopped.is_set() and time.monotonic() - self._last >= every:
                    self.send(None)

    def stop(self) -> None:
        """Tell the followers to return (once; after the engine thread has stopped)."""
        with self.lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self.send(STOP)
        self._beat.join(timeout=10)


class LeaderScheduler(Scheduler):
    """A ``Scheduler`` whose every step is first announced to the followers."""

    def __init__(self, leader: Leader, name: str, sid: int, options: dict[str, Any]) -> None:
        super().__init__(leader.model, **options)
        self.leader, self.name, self.sid, self.options = leader, name, sid, options
        self._pending = Step(name, sid, options)
        self._wanted: dict[int, Callable[[], bool] | None] = {}  # request id -> the caller's cancel check
        self._decided: set[int] = set()

    def submit(self, prompts: list, config: DecodeConfig, seeds: list[int] | None = None,
               cancelled: Callable[[], bool] | None = None, tag: Any = None) -> Handle:
        h = super().submit(prompts, config, seeds, cancelled=None, tag=tag)
        h.cancelled = lambda: h.id in self._decided  # what this step decided, as on every rank
        self._wanted[h.id] = cancelled
        self._pending.submits.append(Submit(h.id, list(prompts), config, seeds))
        return h

    def drop_waiting(self, handle: Handle) -> None:
        super().drop_waiting(handle)
        self._wanted.pop(handle.id, None)
        self._pending.drops.append(handle.id)

    def step(self) -> list[Event]:
        with self.leader.lock:
            self._decided = {i for i, check in self._wanted.items() if check is not None and check()}
            message, self._pending = self._pending, Step(self.name, self.sid, self.options)
            message.cancelled = sorted(self._decided)
            self.leader.send(message)
            events = super().step()
        for event in events:
            if event.kind != "block":
                self._wanted.pop(event.handle.id, None)
        return events


class _Mirror:
    """A follower's copy of one leader scheduler."""

    def __init__(self, model: DiffusionLM, step: Step) -> None:
        self.sid = step.sid
        self.sched = Scheduler(model, **step.options)
        self.handles: dict[int, Handle] = {}
        self.cancelled: set[int] = set()

    def apply(self, step: Step) -> None:
        for s in step.submits:
            h = self.sched.submit(s.prompts, s.config, s.seeds, cancelled=lambda i=s.id: i in self.cancelled)
            if h.id != s.id:
                raise RuntimeError(f"lockstep: request {s.id} of rank 0 is request {h.id} here")
            self.handles[h.id] = h
        for i in step.drops:
            self.sched.drop_waiting(self.handles.pop(i))
        self.cancelled = set(step.cancelled)
        for event in self.sched.step():
            if event.kind != "block":
                self.handles.pop(event.handle.id, None)


def follow(model: DiffusionLM) -> None:
    """A follower rank's serving loop: replay rank 0's scheduler steps until it says stop."""
    mirrors: dict[str, _Mirror] = {}
    while True:
        message = _broadcast()
        if message == STOP:
            return
        if not isinstance(message, Step):
            continue  # a heartbeat
        mirror = mirrors.get(message.name)
        if mirror is None or mirror.sid != message.sid:
            mirror = mirrors[message.name] = _Mirror(model, message)
        mirror.apply(message)


def serve_ranks(model: DiffusionLM, serve: Callable[[], None]) -> None:
    """Rank 0 runs ``serve`` (the HTTP server) with a ``Leader`` on the model, which its engine loop
    builds its schedulers from; the other ranks follow until rank 0 stops, however it stops."""
    if model.tensor_parallel.rank != 0:
        follow(model)
        return
    model.lockstep = Leader(model)
    try:
        serve()
    finally:
        model.lockstep.stop()
