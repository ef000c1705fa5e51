"""OpenAI-compatible HTTP server (FastAPI + uvicorn): ``streaming-dllm serve``."""

from .app import create_app
from .settings import Limits, ServerSettings

__all__ = ["Limits", "ServerSettings", "create_app"]
