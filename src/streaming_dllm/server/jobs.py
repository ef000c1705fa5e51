"""What a front-end request and a decoding worker exchange: the ``Job`` and its events.

Every worker (``Batcher`` for same-settings batches, ``EngineLoop`` for continuous batching)
takes the same jobs and posts the same events, so the HTTP side never knows which one runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from .errors import APIError
from .requests import Plan


@dataclass
class Chunk:
    """One finished block for a job: ``tokens[r]`` / ``finished[r]`` per row of the job."""

    index: int
    tokens: list[list[int]]
    finished: list[bool]


@dataclass
class Done:
    nfe: int


@dataclass
class Failed:
    error: BaseException


class Job:
    """A request in flight: its plan, the loop to report to, and its cancelled flag."""

    def __init__(self, plan: Plan, loop: asyncio.AbstractEventLoop) -> None:
        self.plan, self.loop = plan, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.enqueued = time.perf_counter()
        self.started: float | None = None

    def post(self, event: Chunk | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True


class Worker(Protocol):
    """The decoding side of the server, as the app sees it."""

    @property
    def alive(self) -> bool: ...

    @property
    def queued(self) -> int: ...

    @property
    def running(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job: Job) -> None: ...

    def cancel(self, job: Job) -> None: ...


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down")


def worker_stopped() -> APIError:
    return APIError(503, "the decoding worker has stopped; the server cannot take requests (see its log)",
                    code="worker_stopped")


def queue_full(queued: int, limit: int) -> APIError:
    return APIError(429, f"the server is busy ({queued} requests queued, limit {limit}); retry later",
                    code="queue_full")
