"""Run one HTTP request through an ASGI app in this process, without a socket.

A replica serves the single server's FastAPI app by calling it here: the request arrives as a
plain dict (picklable, so Ray can carry it) and the response leaves as a stream of dicts, the
first with the status and headers, then one per body piece. Closing the stream early is a client
disconnect: the app sees ``http.disconnect`` and cancels the job, as it would behind uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

HTTPRequest = dict[str, Any]
"""``{"method", "path", "query_string" (bytes), "headers" ([(name, value)] str pairs), "body"}``."""

_CLOSE_GRACE_S = 5.0


def http_request(method: str, path: str, query_string: bytes = b"",
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> HTTPRequest:
    """The request dict ``call_app`` takes."""
    return {"method": method, "path": path, "query_string": query_string, "headers": headers or [],
            "body": body}


def _scope(req: HTTPRequest) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": req["method"], "scheme": "http", "path": req["path"], "raw_path": req["path"].encode(),
        "query_string": req["query_string"], "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in req["headers"]],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
    }


async def call_app(app, req: HTTPRequest) -> AsyncIterator[dict[str, Any]]:
    """Yield ``{"status", "headers"}`` once, then ``{"body": bytes}`` for each piece the app sends."""
    sent: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    body_given = False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": req["body"], "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(_scope(req), receive, sent.put)
        finally:
            sent.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield {"status": message["status"], "headers": headers}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield {"body": bytes(message["body"])}
                if not message.get("more_body"):
                    break
    finally:
        gone.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_GRACE_S)
        if not task.done():
            task.cancel()


async def collect(app, req: HTTPRequest) -> tuple[int, bytes]:
    """The whole response of a short request (``/health``, ``/metrics``): status and body."""
    status, parts = 500, []
    async for piece in call_app(app, req):
        if "status" in piece:
            status = piece["status"]
        else:
            parts.append(piece["body"])
    return status, b"".join(parts)
