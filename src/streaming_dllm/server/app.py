"""The FastAPI app: OpenAI-compatible completions and chat completions over the engine.

The front end only authenticates, reads and validates the body, and turns blocks into text; the
worker decodes (``EngineLoop`` for continuous or serial batching, ``Batcher`` for same-settings
batches). Every error leaves as an OpenAI error object.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..text import stop_ids
from .batcher import Batcher
from .engine_loop import EngineLoop
from .errors import APIError, error_body
from .jobs import Chunk, Done, Failed, Job, Worker
from .metrics import Metrics
from .output import ChoiceText, Replies
from .requests import Translator, parse_body
from .schemas import ChatCompletionRequest, CompletionRequest
from .settings import ServerSettings

log = logging.getLogger("streaming_dllm.server")

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _MetricsMiddleware:
    """Counts every HTTP response by endpoint and status and times it until its last byte."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            if path.startswith("/v1/models/"):
                endpoint = "/v1/models"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and with 408
    when the client sends nothing for ``timeout_s`` seconds (a stalled client frees its slot).
    A client that disconnects mid-body is answered 499 (nobody reads it), not a server error."""
    too_big = APIError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    parts, size = [], 0
    chunks = request.stream().__aiter__()
    while True:
        try:
            part = await asyncio.wait_for(chunks.__anext__(), timeout_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:  # TimeoutError's alias from Python 3.11 on
            raise APIError(408, f"request body: nothing received for {timeout_s:g} s; send the whole body "
                           "without pausing", code="body_timeout") from None
        except ClientDisconnect:
            raise APIError(499, "client disconnected while sending the body",
                           code="client_disconnected") from None
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
    return b"".join(parts)


def check_api_key(key: str | None, header: str) -> None:
    """Refuse (401) an ``Authorization`` header that does not carry ``Bearer <key>``; no key: open."""
    if not key:
        return
    scheme, _, token = header.strip().partition(" ")
    if scheme and scheme.lower() != "bearer":
        shown = scheme if len(scheme) <= 20 and scheme.isprintable() else scheme[:20] + "..."
        raise APIError(401, f"authorization: wrong scheme {shown!r} (the Bearer key is missing); send "
                       "'Authorization: Bearer <key>'", param="authorization", code="wrong_auth_scheme")
    if not token.strip():
        raise APIError(401, "authorization: missing API key; send 'Authorization: Bearer <key>'",
                       param="authorization", code="missing_api_key")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "authorization: invalid API key", param="authorization", code="invalid_api_key")


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def make_worker(model, settings: ServerSettings, metrics: Metrics, end_ids: set[int]) -> Worker:
    """The decoding worker that ``settings.batching`` names."""
    if settings.batching == "same-settings":
        return Batcher(model, settings.limits, metrics, end_ids)
    return EngineLoop(model, settings.limits, metrics, end_ids, serial=settings.batching == "serial",
                      policy=settings.batch_policy)


class _Service:
    """State shared by the routes: model, tokenizer, translator, worker, metrics."""

    def __init__(self, model, tokenizer, settings: ServerSettings) -> None:
        self.settings, self.tok = settings, tokenizer
        self.metrics = Metrics()
        self.end_ids = stop_ids(model, tokenizer)
        self.translator = Translator(settings, tokenizer, int(model.vocab_size), model.max_context)
        self.worker = make_worker(model, settings, self.metrics, self.end_ids)
        self.created = int(time.time())

    def check_auth(self, request: Request) -> None:
        check_api_key(self.settings.api_key, request.headers.get("authorization", ""))

    def health(self) -> tuple[dict[str, Any], int]:
        """``/health``'s body and status: 503 once the decoding worker has stopped."""
        alive = self.worker.alive
        body = {"status": "ok" if alive else "worker stopped", "model": self.settings.model_name,
                "queued": self.worker.queued, "running": self.worker.running}
        return body, 200 if alive else 503

    def model_card(self) -> dict[str, Any]:
        return {"id": self.settings.model_name, "object": "model", "created": self.created,
                "owned_by": "streaming-dllm"}

    async def handle(self, request: Request, chat: bool) -> Response:
        self.check_auth(request)
        lim = self.settings.limits
        raw = await read_body(request, lim.max_body_bytes, lim.body_timeout_s)
        if chat:
            req = parse_body(raw, ChatCompletionRequest)
            plan = self.translator.chat(req)
        else:
            req = parse_body(raw, CompletionRequest)
            plan = self.translator.completion(req)
        job = Job(plan, asyncio.get_running_loop())
        self.worker.submit(job)
        self.metrics.prompt_tokens.inc(plan.prompt_tokens)
        texts = [ChoiceText(self.tok, self.end_ids, plan.max_tokens, plan.stops) for _ in plan.rows]
        replies = Replies(self.settings.model_name, chat, plan.prompt_tokens)
        if req.stream:
            return StreamingResponse(self._stream(job, texts, replies), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        watcher = asyncio.create_task(self._watch_disconnect(request, job))
        try:
            async for _ in self._blocks(job, texts):
                pass
        finally:
            watcher.cancel()
            self.worker.cancel(job)
        return JSONResponse(replies.body(texts))

    async def _blocks(self, job: Job, texts: list[ChoiceText]) -> AsyncIterator[list[str]]:
        """Feed each finished block to the choices; yield the new text of every choice."""
        first = True
        while not all(t.finished for t in texts):
            event = await job.events.get()
            if isinstance(event, Failed):
                err = event.error
                if isinstance(err, APIError):
                    raise err
                raise APIError(500, f"decoding failed ({type(err).__name__}); the server log has the details",
                               code="decoding_failed")
            if isinstance(event, Done):
                yield [t.feed([], last=True) for t in texts]
                break
            assert isinstance(event, Chunk)
            if first:
                self.metrics.first_chunk.observe(time.perf_counter() - job.enqueued)
                first = False
            rows = zip(texts, event.tokens, event.finished, strict=True)
            yield [t.feed(toks, last=fin) for t, toks, fin in rows]
        job.cancelled = True
        self.metrics.generated_tokens.inc(sum(t.completion_tokens for t in texts))

    async def _stream(self, job: Job, texts: list[ChoiceText], replies: Replies) -> AsyncIterator[str]:
        """SSE: one chunk per choice per finished block (when it adds text or ends), then [DONE]."""
        announced = [False] * len(texts)
        complete = False
        try:
            if replies.chat:
                for i in range(len(texts)):
                    yield _sse(replies.role_chunk(i))
            async for pieces in self._blocks(job, texts):
                for i, (t, piece) in enumerate(zip(texts, pieces, strict=True)):
                    ending = t.finished and not announced[i]
                    if not piece and not ending:
                        continue
                    announced[i] = announced[i] or ending
                    yield _sse(replies.chunk(i, piece, t.finish_reason if ending else None))
            if job.plan.include_usage:
                yield _sse(replies.usage_chunk(texts))
            complete = True
        except APIError as err:
            complete = True
            yield _sse(err.body())
        finally:
            self.worker.cancel(job)
            if not complete:
                self.metrics.disconnects.inc()
        yield _sse("[DONE]")

    async def _watch_disconnect(self, request: Request, job: Job) -> None:
        """Cancel a non-streamed job whose client has gone away."""
        while not job.cancelled:
            if await request.is_disconnected():
                self.metrics.disconnects.inc()
                self.worker.cancel(job)
                job.events.put_nowait(Failed(APIError(499, "client disconnected")))
                return
            await asyncio.sleep(0.1)


def create_app(model, tokenizer, settings: ServerSettings | None = None) -> FastAPI:
    """The OpenAI-compatible app serving ``model``; the batch worker runs while the app does."""
    settings = settings or ServerSettings()
    settings.validate()
    svc = _Service(model, tokenizer, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.worker.start()
        yield
        await asyncio.to_thread(svc.worker.stop)

    app = FastAPI(title="streaming-dllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.add_middleware(_MetricsMiddleware, metrics=svc.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}"
        else:
            msg = f"{exc.detail}: {request.method} {request.url.path}"
        return JSONResponse(error_body(exc.status_code, msg, code=str(exc.detail).lower().replace(" ", "_")),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(500, "internal server error", code="internal_error"), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        body, status = svc.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        svc.check_auth(request)
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        svc.check_auth(request)
        return {"object": "list", "data": [svc.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        svc.check_auth(request)
        if model_id != settings.model_name:
            raise APIError(404, f"model: {model_id!r} does not exist", param="model", code="model_not_found")
        return svc.model_card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await svc.handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await svc.handle(request, chat=True)

    return app
