"""Shared helpers of the server tests: a model to serve and a real uvicorn server on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time

import torch
import uvicorn

import streaming_dllm as sd
from streaming_dllm.server import ServerSettings, create_app


def served_checkpoint() -> str:
    """The checkpoint under test: $STREAMING_DLLM_SERVER_TEST_MODEL, else the built-in model."""
    return os.environ.get("STREAMING_DLLM_SERVER_TEST_MODEL") or "builtin"


_LOADED: dict[str, tuple[object, object]] = {}


def load_served_model() -> tuple[object, object]:
    """Model and tokenizer of ``served_checkpoint()``, loaded once per session, one torch thread."""
    torch.set_num_threads(1)
    if "model" not in _LOADED:
        model = sd.load_model(served_checkpoint())
        _LOADED["model"] = (model, sd.load_tokenizer(model))
    return _LOADED["model"]


class LiveServer:
    """The real app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, model, tokenizer, settings: ServerSettings) -> None:
        self.app = create_app(model, tokenizer, settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
