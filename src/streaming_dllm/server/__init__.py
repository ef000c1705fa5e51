"""OpenAI-compatible HTTP server (FastAPI + uvicorn): ``streaming-dllm serve``.

The app needs the ``[server]`` extra; it is imported on first use, so ``serve``'s flags (and
``--help``) work without it and running it says which extra to install.
"""

from __future__ import annotations

from typing import Any

from .settings import Limits, ServerSettings

__all__ = ["Limits", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
