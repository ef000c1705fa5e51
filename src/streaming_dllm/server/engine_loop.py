"""Continuous batching for the server (``--batching continuous``, and ``serial``).

One engine thread steps an ``engine.scheduler.Scheduler``: a request with any settings joins
the running batch at the next step and leaves as soon as it is done, so a short answer never
waits for a long one. The scheduler is not thread-safe and a step can take long, so the event
loop never touches it: ``submit`` drops jobs into an inbox that the engine thread drains before
every step. ``serial`` is the same engine admitting one request at a time.

A request whose batched forward fails is decoded again alone, in a second scheduler that admits
one request at a time, and the blocks it already sent are skipped; only a request that fails
alone gets an error, so a failed request never costs another its answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..engine.scheduler import Event, Handle, Policy, Scheduler
from ..text import answer_end
from .errors import APIError
from .jobs import Chunk, Done, Failed, Job, queue_full, shutting_down, worker_stopped
from .metrics import Metrics
from .settings import Limits, step_tokens

log = logging.getLogger("streaming_dllm.server")

UNBOUNDED_QUEUE = 1 << 30
"""The schedulers' own queue bound; the server's (``max_queue``, 429) is checked in ``submit``."""


@dataclass(eq=False)
class _Track:
    """The engine thread's view of one job: where it decodes and what the client already has."""

    job: Job
    done: list[bool]
    final: list[bool]
    sched: Scheduler | None = None
    handle: Handle | None = None
    posted: int = 0
    solo: bool = False
    started: bool = False
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.done)


class EngineLoop:
    """The server's worker for continuous batching: a bounded inbox and one engine thread."""

    def __init__(self, model, limits: Limits, metrics: Metrics, end_ids: set[int], serial: bool = False,
                 policy: Policy = "split") -> None:
        self.model, self.limits, self.metrics, self.end_ids = model, limits, metrics, end_ids
        self.policy = policy
        self._step_tokens = step_tokens(limits.max_step_tokens, model.device.type)
        self._rows = 1 if serial else limits.max_rows_in_flight
        self.main = self._scheduler(self._rows, "main")
        self.solo = self._scheduler(1, "solo")
        self._inbox: deque[Job] = deque()
        self._waiting: set[Job] = set()  # accepted, not decoding yet: what max_queue bounds
        self._cv = threading.Condition()
        self._stopping = False
        self._dead = False  # the engine thread has left its loop: nothing queued now would run
        self._cancels = False  # a job was cancelled: prune the schedulers' queues at the next step
        self._tracks: dict[Job, _Track] = {}  # the engine thread's alone, like _unstarted
        self._unstarted: list[_Track] = []
        self._thread = threading.Thread(target=self._work, name="sdllm-engine", daemon=True)
        self.running = 0

    def _scheduler(self, rows: int, name: str) -> Scheduler:
        options = dict(max_rows=rows, max_tokens=self.limits.max_kv_tokens, max_queue=UNBOUNDED_QUEUE,
                       policy=self.policy, max_step_tokens=self._step_tokens)
        leader = getattr(self.model, "lockstep", None)  # tensor parallel: the other ranks mirror it
        return Scheduler(self.model, **options) if leader is None else leader.scheduler(name, **options)

    # ------------------------------------------------------------ the event loop's side
    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Refuse new work, answer the queued with 503; the engine thread fails the rest and ends."""
        with self._cv:
            self._stopping = True
            left = list(self._inbox)
            self._inbox.clear()
            self._waiting.difference_update(left)
            self._cv.notify_all()
        for job in left:
            job.post(Failed(shutting_down()))
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse at once: 429 when the queue is full, 503 when no engine runs."""
        with self._cv:
            if self._stopping:
                raise shutting_down()
            if self._dead or not self._thread.is_alive():
                raise worker_stopped()
            if len(self._waiting) >= self.limits.max_queue:
                self.metrics.rejected.inc()
                raise queue_full(len(self._waiting), self.limits.max_queue)
            self._inbox.append(job)
            self._waiting.add(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The job is no longer wanted: drop it from the inbox, or free its rows at the next step."""
        job.cancelled = True
        self._cancels = True
        with self._cv:
            if job in self._inbox:
                self._inbox.remove(job)
                self._waiting.discard(job)
                self.metrics.queue_depth.set(len(self._waiting))

    # ------------------------------------------------------------ the engine thread
    def _work(self) -> None:
        try:
            self._serve()
        finally:  # stopped or killed: nobody will decode what is left
            with self._cv:
                self._dead = True
                left = list(self._inbox)
                self._inbox.clear()
            error = shutting_down() if self._stopping else APIError(
                503, "the decoding worker has stopped", code="worker_stopped")
            for job in [*left, *self._tracks]:
                job.post(Failed(error))
            self._tracks.clear()
            with self._cv:
                self._waiting.clear()
            self.metrics.queue_depth.set(0)
            self._gauges()

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self._tracks and not self._stopping:
                    self._cv.wait(1.0)
                if self._stopping:
                    return
                new = list(self._inbox)
                self._inbox.clear()
            for job in new:
                rows = len(job.plan.rows)
                self._enter(_Track(job, [False] * rows, [False] * rows), solo=False)
            for solo in (False, True):
                if (self.solo if solo else self.main).busy():
                    self._step(solo)
            self._gauges()

    def _enter(self, track: _Track, solo: bool) -> None:
        """Hand a job to the main scheduler, or to the one that decodes requests alone."""
        plan = track.job.plan
        track.solo = track.solo or solo
        track.sched = self.solo if track.solo else self.main
        self._tracks[track.job] = track
        if not track.started:
            self._unstarted.append(track)
        try:
            track.handle = track.sched.submit(plan.rows, plan.cfg, plan.seeds,
                                              cancelled=lambda: self._unwanted(track), tag=track)
        except Exception as exc:
            log.exception("the engine refused a request")
            self._end(track, Failed(exc))

    def _unwanted(self, track: _Track) -> bool:
        """The scheduler's cancel check: the client left, every row reached its end, or shutdown."""
        return track.job.cancelled or all(track.done) or self._stopping

    def _step(self, solo: bool) -> None:
        sched = self.solo if solo else self.main
        if self._cancels:
            self._prune()
        forwards, rows = sched.forwards, sched.rows_forwarded
        try:
            events = sched.step()
        except Exception:
            log.exception("engine step failed; its requests are decoded again alone")
            self._rescue(sched, solo)
            return
        self._count(sched.forwards - forwards, sched.rows_forwarded - rows)
        self._mark_started(sched)
        for event in events:
            track = event.handle.tag
            if self._tracks.get(track.job) is not track or event.handle is not track.handle:
                continue  # a request that already ended, or moved on to be decoded alone
            try:
                self._on_event(track, event)
            except Exception as exc:  # a bug reading one request's event fails that request only
                log.exception("engine event of a request failed")
                self._end(track, Failed(exc))

    def _prune(self) -> None:
        """Drop queued requests nobody waits for any more, before they take a place."""
        self._cancels = False
        for sched in (self.main, self.solo):
            for h in [h for h in sched.waiting if h.cancelled is not None and h.cancelled()]:
                sched.drop_waiting(h)
                self._end(h.tag, None)

    def _mark_started(self, sched: Scheduler) -> None:
        """Requests the step admitted leave the queue (``max_queue``): observe their wait."""
        now, left = time.perf_counter(), []
        for track in self._unstarted:
            if self._tracks.get(track.job) is not track or track.started:
                continue
            if track.sched is not sched or track.handle is None or track.handle.run is None:
                left.append(track)
                continue
            track.started, track.job.started = True, now
            self.metrics.queue_wait.observe(now - track.job.enqueued)
            with self._cv:
                self._waiting.discard(track.job)
                self.metrics.queue_depth.set(len(self._waiting))
        self._unstarted = left

    def _on_event(self, track: _Track, event: Event) -> None:
        job = track.job
        if event.kind == "block":
            chunk = event.chunk
            tokens = [chunk.row(r) for r in range(track.rows)]
            for r, row in enumerate(tokens):
                track.final[r] = track.final[r] or chunk.finished[r]
                ended = chunk.finished[r] or answer_end(row, self.end_ids) is not None
                track.done[r] = track.done[r] or ended
            if chunk.index >= track.posted and not job.cancelled:
                job.post(Chunk(chunk.index, tokens, list(chunk.finished)))
                track.posted = chunk.index + 1
        elif event.kind == "done":
            self._end(track, Done(event.output.nfe))
        elif event.kind == "cancelled":
            self.metrics.released_rows.inc(track.final.count(False))
            run = event.handle.run
            self._end(track, Done(0 if run is None else run.nfe))
        elif track.solo or event.handle.run is None:  # failed alone, or refused at admission
            log.error("decoding failed", exc_info=event.error)
            self._end(track, Failed(event.error))
        else:
            log.warning("a batched forward failed (%s); decoding its request again alone", event.error)
            self._enter(track, solo=True)

    def _rescue(self, sched: Scheduler, solo: bool) -> None:
        """A step raised outside any one forward: start a fresh scheduler. The requests it was
        decoding are decoded again alone (or fail, if they already were); those it had not yet
        admitted re-enter the queue, except the oldest when nothing was decoding."""
        if solo:
            self.solo = self._scheduler(1, "solo")
        else:
            self.main = self._scheduler(self._rows, "main")
        mine = [t for t in self._tracks.values() if t.sched is sched]
        waiting = [h.tag for h in sched.waiting]
        involved = [t for t in mine if t not in waiting] or waiting[:1]
        for track in mine:
            if track not in involved:
                self._enter(track, solo=False)
            elif track.solo:
                self._end(track, Failed(APIError(500, "the server failed to schedule this request",
                                                 code="internal_error")))
            else:
                self._enter(track, solo=True)

    def _end(self, track: _Track, event: Done | Failed | None) -> None:
        self._tracks.pop(track.job, None)
        with self._cv:
            self._waiting.discard(track.job)
            self.metrics.queue_depth.set(len(self._waiting))
        if event is not None:
            track.job.post(event)

    def _count(self, forwards: int, rows: int) -> None:
        self.metrics.forward_passes.inc(forwards)
        self.metrics.rows_forwarded.inc(rows)
        for _ in range(forwards):
            self.metrics.rows_per_forward.observe(rows / forwards)

    def _gauges(self) -> None:
        scheds = (self.main, self.solo)
        self.running = sum(len(s.active) for s in scheds)
        self.metrics.running.set(self.running)
        self.metrics.rows_in_flight.set(sum(s.rows_in_flight for s in scheds))
        self.metrics.kv_tokens_in_flight.set(sum(s.tokens_in_flight for s in scheds))
