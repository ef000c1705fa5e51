"""Same-settings batching (``--batching same-settings``): a queue and a worker thread that
decodes batches of requests with identical settings, each batch to its end.

Requests whose decoding configs have equal ``DecodeConfig.key()`` (every setting; seeds are
per row) are decoded together as one engine batch; each row decodes exactly as it would alone,
so batching changes speed, never results. The worker runs ``sd.stream`` off the event loop and
posts each finished block to the waiting request's asyncio queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..engine import stream
from ..text import answer_end
from .errors import APIError
from .jobs import Chunk, Done, Failed, Job, queue_full, shutting_down, worker_stopped
from .metrics import Metrics
from .settings import Limits

log = logging.getLogger("streaming_dllm.server")


class Batcher:
    """A bounded FIFO of jobs and one worker thread that decodes them in batches."""

    def __init__(self, model, limits: Limits, metrics: Metrics, end_ids: set[int]) -> None:
        self.model, self.limits, self.metrics, self.end_ids = model, limits, metrics, end_ids
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="sdllm-batcher", daemon=True)
        self.running = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in left:
            job.post(Failed(shutting_down()))
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse at once: 429 when the queue is full, 503 when no worker runs."""
        with self._cv:
            if self._stopping:
                raise shutting_down()
            if not self._thread.is_alive():
                raise worker_stopped()
            if len(self._pending) >= self.limits.max_queue:
                self.metrics.rejected.inc()
                raise queue_full(len(self._pending), self.limits.max_queue)
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job from the queue, or let the worker skip its rows."""
        job.cancelled = True
        with self._cv:
            if job in self._pending:
                self._pending.remove(job)
                self.metrics.queue_depth.set(len(self._pending))

    def _take(self) -> list[Job] | None:
        """Wait for work; return the oldest job plus every queued job that can share its batch."""
        lim = self.limits
        with self._cv:
            while not self._pending and not self._stopping:
                self._cv.wait(1.0)
            if self._stopping:
                return None
            deadline = time.perf_counter() + lim.batch_wait_ms / 1000
            while (
                not self._stopping
                and sum(len(j.plan.rows) for j in self._pending) < lim.max_batch_size
                and (left := deadline - time.perf_counter()) > 0
            ):
                self._cv.wait(min(left, 1.0))
            if self._stopping or not self._pending:
                return None if self._stopping else []
            head = self._pending.popleft()
            batch = [head]
            try:
                key, rows = head.plan.cfg.key(), len(head.plan.rows)
                for job in list(self._pending):
                    if rows + len(job.plan.rows) <= lim.max_batch_size and job.plan.cfg.key() == key:
                        self._pending.remove(job)
                        batch.append(job)
                        rows += len(job.plan.rows)
            except BaseException:  # put the jobs back, oldest first: the caller fails the oldest
                self._pending.extendleft(reversed(batch))
                raise
            self.metrics.queue_depth.set(len(self._pending))
            return batch

    def _work(self) -> None:
        try:
            self._serve()
        finally:  # the worker is gone (stopped or killed): nobody will decode what is queued
            with self._cv:
                left = list(self._pending)
                self._pending.clear()
                self.metrics.queue_depth.set(0)
            for job in left:
                job.post(Failed(APIError(503, "the decoding worker has stopped", code="worker_stopped")))

    def _serve(self) -> None:
        while True:
            try:
                batch = self._take()
            except Exception:  # never let the worker die: fail the oldest request, keep serving
                log.exception("batch worker error while taking a batch")
                with self._cv:
                    head = self._pending.popleft() if self._pending else None
                    self.metrics.queue_depth.set(len(self._pending))
                if head is not None:
                    head.post(Failed(APIError(500, "the server failed to schedule this request",
                                              code="internal_error")))
                time.sleep(0.01)
                continue
            if batch is None:
                return
            if not batch:
                continue
            now = time.perf_counter()
            for job in batch:
                job.started = now
                self.metrics.queue_wait.observe(now - job.enqueued)
            self.running = len(batch)
            self.metrics.running.set(self.running)
            self.metrics.rows_in_flight.set(sum(len(job.plan.rows) for job in batch))
            try:
                self._run(batch, skip=0)
            except Exception as exc:  # never let the worker die: fail this batch, serve the next
                log.exception("batch worker error")
                for job in batch:
                    job.post(Failed(exc))
            finally:
                self.running = 0
                self.metrics.running.set(0)
                self.metrics.rows_in_flight.set(0)

    def _run(self, batch: list[Job], skip: int) -> None:
        """Decode one batch; blocks with index < ``skip`` were already posted (a solo re-run)."""
        rows = [r for job in batch for r in job.plan.rows]
        seeds = [s for job in batch for s in job.plan.seeds]
        spans, a = [], 0
        for job in batch:
            spans.append((a, a + len(job.plan.rows)))
            a += len(job.plan.rows)
        done = [False] * len(rows)
        posted, nfe = skip, 0
        self.metrics.batch_rows.observe(len(rows))
        owner = [job for job in batch for _ in job.plan.rows]
        blocks = stream(
            self.model, rows, batch[0].plan.cfg, seeds=seeds, cancelled=lambda r: owner[r].cancelled
        )
        try:
            for chunk in blocks:
                nfe = chunk.nfe
                if self._stopping:
                    for job in batch:
                        job.post(Failed(shutting_down()))
                    return
                toks = [chunk.row(r) for r in range(len(chunk.finished))]
                for r, row in enumerate(toks):
                    done[r] = done[r] or chunk.finished[r] or answer_end(row, self.end_ids) is not None
                if chunk.index < skip:
                    continue
                for job, (a, b) in zip(batch, spans, strict=True):
                    if not job.cancelled:
                        job.post(Chunk(chunk.index, toks[a:b], chunk.finished[a:b]))
                posted = chunk.index + 1
                if all(job.cancelled or all(done[a:b]) for job, (a, b) in zip(batch, spans, strict=True)):
                    if chunk.index + 1 < batch[0].plan.cfg.num_blocks:
                        self.metrics.released_rows.inc(done.count(False))
                    break
        except Exception as exc:
            if len(batch) > 1:
                log.warning("batch of %d requests failed (%s); decoding them one by one", len(batch), exc)
                for job in batch:
                    if not job.cancelled:
                        self._run([job], skip=posted)
                return
            log.exception("decoding failed")
            batch[0].post(Failed(exc))
            return
        finally:
            blocks.close()
            self.metrics.forward_passes.inc(nfe)
        for job in batch:
            job.post(Done(nfe))
