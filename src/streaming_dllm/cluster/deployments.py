"""The two Ray Serve deployments: ``EngineReplica`` (a model and the single server's app) and
``Gateway`` (the ingress in front of them).

Both are plain classes; ``launch`` wraps them with ``serve.deployment`` and its options. The
gateway reads the body under the same limits as the single server, forwards the request to the
least-busy replica (Ray Serve's power-of-two-choices router, by requests in flight) and streams
the reply back byte for byte. A replica that dies under a request gives that request a 503 with
``Retry-After`` (code ``replica_unavailable``), or an SSE error event when the stream had begun.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import ray
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..server.app import check_api_key, create_app, read_body
from ..server.errors import APIError
from .asgi_bridge import HTTPRequest, call_app, http_request
from .board import STALE_AFTER_S, merge_metrics

log = logging.getLogger("streaming_dllm.cluster")
BOARD_NAMESPACE = "streaming-dllm"
REPLICA_GONE = (RayActorError, ActorUnavailableError, DeploymentUnavailableError)


def _args(options: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**options)


class EngineReplica:
    """One engine: loads the model as ``serve`` does and serves the single server's app in-process."""

    async def __init__(self, options: dict[str, Any], board: str) -> None:
        import torch

        from ..cli.options import load_from_args
        from ..server.cli import settings_for_model, settings_from_args

        args = _args(options)
        if args.threads:
            torch.set_num_threads(args.threads)
        settings = settings_from_args(args)
        model, tokenizer = load_from_args(args)
        self.app = create_app(model, tokenizer, settings_for_model(settings, model, args))
        self.service = self.app.state.service
        await self.app.router.lifespan_context(self.app).__aenter__()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.board = ray.get_actor(board, namespace=BOARD_NAMESPACE)
        await self._report()

    async def forward(self, req: HTTPRequest) -> AsyncIterator[dict[str, Any]]:
        """The app's response to one request, piece by piece (see ``asgi_bridge.call_app``)."""
        async for piece in call_app(self.app, req):
            yield piece

    async def check_health(self) -> None:
        """Ray Serve's health check: report to the board; a stopped worker restarts the replica."""
        await self._report()
        if not self.service.worker.alive:
            raise RuntimeError("the decoding worker has stopped")

    async def _report(self) -> None:
        health, status = self.service.health()
        report = {"health": health, "healthy": status == 200, "pid": os.getpid(),
                  "host": socket.gethostname(), "metrics": self.service.metrics.render().decode()}
        await self.board.post.remote(self.replica, report)

    def __del__(self) -> None:
        """Ray Serve's graceful shutdown: stop the decoding worker (what the app's lifespan ends with)."""
        service = getattr(self, "service", None)
        if service is not None:
            service.worker.stop()


def _retryable(message: str) -> APIError:
    return APIError(503, message, code="replica_unavailable")


class Gateway:
    """The ingress: ``/health`` and ``/metrics`` over every replica, everything else forwarded."""

    def __init__(self, engine, options: dict[str, Any], board: str, replicas: int) -> None:
        from ..server.cli import settings_from_args

        self.settings = settings_from_args(_args(options))
        self.engine = engine.options(stream=True)
        self.board = ray.get_actor(board, namespace=BOARD_NAMESPACE)
        self.replicas = replicas
        self.failures = 0

    async def __call__(self, request: Request) -> Response:
        try:
            path = request.url.path
            if request.method == "GET" and path == "/health":
                return await self._health()
            if request.method == "GET" and path == "/metrics":
                check_api_key(self.settings.api_key, request.headers.get("authorization", ""))
                return await self._metrics()
            lim = self.settings.limits
            body = await read_body(request, lim.max_body_bytes, lim.body_timeout_s)
            return await self._forward(http_request(request.method, path, request.url.query.encode(),
                                                    list(request.headers.items()), body))
        except APIError as err:
            return err.response()

    async def _forward(self, req: HTTPRequest) -> Response:
        stream = self.engine.forward.remote(req)
        try:
            head = await stream.__anext__()
        except REPLICA_GONE as exc:
            self.failures += 1
            log.warning("a replica failed under %s %s: %s", req["method"], req["path"], type(exc).__name__)
            raise _retryable("the engine replica serving this request stopped before it answered; "
                             "retry (another replica will take it)") from None
        except BackPressureError:
            raise APIError(429, "every replica is busy and the queue in front of them is full; retry later",
                           code="queue_full") from None
        headers = dict(head["headers"])
        sse = headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(self._rest(stream, sse), status_code=head["status"], headers=headers)

    async def _rest(self, stream, sse: bool) -> AsyncIterator[bytes]:
        try:
            async for piece in stream:
                yield piece["body"]
        except REPLICA_GONE:
            self.failures += 1
            if not sse:
                raise
            err = _retryable("the engine replica serving this stream stopped; retry the request")
            yield f"data: {json.dumps(err.body())}\n\ndata: [DONE]\n\n".encode()
        finally:
            stream.cancel()

    async def _reports(self) -> list[dict[str, Any]]:
        return await self.board.live.remote()

    async def _health(self) -> JSONResponse:
        reports = await self._reports()
        healthy = [r for r in reports if r["healthy"]]
        status = "ok" if len(healthy) >= self.replicas else ("degraded" if healthy else "unavailable")
        body = {"status": status, "model": self.settings.model_name, "replicas_expected": self.replicas,
                "replicas_healthy": len(healthy),
                "queued": sum(r["health"]["queued"] for r in reports),
                "running": sum(r["health"]["running"] for r in reports),
                "replicas": [{"replica": r["replica"], "pid": r["pid"], "host": r["host"], **r["health"]}
                             for r in reports]}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def _metrics(self) -> Response:
        reports = await self._reports()
        live = GaugeMetricFamily("sdllm_replicas_healthy", f"Replicas that reported healthy in the last "
                                 f"{STALE_AFTER_S:g} s", value=sum(r["healthy"] for r in reports))
        failed = CounterMetricFamily("sdllm_replica_failures", "Requests answered 503 (or ended with an "
                                     "error event) because their replica stopped", value=self.failures)
        return Response(merge_metrics(reports, [live, failed]), media_type=CONTENT_TYPE_LATEST)
