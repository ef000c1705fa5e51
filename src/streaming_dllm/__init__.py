"""streaming-dllm: a fast inference engine for diffusion language models.

The public names are imported on first use, so commands that fail on a flag (and ``--help``)
answer before torch is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PRESETS": ".config",
    "ConfigError": ".config",
    "DecodeConfig": ".config",
    "BlockChunk": ".engine",
    "GenerateOutput": ".engine",
    "generate": ".engine",
    "stream": ".engine",
    "generate_many": ".engine",
    "Scheduler": ".engine",
    "CheckpointError": ".loading",
    "load_model": ".loading",
    "load_tokenizer": ".loading",
    "tune": ".tuning",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
